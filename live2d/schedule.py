"""What to run and when: settings, the job types of Live2D, and the automatic triggers.

Job types (the first three as in the original Live2D, which mirrors the cisTEM GUI's
classification panel):

* ``abinit``: random-start classes at the initial high-resolution limit from a subset of about
  ``particles_per_class`` particles per class, ``startup_cycles`` cycles ramping the limit linearly
  from initial to final on that subset, then ``refinement_cycles`` at the final limit with all
  particles. The next automatic job is seeded.
* ``seeded``: the same ramp with all particles, starting from the latest classes.
* ``refine``: only the refinement cycles, from the latest classes.
* ``stream``: one update (:mod:`live2d.streaming`): the particles that arrived since the last one
  are classified against the current classes at the final limit and folded into the kept class
  sums, with a budget of older particles re-visited; its cost does not grow with the session.
  Once classes exist, automatic jobs continue as updates with engines that stream; between
  them an idle engine re-visits older batches (:func:`revisit_plan`).

``JOB_TYPES`` only ever grows at its end: Scipion stores the chosen type's index.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

from live2d.errors import SettingsError

JOB_TYPES = ("abinit", "seeded", "refine", "stream")
# The block of a streaming update that only re-visits older batches, run in spare time.
REVISIT_BLOCK = "revisit"
JOB_LABELS = {"abinit": "Ab initio", "seeded": "Seeded startup", "refine": "Refinement",
              "stream": "Streaming"}


def _spec(default: Any, label: str, *, lo: float | None = None, hi: float | None = None,
          level: str = "expert", unit: str = "", choices: tuple[str, ...] | None = None,
          labels: dict[str, str] | None = None, optional: bool = False, empty: str = "",
          default_text: str = "", help: str = "", on_change: str = "") -> Any:
    """A Settings field. ``help`` says what the setting does and when to change it, never its
    default or range: :meth:`Settings.describe` adds those, so no UI states them differently.
    ``empty``: what an empty optional value means; ``default_text``: the default in words where
    the value itself depends on the machine; ``on_change``: what changing it does to a session
    under way (not said where a change means a new run, as in Scipion)."""
    return field(
        default=default,
        metadata={"label": label, "min": lo, "max": hi, "level": level, "unit": unit,
                  "choices": choices, "labels": labels, "optional": optional, "empty": empty,
                  "default_text": default_text, "help": help,
                  "on_change": on_change},
    )


@dataclass(frozen=True)
class Settings:
    """Every knob a user can turn. Defaults are the original Live2D's; ranges are enforced here,
    once, for the command line, the web page and the Scipion protocol alike."""

    mask_radius: float | None = _spec(
        None, "Mask radius", lo=1.0, hi=5000.0, level="user", unit="Å", optional=True,
        empty="0.6 × the particle diameter Warp picks with",
        help="Radius of the circular mask applied to the class averages between cycles; "
             "particles are compared with the averages only inside it. Make it a little larger "
             "than the particle's radius: too small cuts off density, too large lets noise and "
             "neighbouring particles into the averages.")
    mode: str = _spec(
        "abinit", "Classification type", level="user", choices=JOB_TYPES, labels=JOB_LABELS,
        help="The kind of job that runs next. Ab initio: starts from random classes and, on a "
             "subset of the particles (Initial particles per class), raises the resolution "
             "limit from the initial to the final one over the startup cycles, then runs the "
             "refinement cycles with all particles; needed while no classes of the current "
             "particles exist (Live2D falls back to it then). Seeded startup: the same ramp, "
             "from the latest classes and with all particles from the first cycle; the usual "
             "job during collection once the classes show distinct views (often after about "
             "50,000 particles). Refinement: only the cycles at the final limit, from the latest "
             "classes; the quickest way to take in new particles once the classes are very good "
             "and seeded startups take hours, but prone to getting stuck in local minima. "
             "Streaming: one update that classifies only the particles that arrived since the "
             "last one, at the final limit, against the latest classes, and adds them to the "
             "classes (re-visiting some older particles too: Re-visited per new particle); its "
             "cost does not grow with the session, so the classes keep up with the microscope. "
             "After an ab initio job the automatic jobs continue as streaming updates, with "
             "either engine.")
    classes: int = _spec(
        50, "Number of classes", lo=1, hi=1000,
        help="How many 2D classes an ab initio job creates; seeded startups and refinements "
             "keep the classes they start from. Typical: 20 to 100; more for large or "
             "heterogeneous data, fewer for small data sets, or what earlier classifications "
             "of the same or similar samples suggest.")
    particles_per_class: int = _spec(
        300, "Initial particles per class", lo=1, hi=1_000_000,
        help="Size of the random subset the startup cycles of an ab initio job use, per class "
             "(this × Number of classes, or all particles if there are fewer). Larger subsets "
             "give cleaner starting classes at the cost of slower startup cycles.")
    high_res_initial: float = _spec(
        40.0, "Initial high-res limit", lo=2.0, hi=300.0, unit="Å",
        help="Resolution limit at the start of ab initio and seeded startup jobs, from which "
             "the startup cycles ramp to the final limit; starting coarse keeps the classes "
             "from fitting noise. Once the classes are good but not yet good enough for "
             "refinement, a finer start (e.g. 20 Å) with fewer startup cycles makes seeded "
             "startups faster with little loss.")
    high_res_final: float = _spec(
        8.0, "Final high-res limit", lo=2.0, hi=300.0, unit="Å",
        help="Resolution limit reached at the end of the startup cycles and used by every "
             "refinement cycle (never finer than twice the pixel size). Rarely needs changing; "
             "a finer limit shows more detail in the averages but takes longer and can fit "
             "noise.")
    startup_cycles: int = _spec(
        15, "Startup cycles", lo=0, hi=200,
        help="Cycles of ab initio and seeded startup jobs over which the resolution limit "
             "improves linearly from the initial to the final one (e.g. 40 to 8 Å in 15 cycles "
             "is about 2.3 Å per cycle); refinement jobs skip them. Fewer cycles, with a finer "
             "initial limit, make seeded startups faster at some risk of local minima when the "
             "starting classes are poor.")
    refinement_cycles: int = _spec(
        5, "Refinement cycles", lo=0, hi=200,
        help="Cycles at the final resolution limit with all particles that end every job (a "
             "refinement job runs only these). Keep 3 or more after startup cycles: the classes "
             "improve most in the first cycles at high resolution. With hundreds of thousands "
             "of particles in refinement jobs, 2 lets new particles in more often.")
    first_job_at: int = _spec(
        10_000, "Particle count before starting", lo=1, hi=100_000_000,
        help="Number of particles that starts the first automatic job, when no classes exist "
             "yet (also after Warp's settings change and every particle is imported again). "
             "Later jobs follow Additional particles before update; after an ab initio job "
             "they are streaming updates, which take in the rest as it arrives. 10,000 is 200 "
             "particles a class at 50 classes, as RELION's on-the-fly pipeline starts: in "
             "simulations, classes started at 50 or 100 particles a class and streamed on "
             "were as good at the end as one job started after every particle, or better.")
    update_every: int = _spec(
        50_000, "Additional particles before update", lo=1, hi=100_000_000,
        help="Number of new particles, counted from those the previous job classified, that "
             "starts the next automatic job. Lower it early in a session for quick feedback on "
             "whether Warp picks a good variety of views; late in a session jobs may take "
             "longer than collecting this many, and the next one then starts when the running "
             "one ends.")
    stream_every: int = _spec(
        10_000, "New particles before a streaming update", lo=1, hi=100_000_000,
        help="Number of new particles that starts the next streaming update (Classification "
             "type Streaming). At 150,000 picks an hour this is an update every 4 minutes; "
             "updates cost in proportion to the particles they take in, so smaller values give "
             "fresher classes at a little more overhead per particle.")
    stream_interval: float = _spec(
        300.0, "Longest wait for a streaming update", lo=1.0, hi=86_400.0, unit="s",
        help="A streaming update also starts when this long has passed since the last one and "
             "any new particle has arrived, so slow collection still shows in the classes "
             "within minutes.")
    stream_revisit: float = _spec(
        0.5, "Re-visited per new particle", lo=0.0, hi=100.0,
        help="How many older particles each streaming update classifies again against the "
             "improved classes, per new particle, least recently aligned first (whole batches "
             "of earlier updates; their old contribution to the classes is replaced). New "
             "particles always come first. Between updates an idle engine re-visits more, "
             "until every batch was aligned once against classes holding every particle, "
             "then rests until new ones arrive. 0 never re-aligns older particles; 1 spends "
             "as much time on re-visits as on new particles.")
    catch_up_after: float = _spec(
        600.0, "Quiet time before catching up", lo=0.0, hi=86_400.0, unit="s",
        help="When no new particle has arrived for this long (collection paused or ended), "
             "one more automatic job classifies the particles no job has seen yet, even below "
             "Additional particles before update, or Particle count before starting when no "
             "classes exist yet: the last particles of a session are not left unclassified. "
             "0 turns it off.")
    target_good_particles: int = _spec(
        100_000, "Good particles wanted", lo=0, hi=1_000_000_000, level="user",
        help="How many good particles the session aims for (those in classes marked or "
             "proposed good): live2d status forecasts when collection reaches it at the last "
             "hour's rate, and an alert says when it is reached. 0 turns both off.")
    curate_particles: bool = _spec(
        True, "Curate particles", level="user",
        help="Inside the selected classes, leave out of exports and of Scipion's output the "
             "particles that fit their class far worse than its typical member: far less of "
             "their signal near the centre than the class's particles have (aggregates, "
             "contamination, carbon; see Curation cut). Off: the selected classes' particles "
             "are exported whole. live2d status shows, per class, how many the curation "
             "keeps.")
    curation_cut: float = _spec(
        3.0, "Curation cut", lo=0.5, hi=100.0,
        help="How far below its class's median a particle's share of signal near the centre "
             "may lie before the curation leaves it out, in robust standard deviations of the "
             "class (1.4826 × the median absolute deviation). Lower cuts more junk and more "
             "good particles; classes of fewer than 20 particles are kept whole.")
    bad_square_fraction: float = _spec(
        0.5, "Bad grid square below", lo=0.0, hi=1.0,
        help="An alert names a grid square whose share of good particles falls below this "
             "fraction of the median share of the session's grid squares (0.5: less than half "
             "as good as a typical square), so that collection moves elsewhere; it clears when "
             "the square recovers. Squares come from the EPU session folder or the movie "
             "paths. 0 turns it off.")
    bad_square_micrographs: int = _spec(
        8, "Micrographs before judging a square", lo=1, hi=100_000,
        help="How many classified micrographs a grid square needs before the bad-square alert "
             "judges it, and before it counts towards the session's median: fewer give too "
             "noisy a share of good particles.")
    yield_drop_fraction: float = _spec(
        0.5, "Falling yield below", lo=0.0, hi=1.0,
        help="An alert says the yield is falling when the good particles per hour of the "
             "last hour fall below this fraction of the whole session's rate (judged once the "
             "session spans two hours): worse ice, a drifting stage or a dirty area. 0 turns "
             "it off.")
    warp_stalled_after: float = _spec(
        1200.0, "Quiet time before a stall alert", lo=0.0, hi=86_400.0, unit="s",
        help="While automatic jobs run, an alert says Warp has stalled when no new particle "
             "has arrived for this long (the microscope or Warp stopped, a full disk, a lost "
             "network share); it clears when particles arrive again. 0 turns it off.")
    low_res: float = _spec(
        300.0, "Low-res limit", lo=10.0, hi=10_000.0, unit="Å",
        help="Coarsest detail used when comparing particles with classes: features larger "
             "than this (ice thickness gradients, carbon edges) are ignored. Rarely needs "
             "changing; lower it (e.g. 100 Å) when a varying background drives the classes. "
             "Must stay coarser than the initial high-res limit.")
    angular_step: float = _spec(
        15.0, "Angular step", lo=0.0, hi=90.0, unit="°",
        help="Step of the in-plane rotation search; 0 lets the engine choose it from the "
             "mask radius and the resolution limit. Finer steps align more precisely but cost "
             "time in proportion; 5 to 15° is typical for 2D classification.")
    search_range: float | None = _spec(
        None, "Search range", lo=0.0, hi=5000.0, unit="Å", optional=True,
        empty="0.33 × the particle diameter Warp picks with",
        help="How far a particle may be shifted to match a class. Widen it for poorly centred "
             "picks; narrower ranges are faster and give fewer false alignments. Within it, "
             "both engines favour shifts no larger than the particles' own were last cycle.")
    smoothing: float = _spec(
        1.0, "Smoothing factor", lo=0.01, hi=100.0,
        help="cisTEM's likelihood tuning factor: it scales the scores before particles are "
             "shared among classes and orientations. Below 1, particles spread over more "
             "classes (smoother, more stable averages); above 1, assignments sharpen. Change "
             "it only when classes stay blurry (raise it) or collapse into a few (lower it).")
    auto_center: bool = _spec(
        True, "Autocenter",
        help="After every cycle but the random start, shift each class average so that its "
             "centre of mass sits at the centre of the box (cisTEM's Autocenter), which stops "
             "classes drifting towards the mask's edge. Turn it off for particles whose mass "
             "centre is not where they should be centred, e.g. with a large flexible domain.")
    auto_mask: bool = _spec(
        False, "Automask",
        help="After every cycle but the random start, mask each class average to the outline "
             "of its own density (cisTEM's Automask), inside the circular mask, removing noise "
             "and parts of neighbouring particles. Helps with crowded micrographs and small "
             "particles; can clip weak density such as micelles or flexible parts.")
    exclude_blank_edges: bool = _spec(
        False, "Exclude blank edges",
        help="Leave out particles whose box extends past a micrograph's border, recognised "
             "by a flat or repeated edge. Turn it on when particles picked near the edges "
             "bring blank strips into the averages.")
    particle_file: str = _spec(
        "allparticles", "Warp particle file", choices=("allparticles", "goodparticles"),
        help="Which of Warp's particle star files is imported: allparticles holds every "
             "picked particle, goodparticles only those of micrographs that pass Warp's "
             "filters (defocus, resolution, motion...).",
        on_change="Changing it imports every particle again and restarts from an ab initio "
                  "job.")
    contrast: str = _spec(
        "auto", "Protein contrast", level="expert", choices=("auto", "white", "black"),
        labels={"auto": "auto", "white": "white", "black": "black"},
        help="How protein looks in the particle stacks. Auto: as Warp's Invert setting says "
             "for a Warp 1.x folder, white for any other particle star (Warp, WarpTools and "
             "RELION with inverted contrast). Black: stacks that are not inverted, such as "
             "cryoSPARC's extractions.",
        on_change="Changing it imports every particle again and restarts from an ab initio "
                  "job.")
    poll_seconds: float = _spec(
        30.0, "Polling period", lo=0.5, hi=3600.0, unit="s",
        help="How often Warp's folder is checked for new particles. A check reads only what "
             "Warp added, so short periods are cheap; lengthen it when the folder is on a slow "
             "network share.")
    threads: int = _spec(
        max(1, os.cpu_count() or 1), "Threads", lo=1, hi=1024,
        default_text="every CPU core of this machine",
        help="CPU threads of the built-in engine, or refine2d processes run side by side by "
             "the cisTEM engine. More is faster up to the number of logical cores; leave "
             "some free when other programs (e.g. Warp) share the machine.")
    keep_cycle_results: int = _spec(
        20, "Per-particle results kept", lo=1, hi=100_000, level="expert",
        help="How many of the latest cycles keep their star file of every particle's class and "
             "alignment (about 190 bytes per particle per cycle); older ones are deleted, except "
             "the last cycle of every job. Older cycles' class thumbnails go too (the page "
             "makes them again from the averages when they are looked at), and older "
             "streaming updates' class averages (3.3 MB each at 50 classes of 128 px) but "
             "one an hour's, those marked or exported and the one Scipion's outputs show. "
             "Counts and per-class figures of every cycle are always kept. Raise it to export "
             "or continue from older cycles.")
    seed: int = _spec(
        0, "Random seed", lo=0, hi=2**31 - 1,
        help="Seed of the random choices (starting classes, the ab initio subset, the "
             "rotation grid's offsets): the same seed on the same particles gives the same "
             "classes. Change it to check whether the classes depend on the random start.")

    @classmethod
    def specs(cls) -> list[dict[str, Any]]:
        """One dict per setting (name, type, default, label, min, max, help, ...), for UIs to
        render; ``full_help`` is :meth:`describe`'s text, the one to show to users."""
        out = []
        for f in dataclasses.fields(cls):
            kind = _kind(f)
            out.append({"name": f.name, "type": kind, "default": f.default, **f.metadata,
                        "full_help": cls.describe(f.name)})
        return out

    @classmethod
    def describe(cls, name: str, note: str = "", live: bool = True) -> str:
        """The help of setting ``name`` for users: what it does (and, where ``live``, what
        changing it does to a session under way), its default, ``note`` (what a particular UI
        adds, e.g. how its input changes the default) and the allowed range. Defaults and
        ranges are stated here only, so every UI states them alike."""
        f = _fields()[name]
        meta = f.metadata
        parts = [meta["help"], meta["on_change"] if live else "",
                 f"Default: {_default_text(f)}.", note]
        if meta["min"] is not None and meta["max"] is not None:
            unit = _unit_suffix(meta["unit"])
            parts.append(f"Allowed: {_number(meta['min'])} to {_number(meta['max'])}{unit}.")
        return " ".join(part.strip() for part in parts if part.strip())

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Settings | None = None) -> Settings:
        """Validated settings from untrusted values (JSON from a page, a protocol's form).

        Unknown names, wrong types and out-of-range values raise SettingsError naming the setting.
        """
        base = base or cls()
        if not isinstance(values, dict):
            raise SettingsError("settings must be an object of name: value pairs")
        fields = _fields()
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


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Settings)}


