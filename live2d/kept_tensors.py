"""Tensors kept on disk with what they were made with: a streaming batch's class sums (the
built-in engine) and half-set sums (live2d.cycle). Written whole, so a kill leaves the old file
or the new one; read back only where they were made with the same ``key``, so sums made with
another box, limit or class count are never added to this update's."""

from __future__ import annotations

import os
from typing import Any

from live2d.atomic import replacing

# torch is imported where it is used: live2d.cycle imports this module, and the Scipion plugin
# imports that in every Scipion process, which need no torch.


def save_kept(path: str | os.PathLike, key: dict[str, Any], values: dict[str, Any]) -> None:
    """``values`` (tensors, numbers) at ``path``, with the ``key`` they were made with."""
    import torch

    with replacing(path) as scratch:
        torch.save({"key": key, **values}, scratch)


def load_kept(path: str | os.PathLike, key: dict[str, Any]) -> dict[str, Any] | None:
    """What :func:`save_kept` wrote at ``path``, or None when it is missing, unreadable or
    was made with another ``key``."""
    kept = _read(path)
    return kept if kept is not None and kept.get("key") == key else None


def kept_key(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``key`` what :func:`save_kept` wrote at ``path`` was made with (to say why it does
    not fit another), or None when it is missing or unreadable."""
    kept = _read(path)
    key = kept.get("key") if kept is not None else None
    return key if isinstance(key, dict) else None


def _read(path: str | os.PathLike) -> dict[str, Any] | None:
    """The dictionary :func:`save_kept` wrote at ``path``; None when missing or unreadable."""
    import torch

    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    return kept if isinstance(kept, dict) else None
