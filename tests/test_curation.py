"""Particle-level curation: junk inside a good class is found by how it fits its class."""

import numpy as np
import pandas as pd
import pytest
import torch

from live2d.curation import MIN_MEMBERS, curate, robust_cut, signal_shares
from live2d.output_folder import shares_name


def table_of(labels):
    return pd.DataFrame({"2DCLS": np.asarray(labels, dtype=np.int64)})


def test_outliers_below_their_class_are_cut_and_typical_members_kept():
    rng = np.random.default_rng(0)
    n = 200
    labels = np.repeat([1, 2], n)
    # bounded spreads, so that no typical member lies 3 robust SDs out by chance; class 2's
    # particles hold less of their signal at the centre as a whole (another view)
    shares = np.concatenate([rng.uniform(0.55, 0.65, n), rng.uniform(0.35, 0.45, n)])
    shares[[3, 7, n + 5]] = [0.2, 0.25, 0.1]  # signal spread over the box: aggregates
    shares[n + 9] = 0.48  # above class 2's typical member: kept
    curation = curate(table_of(labels), shares, 2, cut=3.0)
    assert set(np.flatnonzero(~curation.keep)) == {3, 7, n + 5}
    first, second = curation.classes
    assert (first.kept, second.kept) == (n - 2, n - 1)
    assert "198 of 200 kept" in first.rule() and "signal share near the centre < 0." in \
        first.rule()
    # each class is judged against its own members: class 2's typical share would be junk
    # by class 1's cut
    assert second.share_cut < 0.35 < first.share_cut


def test_tiny_classes_empty_classes_and_unclassified_rows():
    labels = [1] * (MIN_MEMBERS - 1) + [-2, 0]
    shares = [0.6] * (MIN_MEMBERS - 2) + [0.01, np.nan, np.nan]
    curation = curate(table_of(labels), np.array(shares), 3, cut=3.0)
    assert curation.keep[: MIN_MEMBERS - 1].all()  # too few to judge: kept whole
    assert not curation.keep[MIN_MEMBERS - 1:].any()  # not classified: not in any class
    assert [c.kept for c in curation.classes] == [MIN_MEMBERS - 1, 0, 0]
    assert "fewer than" in curation.classes[0].rule() and curation.classes[1].rule() == ""


def test_a_blank_image_without_a_share_is_cut():
    labels = [1] * 40
    shares = np.full(40, 0.6) + np.linspace(0, 0.01, 40)
    shares[5] = np.nan
    curation = curate(table_of(labels), shares, 1, cut=3.0)
    assert list(np.flatnonzero(~curation.keep)) == [5]


def test_robust_cut_ignores_the_outliers_it_is_meant_to_find():
    values = np.concatenate([np.full(90, 10.0) + np.arange(90) % 3, np.full(10, -1000.0)])
    assert robust_cut(values, 3.0) == pytest.approx(11.0 - 3.0 * 1.4826 * 1.0)


def blob(box, centre, width):
    y, x = np.mgrid[:box, :box] - box // 2
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * width**2))


def test_signal_share_is_high_for_a_centred_particle_low_for_spread_signal():
    box, pixel = 64, 2.0
    particle = blob(box, (0, 0), 4)
    off = blob(box, (10, -6), 4)  # the same particle picked off centre
    aggregate = sum(blob(box, c, 4) for c in ((-20, -18), (18, 20), (20, -20)))
    stack = np.stack([particle, off, aggregate, off]).astype(np.float32)
    table = pd.DataFrame({"POS": [1, 2, 3, 4], "2DCLS": [1, 1, 1, 0],
                          # the alignment's shift brings the off-centre pick to the centre
                          "SHX": [0.0, -10 * pixel, 0.0, 0.0],
                          "SHY": [0.0, 6 * pixel, 0.0, 0.0]})
    shares = signal_shares(stack, table, pixel, mask_radius_px=24)
    assert shares[0] > 0.9 and shares[1] > 0.9  # centred where the alignment puts it
    assert shares[2] < 0.3
    assert np.isnan(shares[3])  # not classified
    unshifted = signal_shares(stack, table.assign(SHX=0.0, SHY=0.0), pixel, 24)
    assert unshifted[1] < shares[1]
    assert torch.isfinite(torch.as_tensor(shares[:3])).all()


