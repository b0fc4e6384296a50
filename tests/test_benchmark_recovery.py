"""benchmarks/bench_recovery.py (``prune_speedup.py --phase recovery``): a row's pruned model
rebuilt from its report and retrained with a recipe and a seed (the row's own recipe and seed
repeat it), the controls, the noise verdicts, and the results.json entry and RESULTS.md section."""
import importlib
import json
import os
import sys

import pytest

from conftest import ROOT, write_optic_config

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "slim", "prune"))
import bench_accuracy  # noqa: E402
import bench_goals  # noqa: E402
import bench_recipes  # noqa: E402
import bench_recovery  # noqa: E402
import bench_report  # noqa: E402
import prune_speedup  # noqa: E402
from test_benchmark_report import tiny_results  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def test_a_control_keeps_the_schedule_but_not_what_needs_a_pruned_model():
    flags = ["--retrain_schedule", "finetune", "--distill", "channel", "--distill_weight", "2",
             "--prune_steps", "2", "--finetune_lr_scale", "0.2"]
    assert bench_recovery.control_flags(flags) == ["--retrain_schedule", "finetune",
                                                   "--finetune_lr_scale", "0.2"]
    for name in bench_recipes.RECIPES:
        # every recipe parses as prune.py's flags, its length a multiple of the row's
        o = bench_recovery.recipe_options(
            {"config": "configs/camvid/fastscnn_camvid_256x192.yml", "pruning_ratio": 0.3,
             "retraining_iters": 4, "criterion": "fpgm"},
            bench_recipes.recipe_flags(name, 4), 1, "/tmp/x")
        assert o.seed == 1 and o.retraining_iters == (16 if name.endswith("long") else 4), name


def test_a_difference_counts_only_outside_welchs_95_percent_interval():
    diff, noise, beyond = bench_accuracy.compare([0.40, 0.41, 0.42], [0.30, 0.31, 0.32])
    # equal sds, 3 seeds a side: 4 degrees of freedom, t(0.975, 4) = 2.7764
    assert diff == pytest.approx(10.0) and beyond
    assert noise == pytest.approx(2.7764 * (2 * 0.01 ** 2 / 3) ** 0.5 * 100, rel=1e-4)
    # one side with no spread: the other side's 2 degrees of freedom, t(0.975, 2) = 4.3027
    diff, noise, _ = bench_accuracy.compare([0.40, 0.41, 0.42], [0.30, 0.30, 0.30])
    assert noise == pytest.approx(4.3027 * (0.01 ** 2 / 3) ** 0.5 * 100, rel=1e-4)
    # 2 standard errors (the normal approximation) would call this one real; the t-test does not
    diff, noise, beyond = bench_accuracy.compare([0.40, 0.42, 0.44], [0.36, 0.38, 0.40])
    assert 2 * (2 * 0.02 ** 2 / 3) ** 0.5 * 100 < diff < noise and not beyond
    diff, noise, beyond = bench_accuracy.compare([0.40, 0.44, 0.36], [0.39, 0.43, 0.38])
    assert abs(diff) < noise and not beyond
    # one seed has no spread to judge by: never "beyond"
    assert not bench_accuracy.compare([0.5], [0.1])[2]


def recovery_entry(plain, plain_control, finetune, finetune_control):
    recipes = {"plain": {"label": "config schedule (as the row)", "flags": [],
                         "control": "config schedule", "mious": plain,
                         "seconds_per_iter": [1.0, 1.0, 1.0]},
               "finetune": {"label": "finetune schedule", "flags": ["--retrain_schedule",
                                                                    "finetune"],
                            "control": "--retrain_schedule finetune", "mious": finetune,
                            "seconds_per_iter": [1.2, 1.2, 1.2]}}
    controls = {"config schedule": {"flags": [], "mious": plain_control},
                "--retrain_schedule finetune": {"flags": ["--retrain_schedule", "finetune"],
                                                "mious": finetune_control}}
    return {"ratio": 0.3, "row_label": "latency target 0.3", "speedup": "1.44x",
            "retraining_iters": 150, "seeds": [0, 1, 2], "machine": "a CPU, 2 cores visible",
            "git": "abc", "date": "2026-12-02", "command": "python benchmarks/prune_speedup.py",
            "row_step_key": "k" * 64, "recipes": recipes, "controls": controls}


