import pytest

from live2d.errors import SettingsError
from live2d.schedule import (
    Settings,
    automatic_job_due,
    next_job_type,
    plan_job,
    ramp,
    subset_fraction,
)


def test_defaults_are_the_original_live2d():
    s = Settings()
    assert (s.classes, s.particles_per_class, s.high_res_initial, s.high_res_final) == (
        50, 300, 40.0, 8.0)
    assert (s.startup_cycles, s.refinement_cycles, s.update_every) == (15, 5, 50_000)
    # The original waited for 50,000 particles; streaming updates let the first job start at
    # 10,000, as RELION's on-the-fly pipeline does (README, Performance: an early start).
    assert s.first_job_at == 10_000
    assert (s.low_res, s.angular_step, s.smoothing, s.auto_center, s.auto_mask) == (
        300.0, 15.0, 1.0, True, False)
    assert s.mask_radius is None and s.search_range is None  # 0.6 / 0.33 × Warp's diameter


def test_abinit_plan_start_then_ramp_on_subset_then_refinement_on_all():
    plan = plan_job("abinit", Settings(), 100_000)
    assert len(plan) == 1 + 15 + 5
    start, startup, refinement = plan[0], plan[1:16], plan[16:]
    assert start.kind == "start" and start.high_res == 40.0
    assert start.fraction == pytest.approx(300 * 50 / 100_000)
    assert [c.high_res for c in startup] == pytest.approx(ramp(40.0, 8.0, 15))
    assert startup[1].high_res == pytest.approx(40 - 32 / 14)  # ≈2.3 Å per cycle, as documented
    assert all(c.fraction == start.fraction and c.block == "startup" for c in startup)
    assert all(c.high_res == 8.0 and c.fraction == 1.0 for c in refinement)
    assert [c.block_cycle for c in refinement] == [1, 2, 3, 4, 5]
    assert [c.index for c in plan] == list(range(21))


def test_subset_fraction_is_capped_at_all_particles():
    assert subset_fraction(Settings(), 1000) == 1.0
    assert subset_fraction(Settings(classes=10, particles_per_class=100), 10_000) == 0.1


def test_seeded_uses_all_particles_and_refine_only_refinement_cycles():
    seeded = plan_job("seeded", Settings(), 1_000_000)
    assert len(seeded) == 20 and all(c.kind == "refine" and c.fraction == 1.0 for c in seeded)
    assert seeded[0].high_res == 40.0 and seeded[14].high_res == 8.0
    refine = plan_job("refine", Settings(refinement_cycles=2), 1_000_000)
    assert [(c.block, c.high_res) for c in refine] == [("refinement", 8.0)] * 2


def test_single_startup_cycle_goes_straight_to_final():
    assert ramp(40.0, 8.0, 1) == [8.0]
    assert ramp(40.0, 8.0, 0) == []


def test_after_abinit_come_streaming_updates_or_seeded_startups():
    assert next_job_type("abinit") == "stream"
    assert next_job_type("abinit", streams=False) == "seeded"
    assert next_job_type("refine") == "refine"


def test_automatic_triggers():
    s = Settings(first_job_at=1000, update_every=500)
    assert not automatic_job_due(s, 999, None)
    assert automatic_job_due(s, 1000, None)
    assert not automatic_job_due(s, 1499, 1000)
    assert automatic_job_due(s, 1500, 1000)
    # Collection paused: the particles no job has seen are classified, however few.
    assert not automatic_job_due(s, 1001, 1000, quiet_seconds=599)
    assert automatic_job_due(s, 1001, 1000, quiet_seconds=600)
    assert automatic_job_due(s, 50, None, quiet_seconds=600)
    assert not automatic_job_due(s, 49, None, quiet_seconds=600)  # fewer than one per class
    assert not automatic_job_due(s, 1000, 1000, quiet_seconds=6000)  # nothing new
    assert not automatic_job_due(Settings(catch_up_after=0), 1001, 1000, quiet_seconds=1e9)


