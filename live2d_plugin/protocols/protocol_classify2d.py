"""Live 2D classification of a (growing) set of particles, republishing classes every cycle.

The protocol is an adapter: it gives an unmodified :class:`live2d.session.Session` its input set
as the particle source (:class:`live2d_plugin.particle_source.ScipionParticleSource`, which keeps
each particle's Scipion id in the store), lets the session's automatic loop import and classify
until the set is closed and classified, and turns every finished cycle
into ``outputClasses`` (each class with its resolution estimate and score), ``outputAverages``
and ``outputParticles`` (the particles of the selected classes, see :mod:`live2d.selection`).
The session reads the input's MRC stacks where they are (no copy), checking before every cycle
that each is unchanged (:func:`live2d.warp.stack_stamp`: an import's growing store by its id), and
copies them only when its engine or cluster workers need one stack.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import Particle, SetOfAverages, SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtClassify2D
from pyworkflow import BETA
from pyworkflow.object import Integer, Set, String

from live2d.alerts import read_alerts
from live2d.collection_yield import read_table
from live2d.curation import curate_cycle
from live2d.errors import SettingsError
from live2d.executors import Executor, LocalExecutor, make_executor
from live2d.forecast import read_forecast
from live2d.history import CycleRecord, particle_table, read_history
from live2d.output_folder import OutputFolder
from live2d.schedule import JOB_LABELS, JOB_TYPES, Settings
from live2d.session import Session
from live2d.session_state import read_state
from live2d.store import ParticleStore, read_committed_table
from live2d_plugin import Plugin
from live2d_plugin.constants import ENGINE_LABELS, ENGINES
from live2d_plugin.convert import (
    EPU_FOLDER_ATTRIBUTE,
    alignment_2d,
    alignment_matrices,
    cycle_assignments,
    scipion_stack,
    set_class_quality,
)
from live2d_plugin.particle_source import ScipionParticleSource
from live2d_plugin.protocols.labels import Live2DLabel
from live2d_plugin.publishing import PUBLISH_SHARE, PublishBudget
from live2d_plugin.quality import class_table_by_number, cycle_selection
from live2d_plugin.set_rows import (
    copy_class_members,
    copy_members,
    disabled_ids,
    holds_written_set,
    item_ids,
    matrix_texts,
    template_members,
)
from live2d_plugin.stopping import StreamStopping

DASK_ADDRESS = re.compile(r"^((tcp|tls|ucx)://)?[\w.\-\[\]:]+:\d+$")
# Form parameter -> Settings field; labels, defaults, ranges, levels and help come from Settings.
PARAM_SETTINGS = {
    "numberOfClasses": "classes",
    "maskRadius": "mask_radius",
    "highResInitial": "high_res_initial",
    "highResFinal": "high_res_final",
    "startupCycles": "startup_cycles",
    "refinementCycles": "refinement_cycles",
    "particlesPerClass": "particles_per_class",
    "firstJobAt": "first_job_at",
    "updateEvery": "update_every",
    "streamEvery": "stream_every",
    "streamInterval": "stream_interval",
    "streamRevisit": "stream_revisit",
    "autoCenter": "auto_center",
    "autoMask": "auto_mask",
    "excludeBlankEdges": "exclude_blank_edges",
    "curateParticles": "curate_particles",
}
# Shown at the Normal level besides the settings the web page puts under User Settings: a
# Scipion run is set up once, before its particles arrive, so how many classes it makes and
# when its jobs start belong up front (the page keeps them under Expert Settings, where they
# can still be changed during the session).
NORMAL_LEVEL_SETTINGS = frozenset({"classes", "first_job_at", "update_every", "stream_every"})
# What is particular to Scipion input, added to the shared help (see ScipionParticleSource and
# Session.run_automatic).
SCIPION_NOTES = {
    "mask_radius": "Particles from Scipion carry no Warp picking diameter: half the box width "
                   "stands in for it.",
    "mode": "It sets the first job; Continue keeps the job type the run had reached.",
    "first_job_at": "If the input set closes with fewer particles, the job starts then.",
    "update_every": "When the input set closes, the remaining particles are classified in a "
                    "last job however few they are.",
}
POLL_SECONDS = 3.0  # between looks at the input set while no job is due
CYCLE_SETS_KEPT = 2  # per output: the current cycle's sqlite and the one before
# ... and every cycle's sqlite for this long after the next cycle replaced it: Scipion's project
# window opens the file named in its own copy of the outputs, which it refreshes less and less
# often (up to every 30 minutes) while the run goes on.
REPLACED_SETS_KEPT_SECONDS = 60 * 60
SESSION_FOLDER = "live2d"  # the session's output folder, in the run's extra folder


def _cycleOfSet(path: str) -> int:
    """The cycle number of a per-cycle set's sqlite (``classes2D_cycle1000.sqlite``: 1000)."""
    return int(re.search(r"_cycle(\d+)\.sqlite$", path).group(1))