def test_the_section_gives_means_spreads_and_verdicts():
    entry = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.435, 0.44, 0.445], [0.44, 0.445, 0.45])
    text = "\n".join(bench_accuracy.recovery_lines({"recovery": {"FastSCNN": entry}}))
    assert "### FastSCNN" in text and "speedup 1.44x" in text
    plain_line = next(line for line in text.splitlines() if line.startswith("| config schedule"))
    assert "0.3300 ± 0.0100 (n=3)" in plain_line and "-11.0 ±" in plain_line
    assert "beyond the noise" in plain_line
    finetune_line = next(line for line in text.splitlines() if line.startswith("| finetune"))
    assert "within the noise" in finetune_line.split("|")[5]  # vs its own control: -0.5
    assert "beyond the noise" in finetune_line.split("|")[6]  # vs the config schedule: +11
    assert "1.20 (1.20x)" in finetune_line
    assert "Within 1.0 point of the control (3-seed means): finetune schedule." in text
    assert "Not yet measured" in "\n".join(bench_accuracy.recovery_lines({}))


def headline_row(kind, ratio, speedup, delta, **more):
    # the latency row is the one recovery_entry's units retrained (its step key)
    return dict({"row": kind, "ratio": ratio, "status": "ok", "speedup": speedup,
                 "miou_delta_points": delta, "step_key": ("k" if kind == "latency" else "x") * 64},
                **more)


def test_a_recovery_command_that_measures_less_says_what_the_entry_loses(tmp_path, capsys):
    """A model's recovery entry is its last command's: one with fewer recipes or without
    --frontier_seeds replaces it, and the log names what the old entry had (still cached)."""
    full = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                          [0.435, 0.44, 0.445], [0.44, 0.445, 0.45])
    full["rows"] = [{"kind": "flops", "ratio": 0.3, "label": "FLOPs target 0.3",
                     "control": "config schedule", "mious": [0.4, 0.41, 0.42]}]
    (tmp_path / "results.json").write_text(json.dumps(
        {"format": bench_report.FORMAT, "models": {}, "gpu": None,
         "recovery": {"UNet": full}}))
    plain_only = dict(full, recipes={"plain": full["recipes"]["plain"]}, rows=[])
    assert bench_report.dropped_measurements(full, plain_only) == [
        "recipe finetune", "the seeds of row FLOPs target 0.3"]
    assert bench_report.dropped_measurements(full, full) == []
    # another row: its units could not have been kept, so nothing is said to be lost
    assert bench_report.dropped_measurements(full, dict(plain_only, row_step_key="n" * 64)) == []
    data = bench_report.merge_recovery(str(tmp_path), "UNet", plain_only)
    assert list(data["recovery"]["UNet"]["recipes"]) == ["plain"]
    assert "UNet's recovery entry no longer has recipe finetune" in capsys.readouterr().out


def test_the_recovery_goals_judge_the_best_recipe_against_the_filed_loss():
    # the issue was filed with -11.2 for FastSCNN; the default loses 11 points, the finetune
    # recipe 0.5 (within 1 point, more than half recovered) at 1.2x the time per iteration
    entry = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.435, 0.44, 0.445], [0.44, 0.445, 0.45])
    results = {"models": {"FastSCNN": {"rows": [headline_row("latency", 0.3, 1.44, -11.0)]},
                          "UNet": {"rows": []}},
               "recovery": {"FastSCNN": entry}}
    goal = bench_goals.recovery_goal("FastSCNN", results)
    assert goal["best"] == "finetune" and goal["speedup"] == 1.44
    assert goal["default"] == pytest.approx(-11.0) and goal["best_delta"] == pytest.approx(-0.5)
    assert goal["within"] and goal["recovered_half"] and goal["cost_ok"]
    assert not goal["under_speed"]
    assert bench_goals.recovery_goal("UNet", results) is None
    # a recipe that only wins back 4 of 11 points recovers less than half, and 1.6x costs too much
    entry["recipes"]["finetune"].update(mious=[0.36, 0.37, 0.38], seconds_per_iter=[1.6] * 3)
    goal = bench_goals.recovery_goal("FastSCNN", results)
    assert goal["default"] > goal["best_delta"] - 100 and not goal["within"]
    assert not goal["recovered_half"] and not goal["cost_ok"]
    text = "\n".join(bench_goals.goal_lines(results))
    assert "| FastSCNN | 1.44x | -11.0 | finetune schedule |" in text
    assert "| UNet | - | not measured |" in text
    # a row slower than the goal's 1.38x is flagged beside its verdicts
    results["models"]["FastSCNN"]["rows"][0]["speedup"] = 1.37
    assert "| FastSCNN | 1.37x (under 1.38x) | -11.0 | finetune schedule | -7.5 | " \
        "missed (at 1.37x) | missed (at 1.37x) (-11.2 -> -5.6) |" in \
        "\n".join(bench_goals.goal_lines(results))
    # half of the filed loss, not of today's default: -4.0 where the issue said -11.2 is met
    entry["recipes"]["finetune"].update(mious=[0.39, 0.40, 0.41])
    assert bench_goals.recovery_goal("FastSCNN", results)["recovered_half"]
    # a model the issue did not name is judged against its default retraining's loss (-11)
    results["models"]["Other"] = results["models"].pop("FastSCNN")
    results["recovery"]["Other"] = results["recovery"].pop("FastSCNN")
    assert bench_goals.recovery_goal("Other", results)["recovered_half"]
    entry["recipes"]["finetune"].update(mious=[0.36, 0.37, 0.38])
    assert not bench_goals.recovery_goal("Other", results)["recovered_half"]


