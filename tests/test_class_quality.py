"""Per-class resolution estimates and good/junk scores, on particles with a known truth."""

import numpy as np
import pandas as pd
import pytest
import torch

from live2d import cistem_star
from live2d.class_quality import (
    assess_classes,
    frc,
    half_set_sums,
    resolution_from_frc,
    ring_index,
    signal_per_particle,
    straight_line_share,
)
from live2d.evaluate import correlation
from live2d.imaging import ctf_2d, rotate
from live2d.junk import render_junk
from live2d.phantom import Phantom

BOX, PIXEL = 48, 3.0


def particles(phantom, n, snr, seed=0, view=None):
    rng = np.random.default_rng(seed)
    batch = phantom.particles(n, rng, snr=snr, defocus_u=15000, defocus_v=14500,
                              defocus_angle=30, max_shift=6.0)
    table = cistem_star.new_table(n)
    table["DF1"], table["DF2"], table["ANGAST"] = 15000.0, 14500.0, 30.0
    table["PSIZE"], table["VOLT"], table["Cs"], table["AmpC"] = PIXEL, 300.0, 2.7, 0.07
    # the alignment a perfect engine reports: A = rotate(shift(P, SH), PSI); class = view
    table["PSI"], table["SHX"], table["SHY"] = -batch.psi, -batch.shift[:, 0], -batch.shift[:, 1]
    table["2DCLS"] = batch.view + 1
    return batch, table


def test_frc_is_one_for_the_same_image_and_near_zero_for_independent_noise():
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.standard_normal((64, 64)).astype(np.float32)) for _ in "ab")
    assert torch.allclose(frc(a, a)[1:], torch.ones(32), atol=1e-5)
    assert frc(a, b)[5:].abs().mean() < 0.1  # the inner rings hold few samples
    assert resolution_from_frc(torch.ones(33), 64, 1.5) == (3.0, True)  # never falls
    curve = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.1, 0.0])
    resolution, at_limit = resolution_from_frc(curve, 10, 2.0)
    assert not at_limit and 20 / 4 < resolution < 20 / 3  # between rings 3 and 4


def test_the_signal_per_particle_does_not_depend_on_how_many_there_are():
    """Half sums of n copies of one image in white noise: the estimate is the image's spectral
    SNR, for 20 particles as for 400, where the half sets' FRC rises with n."""
    rng = np.random.default_rng(1)
    signal = torch.from_numpy(Phantom(BOX, PIXEL, n_views=1).views[0])
    sigma, last_ring = 2.0, 12
    band = (ring_index(BOX) >= 1) & (ring_index(BOX) <= last_ring)
    truth = float((torch.fft.rfft2(signal).abs() ** 2)[band].sum()) / (
        sigma**2 * BOX**2 * int(band.sum()))
    for n in (20, 400):
        noise = torch.from_numpy(rng.standard_normal((n, BOX, BOX)).astype(np.float32)) * sigma
        images = signal + noise
        halves = images[0::2].sum(0), images[1::2].sum(0)
        assert signal_per_particle(*halves, n, last_ring) == pytest.approx(truth, rel=0.15)


def test_half_sums_undo_the_reported_alignment():
    phantom = Phantom(BOX, PIXEL, n_views=2)
    batch, table = particles(phantom, 200, snr=50.0)
    sums = half_set_sums(batch.images, table, 2, PIXEL)
    views = torch.from_numpy(phantom.views)
    for view in range(2):
        both = (sums[view, 0] + sums[view, 1])[None]
        own = float(correlation(both, views[view][None]))
        other = float(correlation(both, views[1 - view][None]))
        assert own > 0.5 and own > other + 0.2  # CTF-weighted, but the view, turned back
        half = correlation(sums[view, 0][None], sums[view, 1][None])
        assert float(half) > 0.9  # the two halves agree


