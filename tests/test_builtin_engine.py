"""The built-in engine on simulated particles with known truth."""

import threading

import mrcfile
import numpy as np
import pytest
import torch
from cistem_standin import make_bin_dir

from live2d import cistem_star
from live2d.engines import make_engine
from live2d.engines.base import (
    CycleParams,
    CycleRequest,
    Progress,
    StreamBatch,
    split_sentence,
)
from live2d.engines.builtin import BuiltinEngine, averages, search
from live2d.engines.builtin.engine import update_shift_sigma
from live2d.engines.builtin.geometry import (
    MIN_ALIGNED_FOR_PRIOR,
    learned_shift_sigma,
    plan_geometry,
)
from live2d.engines.builtin.io import prepare
from live2d.engines.builtin.shifts import PairShifts, ShiftCorrelator
from live2d.engines.cistem import CistemEngine, find_programs
from live2d.errors import CycleCancelled, EngineError
from live2d.evaluate import aligned_truth, comparable, correlation, score
from live2d.imaging import blank_edges, shift_phases
from live2d.phantom import Phantom

BOX, PIXEL, N, K = 48, 3.0, 360, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """360 particles of 4 views in 3 micrographs, written as a stack and a cisTEM star."""
    folder = tmp_path_factory.mktemp("particles")
    phantom = Phantom(BOX, PIXEL, n_views=K, seed=3)
    rng = np.random.default_rng(1)
    table = cistem_star.new_table(N)
    images, views, psi, shifts = [], [], [], []
    for start, defocus in zip(range(0, N, 120), (12000.0, 16000.0, 20000.0), strict=True):
        batch = phantom.particles(120, rng, snr=0.3, defocus_u=defocus, defocus_v=defocus - 400,
                                  defocus_angle=20.0, max_shift=6.0)
        images.append(batch.images)
        views.append(batch.view)
        psi.append(batch.psi)
        shifts.append(batch.shift)
        table.loc[start:start + 119, ["DF1", "DF2", "ANGAST"]] = (defocus, defocus - 400, 20.0)
    table["PSIZE"], table["VOLT"], table["Cs"], table["AmpC"] = PIXEL, 300.0, 2.7, 0.07
    with mrcfile.new(folder / "particles.mrcs") as mrc:
        mrc.set_data(np.concatenate(images))
        mrc.voxel_size = PIXEL
    cistem_star.write_star(folder / "particles.star", table)
    truth = {"views": phantom.views, "view": np.concatenate(views), "psi": np.concatenate(psi),
             "shift": np.concatenate(shifts), "mask": 0.6 * phantom.diameter}
    return folder, truth


def params(truth, **changes) -> CycleParams:
    values = {"pixel_size": PIXEL, "mask_radius": truth["mask"], "high_res": 12.0,
              "angular_step": 10.0, "search_range": 12.0}
    return CycleParams(**{**values, **changes})


def request(folder, name, p, star_in=None, classes_in=None, seed=0, threads=1) -> CycleRequest:
    return CycleRequest(folder / "particles.mrcs", star_in or folder / "particles.star",
                        folder / f"{name}.star", folder / f"{name}.mrc", p, K,
                        classes_in=classes_in, threads=threads, seed=seed)


def run_cycles(folder, truth, cycles=4, seed=0, **changes):
    engine = BuiltinEngine("cpu")
    start = request(folder, f"start{seed}", params(truth, high_res=20.0), seed=seed)
    engine.start_classes(start, lambda _: None, threading.Event())
    classes, star = start.classes_out, None
    for cycle in range(cycles):
        step = request(folder, f"c{seed}_{cycle}", params(truth, **changes), star, classes,
                       seed=seed + cycle)
        result = engine.run_cycle(step, lambda _: None, threading.Event())
        classes, star = step.classes_out, step.star_out
    return result, classes, star


@pytest.fixture(scope="module")
def classified(data):
    folder, truth = data
    return run_cycles(folder, truth)


def test_classes_reach_far_above_random_homogeneity_and_fidelity(data, classified):
    _, truth = data
    result, classes, star = classified
    table = cistem_star.read_star(star)
    with mrcfile.open(classes) as mrc:
        averages = mrc.data.copy()
        assert mrc.voxel_size.x == pytest.approx(PIXEL) and averages.shape == (K, BOX, BOX)
    scores = score(truth["views"], truth["view"], truth["psi"], truth["shift"], table, averages,
                   PIXEL, truth["mask"])
    assert scores.homogeneity > 0.6  # random assignment gives about 0.1
    assert scores.fidelity > 0.8
    assert sum(result.class_counts) == N and len(result.class_counts) == K