def test_a_longer_retraining_is_reported_apart_from_the_goal_and_the_defaults():
    # 4x the row's 150 iterations, against its control fine-tuned as long: within 1 point,
    # and better than every recipe at the row's length, yet neither the goal's best recipe nor
    # a candidate default (its length is the user's --retraining_iters)
    assert bench_recipes.recipe_flags("long", 150) == ["--retraining_iters", "600"]
    assert bench_recipes.RECIPES["long"][1] == ["--retraining_iters", "4x"]   # not rewritten
    entry = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.36, 0.37, 0.38], [0.44, 0.445, 0.45])
    entry["recipes"]["long"] = {"label": "4x retraining iterations",
                                "flags": ["--retraining_iters", "600"],
                                "control": "--retraining_iters 600", "mious": [0.44, 0.45, 0.46],
                                "seconds_per_iter": [1.0] * 3}
    entry["controls"]["--retraining_iters 600"] = {"flags": ["--retraining_iters", "600"],
                                                   "mious": [0.435, 0.44, 0.445]}
    results = {"models": {"FastSCNN": {"rows": [headline_row("latency", 0.3, 1.44, -11.0)]}},
               "recovery": {"FastSCNN": entry}}
    assert bench_goals.recipe_iters(entry, "long") == 600
    assert bench_goals.recipe_iters(entry, "finetune") == 150
    assert bench_goals.recovery_goal("FastSCNN", results)["best"] == "finetune"
    assert not any("4x retraining" in line for line in bench_goals.defaults_lines(results))
    text = "\n".join(bench_goals.goal_lines(results))
    assert "| FastSCNN | 4x retraining iterations | 600 (150) | +1.0 ± 2.1: within the noise " \
        "| met | met (-11.2 -> -5.6) |" in text
    assert "Within 1.0 point when retrained longer: 1 of 1 model(s) measured (the benchmark " \
        "has 5)." in text
    # 5 points short of its control fine-tuned as long: neither goal met, and counted so
    entry["recipes"]["long"]["mious"] = [0.38, 0.39, 0.40]
    text = "\n".join(bench_goals.goal_lines(results))
    assert "| -5.0 ± 2.1: beyond the noise | missed | met (-11.2 -> -5.6) |" in text
    assert "retrained longer: 0 of 1 model(s)" in text
    entry["recipes"]["long"]["mious"] = [0.37, 0.38, 0.39]
    assert "| missed | missed (-11.2 -> -5.6) |" in "\n".join(bench_goals.goal_lines(results))
    # without a longer recipe the section is left out
    del entry["recipes"]["long"]
    assert "Retrained longer" not in "\n".join(bench_goals.goal_lines(results))


def test_a_recipe_becomes_the_default_only_with_wins_on_four_models():
    models = ["BiSeNetV2", "FCN-HRNetW18", "FastSCNN", "HarDNet", "UNet"]
    wins = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                          [0.435, 0.44, 0.445], [0.44, 0.445, 0.45])   # +11 points: a win
    noise = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.30, 0.33, 0.36], [0.44, 0.445, 0.45])    # 0 ± 3.5: noise
    results = {"models": {m: {"rows": []} for m in models},
               "recovery": {"BiSeNetV2": wins, "FastSCNN": noise}}

    def finetune_line():
        return next(line for line in bench_goals.defaults_lines(results)
                    if line.startswith("| finetune schedule"))
    assert bench_goals.recipe_outcome(wins, "finetune") == ("wins", pytest.approx(11.0))
    assert bench_goals.recipe_outcome(noise, "finetune")[0] == "noise"
    assert bench_goals.recipe_outcome(wins, "distill") is None
    # 1 win of 2 measured: 3 more needed, 3 models to come
    assert finetune_line() == ("| finetune schedule | +11.0 (wins) | - | +0.0 (noise) | - | - | 1 "
                               "| 1.20x | open: 3 more win(s) needed, 3 model(s) not measured |")
    results["recovery"].update(UNet=noise, HarDNet=noise)   # 1 win, 1 model left: never 4
    assert finetune_line().endswith("| 1 | 1.20x | no: it cannot win on 4 models any more |")
    results["recovery"] = {m: wins for m in models[:4]}
    assert finetune_line().endswith("| 4 | 1.20x | yes |")
    assert "A recipe becomes prune.py's default" in "\n".join(bench_goals.goal_lines(results))
    # a study's results.json with 2 of the benchmark's 5 models: the 3 it lacks are to come
    results = {"models": {m: {"rows": []} for m in models[:2]},
               "recovery": {"BiSeNetV2": wins, "FCN-HRNetW18": wins}}
    assert finetune_line().endswith("| 2 | 1.20x | open: 2 more win(s) needed, 3 model(s) not "
                                    "measured |")