def test_more_particles_give_a_finer_estimate_and_the_classes_are_scored_good():
    phantom = Phantom(BOX, PIXEL, n_views=2)
    estimates = []
    for n in (40, 400):
        batch, table = particles(phantom, n, snr=0.2, seed=n)
        quality = assess_classes(batch.images, table, phantom.views, PIXEL,
                                 0.6 * phantom.diameter, 8.0)
        estimates.append(np.mean([q.resolution for q in quality]))
    assert estimates[1] < estimates[0]
    assert all(q.score >= 0.5 and "centred" in q.reason for q in quality)


def test_junk_classes_get_low_scores_and_say_why():
    phantom = Phantom(BOX, PIXEL, n_views=1)
    rng = np.random.default_rng(3)
    junk = {kind: np.mean([render_junk(kind, phantom.views, rng, phantom._render_one)
                           for _ in range(3)], axis=0)
            for kind in ("empty", "contamination")}
    # a class of carbon edges aligned: the step, its grain averaged out
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    carbon = 1.5 * 0.5 * (1.0 + np.tanh((x * np.cos(0.7) + y * np.sin(0.7) - 4.0) / 1.5))
    averages = np.stack([phantom.views[0], junk["empty"] * 0 + 0.01 * rng.standard_normal(
        (BOX, BOX)), junk["contamination"] * 4, carbon * 0.3]).astype(np.float32)
    radius = 0.6 * phantom.diameter / PIXEL
    assert straight_line_share(averages[3], radius) > 0.76
    assert straight_line_share(averages[0], radius) < 0.56
    batch, table = particles(phantom, 400, snr=0.2)
    table["2DCLS"] = np.arange(400) // 2 % 4 + 1  # both halves (by position) in every class
    quality = assess_classes(batch.images, table, averages, PIXEL, 0.6 * phantom.diameter,
                             8.0)
    reasons = [q.reason for q in quality]
    assert quality[0].score >= 0.5
    assert "empty ice" in reasons[1] and "contamination" in reasons[2] and \
        "carbon" in reasons[3]
    assert all(q.score < 0.5 for q in quality[1:])


def rod(length_px: float, width_px: float, angle: float) -> np.ndarray:
    """A long particle's side view: a rod with a finer rod of stripes along it (helices)."""
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    along = x * np.cos(angle) + y * np.sin(angle)
    across = -x * np.sin(angle) + y * np.cos(angle)

    def blob(length, width):
        return np.exp(-0.5 * ((along / (length / 2.355)) ** 2 + (across / (width / 2.355)) ** 2))

    stripes = np.cos(2.0 * np.pi * along / 3.0)
    return (blob(length_px, width_px) + 0.5 * blob(0.6 * length_px, 0.6 * width_px) * stripes)


def test_a_long_particles_side_view_is_no_carbon_edge():
    # Its outline puts most of its spectrum's power along one direction, as an edge does: judged
    # by that, such classes of a long membrane protein (6MSM) were proposed as carbon.
    phantom = Phantom(BOX, PIXEL, n_views=2)
    radius = 0.6 * phantom.diameter / PIXEL
    side_view = rod(1.1 * radius, 0.35 * radius, 0.5).astype(np.float32)
    assert straight_line_share(side_view, radius) < 0.56
    batch, table = particles(phantom, 400, snr=0.2)
    averages = np.stack([phantom.views[0], side_view * float(phantom.views[0].max())])
    quality = assess_classes(batch.images, table, averages, PIXEL, radius * PIXEL, 8.0)
    assert quality[1].score >= 0.5 and "carbon" not in quality[1].reason


def test_an_empty_class_is_reported_as_such():
    phantom = Phantom(BOX, PIXEL, n_views=1)
    batch, table = particles(phantom, 50, snr=1.0)
    quality = assess_classes(batch.images, table, np.concatenate([phantom.views] * 2), PIXEL,
                             40.0, 8.0)
    assert quality[1].particles == 0 and quality[1].score == 0 and quality[1].reason == \
        "empty class"
    assert pd.Series([q.number for q in quality]).tolist() == [1, 2]
    assert quality[0].resolution == pytest.approx(quality[0].resolution)