def test_a_later_cycle_measures_only_the_particles_whose_alignment_changed(tmp_path,
                                                                           monkeypatch):
    # A streaming update re-aligns its new and re-visited particles only: the others' shares
    # are the earlier cycle's, so its cost does not grow with the session.
    import dataclasses

    from live2d import curation
    from live2d.cli import main as cli_main
    from live2d.history import particle_table, read_history
    from live2d.simulate import simulate

    warp = tmp_path / "warp"
    simulate(warp, particles=120, per_micrograph=60, box=32, pixel_size=4.0, snr=2.0, views=3)
    assert cli_main(["run", str(warp), "--once", "--classes", "3", "--particles-per-class",
                     "20", "--startup-cycles", "1", "--refinement-cycles", "1",
                     "--threads", "1"]) == 0
    output = warp / "classification"
    record = read_history(output)[-1]
    table = particle_table(output, record)
    # the session measured each scored cycle's shares already (its yield counts the particles
    # the curation keeps): measured again here from none
    assert (output / shares_name(record.number)).is_file()
    for kept in output.glob("cycle_*_shares.npy"):
        kept.unlink()
    measured = []
    real = curation.signal_shares

    def counted(stack, rows, pixel_size, radius):
        measured.append(len(rows))
        return real(stack, rows, pixel_size, radius)

    monkeypatch.setattr(curation, "signal_shares", counted)
    first = curation.cycle_shares(output, record, table)
    assert measured == [len(table)]
    assert np.array_equal(curation.cycle_shares(output, record, table), first, equal_nan=True)
    assert measured == [len(table)]  # kept: not measured again

    moved = table.copy()
    moved.loc[[3, 7, 11], "SHX"] += 4.0
    later = dataclasses.replace(record, number=record.number + 1)
    shares = curation.cycle_shares(output, later, moved)
    assert measured == [len(table), 3]
    unchanged = ~moved.index.isin([3, 7, 11])
    assert np.array_equal(shares[unchanged], first[unchanged], equal_nan=True)
    # The same as measuring every particle anew.
    for kept in output.glob("cycle_*_shares.npy"):
        kept.unlink()
    whole = curation.cycle_shares(output, dataclasses.replace(record, number=900), moved)
    assert measured[-1] == len(table)
    np.testing.assert_allclose(shares, whole, equal_nan=True)


def test_rescue_decides_by_the_best_chosen_class_members_fits_and_share():
    from live2d.curation import Fits, rescued

    # classes 1 and 2 chosen; 3 not: its rows are the candidates
    labels = np.array([1] * 30 + [2] * 30 + [3] * 4)
    fit = np.concatenate([np.linspace(50, 60, 30), np.linspace(30, 40, 30),
                          [56.0, 40.0, 36.0, 58.0]])
    best = np.concatenate([np.full(30, 1), np.full(30, 2), [1, 1, 2, 1]])
    shares = np.full(len(labels), 0.6)
    shares[-1] = 0.1  # fits well, but its signal is spread over the box: junk all the same
    into = rescued(Fits(best, fit), labels, [1, 2], shares, cut=3.0, spread=1.0)
    # as well as class 1's typical member; far below it; as well as class 2's (its own
    # best class, judged against that class's members)
    assert list(into[-4:]) == [1, 0, 2, 0]
    assert not into[:60].any()  # members are not candidates
    strict = rescued(Fits(best, fit), labels, [1, 2], shares, cut=3.0, spread=0.0)
    assert list(strict[-4:]) == [1, 0, 2, 0]  # 56 >= 55 and 36 >= 35: the medians


def test_particles_of_an_unselected_twin_class_fit_its_selected_twin_and_are_rescued(
        tmp_path):
    # More classes than views: a view split over two classes. With the larger one chosen and
    # the other not, its particles are searched against the chosen classes' averages and
    # rescued into their twin; the other views' particles are not.
    from live2d.cli import main as cli_main
    from live2d.curation import curate_cycle, cycle_shares, rescued, selected_fits
    from live2d.evaluate import truth_rows
    from live2d.history import particle_table, read_history
    from live2d.simulate import simulate, truth_dir_for

    warp = tmp_path / "warp"
    simulate(warp, particles=240, per_micrograph=60, box=32, pixel_size=4.0, snr=2.0, views=3,
             seed=3)
    assert cli_main(["run", str(warp), "--once", "--classes", "6", "--particles-per-class",
                     "20", "--startup-cycles", "1", "--refinement-cycles", "1",
                     "--threads", "1"]) == 0
    output = warp / "classification"
    record = read_history(output)[-1]
    table = particle_table(output, record)
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    view = np.array([int(r["view"]) for r in truth_rows(output, table, truth_dir_for(warp))])
    views = {k: np.bincount(view[labels == k]).argmax() for k in np.unique(labels[labels > 0])}
    twins = [(a, b) for a in views for b in views
             if a != b and views[a] == views[b] and (labels == a).sum() > (labels == b).sum()]
    assert twins, f"no view split over two classes: {views}"
    chosen, twin = twins[0]
    keep = curate_cycle(output, record, 3.0, table).keep
    fits = selected_fits(output, record, [chosen], keep, table)
    into = rescued(fits, labels, [chosen], cycle_shares(output, record, table), 3.0)
    assert np.isfinite(fits.fit[labels == twin]).all()
    assert (into[labels == twin] == chosen).sum() >= (labels == twin).sum() // 3
    other = (labels > 0) & (view != views[chosen])
    assert not into[other].any()