def test_the_frontier_dominates_a_point_it_passes_above_or_outruns():
    curve = [(1.2, -1.0), (1.5, -3.0), (1.8, -6.0)]
    assert bench_goals.frontier_beats(curve, (1.35, -2.5))   # -2.0 at 1.35x
    assert not bench_goals.frontier_beats(curve, (1.35, -1.5))
    assert bench_goals.frontier_beats(curve, (1.0, -4.0))    # 1.2x at -1.0 outruns it
    assert not bench_goals.frontier_beats(curve, (1.0, 0.5))
    assert bench_goals.frontier_beats(curve, (2.0, -9.0)) is None  # beyond the curve
    assert bench_goals.frontier_beats([], (1.0, -1.0)) is None


def test_the_budget_goals_read_the_budget_rows_and_the_deepest_latency_row():
    def model(budget_speedup, budget_delta, deep_speedup, deep_delta, reach):
        return {"rows": [
            headline_row("control", None, 1.0, 0.0),
            headline_row("latency", 0.3, 1.4, -2.0),
            headline_row("latency", 0.5, deep_speedup, deep_delta,
                         latency_target={"max_speedup": reach}),
            headline_row("latency_budget", 1.0, budget_speedup, budget_delta,
                         budget={"chosen_cut": 0.2, "why": "cut 0.3 refused"}),
            headline_row("paddleslim", 0.3, 1.1, -4.0)]}
    results = {"models": {"FastSCNN": model(1.3, -0.8, 1.7, -2.0, 1.72),
                          "UNet": model(1.6, -1.4, 2.0, -4.0, 3.0)}}
    text = "\n".join(bench_goals.budget_goal_lines(results))
    assert "| FastSCNN | 0.2 | 1.30x | -0.8 (1 seed) | met | cut 0.3 refused |" in text
    assert "| UNet | 0.2 | 1.60x | -1.4 (1 seed) | missed |" in text
    assert "Median speedup over the 2 measured model(s): 1.45x" in text
    assert "not measured on all five" in text
    # FastSCNN cannot reach 1.9x (at most 1.72x): said so, and its accuracy still judged
    assert ("| FastSCNN | 1.72x | 1.70x | -2.0 (1 seed) | out of reach (1.72x); within 3 points: "
            "met |") in text
    assert "| UNet | 3.00x | 2.00x | -4.0 (1 seed) | missed |" in text
    deep = next(r for r in results["models"]["UNet"]["rows"] if r["ratio"] == 0.5)
    deep.update(status="failed", error="target latency reduction 0.500 is above the 0.442")
    assert "| - | - | failed: target latency reduction 0.500 is above the 0.442 |" in \
        "\n".join(bench_goals.budget_goal_lines(results))
    deep.update(status="ok")
    # a budget no cut meets: the unpruned model is the answer (1.00x, counted in the median);
    # another failure is shown as one
    budget_row = next(r for r in results["models"]["UNet"]["rows"] if r["row"] == "latency_budget")
    budget_row.update(status="failed", error="--max_miou_drop 1: the smallest cut, 0.1, is "
                      "refused (5.0 points lost + 1.6 noise > 1); the unpruned model stays the "
                      "answer")
    text = "\n".join(bench_goals.budget_goal_lines(results))
    assert "| UNet | none | 1.00x | +0.0 | met (unpruned) | --max_miou_drop 1: the smallest" in text
    assert "Median speedup over the 2 measured model(s): 1.15x" in text
    budget_row.update(error="killed")
    assert "| UNet | - | - | - | failed: killed | |" in \
        "\n".join(bench_goals.budget_goal_lines(results))
    assert text.count("met (2 latency row(s))") == 2   # 1.4x at -2 beats PaddleSlim's 1.1x at -4
    # a PaddleSlim row slower than the unpruned network is beaten by not pruning (the control)
    for entry in results["models"].values():
        entry["rows"] = [r for r in entry["rows"] if r["row"] in ("control", "paddleslim")]
        entry["rows"][-1].update(speedup=0.97, miou_delta_points=-3.7)
    assert "met (0 latency row(s))" in "\n".join(bench_goals.budget_goal_lines(results))
    # a PaddleSlim that failed is said to have failed, one its time limit stopped not to finish
    slim_rows = [entry["rows"][-1] for entry in results["models"].values()]
    slim_rows[0].update(status="failed", error="ValueError: (InvalidArgument) channels")
    slim_rows[1].update(status="failed", error="stopped after 3600 s (--paddleslim_timeout)")
    text = "\n".join(bench_goals.budget_goal_lines(results))
    assert "| PaddleSlim failed |" in text and "| PaddleSlim did not finish |" in text
    slim_rows[0].update(status="ok", speedup=None)   # made by --phase prepare, not yet timed
    assert "| PaddleSlim not timed |" in "\n".join(bench_goals.budget_goal_lines(results))