def _number(value: float) -> str:
    # Thousands separators: counts such as 100000000 are unreadable otherwise.
    if float(value).is_integer() and abs(value) >= 10_000:
        return f"{int(value):,}"
    return f"{value:g}"


def _unit_suffix(unit: str) -> str:
    return unit if unit == "°" else f" {unit}" if unit else ""


def _default_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta["default_text"]:
        return meta["default_text"]
    if f.default is None:
        return f"empty, meaning {meta['empty']}"
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, str):
        return (meta["labels"] or {}).get(f.default, f.default)
    return f"{_number(f.default)}{_unit_suffix(meta['unit'])}"


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
    kind: str  # "start" (random-start classes), "refine" or "stream" (an update)
    block: str  # "start", "startup", "refinement", "update" or REVISIT_BLOCK
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
    if job_type == "stream":
        return [CycleSpec(0, "stream", "update", 1, settings.high_res_final, 1.0)]
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


def revisit_plan(settings: Settings) -> list[CycleSpec]:
    """A streaming job run in spare time: one update that takes in no new particles and
    re-visits older batches against the current classes (:func:`live2d.streaming.plan_revisit`)."""
    return [CycleSpec(0, "stream", REVISIT_BLOCK, 1, settings.high_res_final, 1.0)]


def next_job_type(finished: str, streams: bool = True) -> str:
    """After an ab initio job, automatic jobs continue as streaming updates, or as seeded
    startups with an engine that does not stream (``streams``)."""
    if finished == "abinit":
        return "stream" if streams else "seeded"
    return finished