@pytest.mark.parametrize("values, message", [
    ({"classes": 0}, "between 1 and 1000"),
    ({"classes": 2.5}, "whole number"),
    ({"classes": "5"}, "must be a number"),
    ({"classes": True}, "must be a number"),
    ({"high_res_final": float("nan")}, "finite"),
    ({"mode": "fast"}, "one of abinit, seeded, refine, stream"),
    ({"auto_center": "yes"}, "true or false"),
    ({"bogus": 1}, "unknown setting"),
    ({"high_res_initial": 8.0, "high_res_final": 20.0}, "must not be coarser"),
    ({"classes": None}, "needs a value"),
])
def test_invalid_settings_are_refused_with_the_setting_named(values, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_dict(values)


def test_valid_settings_are_coerced_and_optional_ones_can_be_cleared():
    s = Settings.from_dict({"classes": 20.0, "mask_radius": 90, "search_range": ""})
    assert s.classes == 20 and isinstance(s.classes, int)
    assert s.mask_radius == 90.0 and s.search_range is None


def test_specs_describe_every_setting_for_uis():
    specs = {spec["name"]: spec for spec in Settings.specs()}
    assert specs["classes"]["type"] == "int" and specs["classes"]["min"] == 1
    assert specs["mode"]["type"] == "choice" and specs["mode"]["level"] == "user"
    assert specs["mask_radius"]["optional"] and specs["mask_radius"]["level"] == "user"
    assert specs["auto_mask"]["type"] == "bool"


def test_every_setting_has_a_help_and_states_its_default_once():
    for spec in Settings.specs():
        name, text = spec["name"], spec["help"]
        assert len(text) > 80, f"{name}: help too short: {text!r}"
        # The default and the range are Settings.describe's to state, once for every UI.
        assert "default" not in text.lower() and "range " not in text.lower(), name
        full = Settings.describe(name)
        assert spec["full_help"] == full and full.startswith(text), name
        assert full.count("Default") == 1 and full.lower().count("default") == 1, full
        assert full.count("Allowed:") == (spec["min"] is not None), full
        if spec["optional"]:
            assert full.count("empty, meaning") == 1 and full.count("empty") == 1, full


def test_composed_help_states_default_unit_and_range():
    assert Settings.describe("classes").endswith("Default: 50. Allowed: 1 to 1000.")
    assert Settings.describe("high_res_initial").endswith("Default: 40 Å. Allowed: 2 to 300 Å.")
    assert "Default: 10,000." in Settings.describe("first_job_at")
    assert "Default: Ab initio." in Settings.describe("mode")
    assert "Default: on." in Settings.describe("auto_center")
    assert "Default: empty, meaning 0.6 × the particle diameter Warp picks with." in (
        Settings.describe("mask_radius"))
    # A UI's note goes after the default, before the range.
    assert Settings.describe("classes", "NOTE.").endswith("Default: 50. NOTE. Allowed: 1 to 1000.")


def test_autocenter_and_automask_say_what_cistem_does():
    assert "centre of mass" in Settings.describe("auto_center")
    assert "density" in Settings.describe("auto_mask")
    mode = Settings.describe("mode")
    assert all(label in mode for label in ("Ab initio:", "Seeded startup:", "Refinement:"))


def test_cli_setting_options_take_their_help_from_settings(capsys):
    import argparse

    from live2d.cli import main as cli_main
    from live2d.commands import run

    parser = argparse.ArgumentParser()
    run.add_args(parser)
    actions = {action.dest: action for action in parser._actions}
    assert set(run.SETTING_OPTIONS) <= {spec["name"] for spec in Settings.specs()}
    for name in run.SETTING_OPTIONS:
        assert actions[name].help.replace("%%", "%") == Settings.describe(name), name
    assert actions["mode"].choices == ("abinit", "seeded", "refine", "stream")
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "Default: 10,000. Allowed: 1 to 100,000,000." in shown
    assert "(10000)" not in shown  # the hand-written defaults are gone