def test_averages_come_out_with_white_protein(data, classified):
    _, _, classes = classified[0], None, classified[1]
    with mrcfile.open(classes) as mrc:
        averages = mrc.data
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    centre = x**2 + y**2 < 8**2
    for average in averages:
        assert average[centre].mean() > 0  # protein white, as users expect


def test_star_follows_cistem_conventions(data, classified):
    _, truth = data
    _, _, star = classified
    table = cistem_star.read_star(star)
    assert table["2DCLS"].between(1, K).all()
    assert table["PSI"].between(0, 360).all() and table["OCC"].between(0, 100).all()
    assert (table[["SHX", "SHY"]].abs() <= 12.0 + 1e-6).all().all()  # within the search range
    # cisTEM's sign: the reported shift undoes the true displacement, and PSI + true angle is
    # constant within a class (mod 360)
    members = table["2DCLS"] == table["2DCLS"].mode()[0]
    moved = np.hypot(*truth["shift"].T) > 3.0
    chosen = members.to_numpy() & moved
    assert np.corrcoef(table["SHX"][chosen], truth["shift"][chosen, 0])[0, 1] < -0.5
    sums = np.deg2rad(table["PSI"][members] + truth["psi"][members])
    assert np.hypot(np.cos(sums).mean(), np.sin(sums).mean()) > 0.6


def test_same_seed_same_result(data):
    folder, truth = data
    first = run_cycles(folder, truth, cycles=1, seed=7)
    again = run_cycles(folder, truth, cycles=1, seed=7)
    assert first[2].read_text() == again[2].read_text()


def test_a_fraction_marks_unused_particles_and_keeps_their_values(data, classified):
    folder, truth = data
    _, classes, star = classified
    step = request(folder, "partial", params(truth, fraction=0.5), star, classes, seed=11)
    result = BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
    before, after = cistem_star.read_star(star), cistem_star.read_star(step.star_out)
    unused = after["2DCLS"] < 0
    assert 0.3 * N < unused.sum() < 0.7 * N
    assert (after["2DCLS"][unused] == -before["2DCLS"][unused]).all()
    assert np.allclose(after["PSI"][unused], before["PSI"][unused], atol=0.01)
    assert (after["CHANGE"][unused] == 0).all()
    assert sum(result.class_counts) == (~unused).sum()


@pytest.mark.parametrize("threads", [1, 2])
def test_progress_is_reported_and_a_cancel_stops_between_batches(data, classified, threads):
    folder, truth = data
    _, classes, star = classified
    cancel = threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        assert threading.current_thread() is threading.main_thread()  # the caller's thread
        if p.stage == "classifying":
            cancel.set()

    step = request(folder, f"cancelled{threads}", params(truth), star, classes, threads=threads)
    with pytest.raises(CycleCancelled):
        BuiltinEngine("cpu", batch_size=16).run_cycle(step, on_progress, cancel)
    assert not step.star_out.exists() and not step.classes_out.exists()
    classifying = [p for p in seen if p.stage == "classifying"]
    assert classifying and 0 < classifying[0].fraction < 1
    assert classifying[0].particles_per_second > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("live2d-engine")]


def test_threads_give_the_numbers_of_one_thread_and_report_progress(data, classified):
    """Batches scored on two threads side by side, each added to its chunk's sums in order:
    the classes and every particle's result are those of one thread, to the bit. Progress
    reaches the caller's thread, in order, up to every particle."""
    folder, truth = data
    _, classes, star = classified
    outputs, seen = [], []

    def on_progress(p: Progress) -> None:
        if p.stage == "classifying":
            seen.append(p.fraction)
            assert threading.current_thread() is threading.main_thread()

    caller_threads = torch.get_num_threads()
    for threads in (1, 2):
        step = request(folder, f"threads{threads}", params(truth), star, classes, seed=3,
                       threads=threads)
        engine = BuiltinEngine("cpu", batch_size=16, chunk_batches=4)  # 6 chunks of 23 batches
        engine.run_cycle(step, on_progress if threads == 2 else lambda _: None,
                         threading.Event())
        # What the caller does next (judging the classes) keeps its own PyTorch threads.
        assert torch.get_num_threads() == caller_threads
        with mrcfile.open(step.classes_out) as mrc:
            outputs.append((mrc.data.copy(), step.star_out.read_text()))
        assert engine.describe().endswith(f"cpu, {threads} threads)")
    assert np.array_equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1] == outputs[1][1]
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) > 2


