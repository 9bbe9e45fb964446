"""The growing particle store: one MRC stack and one cisTEM star file for every imported particle.

Appending costs O(new particles): raw image bytes go to the end of ``particles.mrcs`` (then the
header's image count is patched), star rows to the end of ``particles.star``, both are fsynced,
and only then is ``store.json`` replaced atomically. ``store.json`` is the commit point: after a
kill at any moment, opening the store cuts stack and star back to what it records, so a particle
is either wholly in the store or not at all, never twice.

Each row keeps where the particle came from (the provenance columns: the source's image name,
micrograph, coordinates, a stamp of its stack and its id in a source that numbers its particles,
such as a Scipion set), which exports and reading the source stacks
in place need. In "source" mode (:attr:`ParticleStore.copies_images` False) the stack gets no
pixels at all: the built-in engine reads Warp's own stacks (:mod:`live2d.source_images`), and
:meth:`ParticleStore.copy_in` makes the copy, incrementally, when an engine needs one.
Stores of earlier formats are migrated on opening: missing columns are added, and micrographs
and coordinates are marked ``provenance_pending`` until the importer fills them from the source
star (:meth:`ParticleStore.fill_provenance`). The star is replaced whole then, in two phases (the
new file is committed under a temporary name, then renamed), so a kill leaves either version.
Committed particles never change, so the stack may be read in place while it grows (a Scipion
classification reads a Scipion import's store so): a random ``store_id``, made when the store is
created or emptied (and added on opening to stores made before), and the generation are what
identify its content (:func:`live2d.warp.stack_stamp`).
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import mrcfile
import numpy as np
import pandas as pd

from live2d import cistem_star
from live2d.atomic import atomic_write_json
from live2d.output_folder import STORE_SOURCES, STORE_STACK, STORE_STATE, STORE_TABLE
from live2d.warp import (
    STORE_STAMP,
    split_image_name,
    stack_stamp,
    store_stamp,
)

STORE_COLUMNS = ("POS", "PSI", "SHX", "SHY", "DF1", "DF2", "ANGAST", "PSHIFT", "OCC", "LogP",
                 "SIGMA", "SCORE", "CHANGE", "PSIZE", "VOLT", "Cs", "AmpC", "BTILTX", "BTILTY",
                 "ISHFTX", "ISHFTY", "2DCLS", "ORIGX", "ORIGY", "MICROGRAPH", "SRCSTAMP",
                 "SRCID", "ORIGNAME")
# 2: micrograph and coordinates; 3: the source stack's stamp; 4: with a fingerprint; 5: the
# source's id of each particle
FORMAT = 5
HEADER_BYTES = 1024
_STAR_HEADER = cistem_star.header(
    STORE_COLUMNS, ["Live2D particle store: every imported particle"]).encode("utf-8")
# Byte offsets in the MRC header (MRC2014): image count and cell size along z.
_NZ, _MZ, _CELL_Z = 8, 36, 48


class StoreError(RuntimeError):
    """The store on disk lost data it had committed; the message says what to do."""


class ParticleStore:
    """Every imported particle of a session, append-only: a cisTEM star table (CTF, provenance)
    and the images, copied into one stack or read in place from the stacks they came from.
    One commit point (store.json) makes each append all-or-nothing across a kill."""
    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.folder = Path(output_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stack_path = self.folder / STORE_STACK
        self.star_path = self.folder / STORE_TABLE
        self.state_path = self.folder / STORE_STATE
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
    def store_id(self) -> str:
        """Random, made when the store is created or emptied: with the generation, what
        identifies its particles to a reader of its stack (whose size and time change with
        every append)."""
        return str(self._state.get("store_id", ""))

    @property
    def pixel_size(self) -> float:
        return float(self._state["pixel_size"])

    @property
    def box(self) -> int:
        return int(self._state["box"])

    @property
    def copies_images(self) -> bool:
        """Whether ``particles.mrcs`` holds every particle's pixels (else: the sources do)."""
        return self._state.get("images", "copy") == "copy"

    @property
    def copied(self) -> int:
        """Particles whose pixels are in ``particles.mrcs``."""
        return self.count if self.copies_images else int(self._state.get("copied", 0))

    @property
    def images_path(self) -> Path:
        """What :func:`live2d.source_images.open_images` opens to read every particle."""
        return self.stack_path if self.copies_images else self.folder / STORE_SOURCES

    @property
    def provenance_pending(self) -> bool:
        """Micrographs and coordinates of a migrated store's particles are not filled in yet."""
        return bool(self._state.get("provenance_pending"))

    @property
    def image_bytes(self) -> int:
        return self.box * self.box * 4

    def read_table(self) -> pd.DataFrame:
        """Every particle's row (cisTEM short column names, ORIGNAME = Warp's rlnImageName)."""
        return _committed_table(self.star_path, self._state)

    def image_locations(self, table: pd.DataFrame) -> list[tuple[int, Path]]:
        """Where the pixels of ``table``'s particles (rows of :meth:`read_table`) are, as
        (1-based index, stack): this store's stack, or in "source" mode the source's own."""
        if self.copies_images:
            return [(int(position), self.stack_path) for position in table["POS"]]
        root = Path(self._state["source_root"])
        return [(index + 1, root / stack)
                for index, stack in map(split_image_name, table["ORIGNAME"])]

    def image_names(self) -> set[str]:
        """Warp image names already imported (guards against importing a particle twice)."""
        if self._names is None:
            self._names = set(self.read_table()["ORIGNAME"]) if self.count else set()
        return self._names

    # ------------------------------------------------------------------ changing it
    def reset(self, pixel_size: float, box: int, source_root: Path | None = None) -> None:
        """Empty the store for particles of a new pixel size or box; bumps the generation.
        ``source_root``: keep no copy of the pixels, the particles' stacks are read in place
        (their names relative to this folder)."""
        generation = self.generation + 1 if self._state["box"] else self.generation
        mode = {"images": "source", "source_root": str(source_root), "copied": 0} \
            if source_root else {"images": "copy"}
        # Commit first: a kill before the files are emptied leaves an empty commit, and opening
        # an empty store always rewrites its files.
        self._commit(count=0, generation=generation, pixel_size=pixel_size, box=box,
                     star_bytes=len(_STAR_HEADER), format=FORMAT, provenance_pending=False,
                     store_id=_new_store_id(), **mode)
        if source_root:
            atomic_write_json(self.folder / STORE_SOURCES, {
                "root": str(source_root), "star": self.star_path.name, "box": box})
        self._write_empty_files()
        self._names = set()

    def append(self, images: np.ndarray | None, table: pd.DataFrame) -> None:
        """Add particles: ``images`` (n, box, box) and their rows (cisTEM short names, with
        ORIGNAME; MICROGRAPH, ORIGX, ORIGY and SRCSTAMP where known). POS is set here.
        ``images`` None: a store in source mode, whose pixels stay in the sources."""
        n = len(table)
        if not self._state["box"]:
            raise StoreError("the store must be reset with a pixel size and box first")
        if images is None and self.copies_images:
            raise ValueError("this store keeps a copy of every particle: give the images")
        if images is not None and len(images) != n:
            raise ValueError(f"{len(images)} images but {n} rows")
        if n == 0:
            return
        if images is not None and images.shape[1:] != (self.box, self.box):
            raise ValueError(f"images are {images.shape[1:]}, the store holds {self.box} px")
        rows = table.copy()
        rows["POS"] = np.arange(self.count + 1, self.count + n + 1)
        defaults = cistem_star.new_table(n)
        for column in STORE_COLUMNS:
            if column not in rows:
                rows[column] = defaults[column].to_numpy() if column in defaults else \
                    cistem_star.BY_SHORT[column].default
        count = self.count + n
        if images is not None:
            self._write_images(self.count, images)
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

    def copy_in(self, read: Callable[[int, int], np.ndarray], batch: int = 1024) -> None:
        """Switch a source-mode store to a full copy: ``read(start, stop)`` gives the pixels of
        particles ``start`` to ``stop``. Incremental: each batch is committed, so a kill
        resumes where it stopped."""
        if self.copies_images:
            return
        if self.copied == 0:  # a kill before the first batch's commit starts it again
            self._write_empty_stack()
        while self.copied < self.count:
            start = self.copied
            stop = min(self.count, start + batch)
            self._write_images(start, read(start, stop))
            self._commit(copied=stop)
        self._commit(images="copy")

    def _write_images(self, start: int, images: np.ndarray) -> None:
        with open(self.stack_path, "r+b") as stack:
            stack.seek(HEADER_BYTES + start * self.image_bytes)
            stack.write(np.ascontiguousarray(images, dtype="<f4").tobytes())
            self._patch_count(stack, start + len(images))
            stack.flush()
            os.fsync(stack.fileno())

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
        """Earlier formats: the columns they lack are added (micrographs and coordinates empty
        until filled), and stacks' stamps without a fingerprint get one where the stack is
        still the one stamped (:func:`_fingerprint_stamps`)."""
        if self.count == 0:
            self._commit(format=FORMAT)
            return
        table = cistem_star.read_star(self.star_path).iloc[: self.count].copy()
        pending = "MICROGRAPH" not in table or self.provenance_pending
        for column in STORE_COLUMNS:
            if column not in table:
                table[column] = cistem_star.BY_SHORT[column].default
        if self._state.get("source_root"):
            table["SRCSTAMP"] = _fingerprint_stamps(Path(self._state["source_root"]), table)
        self._replace_star(table, format=FORMAT, provenance_pending=pending)

    def _commit(self, **changes: object) -> None:
        state = {**self._state, **changes}
        atomic_write_json(self.state_path, state)
        self._state = state

    def _write_empty_files(self) -> None:
        """An empty star, and an empty stack where the store copies pixels. A store reading its
        sources in place has no stack until copy_in makes one: an empty one would show users
        0 particles, and an earlier copy's would show stale ones."""
        if self.copies_images:
            self._write_empty_stack()
        else:
            self.stack_path.unlink(missing_ok=True)
        with open(self.star_path, "wb") as star:
            star.write(_STAR_HEADER)
            os.fsync(star.fileno())

    def _write_empty_stack(self) -> None:
        with mrcfile.new(self.stack_path, overwrite=True) as mrc:
            mrc.set_data(np.zeros((1, self.box, self.box), dtype=np.float32))
            mrc.voxel_size = self.pixel_size
            # Statistics are never scanned (appends stay O(new)): MRC2014's "not computed".
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean, mrc.header.rms = 0, -1, -2, -1
        with open(self.stack_path, "r+b") as stack:  # zero images, header kept
            stack.truncate(HEADER_BYTES)
            self._patch_count(stack, 0)
            os.fsync(stack.fileno())

    def _empty_files_intact(self) -> bool:
        """Cut the files of an empty store back to their headers where those are intact, and
        say whether they were: opening then writes no new blocks, which matters on a full
        disk (an append cut short by it leaves bytes past the commit)."""
        try:
            with open(self.star_path, "rb") as star:
                if star.read(len(_STAR_HEADER)) != _STAR_HEADER:
                    return False
            files = [(self.star_path, len(_STAR_HEADER))]
            if not self.copies_images:  # no stack until a copy begins
                if self.stack_path.exists():
                    return False
                self._truncate(files)
                return True
            with mrcfile.open(self.stack_path, header_only=True, permissive=True) as mrc:
                if int(mrc.header.nx) != self.box or int(mrc.header.ny) != self.box:
                    return False
            self._truncate([*files, (self.stack_path, HEADER_BYTES)])
            with open(self.stack_path, "r+b") as stack:
                self._patch_count(stack, 0)
                os.fsync(stack.fileno())
            return True
        except (OSError, ValueError):
            return False

    @staticmethod
    def _truncate(files: list[tuple[Path, int]]) -> None:
        """Cut each file back to its size, durably."""
        for path, size in files:
            if path.stat().st_size != size:
                with open(path, "r+b") as handle:
                    handle.truncate(size)
                    os.fsync(handle.fileno())

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
        if not self.store_id:  # made before stores had one
            self._commit(store_id=_new_store_id())
        self._cut_back()

    def _cut_back(self) -> None:
        if self.count == 0:  # covers a kill in the middle of reset()
            if not self._empty_files_intact():
                self._write_empty_files()
            return
        files = [(self.star_path, self._state["star_bytes"])]
        if not self.copies_images and self.copied == 0:  # no copy begun: no stack
            self.stack_path.unlink(missing_ok=True)
        else:
            files.append((self.stack_path, HEADER_BYTES + self.copied * self.image_bytes))
        for path, committed in files:
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
        if len(files) == 1:
            return
        with open(self.stack_path, "r+b") as stack:
            stack.seek(_NZ)
            if struct.unpack("<i", stack.read(4))[0] != self.copied:
                self._patch_count(stack, self.copied)
                os.fsync(stack.fileno())


