"""The growing particle store: one MRC stack and one cisTEM star file for every imported particle.

Appending costs O(new particles): raw image bytes go to the end of ``particles.mrcs`` (then the
header's image count is patched), star rows to the end of ``particles.star``, both are fsynced,
and only then is ``store.json`` replaced atomically. ``store.json`` is the commit point: after a
kill at any moment, opening the store cuts stack and star back to what it records, so a particle
is either wholly in the store or not at all, never twice.

Each row keeps where the particle came from (the provenance columns: the source's image name,
micrograph and coordinates), which exports and reading the source stacks in place need.
Stores of format 1 lacked micrograph and coordinates: opening one adds the columns, empty, and
marks them ``provenance_pending`` until the importer fills them from the source star
(:meth:`ParticleStore.fill_provenance`). The star is replaced whole then, in two phases (the new
file is committed under a temporary name, then renamed), so a kill leaves either version.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import mrcfile
import numpy as np
import pandas as pd

from live2d import cistem_star
from live2d.atomic import atomic_write_json

STORE_COLUMNS = ("POS", "PSI", "SHX", "SHY", "DF1", "DF2", "ANGAST", "PSHIFT", "OCC", "LogP",
                 "SIGMA", "SCORE", "CHANGE", "PSIZE", "VOLT", "Cs", "AmpC", "BTILTX", "BTILTY",
                 "ISHFTX", "ISHFTY", "2DCLS", "ORIGX", "ORIGY", "MICROGRAPH", "ORIGNAME")
FORMAT = 2
HEADER_BYTES = 1024
_STAR_HEADER = cistem_star.header(
    STORE_COLUMNS, ["Live2D particle store: every imported particle"]).encode("utf-8")
# Byte offsets in the MRC header (MRC2014): image count and cell size along z.
_NZ, _MZ, _CELL_Z = 8, 36, 48


class StoreError(RuntimeError):
    """The store on disk lost data it had committed; the message says what to do."""


class ParticleStore:
    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.folder = Path(output_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stack_path = self.folder / "particles.mrcs"
        self.star_path = self.folder / "particles.star"
        self.state_path = self.folder / "store.json"
        self._state = self._load()
        self._names: set[str] | None = None
        self._reconcile()

    # ------------------------------------------------------------------ what it holds
    @property
    def count(self) -> int:
        return int(self._state["count"])

    @property
    def generation(self) -> int:
        return int(self._state["generation"])

    @property
    def pixel_size(self) -> float:
        return float(self._state["pixel_size"])

    @property
    def box(self) -> int:
        return int(self._state["box"])

    @property
    def provenance_pending(self) -> bool:
        """Micrographs and coordinates of a migrated store's particles are not filled in yet."""
        return bool(self._state.get("provenance_pending"))

    @property
    def image_bytes(self) -> int:
        return self.box * self.box * 4

    def read_table(self) -> pd.DataFrame:
        """Every particle's row (cisTEM short column names, ORIGNAME = Warp's rlnImageName)."""
        if self.count == 0:
            return cistem_star.new_table(0).assign(
                ORIGX=pd.Series(dtype=float), ORIGY=pd.Series(dtype=float),
                MICROGRAPH=pd.Series(dtype=str), ORIGNAME=pd.Series(dtype=str))
        table = cistem_star.read_star(self.star_path)
        if len(table) != self.count:
            raise StoreError(f"{self.star_path} holds {len(table)} rows, the store {self.count}")
        return table

    def image_names(self) -> set[str]:
        """Warp image names already imported (guards against importing a particle twice)."""
        if self._names is None:
            self._names = set(self.read_table()["ORIGNAME"]) if self.count else set()
        return self._names

    # ------------------------------------------------------------------ changing it
    def reset(self, pixel_size: float, box: int) -> None:
        """Empty the store for particles of a new pixel size or box; bumps the generation."""
        generation = self.generation + 1 if self._state["box"] else self.generation
        # Commit first: a kill before the files are emptied leaves an empty commit, and opening
        # an empty store always rewrites its files.
        self._commit(count=0, generation=generation, pixel_size=pixel_size, box=box,
                     star_bytes=len(_STAR_HEADER), format=FORMAT, provenance_pending=False)
        self._write_empty_files()
        self._names = set()

    def append(self, images: np.ndarray, table: pd.DataFrame) -> None:
        """Add particles: ``images`` (n, box, box) and their rows (cisTEM short names, with
        ORIGNAME; MICROGRAPH, ORIGX and ORIGY where the source has them). POS is set here."""
        n = len(images)
        if n != len(table):
            raise ValueError(f"{n} images but {len(table)} rows")
        if n == 0:
            return
        if not self._state["box"]:
            raise StoreError("the store must be reset with a pixel size and box first")
        if images.shape[1:] != (self.box, self.box):
            raise ValueError(f"images are {images.shape[1:]}, the store holds {self.box} px")
        rows = table.copy()
        rows["POS"] = np.arange(self.count + 1, self.count + n + 1)
        defaults = cistem_star.new_table(n)
        for column in STORE_COLUMNS:
            if column not in rows:
                rows[column] = defaults[column].to_numpy() if column in defaults else \
                    cistem_star.BY_SHORT[column].default
        count = self.count + n
        with open(self.stack_path, "r+b") as stack:
            stack.seek(HEADER_BYTES + self.count * self.image_bytes)
            stack.write(np.ascontiguousarray(images, dtype="<f4").tobytes())
            self._patch_count(stack, count)
            stack.flush()
            os.fsync(stack.fileno())
        with open(self.star_path, "r+b") as star:
            star.seek(self._state["star_bytes"])
            star.write(cistem_star.format_rows(rows, STORE_COLUMNS).encode("utf-8"))
            star.truncate()
            star.flush()
            os.fsync(star.fileno())
            star_bytes = star.tell()
        self._commit(count=count, star_bytes=star_bytes)
        if self._names is not None:
            self._names.update(rows["ORIGNAME"])

    def fill_provenance(self, micrograph: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Set every particle's micrograph and coordinates (in store order) and clear
        ``provenance_pending``: the migration's second step, once the source star is read."""
        table = self.read_table()
        if not len(table) == len(micrograph) == len(x) == len(y):
            raise ValueError(f"{len(micrograph)} sources for {len(table)} particles")
        table["MICROGRAPH"], table["ORIGX"], table["ORIGY"] = micrograph, x, y
        self._replace_star(table, provenance_pending=False)

    # ------------------------------------------------------------------ on disk
    def _load(self) -> dict:
        empty = {"count": 0, "generation": 0, "pixel_size": 0.0, "box": 0, "star_bytes": 0,
                 "format": FORMAT}
        if not self.state_path.exists():
            return empty
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreError(f"{self.state_path} is unreadable ({exc}); it is only replaced "
                             "atomically: restore it, or delete the store to re-import") from None
        return {**empty, "format": 1, **state}

    def _replace_star(self, table: pd.DataFrame, **changes: object) -> None:
        """Replace the whole star with ``table``'s rows: the new file is committed under a
        temporary name first, so that a kill before the rename is finished on opening."""
        text = _STAR_HEADER + cistem_star.format_rows(table, STORE_COLUMNS).encode("utf-8")
        replacement = self.star_path.with_name(self.star_path.name + ".new")
        with open(replacement, "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self._commit(star_bytes=len(text), replacing_star=replacement.name, **changes)
        self._finish_star_replacement()

    def _finish_star_replacement(self) -> None:
        pending = self._state.get("replacing_star")
        if not pending:
            return
        replacement = self.folder / pending
        if replacement.exists():
            os.replace(replacement, self.star_path)
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._commit(replacing_star=None)

    def _migrate(self) -> None:
        """Format 1 -> 2: the provenance columns are added, empty until filled."""
        if self.count == 0:
            self._commit(format=FORMAT)
            return
        table = cistem_star.read_star(self.star_path).iloc[: self.count].copy()
        table["ORIGX"], table["ORIGY"], table["MICROGRAPH"] = 0.0, 0.0, ""
        self._replace_star(table, format=FORMAT, provenance_pending=True)

    def _commit(self, **changes: object) -> None:
        state = {**self._state, **changes}
        atomic_write_json(self.state_path, state)
        self._state = state

    def _write_empty_files(self) -> None:
        with mrcfile.new(self.stack_path, overwrite=True) as mrc:
            mrc.set_data(np.zeros((1, self.box, self.box), dtype=np.float32))
            mrc.voxel_size = self.pixel_size
            # Statistics are never scanned (appends stay O(new)): MRC2014's "not computed".
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean, mrc.header.rms = 0, -1, -2, -1
        with open(self.stack_path, "r+b") as stack:  # zero images, header kept
            stack.truncate(HEADER_BYTES)
            self._patch_count(stack, 0)
            os.fsync(stack.fileno())
        with open(self.star_path, "wb") as star:
            star.write(_STAR_HEADER)
            os.fsync(star.fileno())

    def _patch_count(self, stack: BinaryIO, count: int) -> None:
        """Set the header's image count (nz, mz) and cell length along z to ``count`` images."""
        stack.seek(_NZ)
        stack.write(struct.pack("<i", count))
        stack.seek(_MZ)
        stack.write(struct.pack("<i", count))
        stack.seek(_CELL_Z)
        stack.write(struct.pack("<f", count * self.pixel_size))

    def _reconcile(self) -> None:
        """Cut stack and star back to the last commit (a kill may have left more), and finish
        a replacement of the star or a migration that a kill interrupted."""
        if not self._state["box"]:
            return
        self._finish_star_replacement()
        if self._state["format"] < FORMAT:
            self._cut_back()
            self._migrate()
        self._cut_back()

    def _cut_back(self) -> None:
        if self.count == 0:  # cheap, and covers a kill in the middle of reset()
            self._write_empty_files()
            return
        stack_bytes = HEADER_BYTES + self.count * self.image_bytes
        for path, committed in ((self.stack_path, stack_bytes),
                                (self.star_path, self._state["star_bytes"])):
            size = path.stat().st_size if path.exists() else -1
            if size < committed:
                raise StoreError(
                    f"{path} is shorter than the {self.count} particles committed in "
                    f"{self.state_path.name}: it was changed by something else. Delete "
                    f"{self.folder} to import everything again")
            if size > committed:
                with open(path, "r+b") as handle:
                    handle.truncate(committed)
                    os.fsync(handle.fileno())
        with open(self.stack_path, "r+b") as stack:
            stack.seek(_NZ)
            if struct.unpack("<i", stack.read(4))[0] != self.count:
                self._patch_count(stack, self.count)
                os.fsync(stack.fileno())