def seeded_headline(entry):
    """FastSCNN's headline rows (control, latency 0.3, a budget row retrained over seeds in
    ``entry``, a FLOPs row retrained once) and the results holding them and ``entry``."""
    rows = [headline_row("control", None, 1.0, 0.0, miou=0.42),
            headline_row("latency", 0.3, 1.44, -9.0, miou=0.33),
            headline_row("latency_budget", 1.0, 1.2, -3.0, miou=0.39),
            headline_row("flops", 0.3, 1.1, -1.0, miou=0.41)]
    return rows, {"models": {"FastSCNN": {"rows": rows}}, "recovery": {"FastSCNN": entry}}


def test_rows_retrained_over_seeds_are_judged_by_their_means_against_the_control_s():
    entry = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.435, 0.44, 0.445], [0.44, 0.445, 0.45])
    entry["rows"] = [{"kind": "latency_budget", "ratio": 1.0, "label": "budget",
                      "control": "config schedule", "mious": [0.43, 0.435, 0.44]}]
    rows, results = seeded_headline(entry)
    by = {r["row"]: r for r in rows}
    # the latency row: the config-schedule recipe's mean (0.33) against the control's (0.44)
    delta, sd, seeds = bench_accuracy.row_delta(results, "FastSCNN", by["latency"])
    assert delta == pytest.approx(-11.0) and sd == pytest.approx(1.0) and seeds == 3
    assert bench_accuracy.row_delta(results, "FastSCNN", by["latency_budget"])[0] == \
        pytest.approx(-0.5)
    # a single retraining is measured against the control's mean, not its own control's 0.42
    assert bench_accuracy.row_delta(results, "FastSCNN", by["flops"]) == \
        pytest.approx((-3.0, None, 1))
    assert bench_accuracy.row_delta(results, "FastSCNN", by["control"])[0] == 0.0
    # without a recovery entry the headline table's own change stands
    assert bench_accuracy.row_delta({"models": {}}, "FastSCNN", by["flops"])[0] == -1.0
    text = "\n".join(bench_goals.budget_goal_lines(results))
    assert "| FastSCNN | - | 1.20x | -0.5 ± 0.5 (3 seeds) | met |" in text
    section = "\n".join(bench_accuracy.recovery_lines(results))
    assert "| budget | 0.4350 ± 0.0050 (n=3) | 0.4400 ± 0.0100 (n=3) | -0.5 ±" in section
    # the headline table's change: the seed mean and sd where there are seeds, else "1 seed"
    cells = {r["row"]: bench_report.delta_cell(results, "FastSCNN", r) for r in rows}
    assert cells == {"control": "+0.0", "latency": "-11.0 ± 1.0 (3 seeds)",
                     "latency_budget": "-0.5 ± 0.5 (3 seeds)", "flops": "-3.0 (1 seed)"}
    # the PaddleSlim table gives the FLOPs row the headline's change (not the -1.0 against
    # the single-seed control it was recorded with)
    by["flops"].update(flops_cut=0.3, wall_seconds=60.0)
    table = "\n".join(bench_report.paddleslim_table(results))
    assert "| 30.0% | - | 1.10x | 0.4100 | -3.0 (1 seed) | 1m00s |" in table
    # and so does the README's headline paragraph
    for r in rows:
        r.setdefault("flops_cut", 0.4)
    setup = {"backend": "b", "threads": 2, "input_shape": [1, 3, 8, 8]}
    headline = bench_report.render_headline(
        {**results, "models": {"FastSCNN": {"rows": rows, "latency_setup": setup}}})
    assert "FastSCNN 1.44x at 40% fewer FLOPs, -11.0 ± 1.0 mIoU points (3 seeds)" in headline
    assert "FastSCNN 1.10x at 30% fewer FLOPs, -3.0 mIoU points (1 seed)" in headline