def _fingerprint_stamps(root: Path, table: pd.DataFrame) -> list[str]:
    """SRCSTAMP of ``table``'s particles (read in place from ``root``) with the fingerprint
    that stamps of format 3 lack, where the stack's size and time are still those stamped: then
    it holds what was imported, and a later touch no longer leaves its particles out. Stacks
    that changed since keep their old stamp (their particles stay left out, as before)."""
    done: dict[tuple[str, str], str] = {}
    stamps = []
    for name, stamp in zip(table["ORIGNAME"], table["SRCSTAMP"].astype(str), strict=True):
        stack = split_image_name(name)[1]
        if (stack, stamp) not in done:
            done[stack, stamp] = _with_fingerprint(root / stack, stamp)
        stamps.append(done[stack, stamp])
    return stamps


def _with_fingerprint(path: Path, stamp: str) -> str:
    if stamp.count(":") != 1 or stamp.startswith(STORE_STAMP):
        return stamp  # none yet (not read in place), or not a file's
    try:
        new = stack_stamp(path)  # size and time of what it fingerprinted
    except (OSError, ValueError):
        return stamp  # gone or unreadable: its particles stay left out
    return new if new.rpartition(":")[0] == stamp else stamp


def _new_store_id() -> str:
    return secrets.token_hex(8)


def read_committed_table(folder: str | os.PathLike) -> pd.DataFrame:
    """:meth:`ParticleStore.read_table` for a reader beside the session (a command run while it
    collects): it changes nothing on disk, where opening a ParticleStore cuts back what the
    session has appended but not committed yet."""
    folder = Path(folder)
    state = json.loads((folder / STORE_STATE).read_text(encoding="utf-8"))
    return _committed_table(folder / STORE_TABLE, state)


def _committed_table(star_path: Path, state: dict) -> pd.DataFrame:
    """The rows of the star at ``star_path`` that ``state`` (a store.json) commits."""
    count = int(state["count"])
    if count == 0:
        return cistem_star.new_table(0).assign(
            ORIGX=pd.Series(dtype=float), ORIGY=pd.Series(dtype=float),
            MICROGRAPH=pd.Series(dtype=str), ORIGNAME=pd.Series(dtype=str))
    table = cistem_star.read_growing_star(star_path, int(state["star_bytes"]),
                                          store_stamp(state))
    if len(table) != count:
        raise StoreError(f"{star_path} holds {len(table)} rows, the store {count}")
    return table