def test_an_empty_class_is_reseeded_not_a_crash(data, classified):
    folder, truth = data
    _, classes, star = classified
    with mrcfile.open(classes) as mrc:
        averages = mrc.data.copy()
    averages[2] = 0.0  # an all-zero class attracts nobody
    with mrcfile.new(folder / "holey.mrc", overwrite=True) as mrc:
        mrc.set_data(averages)
        mrc.voxel_size = PIXEL
    step = request(folder, "holey_out", params(truth), star, folder / "holey.mrc")
    result = BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
    assert result.class_counts[2] == 0
    assert result.emptied == (2,)  # for the session's log (tests/test_streaming.py)
    with mrcfile.open(step.classes_out) as mrc:
        assert mrc.data[2].std() > 0  # ready to attract particles next cycle


def test_a_startup_class_left_with_almost_no_particles_restarts_as_a_split_of_a_large_one(
        data, classified, monkeypatch):
    """In an ab initio job's startup cycles (CycleParams.rebalance), a class holding fewer than
    STARVED_SHARE of the mean class's particles restarts from a random sample of one of the
    largest classes, as they matched it: a view of that class, not a handful of junk.
    Other cycles leave it as it is."""
    folder, truth = data
    _, classes, star = classified
    with mrcfile.open(classes) as mrc:
        given = mrc.data.copy()
    given[2] = given[0]  # two classes share view 0's particles; view 2's go elsewhere
    with mrcfile.new(folder / "twice.mrc", overwrite=True) as mrc:
        mrc.set_data(given)
        mrc.voxel_size = PIXEL
    monkeypatch.setattr(averages, "STARVED_SHARE", 0.75)
    engine = BuiltinEngine("cpu")
    outputs = {}
    for rebalance in (False, True):
        step = request(folder, f"twice_{rebalance}", params(truth, rebalance=rebalance), star,
                       folder / "twice.mrc")
        outputs[rebalance] = (engine.run_cycle(step, lambda _: None, threading.Event()),
                              mrcfile.read(step.classes_out))
    (kept, before), (result, after) = outputs[False], outputs[True]
    assert kept.split == () and result.class_counts == kept.class_counts
    counts = np.array(result.class_counts)
    assert result.split, counts
    floor = 0.75 * counts.mean()
    for split in result.split:
        assert split.particles == counts[split.cls] < floor
        assert counts[split.source] >= floor and split.source not in (s.cls for s in result.split)
        new = torch.from_numpy(after[split.cls])[None]
        assert correlation(new, torch.from_numpy(before[split.source])[None]) > \
            correlation(new, torch.from_numpy(before[split.cls])[None])
    first = result.split[0]
    assert split_sentence((first,)) == (
        f"class {first.cls + 1} ({first.particles}) held almost no particles: re-seeded from "
        f"a random sample of class {first.source + 1}, to split it")
    untouched = [c for c in range(K) if c not in {s.cls for s in result.split}]
    assert np.array_equal(after[untouched], before[untouched])


def test_more_classes_than_particles_is_a_clear_error(data):
    folder, truth = data
    step = CycleRequest(folder / "particles.mrcs", folder / "particles.star", folder / "x.star",
                        folder / "x.mrc", params(truth, fraction=0.005), 10)
    with pytest.raises(EngineError, match="too few for 10 classes"):
        BuiltinEngine("cpu").start_classes(step, lambda _: None, threading.Event())


def test_auto_engine_without_cistem_is_the_builtin_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CISTEM_HOME", raising=False)
    engine = make_engine("auto", device="cpu")
    assert isinstance(engine, BuiltinEngine) and engine.describe().startswith("builtin")


