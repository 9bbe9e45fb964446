"""What to run and when: settings, the three job types of Live2D, and the automatic triggers.

Job types (as in the original Live2D, which mirrors the cisTEM GUI's classification panel):

* ``abinit``: random-start classes at the initial high-resolution limit from a subset of about
  ``particles_per_class`` particles per class, ``startup_cycles`` cycles ramping the limit linearly
  from initial to final on that subset, then ``refinement_cycles`` at the final limit with all
  particles. The next automatic job is seeded.
* ``seeded``: the same ramp with all particles, starting from the latest classes.
* ``refine``: only the refinement cycles, from the latest classes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

JOB_TYPES = ("abinit", "seeded", "refine")
JOB_LABELS = {"abinit": "Ab initio", "seeded": "Seeded startup", "refine": "Refinement"}


class SettingsError(ValueError):
    """A setting with a wrong type or out of range; the message names it and the allowed range."""


def _spec(default: Any, label: str, *, lo=None, hi=None, level="expert", unit="", choices=None,
          optional=False, help=""):
    return field(
        default=default,
        metadata={"label": label, "min": lo, "max": hi, "level": level, "unit": unit,
                  "choices": choices, "optional": optional, "help": help},
    )


@dataclass(frozen=True)
class Settings:
    """Every knob a user can turn. Defaults are the original Live2D's; ranges are enforced here,
    once, for the command line, the web page and the Scipion protocol alike."""

    mask_radius: float | None = _spec(
        None, "Mask radius", lo=1.0, hi=5000.0, level="user", unit="Å", optional=True,
        help="Radius of the circular mask on class averages; empty = 0.6 × Warp's diameter.")
    mode: str = _spec(
        "abinit", "Classification type", level="user", choices=JOB_TYPES,
        help="Job type of the next job: ab initio, seeded startup or refinement.")
    classes: int = _spec(50, "Number of classes", lo=1, hi=1000)
    particles_per_class: int = _spec(
        300, "Initial particles per class", lo=1, hi=1_000_000,
        help="Particles per class used by the startup cycles of an ab initio job.")
    high_res_initial: float = _spec(40.0, "Initial high-res limit", lo=2.0, hi=300.0, unit="Å")
    high_res_final: float = _spec(8.0, "Final high-res limit", lo=2.0, hi=300.0, unit="Å")
    startup_cycles: int = _spec(15, "Startup cycles", lo=0, hi=200)
    refinement_cycles: int = _spec(5, "Refinement cycles", lo=0, hi=200)
    first_job_at: int = _spec(
        50_000, "Particle count before starting", lo=1, hi=100_000_000,
        help="Particles needed before the first automatic job.")
    update_every: int = _spec(
        50_000, "Additional particles before update", lo=1, hi=100_000_000,
        help="New particles that trigger the next automatic job.")
    low_res: float = _spec(300.0, "Low-res limit", lo=10.0, hi=10_000.0, unit="Å")
    angular_step: float = _spec(15.0, "Angular step", lo=0.0, hi=90.0, unit="°",
                                help="In-plane search step; 0 = automatic.")
    search_range: float | None = _spec(
        None, "Search range", lo=0.0, hi=5000.0, unit="Å", optional=True,
        help="Translational search range; empty = 0.33 × Warp's diameter.")
    smoothing: float = _spec(1.0, "Smoothing factor", lo=0.01, hi=100.0)
    auto_center: bool = _spec(True, "Autocenter")
    auto_mask: bool = _spec(False, "Automask")
    exclude_blank_edges: bool = _spec(
        False, "Exclude blank edges",
        help="Leave out particles cut out past a micrograph's border (a flat or repeated edge).")
    particle_file: str = _spec("allparticles", "Warp particle file",
                               choices=("allparticles", "goodparticles"))
    poll_seconds: float = _spec(30.0, "Polling period", lo=0.5, hi=3600.0, unit="s")
    threads: int = _spec(max(1, os.cpu_count() or 1), "Threads", lo=1, hi=1024)
    seed: int = _spec(0, "Random seed", lo=0, hi=2**31 - 1)

    @classmethod
    def specs(cls) -> list[dict[str, Any]]:
        """One dict per setting (name, type, default, label, min, max, ...), for UIs to render."""
        out = []
        for f in dataclasses.fields(cls):
            kind = _kind(f)
            out.append({"name": f.name, "type": kind, "default": f.default, **f.metadata})
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Settings | None = None) -> Settings:
        """Validated settings from untrusted values (JSON from a page, a protocol's form).

        Unknown names, wrong types and out-of-range values raise SettingsError naming the setting.
        """
        base = base or cls()
        if not isinstance(values, dict):
            raise SettingsError("settings must be an object of name: value pairs")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        changes = {name: _coerce(fields[name], value) for name, value in values.items()}
        settings = dataclasses.replace(base, **changes)
        settings.check()
        return settings

    def check(self) -> None:
        if self.high_res_final > self.high_res_initial:
            raise SettingsError(
                f"final high-res limit ({self.high_res_final} Å) must not be coarser than the "
                f"initial one ({self.high_res_initial} Å)")
        if self.low_res <= self.high_res_initial:
            raise SettingsError(
                f"low-res limit ({self.low_res} Å) must be coarser than the initial high-res "
                f"limit ({self.high_res_initial} Å)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _kind(f: dataclasses.Field) -> str:
    if f.metadata.get("choices"):
        return "choice"
    text = str(f.type)
    for kind in ("bool", "int", "float", "str"):
        if text.startswith(kind):
            return kind
    raise TypeError(f"unsupported setting type {text}")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    meta, kind, name = f.metadata, _kind(f), f.metadata["label"]
    if value is None or value == "":
        if meta["optional"]:
            return None
        raise SettingsError(f"{name} ({f.name}) needs a value")
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{name} ({f.name}) must be true or false, not {value!r}")
        return value
    if kind in ("choice", "str"):
        if not isinstance(value, str) or (meta["choices"] and value not in meta["choices"]):
            raise SettingsError(f"{name} ({f.name}) must be one of {', '.join(meta['choices'])}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{name} ({f.name}) must be a number, not {value!r}")
    if kind == "int":
        if float(value) != int(value):
            raise SettingsError(f"{name} ({f.name}) must be a whole number, not {value!r}")
        value = int(value)
    else:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{name} ({f.name}) must be a finite number")
    lo, hi = meta["min"], meta["max"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SettingsError(f"{name} ({f.name}) must be between {lo} and {hi}, not {value}")
    return value


@dataclass(frozen=True)
class CycleSpec:
    """One cycle of a job's plan."""

    index: int  # 0-based position in the job
    kind: str  # "start" (random-start classes) or "refine"
    block: str  # "start", "startup" or "refinement"
    block_cycle: int  # 1-based position within its block
    high_res: float
    fraction: float


def subset_fraction(settings: Settings, n_particles: int) -> float:
    """cisTEM's auto "percent used": about particles_per_class particles per class."""
    if n_particles <= 0:
        return 1.0
    return min(1.0, settings.particles_per_class * settings.classes / n_particles)


def ramp(initial: float, final: float, steps: int) -> list[float]:
    """Linear from initial to final over ``steps`` cycles (40 → 8 Å in 15 is ≈2.3 Å per cycle)."""
    if steps <= 0:
        return []
    if steps == 1:
        return [final]
    return [initial + (final - initial) * i / (steps - 1) for i in range(steps)]


def plan_job(job_type: str, settings: Settings, n_particles: int) -> list[CycleSpec]:
    """The cycles of one job of ``job_type`` over ``n_particles`` particles."""
    if job_type not in JOB_TYPES:
        raise ValueError(f"unknown job type {job_type!r}: one of {', '.join(JOB_TYPES)}")
    specs: list[tuple[str, str, float, float]] = []
    subset = subset_fraction(settings, n_particles)
    if job_type == "abinit":
        specs.append(("start", "start", settings.high_res_initial, subset))
    if job_type in ("abinit", "seeded"):
        fraction = subset if job_type == "abinit" else 1.0
        specs += [("refine", "startup", hr, fraction)
                  for hr in ramp(settings.high_res_initial, settings.high_res_final,
                                 settings.startup_cycles)]
    specs += [("refine", "refinement", settings.high_res_final, 1.0)] * settings.refinement_cycles
    plan, seen = [], {}
    for index, (kind, block, high_res, fraction) in enumerate(specs):
        seen[block] = seen.get(block, 0) + 1
        plan.append(CycleSpec(index, kind, block, seen[block], high_res, fraction))
    return plan


def next_job_type(finished: str) -> str:
    """After an ab initio job, automatic jobs continue as seeded startups."""
    return "seeded" if finished == "abinit" else finished


def automatic_job_due(settings: Settings, n_particles: int, n_at_last_job: int | None) -> bool:
    """First job at ``first_job_at`` particles; then every ``update_every`` new particles."""
    if n_at_last_job is None:
        return n_particles >= settings.first_job_at
    return n_particles - n_at_last_job >= settings.update_every
