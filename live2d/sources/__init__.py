"""The particle sources Live2D imports from, one class per kind of folder
(:mod:`live2d.layouts`): :class:`WarpFolderSource` for Warp 1.x, :class:`StarSource` for a
RELION-style particle star (WarpTools 2 or any pipeline's). They share the store they fill and
its ``import.json`` (:class:`ParticleIntake`, :class:`ImportState`);
:class:`live2d.importer.Importer` picks one by the folder's layout at every poll."""

from live2d.sources.base import (
    CONTRASTS,
    ImportOptions,
    ImportReport,
    ParticleFeed,
    ParticleIntake,
    ParticleSource,
    StartOver,
)
from live2d.sources.star import StarSource
from live2d.sources.state import ImportState, StarIdentity, WarpFolderIdentity
from live2d.sources.warp_folder import WarpFolderSource

__all__ = ["CONTRASTS", "ImportOptions", "ImportReport", "ImportState", "ParticleFeed",
           "ParticleIntake",
           "ParticleSource", "StarIdentity", "StarSource", "StartOver", "WarpFolderIdentity",
           "WarpFolderSource"]