def test_reported_alignment_lines_up_true_images_with_their_class_average(data, classified):
    """The cisTEM convention round trip: rotate(shift(P, (SHX, SHY)), PSI) of each particle's
    true image matches its class average; the mirrored convention does not."""
    _, truth = data
    _, classes, star = classified
    table = cistem_star.read_star(star)
    with mrcfile.open(classes) as mrc:
        averages = comparable(torch.from_numpy(mrc.data.copy()), PIXEL, 15.0, truth["mask"])
    best = torch.as_tensor(table["2DCLS"].to_numpy() - 1)

    def agreement(reported) -> float:
        aligned = aligned_truth(truth["views"], truth["view"], truth["psi"], truth["shift"],
                                reported, PIXEL)
        return float(correlation(comparable(aligned, PIXEL, 15.0, truth["mask"]),
                                 averages[best]).mean())

    mirrored = table.copy()
    mirrored[["SHX", "SHY"]] *= -1
    mirrored["PSI"] = (-mirrored["PSI"]) % 360
    assert agreement(table) > 0.8
    assert agreement(mirrored) < 0.5


def test_a_cycle_of_either_engine_feeds_the_other(data, classified, tmp_path):
    """built-in -> cisTEM (refine2d/merge2d stand-ins that check the star contract) -> built-in."""
    folder, truth = data
    _, classes, star = classified
    cistem = CistemEngine(find_programs(str(make_bin_dir(tmp_path / "bin")), True))
    handed = request(folder, "by_cistem", params(truth), star, classes)
    cistem.run_cycle(handed, lambda _: None, threading.Event())
    back = request(folder, "after_cistem", params(truth), handed.star_out, handed.classes_out)
    result = BuiltinEngine("cpu").run_cycle(back, lambda _: None, threading.Event())
    table = cistem_star.read_star(back.star_out)
    assert table["2DCLS"].between(1, K).all() and sum(result.class_counts) == N
    with mrcfile.open(back.classes_out) as mrc:
        assert mrc.data.shape == (K, BOX, BOX) and mrc.voxel_size.x == pytest.approx(PIXEL)


def check_quality(classes, star, truth) -> None:
    with mrcfile.open(classes) as mrc:
        averages = mrc.data.copy()
    scores = score(truth["views"], truth["view"], truth["psi"], truth["shift"],
                   cistem_star.read_star(star), averages, PIXEL, truth["mask"])
    assert scores.homogeneity > 0.6 and scores.fidelity > 0.8


def test_half_resolution_preselection_at_small_working_boxes_keeps_the_quality(data):
    """Even the small working boxes of a ramp's middle search only the best (class, angle)
    frames of a half-resolution pass (scoring every frame at every shift there made those cycles
    10x slower than the 8 Å ones)."""
    folder, truth = data
    result, classes, star = run_cycles(folder, truth, cycles=3, seed=5)
    assert any("half-resolution pass" in line for line in result.log)
    check_quality(classes, star, truth)


def test_dense_search_of_every_frame_keeps_the_quality(data, monkeypatch):
    """The path for boxes too small for a half-resolution pass: every frame, every shift."""
    folder, truth = data
    monkeypatch.setattr(search, "COARSE_SEARCH_MIN_BOX", 10_000)  # where Search reads it
    result, classes, star = run_cycles(folder, truth, cycles=3, seed=5)
    assert not any("half-resolution pass" in line for line in result.log)
    check_quality(classes, star, truth)


def test_geometry_crops_to_the_mask_and_search_range_and_bins_to_the_resolution():
    p = CycleParams(pixel_size=PIXEL, mask_radius=45.0, high_res=12.0, angular_step=10.0,
                    search_range=12.0)
    geometry = plan_geometry(p, BOX, np.random.default_rng(0))
    # 2 × (12 + 45 + 20 Å falloff) / 3 Å = 51.3 px: the whole box; binned to 12 Å / 2 = 6 Å/px
    assert (geometry.cropped, geometry.working, geometry.binned_pixel) == (48, 24, 6.0)
    assert len(geometry.psi) == 36 and np.allclose(np.diff(geometry.psi) % 360.0, 10.0)
    assert (geometry.shifts.float().norm(dim=1) <= 12.0 / 6.0 + 1e-6).all()
    assert geometry.log_prior.argmax() == geometry.shifts.abs().sum(dim=1).argmin()