def test_rows_retrained_with_a_row_recipe_are_judged_against_its_control():
    """--row_recipe finetune: the latency row's and the frontier rows' seeds are the recipe's,
    each against the finetune control's mean; a row retrained once (config schedule) is still
    measured against the config-schedule control's; RESULTS.md says which recipe."""
    entry = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.40, 0.41, 0.42], [0.45, 0.46, 0.47])
    entry["row_recipe"] = "finetune"
    entry["rows"] = [{"kind": "latency_budget", "ratio": 1.0, "label": "budget",
                      "control": "--retrain_schedule finetune", "mious": [0.44, 0.45, 0.46]}]
    rows, results = seeded_headline(entry)
    by = {r["row"]: r for r in rows}
    assert bench_accuracy.row_delta(results, "FastSCNN", by["latency"]) == \
        pytest.approx((-5.0, 1.0, 3))   # 0.41 against the finetune control's 0.46
    assert bench_accuracy.row_delta(results, "FastSCNN", by["latency_budget"])[0] == \
        pytest.approx(-1.0)
    assert bench_accuracy.row_delta(results, "FastSCNN", by["flops"])[0] == pytest.approx(-3.0)
    # the recipes' comparison and goals are unchanged: the default is still the config schedule
    assert bench_goals.recovery_goal("FastSCNN", results)["default"] == pytest.approx(-11.0)
    assert bench_accuracy.row_recipe_lines(results) == [
        "Rows retrained over seeds with another recipe than the config schedule (`--row_recipe`),"
        " each against the control fine-tuned with that recipe's schedule and the same seeds: "
        "FastSCNN: finetune schedule."]
    setup = {"backend": "b", "threads": 2, "input_shape": [1, 3, 8, 8]}
    headline = bench_report.render_headline({**results, "models": {"FastSCNN": {
        "rows": [dict(r, flops_cut=0.4) for r in rows], "latency_setup": setup}}})
    assert "-5.0 ± 1.0 mIoU points (3 seeds)" in headline
    assert headline.endswith("the same seeds: FastSCNN: finetune schedule. Not yet measured: "
                             "BiSeNetV2, FCN-HRNetW18, HarDNet, UNet.")
    section = "\n".join(bench_accuracy.recovery_lines(results))
    assert "the row recipe (`--row_recipe finetune`: finetune schedule), each against" in section
    assert "| budget | 0.4500 ± 0.0100 (n=3) | 0.4600 ± 0.0100 (n=3) | -1.0 ±" in section
    # a row recipe the entry has no seeds of: no seeded rows (nothing to measure them against)
    entry["row_recipe"] = "distill"
    assert bench_accuracy.row_delta(results, "FastSCNN", by["latency"]) == (-9.0, None, 1)
    assert bench_accuracy.row_recipe_lines(results) == []


@pytest.mark.parametrize("match", ["row_step_key", "git"])
def test_seeds_of_another_row_stay_out_of_the_headline_table(match):
    """A recovery run at other code may allocate another plan: its seeds are not put beside the
    headline row's speedup and widths, and its goal row takes its own measured speedup."""
    entry = recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                           [0.435, 0.44, 0.445], [0.44, 0.445, 0.45])
    rows = [headline_row("control", None, 1.0, 0.0, miou=0.42),
            headline_row("latency", 0.3, 1.60, -9.0, miou=0.33)]
    headline = {"rows": rows, "git": "abc"}
    if match == "git":   # an entry from before row_step_key: the same code counts
        del entry["row_step_key"]
    results = {"models": {"FastSCNN": headline}, "recovery": {"FastSCNN": entry}}
    assert bench_accuracy.retrains_headline(results, "FastSCNN")
    assert bench_accuracy.row_delta(results, "FastSCNN", rows[1])[2] == 3
    assert bench_goals.recovery_goal("FastSCNN", results)["speedup"] == 1.60
    if match == "git":
        headline["git"] = "def+dirty"
    else:
        rows[1]["step_key"] = "y" * 64
    assert not bench_accuracy.retrains_headline(results, "FastSCNN")
    assert bench_accuracy.row_delta(results, "FastSCNN", rows[1]) == (-9.0, None, 1)
    assert bench_goals.recovery_goal("FastSCNN", results)["speedup"] == 1.44
    assert "is not the headline table's latency target 0.3 row of FastSCNN" in \
        "\n".join(bench_accuracy.recovery_lines(results))