def cycle_set_path(protocol, kind: str, cycle: int) -> str:
    """Where a cycle's set of ``kind`` (classes2D, averages) is written: in the run's folder."""
    return protocol._getPath(f"{kind}_cycle{cycle:03d}.sqlite")


def engine_text(description: str) -> str:
    """An engine's describe() line for users: "builtin (torch 2.3, cpu)" -> "built-in (...)"."""
    name, _, details = description.partition(" ")
    if name in ENGINES:
        name = ENGINE_LABELS[ENGINES.index(name)]
    return f"{name} {details}".strip()


@contextlib.contextmanager
def _quietFirstDimensions() -> Iterator[None]:
    """pwem logs "Getting the dimensions for the first item" for every class of every cycle:
    drop that line while a cycle's classes are built (the cycle's own summary line says it all)."""
    data_logger = logging.getLogger("pwem.objects.data")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Getting the dimensions for the first item")

    data_logger.addFilter(keep)
    try:
        yield
    finally:
        data_logger.removeFilter(keep)


class ProtLive2DClassify2D(Live2DLabel, StreamStopping, ProtClassify2D):
    """Live 2D classification (Live2D): classifies the particles of a set that may still be
    growing, with the schedule of cisTEM's classification panel (ab initio, seeded startup,
    refinement) and the built-in engine or cisTEM.

    A job starts once enough particles arrived, the next one after enough new ones; after every
    cycle outputClasses and outputAverages are replaced by the latest classes, each class with
    its resolution estimate, good/junk score and the reason for it, and outputParticles by the
    particles of the classes selected (those scored good, unless marked otherwise with
    ``live2d serve`` on the run's extra/live2d folder), with
    their 2D alignment: later protocols can take the good particles while collection goes on.
    Another choice of classes is made with Scipion's subset tools on outputClasses. Every
    cycle's averages stay on disk: the viewer shows any of them and how classes evolved. Right
    click > STOP STREAMING stops after the current cycle; Continue resumes.
    """

    _label = "live 2D classification"
    _devStatus = BETA
    _possibleOutputs: ClassVar[dict] = {"outputClasses": SetOfClasses2D,
                                        "outputAverages": SetOfAverages,
                                        "outputParticles": SetOfParticles}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.publishedCycle = Integer()
        self.publishedParticles = Integer()
        self.publishedClassified = Integer()
        self.publishedSelected = Integer()  # particles in outputParticles
        self.publishedSelection = String()  # the selected classes of the cycle, "1,4,7"
        self.publishedUnselected = Integer()  # of outputParticles, those no longer selected
        self.exportedParticles = Integer()

    # ------------------------------------------------------------------------------ form
    def _defineParams(self, form) -> None:
        specs = {spec["name"]: spec for spec in Settings.specs()}

        def level(name: str) -> int:
            shown = specs[name]["level"] == "user" or name in NORMAL_LEVEL_SETTINGS
            return params.LEVEL_NORMAL if shown else params.LEVEL_ADVANCED

        def help_text(name: str) -> str:
            return Settings.describe(name, SCIPION_NOTES.get(name, ""))

        def setting(param: str, kind, **kwargs) -> None:
            name = PARAM_SETTINGS[param]
            spec = specs[name]
            unit = f" ({spec['unit']})" if spec["unit"] else ""
            form.addParam(param, kind, default=spec["default"], label=spec["label"] + unit,
                          expertLevel=level(name), help=help_text(name), **kwargs)

        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      important=True, label="Input particles",
                      help="The particles to classify; they need a CTF (e.g. the output of "
                           "'import warp particles (live)', or particles whose CTF was "
                           "estimated). The set may still be growing: each job takes in the "
                           "particles that arrived before it, and the run ends once the set is "
                           "closed and all its particles are classified.")
        form.addParam("engine", params.EnumParam, choices=list(ENGINE_LABELS), default=0,
                      display=params.EnumParam.DISPLAY_HLIST, label="Engine",
                      help="The program that classifies. built-in: Live2D's own "
                           "maximum-likelihood classification in PyTorch, following cisTEM's "
                           "refine2d cycle by cycle; it runs on a CUDA GPU or the CPU (Use GPU "
                           "and GPU id) and needs nothing else installed. cisTEM: "
                           "cisTEM 2's refine2d and merge2d, as the original Live2D ran them, "
                           "looked for in LIVE2D_CISTEM_BIN, then $CISTEM_HOME/bin, then PATH. "
                           "auto: cisTEM when its programs are found, else built-in.")
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label="Use GPU?", condition="engine != 2",
                       help="Yes: the built-in engine runs on the GPU below when CUDA has it "
                            "(else on the CPU, said in the log). No: on the CPU. cisTEM always "
                            "runs on the CPU.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0",
                       label="GPU id", condition="engine != 2 and useGpu",
                       help="The CUDA device of the built-in engine (the first id, if several "
                            "are given). Empty: the Scipion variable LIVE2D_DEVICE decides "
                            "(auto: the first GPU, if any).")
        form.addParam("epuFolder", params.PathParam, default="",
                      expertLevel=params.LEVEL_ADVANCED,
                      label="EPU session folder (optional)",
                      help="The folder EPU writes the session into (with Images-Disc1/"
                           "GridSquare_*): the yield tables, the map of grid squares and the "
                           "alert on a poor square then go by grid square. Empty: the one "
                           "the Warp import names, if any; without one they go by foil hole "
                           "and micrograph, from EPU's movie names. It may be given before "
                           "EPU has written anything: it is read as it grows.")
        # Here, not after addParallelSection: the form shows no parameter of that section
        # but its own (threads, MPI, host).
        form.addParam("daskScheduler", params.StringParam, default="",
                      expertLevel=params.LEVEL_ADVANCED, label="Dask scheduler (optional)",
                      help="Address of a running Dask scheduler, e.g. tcp://head:8786: each "
                           "cycle's slices (the built-in engine's particle chunks, cisTEM's "
                           "refine2d slices) then run on its workers, which must see this "
                           "project's folder (and, for cisTEM, its programs) at the same path. "
                           "Empty: the cycles run where this protocol runs, on this machine or "
                           "in its queue job, with the threads of the Parallelization section.")
        form.addSection(label="Classification")
        form.addParam("classificationType", params.EnumParam,
                      choices=[JOB_LABELS[job_type] for job_type in JOB_TYPES],
                      default=JOB_TYPES.index(specs["mode"]["default"]),
                      display=params.EnumParam.DISPLAY_HLIST, label=specs["mode"]["label"],
                      expertLevel=level("mode"), help=help_text("mode"))
        setting("numberOfClasses", params.IntParam, validators=[params.Positive])
        setting("maskRadius", params.FloatParam, allowsNull=True)
        setting("autoCenter", params.BooleanParam)
        setting("autoMask", params.BooleanParam)
        setting("excludeBlankEdges", params.BooleanParam)
        setting("curateParticles", params.BooleanParam)
        form.addSection(label="Schedule")
        setting("firstJobAt", params.IntParam)
        setting("updateEvery", params.IntParam)
        setting("streamEvery", params.IntParam)
        setting("streamInterval", params.FloatParam)
        setting("streamRevisit", params.FloatParam)
        setting("highResInitial", params.FloatParam)
        setting("highResFinal", params.FloatParam)
        setting("startupCycles", params.IntParam)
        setting("refinementCycles", params.IntParam)
        setting("particlesPerClass", params.IntParam)
        # Settings' help without Settings.describe's default (every core): 4 applies here.
        form.addParallelSection(threads=4, mpi=0, binThreadsHelp=specs["threads"]["help"])

    # ------------------------------------------------------------------------------ settings
    def _engineName(self) -> str:
        return ENGINES[self.engine.get()]

    def _device(self) -> str:
        """The built-in engine's device, as the form's Use GPU and GPU id ask, where CUDA has
        that device; else the CPU."""
        if not self.usesGpu():
            return "cpu"
        ids = self.getGpuList()
        if not ids:
            return Plugin.getDevice()
        import torch  # here: the form must open without loading torch

        if not torch.cuda.is_available() or ids[0] >= torch.cuda.device_count():
            self.info(f"no CUDA GPU {ids[0]} here: the built-in engine runs on the CPU")
            return "cpu"
        return f"cuda:{ids[0]}"

    def _settingsValues(self) -> dict[str, Any]:
        values: dict[str, Any] = {name: self.getAttributeValue(param)
                                  for param, name in PARAM_SETTINGS.items()}
        values["mode"] = JOB_TYPES[self.classificationType.get()]
        values["threads"] = max(1, int(self.numberOfThreads.get() or 1))
        values["poll_seconds"] = POLL_SECONDS
        # No catch-up job when the input pauses: a closed input gets its last job instead.
        values["catch_up_after"] = 0.0
        return values

    def _settings(self) -> Settings:
        return Settings.from_dict(self._settingsValues())

    # ------------------------------------------------------------------------------ steps
    def _stepsCheck(self) -> None:
        """Nothing to check between steps: classifyStep polls its input itself. Overriding it
        is how pyworkflow recognises a streaming consumer (``Protocol.worksInStreaming``): the
        scheduler then launches this protocol while its input set is still open."""

    def _insertAllSteps(self) -> None:
        # The argument changes after every graceful stop, so that Continue runs the step again
        # (pyworkflow skips steps that finished with the same arguments).
        self._insertFunctionStep(self.classifyStep, len(self._stoppedMarkers()),
                                 needsGPU=False)

    def classifyStep(self, _run: int = 0) -> None:
        executor = self._openExecutor()
        try:
            self._classify(executor)
        finally:
            executor.close()

    def _classify(self, executor: Executor) -> None:
        session = self._openSession(executor)
        self._session = session  # for the listener, called in this step's thread
        if self.publishedCycle.get() is not None:  # Continue: the outputs show it until replaced
            session.keep_averages_of({self.publishedCycle.get()})
        self._publishError: BaseException | None = None
        self._publisher = PublishBudget(self._publishCycle)
        self._saidImages = False
        session.add_listener(self._onSessionEvent)
        watcher_done = threading.Event()
        watcher = threading.Thread(target=self._watchStop, args=(session, watcher_done),
                                   daemon=True)
        watcher.start()
        try:
            if session.store.box:  # resumed: where the particles are read from is known
                self._sayImages(session.store)
            # Stopped by the stop file (see _watchStop) or a publish error (then raised).
            finished = session.run_automatic(clear_stop=False, raise_failures=True)
            if self._publishError is None:  # the newest cycle, if the budget held it back
                self._publishing(self._publisher.flush)
            self._raisePublishError()
            if finished:
                self.info(f"input closed and "
                          f"{self._classifiedText(session, session.store.count)}: finishing")
        finally:
            watcher_done.set()
            session.remove_listener(self._onSessionEvent)
            session.close()
        self._closeOutputs()
        if self._stopRequested():
            os.replace(self._stopFile(),
                       self._getExtraPath(f"stopped_{len(self._stoppedMarkers()) + 1}.txt"))
            self.info("stopped after the current cycle: Continue resumes")

    @staticmethod
    def _classifiedText(session: Session, total: int) -> str:
        """What the last cycle classified: never "all" when particles were left out."""
        history = session.history
        left_out = history[-1].left_out if history else 0
        if not left_out:
            return f"all {total} particles classified"
        return (f"{total - left_out} of {total} particles classified: {left_out} were left out "
                "because their stacks changed or vanished since import (see the log)")

    def _sayImages(self, store: ParticleStore) -> None:
        """Where the cycles read the particles from, said once in the log."""
        if self._saidImages:
            return
        self._saidImages = True
        if store.copies_images:
            self.info(f"the input particles are copied into {store.stack_path} (the cisTEM "
                      "engine and cluster workers need one stack)")
        else:
            self.info("the input particles are read where they are, not copied; a stack that "
                      "changes or vanishes has its particles left out of the cycles (the log "
                      "says so)")

    def _sessionDir(self) -> str:
        """The session's output folder (live2d.output_folder's layout), inside the run's."""
        return self._getExtraPath(SESSION_FOLDER)

    def _epuFolder(self) -> str | None:
        """The EPU session folder: the form's, else the one the input's import names."""
        own = (self.epuFolder.get() or "").strip()
        given = getattr(self.inputParticles.get(), EPU_FOLDER_ATTRIBUTE, None)
        return own or (given.get() if given is not None else "") or None

    def _daskAddress(self) -> str:
        return (self.daskScheduler.get() or "").strip()

    def _openExecutor(self) -> Executor:
        """Where the cycles' slices run: the Dask scheduler of the form, else this process."""
        address = self._daskAddress()
        if not address:
            return LocalExecutor()
        executor = make_executor(scheduler=address)
        try:
            os.makedirs(self._sessionDir(), exist_ok=True)
            executor.check_shared_folder(Path(self._sessionDir()))
        except BaseException:
            executor.close()
            raise
        self.info(f"cycles run on {executor.describe()}")
        return executor

    def _openSession(self, executor: Executor) -> Session:
        output = self._sessionDir()
        resuming = OutputFolder(output).session_state.exists()
        if resuming:
            self._checkResumable(output)
        inputFile = Path(self.inputParticles.get().getFileName()).resolve()
        common = {"engine": self._engineName(), "device": self._device(),
                  "cistem_bin": Plugin.getCistemBin(), "executor": executor,
                  "particle_feed": self._particleSource,
                  "epu_dir": self._epuFolder(),
                  # Named in the refusal a second writer of this folder gets (session_lock).
                  "owner": f"Scipion protocol {self.getRunName()}"}
        if not resuming:
            return Session(inputFile.parent, output, settings=self._settings(), **common)
        # Continue: keep the session's own job type (an ab initio job is followed by seeded
        # ones) and take every other setting from the form, which may have been edited.
        session = Session(inputFile.parent, output, **common)
        values = self._settingsValues()
        values.pop("mode")
        session.update_settings(values)
        return session

    def _checkResumable(self, output: str) -> None:
        """A run started by a plugin version that fed the session through a stand-in Warp
        folder has no Scipion ids in its store: its cycles cannot be published."""
        standin = self._getExtraPath("warp", "previous.settings")
        if not os.path.exists(standin):
            return
        # Read, not opened: this runs before the session locks the folder, and opening a store
        # cuts back rows that a process still classifying there has not committed yet.
        try:
            table = read_committed_table(output)
        except (OSError, ValueError):  # no store yet, or one being replaced: nothing to map
            return
        if len(table) and not table["SRCID"].any():
            raise RuntimeError(
                "this run was started by an earlier version of the Live2D plugin, whose "
                "particles this version cannot map back to the input set: copy the protocol "
                "(right click > Copy) and run the copy anew")

    # ------------------------------------------------------------------------------ input
    def _particleSource(self, store: ParticleStore) -> ScipionParticleSource:
        """The session's particle source: the input set, read directly."""
        return ScipionParticleSource(self.inputParticles.get().getFileName(), store,
                                     Path(self._getExtraPath("stacks")), self.maskRadius.get())

    # ------------------------------------------------------------------------------ outputs
    def _onSessionEvent(self, event: dict[str, Any]) -> None:
        """Called by the session after every import and cycle, in this step's thread."""
        if event.get("type") == "import":
            self._noteImport(event)
        if event.get("type") != "cycle" or self._publishError is not None:
            return
        number = event["cycle"]["number"]  # the page's form of the record: the session's
        record = next(r for r in reversed(self._session.history) if r.number == number)
        if record.block == "start":  # random starting classes have no members yet
            return
        if not self._publishing(lambda: self._publisher.offer(record)):
            self.info(f"cycle {record.number} goes to the outputs with a later cycle: "
                      f"publishing took {self._publisher.last_cost:.0f} s, and takes at most "
                      f"{PUBLISH_SHARE:.0%} of the run")

    def _publishing(self, publish: Callable[[], bool]) -> bool:
        """Runs a publish; an error stops the run after this cycle and is raised after it."""
        try:
            return publish()
        except BaseException as exc:  # the session would only log it: surface it after
            self._publishError = exc
            self.stopStreaming()  # after this cycle, as the right-click action
            self._session.request_stop()  # now: not after the watcher's next look
            return True

    def _noteImport(self, event: dict[str, Any]) -> None:
        """The input particles received so far (the summary's count), and where the cycles
        read them from, said once."""
        self.exportedParticles.set(event["particles"])
        self._store(self.exportedParticles)
        if self._session.store.box:
            self._sayImages(self._session.store)

    def _raisePublishError(self) -> None:
        if self._publishError is not None:
            error, self._publishError = self._publishError, None
            self._withdrawStop()
            published = self.publishedCycle.get()
            outputs = (f"Scipion's outputs stay those of cycle {published}"
                       if published is not None else "no cycle reached Scipion's outputs")
            history = self._session.history
            raise RuntimeError(
                f"publishing the classes failed ({type(error).__name__}: {error}); the run "
                f"stopped after cycle {history[-1].number if history else 0}. Its cycles are "
                f"kept in {self._sessionDir()} and {outputs}. The traceback in the run's "
                "error log (run.stderr) shows where it failed; once its cause is fixed, "
                "Continue resumes the run, and the cycles it runs are published.") from error

    def _publishCycle(self, record: CycleRecord) -> None:
        """A cycle's classes and averages replace outputClasses and outputAverages (a set per
        cycle); the particles of its selected classes not yet in outputParticles are added to
        it (a set that only grows). Members are copied by SQL (:mod:`live2d_plugin.set_rows`):
        the cost is seconds at a million particles, where pwem's item-by-item writing takes
        minutes."""
        output_dir = Path(self._sessionDir())
        classes_mrc = scipion_stack(output_dir / record.classes)
        star = particle_table(output_dir, record)
        store_table = self._session.store.read_table()
        settings = self._session.settings
        # Junk inside the selected classes stays out of outputParticles (live2d.curation);
        # outputClasses keeps every member, as the classes are.
        curation = (curate_cycle(output_dir, record, settings.curation_cut, star,
                                 self._session.store)
                    if settings.curate_particles else None)
        assignments = cycle_assignments(star, store_table,
                                        curation.keep if curation else None).sort_index()
        pixel_size = float(star["PSIZE"].iloc[0]) if len(star) else \
            self.inputParticles.get().getSamplingRate()
        assignments["matrix"] = matrix_texts(alignment_matrices(
            assignments["psi"], assignments["shx"], assignments["shy"], pixel_size))
        suffix = f"_cycle{record.number:03d}"
        # The selection everywhere: the proposal of the cycle's scores with the marks made in
        # Live2D's page (live2d serve on the session folder: selection.json) over it.
        chosen = cycle_selection(output_dir, record)
        averages = self._cycleAverages(record, classes_mrc, pixel_size, suffix)
        # Read once: the classes and outputParticles both leave disabled input particles out.
        disabled = disabled_ids(self.inputParticles.get().getFileName())
        kept = {c.number: c.kept for c in curation.classes} if curation else {}
        classes = self._cycleClasses(record, assignments, classes_mrc, pixel_size, suffix,
                                     chosen, disabled, kept)
        in_chosen = assignments["cls"].isin(chosen)
        selected = assignments[in_chosen & assignments["kept"]]
        curated = int((in_chosen & ~assignments["kept"]).sum())
        particles, added, ids = self._grownParticles(selected, disabled)

        first = not self.hasAttribute("outputClasses")
        first_particles = not self.hasAttribute("outputParticles")
        self._updateOutputSet("outputAverages", averages, Set.STREAM_OPEN)
        self._updateOutputSet("outputClasses", classes, Set.STREAM_OPEN)
        self._updateOutputSet("outputParticles", particles, Set.STREAM_OPEN)
        if first:
            self._defineSourceRelation(self.inputParticles, classes)
            self._defineSourceRelation(self.inputParticles, averages)
        if first_particles:
            self._defineSourceRelation(self.inputParticles, particles)
        self.publishedCycle.set(record.number)
        # outputAverages and the classes' representatives read the cycle's averages file: the
        # thinning of older streaming updates must not take it while they do (the budget may
        # hold the next publish back for several cycles).
        self._session.keep_averages_of({record.number})
        self.publishedParticles.set(record.particles)
        self.publishedClassified.set(len(assignments))
        self.publishedSelected.set(particles.getSize())
        self.publishedSelection.set(",".join(str(n) for n in sorted(chosen)))
        # Those a later cycle, mark or curation took out of the selection stay in the set.
        self.publishedUnselected.set(int(np.count_nonzero(~np.isin(ids, selected.index))))
        self._store(self.publishedCycle, self.publishedParticles, self.publishedClassified,
                    self.publishedSelected, self.publishedSelection, self.publishedUnselected)
        self._dropOldCycleSets()
        self.info(f"outputClasses: cycle {record.number}, {len(assignments)} of "
                  f"{record.particles} particles classified into "
                  f"{sum(1 for c in record.class_counts if c)} classes")
        self.info(f"outputParticles: cycle {record.number}, {added} particles of the selected "
                  f"classes {self._selectionText(chosen)} added, {particles.getSize()} in all"
                  + (f"; {curated} of those classes' particles left out as junk by the "
                     "particle curation" if curated else ""))

    def _cycleAverages(self, record: CycleRecord, classes_mrc: str, pixel_size: float,
                       suffix: str) -> SetOfAverages:
        averages = self._createSetOfAverages(suffix)
        averages.copyInfo(self.inputParticles.get())
        averages.setSamplingRate(pixel_size)
        averages.setHasCTF(False)
        with _quietFirstDimensions():
            for number in range(1, len(record.class_counts) + 1):
                average = Particle(location=(number, classes_mrc))
                average.setSamplingRate(pixel_size)
                averages.append(average)
        return averages

    def _cycleClasses(self, record: CycleRecord, assignments, classes_mrc: str,
                      pixel_size: float, suffix: str, chosen,
                      disabled: set[int], kept: dict[int, int]) -> SetOfClasses2D:
        """The cycle's classes: pwem writes each class with its first member (the template of
        its table), SQL copies the other members from the input set. ``kept``: per class
        number, the particles the curation keeps (empty: not curated); a selected class
        shows it."""
        quality = class_table_by_number(Path(self._sessionDir()), record)
        input_file = self.inputParticles.get().getFileName()
        templates = template_members(assignments, disabled)
        classes = self._createSetOfClasses2D(self.inputParticles, suffix)

        def update_item(item, _row) -> None:
            values = templates.loc[item.getObjId()]
            item.setClassId(int(values["cls"]))
            item.setTransform(alignment_2d(values["psi"], values["shx"], values["shy"],
                                           pixel_size))

        def update_class(class_item) -> None:
            representative = class_item.getRepresentative()
            representative.setLocation(class_item.getObjId(), classes_mrc)
            representative.setSamplingRate(pixel_size)
            class_item.setAlignment2D()
            number = class_item.getObjId()
            set_class_quality(class_item, quality.get(number), number in chosen,
                              kept.get(number) if number in chosen else None)

        ids = ",".join(str(int(i)) for i in templates.index) or "0"
        with _quietFirstDimensions():
            classes.classifyItems(updateItemCallback=update_item,
                                  updateClassCallback=update_class,
                                  iterParams={"where": f"id IN ({ids})"})
        classes.write()
        classes.close()  # SQL writes the members through a connection of its own
        copy_class_members(classes.getFileName(), input_file, assignments, templates)
        return classes

    def _grownParticles(self, selected, disabled: set[int]
                        ) -> tuple[SetOfParticles, int, np.ndarray]:
        """outputParticles, open while the run goes on and only growing: every particle that
        was in a selected class when a cycle was published, with that cycle's class and 2D
        alignment. What joins it is never taken out: a streaming consumer has it already.
        (outputClasses has the latest classes, whose subsets follow the latest selection.)
        Returns the set, the number added and the ids it holds now."""
        path = self._getPath("particles.sqlite")
        input_file = self.inputParticles.get().getFileName()
        existing = getattr(self, "outputParticles", None)
        # A run resumed from a version that published a set per cycle starts the set anew, and
        # so does a set published empty (no class selected yet): its file has no tables to
        # read back (see holds_written_set).
        growing = holds_written_set(path) and (existing is None
                                               or existing.getFileName() == path)
        if growing:
            particles = SetOfParticles(filename=path)
            particles.loadAllProperties()
            particles.enableAppend()
            present = item_ids(path)
        else:
            particles = self._createSetOfParticles()
            particles.copyInfo(self.inputParticles.get())
            particles.setAlignment2D()
            present = np.empty(0, dtype=np.int64)
        fresh = selected[~selected.index.isin(present)]
        fresh = fresh[~fresh.index.isin(disabled)]
        if fresh.empty:
            return particles, 0, present
        if len(present):
            template_id = int(present[0])
        else:  # pwem writes the first one: the template of the table's columns
            template_id = int(fresh.index[0])
            values = fresh.loc[template_id]
            item = self.inputParticles.get()[template_id].clone()
            item.setClassId(int(values["cls"]))
            item.setTransform(alignment_2d(values["psi"], values["shx"], values["shy"],
                                           particles.getSamplingRate()))
            with _quietFirstDimensions():
                particles.append(item)
        particles.write()
        particles.close()
        added = copy_members(path, "", input_file, fresh, template_id) + (0 if len(present)
                                                                            else 1)
        particles._size.set(len(present) + added)
        return particles, added, np.union1d(present, fresh.index.to_numpy(dtype=np.int64))

    @staticmethod
    def _selectionText(classes) -> str:
        return ", ".join(str(n) for n in sorted(classes)) if classes else "(none)"

    def _closeOutputs(self) -> None:
        """The run ends (input classified, or stopped): consumers see the outputs are final."""
        for name, set_class in self._possibleOutputs.items():
            output = getattr(self, name, None)
            if output is None or not output.isStreamOpen():
                continue
            if not holds_written_set(output.getFileName()):
                # Empty (an outputParticles no cycle selected a class for): nothing on disk
                # to read back, so it is closed as it is, as pyworkflow's _closeOutputSet does.
                self._updateOutputSet(name, output, Set.STREAM_CLOSED)
                continue
            fresh = set_class(filename=output.getFileName())
            fresh.loadAllProperties()
            if isinstance(fresh, SetOfClasses2D):
                # A set read back from its sqlite has lost its link to the particles, and
                # _updateOutputSet copies every attribute: without this, subsets from the
                # final classes find no particles.
                fresh.setImages(self.inputParticles)
            self._updateOutputSet(name, fresh, Set.STREAM_CLOSED)

    def _dropOldCycleSets(self) -> None:
        """Deletes the per-cycle sqlite files no project window still names: those older than
        the newest CYCLE_SETS_KEPT cycles' that were replaced (the next cycle's file written)
        over REPLACED_SETS_KEPT_SECONDS ago. Disk use is bounded by the cycles of the last hour,
        however long the session runs; the cost is one stat per file kept."""
        replaced_before = time.time() - REPLACED_SETS_KEPT_SECONDS
        for pattern in ("classes2D_cycle*.sqlite", "averages_cycle*.sqlite",
                        "particles_cycle*.sqlite"):
            # By cycle number: as text, cycle1000 sorts before cycle999 and would go first.
            paths = sorted(glob.glob(self._getPath(pattern)), key=_cycleOfSet)
            droppable = paths[:-CYCLE_SETS_KEPT]
            for path, successor in zip(droppable, paths[1:], strict=False):
                # Each file is written once, when its cycle is published: the next file's
                # time is when this one was replaced, and later cycles' files are newer still.
                if os.path.getmtime(successor) >= replaced_before:
                    break
                os.remove(path)

    # ------------------------------------------------------------------------------ stop
    def _stoppedMarkers(self) -> list[str]:
        return glob.glob(self._getExtraPath("stopped_*.txt"))

    def _watchStop(self, session: Session, done: threading.Event) -> None:
        while not done.wait(0.5):
            if self._stopRequested():
                session.request_stop()
                return

    # ------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        errors = []
        try:
            self._settings()
        except SettingsError as exc:
            errors.append(str(exc))
        inputSet = self.inputParticles.get()
        if inputSet is not None and not inputSet.hasCTF():
            errors.append("the input particles have no CTF: Live2D needs it (import them with "
                          "'import warp particles (live)' or estimate the CTF first)")
        address = self._daskAddress()
        if address and not DASK_ADDRESS.match(address):
            errors.append(f"Dask scheduler {address!r} is not an address such as "
                          "tcp://head:8786 (or leave it empty)")
        if self._engineName() == "cistem":
            from live2d.engines.cistem_programs import find_programs
            from live2d.errors import EngineError

            try:
                find_programs(Plugin.getCistemBin(), True)
            except EngineError as exc:
                errors.append(f"{exc}\nSet LIVE2D_CISTEM_BIN in Scipion's configuration, or "
                              "choose the built-in engine.")
        return errors

    def _history(self) -> list[CycleRecord]:
        return read_history(self._sessionDir())

    def _summary(self) -> list[str]:
        lines = []
        history = self._history()
        exported = self.exportedParticles.get() or 0
        if self.hasAttribute("outputClasses") and self.publishedCycle.get() is not None:
            record = next((r for r in history if r.number == self.publishedCycle.get()), None)
            lines.append(f"outputClasses are from cycle {self.publishedCycle.get()}: "
                         f"{self.publishedClassified.get()} of the "
                         f"{self.publishedParticles.get()} particles it saw were classified.")
            if record is not None and record.left_out:
                lines.append(f"{record.left_out} particles were left out of that cycle: their "
                             "stacks changed or vanished since import (the log names them).")
            if record is not None and record.streamed:
                lines.append(f"Streaming update (job {record.job}): {record.new_particles} new "
                             f"and {record.revisited} re-visited particles classified, "
                             f"{sum(record.class_counts)} in the classes; high-res limit "
                             f"{record.high_res:.1f} Å, engine: {engine_text(record.engine)}.")
                if record.latency:
                    median, _p99, longest = record.latency
                    lines.append(f"Its new particles were in the classes {median / 60:.1f} min "
                                 f"(median), at most {longest / 60:.1f} min, after Warp wrote "
                                 "their stack.")
            elif record is not None:
                lines.append(f"Job {record.job} ({JOB_LABELS[record.job_type].lower()}), "
                             f"{record.block} cycle {record.block_cycle}, "
                             f"high-res limit {record.high_res:.1f} Å, "
                             f"engine: {engine_text(record.engine)}.")
            if self.hasAttribute("outputParticles") and self.publishedSelected.get() is not None:
                chosen = [int(n) for n in (self.publishedSelection.get() or "").split(",") if n]
                lines.append(f"outputParticles: {self.publishedSelected.get()} particles, "
                             "each added with its class and 2D alignment when a cycle put it "
                             "in a selected class; the set only grows. Selected classes of "
                             f"cycle {self.publishedCycle.get()}: "
                             f"{self._selectionText(chosen)} (those scored good, with any "
                             "marks made with 'live2d serve' on "
                             f"{self._sessionDir()}).")
                unselected = self.publishedUnselected.get() or 0
                if unselected:
                    lines.append(f"{unselected} of them are no longer selected (their class "
                                 "is not, or the particle curation now leaves them out): for "
                                 "the latest selection exactly, make a subset of the selected "
                                 "classes of outputClasses (the viewer's Create subset does it "
                                 "for any cycle).")
            newer = exported - (self.publishedParticles.get() or 0)
            if newer > 0:
                what = ("the next streaming update" if record is not None and record.streamed
                        else "the next job")
                lines.append(f"{newer} input particles arrived since and wait for {what}.")
        else:
            first = JOB_LABELS[JOB_TYPES[self.classificationType.get()]].lower()
            lines.append(f"No classes yet: {exported} particles received; the first job "
                         f"({first}) starts at {self.firstJobAt.get()} particles (or when "
                         "the input closes).")
        lines.extend(self._stoppedPartWay(history))
        lines.extend(self._adviceLines())
        if history:
            lines.append(f"{len(history)} cycles on disk (any of them in the viewer).")
        address = self._daskAddress()
        if address:
            lines.append(f"Cycles run on the workers of the Dask scheduler {address}.")
        return lines

    def _adviceLines(self) -> list[str]:
        """Whether and where to keep collecting, from the small files the session keeps beside
        its classes (never the particles: the project window asks for the summary often)."""
        folder = self._sessionDir()
        lines = [f"Alert: {alert.message}" for alert in read_alerts(folder)]
        try:
            squares = [row for row in read_table(folder, "square") if row["grid_square"]]
        except (OSError, ValueError, KeyError):
            squares = []  # being replaced, or damaged: the next scored cycle writes it again
        if len(squares) > 1:
            ranked = sorted(squares, key=lambda row: row["good_fraction"])

            def said(row: dict) -> str:
                return (f"{row['grid_square']} ({row['good_fraction']:.0%} good particles "
                        f"over {row['micrographs']} micrographs)")

            lines.append(f"Grid squares: {len(squares)}; the best, {said(ranked[-1])}, the "
                         f"worst, {said(ranked[0])} (the viewer draws them all).")
        outlook = read_forecast(folder)
        if outlook is not None:
            first, *rest = outlook[1]
            lines.append(first[:1].upper() + first[1:] + " " + "; ".join(
                line.strip() for line in rest))
        return lines

    def _stoppedPartWay(self, history: list[CycleRecord]) -> list[str]:
        """What a run that is not going on left unfinished: a job stopped part-way, counted
        both ways (within the job, and the session's cycle number)."""
        if self.isActive():
            return []
        state = read_state(OutputFolder(self._sessionDir()))
        job = state.job if state is not None else None
        if job is None:
            return []
        return [f"Stopped part-way: job {job.number} ({JOB_LABELS[job.job_type].lower()}) ran "
                f"{job.next_index} of its {len(job.plan)} cycles; Continue resumes it at its "
                f"cycle {job.next_index + 1} (session cycle {len(history)})."]

    def _methods(self) -> list[str]:
        if not self.hasAttribute("outputClasses"):
            return []
        history = self._history()
        # The engine that ran, not the form's choice, which may be "auto".
        engine = engine_text(history[-1].engine.partition(" ")[0]) if history else \
            ENGINE_LABELS[self.engine.get()]
        return [f"{self.publishedParticles.get()} particles were classified into "
                f"{self.numberOfClasses.get()} 2D classes with Live2D [Barad_Live2D] "
                f"({engine} engine), following the schedule of cisTEM's 2D classification "
                "[Grant2018]."]

    def _citations(self) -> list[str]:
        cites = ["Barad_Live2D"]
        if self._engineName() != "builtin":
            cites.append("Grant2018")
        return cites
