"""Which kind of folder particles come from: Warp 1.x, a WarpTools 2 project, or a RELION star.

* Warp 1.x: ``previous.settings`` and the ``allparticles_``/``goodparticles_<model>.star``
  files it rewrites (:mod:`live2d.warp`).
* WarpTools 2: a settings file written by ``WarpTools create_settings`` (usually
  ``warp_frameseries.settings``, beside its processing folder) and the one RELION 3.1 star that
  ``fs_export_particles`` writes, which ``--star`` names unless the folder holds exactly one.
* Any RELION-style particle star with MRC stacks (RELION's Extract, cryoSPARC's export), named
  by ``--star``; its folder need hold nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from live2d.relion_star import is_particle_star
from live2d.warp import SETTINGS_FILE, WarpFolderError, WarpSettingsMissing

WARP = "Warp 1.x"
WARPTOOLS = "WarpTools 2"
STAR = "RELION particle star"


@dataclass(frozen=True)
class Layout:
    """What a watched folder holds: a Warp 1.x folder, a WarpTools 2 project or a RELION-style
    particle star, and what is missing before anything can be imported."""
    kind: str  # WARP, WARPTOOLS or STAR
    star: Path | None = None  # the particle star of WARPTOOLS and STAR layouts
    waiting: str = ""  # what is missing before anything can be imported ("" when nothing)

    def describe(self, folder: Path) -> str:
        if self.kind == WARP:
            return f"a Warp 1.x folder ({SETTINGS_FILE})"
        return f"a {self.kind} layout, particles from {self.star or 'an exported star'}"


def detect_layout(folder: str | os.PathLike, star: str | os.PathLike | None = None) -> Layout:
    """The layout of ``folder``; ``star`` (relative paths from ``folder``) when the user named
    the particle star. Raises WarpSettingsMissing while the folder holds none of them yet."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WarpFolderError(f"{folder} does not exist or is not a folder")
    if star:
        return Layout(STAR if not _warptools_settings(folder) else WARPTOOLS,
                      folder / Path(star))
    if (folder / SETTINGS_FILE).is_file():
        return Layout(WARP)
    settings = _warptools_settings(folder)
    if not settings:
        raise WarpSettingsMissing(
            f"no {SETTINGS_FILE} in {folder} yet (nor WarpTools' settings): is this the folder "
            "Warp processes? (Warp writes it there once a session has started; for another "
            "pipeline's particle star, give --star)")
    stars = sorted(p for p in folder.glob("*.star") if is_particle_star(p))
    if len(stars) == 1:
        return Layout(WARPTOOLS, stars[0])
    if not stars:
        return Layout(WARPTOOLS, None,
                      f"a WarpTools project ({settings[0].name}) without exported particles "
                      "yet: waiting for fs_export_particles' star here (or give --star)")
    names = ", ".join(p.name for p in stars[:5])
    raise WarpFolderError(f"{folder} holds several particle stars ({names}): give --star to "
                          "say which one to classify")


def _warptools_settings(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.settings") if p.name != SETTINGS_FILE
                  and p.is_file())


def find_stack(stack: str, folder: Path, star_dir: Path) -> Path | None:
    """Where a star's stack is: an absolute path as it is; a relative one from ``folder``
    first (as RELION resolves paths from its project folder), then from the star's folder.
    None while it is in neither."""
    path = Path(stack)
    if path.is_absolute():
        return path
    for base in (folder, star_dir):
        if (base / path).exists():
            return base / path
    return None
