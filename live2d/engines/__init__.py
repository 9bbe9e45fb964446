"""Classification engines: the built-in PyTorch engine and the cisTEM driver."""

from __future__ import annotations

from typing import TYPE_CHECKING

from live2d.engines.base import (
    CycleParams,
    CycleRequest,
    CycleResult,
    Engine,
    Progress,
    ProgressCallback,
    StreamBatch,
    class_counts,
)

if TYPE_CHECKING:
    from live2d.executors import Executor

ENGINE_NAMES = ("auto", "builtin", "cistem")

__all__ = [
    "ENGINE_NAMES",
    "CycleParams",
    "CycleRequest",
    "CycleResult",
    "Engine",
    "Progress",
    "ProgressCallback",
    "StreamBatch",
    "class_counts",
    "make_engine",
]


def make_engine(
    name: str = "auto", *, device: str = "auto", cistem_bin: str | None = None,
    executor: Executor | None = None,
) -> Engine:
    """The engine called ``name``; ``auto`` is cisTEM when refine2d and merge2d are found.
    ``executor``: where a cycle's slices run (the built-in engine's chunks, cisTEM's refine2d
    slices); None: in this process and its children."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    if name in ("auto", "cistem"):
        from live2d.engines import cistem

        programs = cistem.find_programs(cistem_bin, required=(name == "cistem"))
        if programs is not None:
            return cistem.CistemEngine(programs, executor=executor)
    from live2d.engines.builtin import BuiltinEngine

    return BuiltinEngine(device=device, executor=executor)