def test_phase_recovery_assembles_the_entry_and_merges_it_apart(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    out.mkdir()
    headline = tiny_results()
    (out / "results.json").write_text(json.dumps(headline))
    report = tmp_path / "row" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"latency": {"measured_ms_before": 30.0,
                                              "measured_ms_after": 20.0}}))
    units = []

    def fake_recovery(self, row, recipe, seed, control=False):
        units.append((recipe, seed, control))
        return {"miou": 0.4 + seed / 100 + (0.0 if control else -0.05), "seconds_per_iter": 1.5}
    monkeypatch.setattr(prune_speedup.ModelRun, "train", lambda self: setattr(
        self, "train_record", {"key": "t" * 64, "result": {}}))
    monkeypatch.setattr(prune_speedup.ModelRun, "prune", lambda self, kind, ratio: {
        "key": "p" * 64, "result": {"model": str(report.parent / "model.pdparams")}})
    monkeypatch.setattr(prune_speedup.ModelRun, "recovery", fake_recovery)
    argv = ["--models", "FastSCNN", "--phase", "recovery", "--recipes", "plain", "finetune",
            "steps", "--seeds", "0", "1", "--out_dir", str(out), "--docs", "--recovery_jobs", "2",
            "--recovery_threads", "1"]
    assert prune_speedup.main(argv) == 0
    # one control per schedule: the steps recipe shares the plain one's
    assert sorted(u for u in units if u[2]) == [("finetune", 0, True), ("finetune", 1, True),
                                                 ("plain", 0, True), ("plain", 1, True)]
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == headline["models"]  # the headline rows are not touched
    entry = results["recovery"]["FastSCNN"]
    assert entry["speedup"] == "1.50x" and entry["seeds"] == [0, 1]
    assert entry["recipes"]["steps"]["control"] == "config schedule"
    assert entry["recipes"]["steps"]["mious"] == pytest.approx([0.35, 0.36])
    assert entry["controls"]["--retrain_schedule finetune"]["mious"] == pytest.approx([0.4, 0.41])
    assert entry["unit_threads"] == 1 and entry["units_at_once"] == 2
    assert entry["row_step_key"] == "p" * 64   # the row its units retrained
    assert len(units) == len(set(units)) == 10   # each unit once, 2 at a time
    assert "each unit 1 thread(s), 2 unit(s) at once" in (out / "RESULTS.md").read_text()
    assert "## Accuracy recovery" in (out / "RESULTS.md").read_text()
    assert entry["rows"] == []

    # --frontier_seeds: every other pruned row (FLOPs target, the other latency ratio, the
    # equal-loss allocation's rows, the budget row), each retrained with every seed as the
    # headline row is (plain); a row that failed in the main phase is left out
    units.clear()
    pruned = {}

    def fake_prune(self, kind, ratio):
        pruned[(kind, ratio)] = {"key": f"{kind}{ratio}".ljust(64, "0"), "result": {
            "model": str(report.parent / "model.pdparams"),
            "error": "no cut within budget" if ratio == 2.0 else None}}
        return pruned[(kind, ratio)]
    monkeypatch.setattr(prune_speedup.ModelRun, "prune", fake_prune)
    def fake_row_unit(self, row, recipe, seed, control=False):
        units.append((row["key"][:20], recipe, seed, control))
        return {"miou": 0.3 + seed / 100, "seconds_per_iter": 1.0}
    monkeypatch.setattr(prune_speedup.ModelRun, "recovery", fake_row_unit)
    assert prune_speedup.main(argv + ["--frontier_seeds", "--latency_ratios", "0.3", "0.5",
                                      "--budget_drops", "1.0", "2.0"]) == 0
    entry = json.loads((out / "results.json").read_text())["recovery"]["FastSCNN"]
    assert [(r["kind"], r["ratio"]) for r in entry["rows"]] == [
        ("flops", 0.3), ("latency", 0.5), ("latency_equal_loss", 0.3),
        ("latency_equal_loss", 0.5), ("latency_budget", 1.0)]
    assert entry["rows"][1]["mious"] == pytest.approx([0.3, 0.31])
    assert sorted(u for u in units if u[0].startswith("latency_budget")) == [
        ("latency_budget1.0".ljust(20, "0"), "plain", 0, False),
        ("latency_budget1.0".ljust(20, "0"), "plain", 1, False)]
    assert "The frontier's other rows" in (out / "RESULTS.md").read_text()
    assert entry["row_recipe"] == "plain"
    assert {r["control"] for r in entry["rows"]} == {"config schedule"}

    # --row_recipe finetune: the frontier rows' seeds are the recipe's, against its control
    units.clear()
    assert prune_speedup.main(argv + ["--frontier_seeds", "--budget_drops", "1.0",
                                      "--row_recipe", "finetune"]) == 0
    entry = json.loads((out / "results.json").read_text())["recovery"]["FastSCNN"]
    assert entry["row_recipe"] == "finetune"
    assert [r["control"] for r in entry["rows"]] == ["--retrain_schedule finetune"] * 3
    assert sorted(u[1:] for u in units if u[0].startswith("flops")) == [
        ("finetune", 0, False), ("finetune", 1, False)]

    # --equal_loss_ratios: the FLOPs-target allocation at the ratios named only (its other
    # ratios are neither pruned nor retrained)
    pruned.clear()
    assert prune_speedup.main(argv + ["--frontier_seeds", "--latency_ratios", "0.3", "0.5",
                                      "--equal_loss_ratios", "0.3"]) == 0
    entry = json.loads((out / "results.json").read_text())["recovery"]["FastSCNN"]
    assert [(r["kind"], r["ratio"]) for r in entry["rows"]] == [
        ("flops", 0.3), ("latency", 0.5), ("latency_equal_loss", 0.3)]
    assert ("latency_equal_loss", 0.5) not in pruned
    with pytest.raises(prune_speedup.BenchmarkError, match="not among --latency_ratios"):
        prune_speedup.parse_args(["--latency_ratios", "0.3", "--equal_loss_ratios", "0.5"])