@pytest.mark.parametrize("size", [16, 17])
def test_shift_correlator_matches_the_inverse_fft(size):
    rng = torch.Generator().manual_seed(size)
    half = size // 2 + 1

    def spectra(n: int) -> torch.Tensor:
        return torch.fft.rfft2(torch.randn((n, size, size), generator=rng))

    references, particles = spectra(5), spectra(3)
    reach = 4
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    inside = dy**2 + dx**2 <= reach**2
    shifts = torch.as_tensor(np.stack([dy[inside], dx[inside]], axis=1))
    correlator = ShiftCorrelator(references, shifts)
    maps = torch.fft.irfft2(particles[:, None] * references.conj()[None], s=(size, size))
    expected = (maps * size * size)[..., shifts[:, 0] % size, shifts[:, 1] % size]
    assert torch.allclose(correlator.at_shifts(particles), expected, rtol=1e-4, atol=1e-2)
    # each particle with references of its own (here all of them), as the search's pairs
    pairs = particles[:, None] * references.conj()[None]
    assert torch.allclose(PairShifts(size, shifts).at_shifts(pairs), expected, rtol=1e-4,
                          atol=1e-2)
    # the half-resolution pass's best over the translations of the set only (not the square's)
    norms = torch.rand((3, 5), generator=rng)
    assert torch.allclose(correlator.best(particles, norms), expected.amax(dim=-1) - norms,
                          rtol=1e-4, atol=1e-2)
    # the adjoint: each particle moved back by its weighted translations, summed per reference
    weights = torch.rand((3, 5, len(shifts)), generator=rng)
    placed = torch.zeros((3, 5, size, size))
    placed[:, :, shifts[:, 0] % size, shifts[:, 1] % size] = weights
    moved = (particles[:, None] * torch.fft.rfft2(placed).conj()).sum(dim=0)
    assert moved.shape == (5, size, half)
    assert torch.allclose(correlator.scatter_back(weights, particles), moved, rtol=1e-4,
                          atol=1e-2)


def test_more_classes_than_used_particles_in_a_cycle_is_a_clear_error(data, classified):
    folder, truth = data
    _, classes, star = classified
    step = request(folder, "too_few", params(truth, fraction=0.005), star, classes)
    with pytest.raises(EngineError, match="too few for 4 classes"):
        BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
    assert not step.star_out.exists()


def test_particles_with_blank_edges_are_excluded_only_when_asked(data, classified, tmp_path):
    folder, truth = data
    _, classes, star = classified
    with mrcfile.open(folder / "particles.mrcs") as mrc:
        images = np.array(mrc.data)
    assert not blank_edges(images).any()  # noisy particles are never taken for padded ones
    images[0, :, :8] = 0.0  # cut out past the micrograph's left border, zero-padded
    images[1, :6, :] = images[1, 6, :]  # past the top, padded by repeating the last line
    images[2, :, -1] = 1.5  # a flat right column
    with mrcfile.new(tmp_path / "particles.mrcs") as mrc:
        mrc.set_data(images)
        mrc.voxel_size = PIXEL
    (tmp_path / "particles.star").write_text((folder / "particles.star").read_text())
    engine = BuiltinEngine("cpu")
    for exclude in (False, True):
        step = request(tmp_path, f"edges_{exclude}", params(truth, exclude_blank_edges=exclude),
                       star, classes, seed=3)
        result = engine.run_cycle(step, lambda _: None, threading.Event())
        table = cistem_star.read_star(step.star_out)
        unused = np.flatnonzero(table["2DCLS"] < 0).tolist()
        assert unused == ([0, 1, 2] if exclude else [])
        assert (table["CHANGE"][unused] == 0).all()
        assert sum(result.class_counts) == N - len(unused)
        assert ("Number of excluded images with blank edges = 3" in result.log) == exclude


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU here (bench/gpu_check.sh runs this on one)")
def test_a_cuda_cycle_matches_the_cpu_cycle(data, classified):
    """One implementation for both devices: the same cycle on the GPU gives the CPU's result up
    to floating-point order (a few particles between two near-equal classes may differ)."""
    folder, truth = data
    _, classes, star = classified
    tables, averages = {}, {}
    for device in ("cpu", "cuda"):
        step = request(folder, f"on_{device}", params(truth), star, classes, seed=5)
        BuiltinEngine(device, batch_size=32).run_cycle(step, lambda _: None, threading.Event())
        tables[device] = cistem_star.read_star(step.star_out)
        with mrcfile.open(step.classes_out) as mrc:
            averages[device] = np.array(mrc.data)
    assert (tables["cpu"]["2DCLS"] == tables["cuda"]["2DCLS"]).mean() > 0.97
    agreement = correlation(torch.from_numpy(averages["cpu"]), torch.from_numpy(averages["cuda"]))
    assert (agreement > 0.999).all(), agreement