def aligned_to(images: np.ndarray, reference: np.ndarray, step: float = 5.0) -> np.ndarray:
    """``images`` each turned (every ``step`` degrees) and shifted (whole pixels) to where its
    CTF-weighted copy correlates best with ``reference``: what an engine does to noise."""
    ctf = ctf_2d(*(torch.tensor([value]) for value in (15000.0, 14500.0, 30.0, 300.0, 2.7,
                                                       0.07, 0.0)), PIXEL, BOX)[0]
    angles, n = np.arange(0.0, 360.0, step), len(images)
    turned = rotate(torch.from_numpy(images).repeat(len(angles), 1, 1),
                    np.repeat(angles, n)).view(len(angles), n, BOX, BOX)
    target = torch.fft.rfft2(torch.from_numpy(reference)).conj()
    scores = torch.fft.irfft2(torch.fft.rfft2(turned) * ctf * target, s=(BOX, BOX))
    best = scores.transpose(0, 1).reshape(n, -1).argmax(1)  # over angles and shifts
    angle, (dy, dx) = best // BOX**2, np.divmod((best % BOX**2).numpy(), BOX)
    return np.stack([torch.roll(turned[angle[i], i], (-int(dy[i]), -int(dx[i])), (0, 1)).numpy()
                     for i in range(n)])


def test_a_rare_view_is_good_and_a_few_noisy_or_mixed_picks_are_not():
    """Among 2,000 particles, 33 of a rare view (under a fifth of the average class) are good;
    33 picks of empty ice aligned to a view, whose half sets agree on a resolution all the
    same, and 33 particles of eight views are not: they bring far less signal per particle."""
    phantom = Phantom(BOX, PIXEL, n_views=10)
    batch, table = particles(phantom, 2000, snr=0.2, seed=5)
    view = batch.view
    keep = (view < 9) | ((view == 9) & (np.cumsum(view == 9) <= 33))
    mixed = np.flatnonzero(view < 8)[:33]  # particles of eight views, each turned to its own
    table = pd.concat([table[keep], table.iloc[mixed].assign(**{"2DCLS": 12})])
    ice = phantom.particles(33, np.random.default_rng(7), snr=0.2, defocus_u=15000,
                            defocus_v=14500, defocus_angle=30, junk=1.0, junk_kinds=("empty",))
    table = pd.concat([table, cistem_star.new_table(33).assign(**{
        column: table[column].iloc[0] for column in ("DF1", "DF2", "ANGAST", "PSIZE", "VOLT",
                                                     "Cs", "AmpC")}, **{"2DCLS": 11})])
    stack = np.concatenate([batch.images[keep], batch.images[mixed],
                            aligned_to(ice.images, phantom.views[8])])
    table["POS"] = np.arange(1, len(table) + 1)
    # the class averages as an engine makes them: of the aligned members, noise and all
    sums = half_set_sums(stack, table, 12, PIXEL)
    counts = np.bincount(table["2DCLS"], minlength=13)[1:]
    averages = (sums.sum(1) / torch.from_numpy(counts)[:, None, None]).numpy()
    quality = assess_classes(stack, table, averages, PIXEL, 0.6 * phantom.diameter, 8.0,
                             half_sums=sums, counts=counts.tolist())
    rare, ice, mixed = quality[9], quality[10], quality[11]
    assert rare.particles == ice.particles == mixed.particles == 33
    assert rare.score >= 0.5 and rare.reason.startswith("rare view: 33 particles,")
    assert rare.signal > 0.7
    for junk in (ice, mixed):
        assert junk.score < 0.5 and junk.signal < 0.5, junk
    # every view of the molecule brings about as much signal per particle
    assert all(0.5 < q.signal < 2.5 for q in quality[:10])