# --- one unit, for real, on the tiny set -------------------------------------------------------
@pytest.fixture(scope="module")
def row_report(tiny_optic_root, tmp_path_factory):
    """A prune.py run (Fast-SCNN, FLOPs target 0.3, 2 retraining iterations, seed 0): the row."""
    import prune
    base = tmp_path_factory.mktemp("recovery")
    config = write_optic_config(base / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1.0, 0.4])
    import paddle
    from paddleseg.cvlibs import Config
    paddle.seed(0)
    weights = base / "w.pdparams"
    paddle.save(Config(config).model.state_dict(), str(weights))
    out = base / "row"
    assert prune.main(["--config", config, "--model_path", str(weights), "--pruning_ratio", "0.3",
                       "--retraining_iters", "2", "--sen_ratios", "0.3", "0.6",
                       "--sen_eval_num", "1", "--sen_evaluator", "dygraph", "--seed", "0",
                       "--save_dir", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def test_the_row_s_recipe_and_seed_repeat_the_row(row_report, tmp_path):
    result = bench_recovery.retrain_unit(row_report, [], 0, str(tmp_path / "a"))
    assert result["miou_pruned"] == pytest.approx(row_report["miou_pruned"], abs=1e-9)
    assert result["miou"] == pytest.approx(row_report["miou_retrained"], abs=1e-9)
    assert result["seconds_per_iter"] > 0 and result["steps"] is None


@pytest.mark.parametrize("control", [False, True])
def test_a_unit_killed_in_its_retraining_resumes_to_the_same_result(row_report, tmp_path,
                                                                    monkeypatch, control):
    core_train = importlib.import_module("paddleseg.core.train")
    real_step = core_train.seed_step
    import paddleseg.slim.resume as resume
    monkeypatch.setattr(resume, "MIN_CHECKPOINT_INTERVAL", 1)   # one per iteration of its 2
    straight = bench_recovery.retrain_unit(row_report, [], 0, str(tmp_path / "a"),
                                           control=control)

    def killed_at_2(seed, it):
        if it == 2:
            raise KeyboardInterrupt()
        return real_step(seed, it)
    monkeypatch.setattr(core_train, "seed_step", killed_at_2)
    with pytest.raises(KeyboardInterrupt):
        bench_recovery.retrain_unit(row_report, [], 0, str(tmp_path / "b"), control=control)
    assert os.listdir(tmp_path / "b" / "retrain") == ["iter_1"]
    monkeypatch.setattr(core_train, "seed_step", real_step)
    resumed = bench_recovery.retrain_unit(row_report, [], 0, str(tmp_path / "b"),
                                          control=control)
    assert resumed["miou"] == straight["miou"] and resumed["resumed_from_iter"] == 1
    assert "resumed_from_iter" not in straight and resumed["seconds_per_iter"] > 0


def test_a_stepwise_recipe_and_a_control_run_from_the_report(row_report, tmp_path):
    steps = bench_recovery.retrain_unit(row_report, ["--prune_steps", "2", "--distill", "pixel"],
                                        1, str(tmp_path / "s"))
    assert [s["step"] for s in steps["steps"]] == [1, 2]  # and the widths are the row's
    control = bench_recovery.retrain_unit(row_report, ["--prune_steps", "2", "--distill",
                                                       "pixel"], 1, str(tmp_path / "c"),
                                          control=True)
    assert "miou_pruned" not in control and 0 <= control["miou"] <= 1