def test_a_previous_alignment_between_grid_angles_is_kept_when_it_fits_better(data, classified,
                                                                             tmp_path):
    """As refine2d: each particle's previous best match is scored with this cycle's grid, so a
    coarse grid does not throw away finer alignments from earlier cycles."""
    folder, truth = data
    _, classes, star = classified
    before = cistem_star.read_star(star)
    coarse = params(truth, angular_step=90.0)
    step = request(folder, "coarse_grid", coarse, star, classes, seed=4)
    BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
    after = cistem_star.read_star(step.star_out)

    kept = (np.isclose(after["PSI"], before["PSI"], atol=0.01)
            & np.isclose(after["SHX"], before["SHX"], atol=0.01)
            & (after["2DCLS"] == before["2DCLS"])).to_numpy()
    assert kept.mean() > 0.5  # the earlier 10° alignments mostly beat a 90° grid
    on_grid = after["PSI"].to_numpy()[~kept] % 90.0
    assert not len(on_grid) or np.ptp(on_grid) < 0.02  # others: angles of the one 90° grid

    forgotten = before.copy()
    forgotten["2DCLS"] = 0  # never classified: nothing to keep
    cistem_star.write_star(tmp_path / "forgotten.star", forgotten)
    step = request(folder, "coarse_only", coarse, tmp_path / "forgotten.star", classes, seed=4)
    BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
    only_grid = cistem_star.read_star(step.star_out)["PSI"].to_numpy() % 90.0
    assert np.allclose(only_grid, only_grid[0], atol=0.01)
    with_previous, without = (
        score(truth["views"], truth["view"], truth["psi"], truth["shift"],
              cistem_star.read_star(folder / f"{name}.star"),
              mrcfile.read(folder / f"{name}.mrc"), PIXEL, truth["mask"])
        for name in ("coarse_grid", "coarse_only"))
    assert with_previous.homogeneity > without.homogeneity  # finer alignments: sharper classes


def alignment_spread(table, truth):
    """Within each class's dominant view: the circular spread (degrees) of PSI + true psi and
    the rms spread (Å) of the residual displacement R(PSI)(true shift + SH), both constant for
    a perfect alignment."""
    angles, offsets = [], []
    for k in np.unique(table["2DCLS"]):
        members = (table["2DCLS"] == k).to_numpy()
        view = np.bincount(truth["view"][members]).argmax()
        group = members & (truth["view"] == view)
        if group.sum() < 10:
            continue
        turn = np.deg2rad(table["PSI"].to_numpy()[group])
        total = turn + np.deg2rad(truth["psi"][group])
        mean = np.angle(np.exp(1j * total).mean())
        angles.extend(np.rad2deg(np.angle(np.exp(1j * (total - mean)))))
        residual = truth["shift"][group] + table[["SHX", "SHY"]].to_numpy()[group]
        x = np.cos(turn) * residual[:, 0] - np.sin(turn) * residual[:, 1]
        y = np.sin(turn) * residual[:, 0] + np.cos(turn) * residual[:, 1]
        offsets.extend(np.hypot(x - np.median(x), y - np.median(y)))
    return np.sqrt(np.mean(np.square(angles))), np.sqrt(np.mean(np.square(offsets)))


def test_the_best_match_is_reported_between_grid_points(data, classified, tmp_path,
                                                         monkeypatch):
    """A 15° grid and 6 Å working pixels quantise the alignment (rms 4.3° and 2.4 Å); as
    refine2d, the reported match is interpolated between grid points, which is finer."""
    folder, truth = data
    _, classes, star = classified
    fresh = cistem_star.read_star(star)
    fresh["2DCLS"] = 0  # no previous match: every alignment comes from this cycle's grid
    cistem_star.write_star(tmp_path / "fresh.star", fresh)
    spreads = {}
    for name in ("interpolated", "grid"):
        if name == "grid":
            monkeypatch.setattr(search, "parabola_peak", lambda m, c, p: torch.zeros_like(c))
        step = request(folder, name, params(truth, angular_step=15.0), tmp_path / "fresh.star",
                       classes, seed=5)
        BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
        spreads[name] = alignment_spread(cistem_star.read_star(step.star_out), truth)
    (angle, shift), (grid_angle, grid_shift) = spreads["interpolated"], spreads["grid"]
    assert angle < 0.85 * grid_angle and shift < 0.85 * grid_shift