def automatic_job_due(settings: Settings, n_particles: int, n_at_last_job: int | None,
                      quiet_seconds: float = 0.0, since_last_job: float = 0.0) -> bool:
    """First job at ``first_job_at`` particles; then every ``update_every`` new particles (for
    streaming updates: every ``stream_every``, or after ``stream_interval`` seconds since the
    last job, ``since_last_job``, with any new particle); and, once no particle has arrived
    for ``catch_up_after`` seconds (``quiet_seconds`` so far), a job for any particles not
    classified yet (at least one per class)."""
    new = n_particles - (n_at_last_job or 0)
    if n_at_last_job is None:
        if n_particles >= settings.first_job_at:
            return True
    elif settings.mode == "stream":
        if new >= settings.stream_every or (new > 0 and
                                            since_last_job >= settings.stream_interval):
            return True
    elif new >= settings.update_every:
        return True
    return (0 < settings.catch_up_after <= quiet_seconds
            and n_particles > (n_at_last_job or 0) and n_particles >= settings.classes)


class AutomaticTrigger:
    """When the automatic loop starts a job, poll after poll: a job in progress, enough new
    particles (:func:`automatic_job_due`), or, once collection pauses for ``catch_up_after``
    seconds, the particles not classified yet. It remembers the count a catch-up job started
    with: one that failed and was given up leaves the last job's count as it was, and without
    this another would start at every poll."""

    def __init__(self) -> None:
        self._seen = -1  # the particle count at the last poll
        self._grew_at = self._job_at = time.monotonic()
        self._caught_up = 0

    def quiet_seconds(self) -> float:
        """How long the particle count has stayed as it is, as the polls saw it."""
        return time.monotonic() - self._grew_at

    def due(self, settings: Settings, n_particles: int, n_at_last_job: int | None,
            job_in_progress: bool) -> tuple[bool, str]:
        """Whether a job is due now, and what to log when it is a catch-up job."""
        now = time.monotonic()
        if n_particles != self._seen:
            self._seen, self._grew_at = n_particles, now
        if job_in_progress or automatic_job_due(settings, n_particles, n_at_last_job,
                                                since_last_job=now - self._job_at):
            self._job_at = now
            return True, ""
        quiet = now - self._grew_at if n_particles > self._caught_up else 0.0
        if automatic_job_due(settings, n_particles, n_at_last_job, quiet):
            self._caught_up, self._job_at = n_particles, now
            return True, (f"no new particles for {quiet:.0f} s: classifying the "
                          f"{n_particles - (n_at_last_job or 0):,} not classified yet")
        return False, ""
