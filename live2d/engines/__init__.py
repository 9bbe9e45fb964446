"""Classification engines: the built-in PyTorch engine and the cisTEM driver."""

from __future__ import annotations

from live2d.engines.base import (
    CycleCancelled,
    CycleParams,
    CycleRequest,
    CycleResult,
    Engine,
    EngineError,
    Progress,
    ProgressCallback,
    class_counts,
)

ENGINE_NAMES = ("auto", "builtin", "cistem")

__all__ = [
    "ENGINE_NAMES",
    "CycleCancelled",
    "CycleParams",
    "CycleRequest",
    "CycleResult",
    "Engine",
    "EngineError",
    "Progress",
    "ProgressCallback",
    "class_counts",
    "make_engine",
]


def make_engine(
    name: str = "auto", *, device: str = "auto", cistem_bin: str | None = None
) -> Engine:
    """The engine called ``name``; ``auto`` is cisTEM when refine2d and merge2d are found."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    if name in ("auto", "cistem"):
        from live2d.engines import cistem

        programs = cistem.find_programs(cistem_bin, required=(name == "cistem"))
        if programs is not None:
            return cistem.CistemEngine(programs)
    from live2d.engines.builtin import BuiltinEngine

    return BuiltinEngine(device=device)