def test_shift_phases_move_each_image_by_its_own_shift():
    images = torch.zeros((2, 16, 16))
    images[:, 8, 8] = 1.0
    dy, dx = torch.tensor([3.0, -2.0]), torch.tensor([1.0, 4.0])
    moved = torch.fft.irfft2(torch.fft.rfft2(images) * shift_phases(dy, dx, 16), s=(16, 16))
    peaks = [divmod(int(m.argmax()), 16) for m in moved]
    assert peaks == [(11, 9), (6, 12)]  # sign -1: the image moves by +(dy, dx)
    fy = torch.fft.fftfreq(16)[None, :, None]
    fx = torch.fft.rfftfreq(16)[None, None, :]
    whole_plane = torch.exp(2j * np.pi * (fy * dy[:, None, None] + fx * dx[:, None, None]))
    assert torch.allclose(shift_phases(dy, dx, 16, sign=1.0), whole_plane, atol=1e-5)


def test_an_angle_the_half_resolution_pass_left_out_is_scored_as_the_grid_would():
    """The psi parabola's sides: a neighbouring frame pruned by the half-resolution pass is
    scored at the best translation directly, on the grid's scale."""
    p = CycleParams(pixel_size=PIXEL, mask_radius=45.0, high_res=12.0, angular_step=30.0,
                    search_range=9.0)
    geometry = plan_geometry(p, BOX, np.random.default_rng(0))
    generator = torch.Generator().manual_seed(0)
    classes = torch.randn((3, BOX, BOX), generator=generator)
    found = search.Search(geometry, p, classes, torch.device("cpu"))
    w = geometry.working
    filtered = torch.fft.rfft2(torch.randn((4, w, w), generator=generator))
    norms = torch.rand((4, found.k * found.r), generator=generator) * 100.0
    frame = torch.tensor([0, 5, 17, 30])
    shift = torch.tensor([0, 3, len(geometry.shifts) - 1, 7])
    maps = torch.fft.irfft2(filtered * found.references[frame].conj(), s=(w, w)) * w * w
    corr = maps.flatten(1)[torch.arange(4), found.shift_index[shift]]
    expected = (corr - norms[torch.arange(4), frame]) * p.smoothing + found.log_prior[shift]
    assert torch.allclose(found._score_at(filtered, norms, frame, shift), expected, rtol=1e-4,
                          atol=1e-2)


@pytest.mark.parametrize("mask_radius", [40.0, 68.0])
def test_the_noise_is_estimated_at_the_level_the_particles_hold_it(mask_radius):
    """On pure white noise the noise spectrum is the particles' own power, even where the
    mask nearly fills the box and the search's soft edge hides the background (it was 70x
    too low there: a likelihood as much too sharp)."""
    p = CycleParams(pixel_size=PIXEL, mask_radius=mask_radius, high_res=8.0,
                    search_range=9.0)
    geometry = plan_geometry(p, BOX, np.random.default_rng(0))
    found = search.Search(geometry, p, torch.ones((2, BOX, BOX)), torch.device("cpu"))
    stack = np.random.default_rng(0).normal(size=(300, BOX, BOX)).astype(np.float32)
    everyone = np.arange(len(stack))
    found.estimate_noise(stack, everyone, cistem_star.new_table(len(stack)))
    images = prepare(stack, everyone, p, found.background, torch.device("cpu"))
    power = (found._spectra(images).abs() ** 2).mean(dim=0)
    ratio = (found.noise / power)[found.band > 0]
    assert 0.9 < float(ratio.mean()) < 1.1


def test_the_translation_prior_is_as_wide_as_the_shifts_the_particles_were_aligned_with():
    rng = np.random.default_rng(0)
    shifts = rng.normal(0.0, 2.0, size=(4000, 2))
    assert learned_shift_sigma(shifts) == pytest.approx(2.0, rel=0.05)
    assert learned_shift_sigma(shifts[:MIN_ALIGNED_FOR_PRIOR - 1]) is None  # too few to say
    assert learned_shift_sigma(np.zeros((500, 2))) is None  # nothing aligned yet: the default
    p = CycleParams(pixel_size=PIXEL, mask_radius=40.0, high_res=12.0, search_range=36.0)
    wide = plan_geometry(p, BOX, np.random.default_rng(0))
    assert wide.prior_sigma * wide.binned_pixel == pytest.approx(18.0)  # half the range
    learned = plan_geometry(p, BOX, np.random.default_rng(0), shift_sigma=12.0)
    assert learned.prior_sigma * learned.binned_pixel == pytest.approx(12.0)
    assert torch.equal(learned.shifts, wide.shifts)  # the same range searched, more narrowly
    wider = plan_geometry(p, BOX, np.random.default_rng(0), shift_sigma=100.0)
    assert wider.prior_sigma == wide.prior_sigma  # never wider than half the range


def test_noisy_particles_aligned_near_the_centre_before_stay_near_it(data, classified, tmp_path):
    """At low signal to noise a prior as wide as half the search range lets each particle's
    noise pull it anywhere in the range; particles aligned before within a few Å of the
    centre (the star's classified rows) narrow the prior to that spread, as cisTEM does."""
    _, classes = classified[0], classified[1]
    phantom = Phantom(BOX, PIXEL, n_views=K, seed=3)
    batch = phantom.particles(300, np.random.default_rng(5), snr=0.03, defocus_u=15000.0,
                              defocus_v=14600.0, defocus_angle=20.0)  # centred picks
    with mrcfile.new(tmp_path / "particles.mrcs") as mrc:
        mrc.set_data(batch.images)
        mrc.voxel_size = PIXEL
    table = cistem_star.new_table(len(batch.images))
    table[["DF1", "DF2", "ANGAST"]] = (15000.0, 14600.0, 20.0)
    table["PSIZE"], table["VOLT"], table["Cs"], table["AmpC"] = PIXEL, 300.0, 2.7, 0.07
    spread = {}
    for aligned in (False, True):
        rows = table.copy()
        if aligned:  # classified before, within about 1 Å of the centre
            rows["2DCLS"] = 1 + np.arange(len(rows)) % K
            rows[["SHX", "SHY"]] = np.random.default_rng(1).normal(0.0, 1.0, (len(rows), 2))
        star = tmp_path / f"input_{aligned}.star"
        cistem_star.write_star(star, rows)
        step = CycleRequest(tmp_path / "particles.mrcs", star, tmp_path / f"out_{aligned}.star",
                            tmp_path / f"out_{aligned}.mrc",
                            params(data[1], search_range=36.0, high_res=12.0), K,
                            classes_in=classes, threads=1, seed=2)
        BuiltinEngine("cpu").run_cycle(step, lambda _: None, threading.Event())
        found = cistem_star.read_star(step.star_out)[["SHX", "SHY"]].to_numpy()
        spread[aligned] = float(np.median(np.hypot(*(found - np.median(found, axis=0)).T)))
    # half the range: σ 18 Å; learned: the floor of one working pixel (6 Å at 12 Å)
    assert spread[True] < 0.7 * spread[False], spread


def test_an_update_of_new_particles_takes_its_prior_from_the_latest_kept_batches(tmp_path):
    rng = np.random.default_rng(0)

    def rows(n, spread):
        table = cistem_star.new_table(n)
        table["2DCLS"] = 1 if spread else 0
        table[["SHX", "SHY"]] = rng.normal(0.0, spread, (n, 2)) if spread else 0.0
        return table

    def batch(i, classify, spread=None):
        path = tmp_path / f"rows_{i}.star"
        if spread is not None:
            cistem_star.write_star(path, rows(100, spread))
        return StreamBatch(100 * i, 100 * (i + 1), tmp_path / f"s{i}.pt", tmp_path / f"o{i}.pt",
                           classify, rows=path)

    new = rows(100, 0)  # the star of an update of new particles: nothing aligned
    kept = [batch(0, False, 9.0), batch(1, False, 2.0), batch(2, False), batch(3, True)]
    # the most recent kept batch with rows (batch 1; batch 2's rows cannot be read)
    assert update_shift_sigma(new, tuple(kept)) == pytest.approx(2.0, rel=0.15)
    revisited = rows(100, 4.0)  # re-visited particles are this update's own evidence
    assert update_shift_sigma(revisited, tuple(kept)) == pytest.approx(4.0, rel=0.15)
    assert update_shift_sigma(new, (batch(3, True),)) is None  # nothing to learn from
