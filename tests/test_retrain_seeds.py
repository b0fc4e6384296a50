"""The studies over the benchmark's pruned rows, each row's pruned model rebuilt from its
report.json. benchmarks/studies/retrain_seeds.py: retrained with other seeds; the benchmark's own
seed repeats the row; results are cached by what made them; a report the code no longer
reproduces is refused. benchmarks/studies/bn_calibration.py: scored before retraining as it is
and with its batch norms recalibrated, beside the retrained change; cached the same way."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import paddle
import pytest

from conftest import ROOT, coarse_latency_checks, run_cli, write_tiny_config

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "studies"))
sys.path.insert(0, os.path.join(ROOT, "slim", "prune"))
import bench_report  # noqa: E402
import bn_calibration  # noqa: E402
import bn_scores  # noqa: E402
import retrain_seeds  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


@pytest.fixture(scope="module")
def pruned_row(tiny_optic_root, tmp_path_factory):
    """(work_dir, out_dir): a tiny benchmark folder whose BiSeNetV2 latency and equal-loss rows
    are one prune.py run (latency target, 3 retraining iterations, seed 0). A FLOPs-target row
    takes the same path; what differs for it (no speedup of its own, no allocation to change)
    is test_a_flops_row_*'s."""
    import prune
    from paddleseg.cvlibs import Config
    base = tmp_path_factory.mktemp("retrain_seeds")
    config = write_tiny_config(base / "tiny.yml", tiny_optic_root)
    paddle.seed(0)
    weights = base / "w.pdparams"
    paddle.save(Config(str(config)).model.state_dict(), str(weights))
    work = base / "work"
    out = work / "BiSeNetV2" / f"prune-{'a' * 12}" / "out"
    argv = ["--config", str(config), "--model_path", str(weights), "--pruning_ratio", "0.3",
            "--retraining_iters", "3", "--sen_ratios", "0.3", "0.6", "--sen_eval_num", "1",
            "--seed", "0", "--cpu_threads", "1", "--save_dir", str(out),
            *latency_target_args(base)]
    with pytest.MonkeyPatch.context() as patch:
        coarse_latency_checks(patch)
        assert prune.main(argv) == 0
    # the step record the benchmark writes: its command, as --allocations reruns it
    (out.parent / "step.json").write_text(json.dumps(
        {"commands": [shlex.join(["python", "slim/prune/prune.py", *argv])]}))
    shutil.copytree(out, work / "BiSeNetV2" / f"prune-{'b' * 12}" / "out")
    report = json.loads((out / "report.json").read_text())
    rows = [{"row": kind, "ratio": 0.3, "label": label, "status": "ok", "step_key": key * 64,
             "miou": report["miou_retrained"], "speedup": speedup, "miou_delta_points": delta,
             "flops_cut": report["flops_reduction"]}
            for kind, label, key, speedup, delta in (
                ("latency", "latency target 0.3", "a", 1.40, -2.0),
                ("latency_equal_loss", "latency target 0.3, FLOPs-target allocation", "b", 1.45,
                 -1.0))]
    entry = {"args": {"train_threads": 1, "seed": 0}, "data": {"root": str(tiny_optic_root)},
             "rows": rows}
    results = base / "results"
    results.mkdir()
    (results / "results.json").write_text(json.dumps(
        {"format": bench_report.FORMAT, "gpu": None, "models": {"BiSeNetV2": entry}}))
    return work, results


def latency_target_args(base):
    # the closing loop exports and times candidates before the retraining: it must not change it
    return ["--target", "latency", "--latency_shape", "1", "3", "64", "64", "--latency_samples",
            "3", "--allow_lower_target", "--latency_table", str(base / "table.json")]


def run(work, results, md, *more):
    return retrain_seeds.main(["--work_dir", str(work), "--out_dir", str(results), "--out",
                               str(md), "--models", "BiSeNetV2", *more])


def test_rows_are_retrained_per_seed_the_row_s_seed_repeats_it_and_results_are_kept(
        pruned_row, tmp_path, monkeypatch):
    work, results = pruned_row
    md = tmp_path / "seeds.md"
    assert run(work, results, md, "--seeds", "0", "1") == 0
    text = md.read_text()
    assert "| latency target 0.3 | 1.40x |" in text and "| seed 0 | seed 1 |" in text
    timed = "latency" in json.loads((work / "BiSeNetV2" / f"prune-{'a' * 12}" / "out" /
                                     "report.json").read_text())
    assert ("| not timed |" in text) != timed     # prune.py's own speedup, where it timed
    assert "Latency target minus equal-loss control, per seed: +0.0, +0.0 points" in text
    # seed 0 is the benchmark's: the rebuilt model retrained with it is the row's model again
    assert "gives the row's mIoU again: yes" in text
    kept = sorted(os.listdir(work / "BiSeNetV2" / "retrain_seeds"))
    assert len([k for k in kept if k.endswith(".json")]) == 4
    # a second run measures nothing; another seed is measured, not taken from another's file
    def retrained(*args):
        raise RuntimeError("retrained")
    monkeypatch.setattr(retrain_seeds, "retrain_once", retrained)
    assert run(work, results, md, "--seeds", "0", "1") == 0 and md.read_text() == text
    with pytest.raises(RuntimeError, match="retrained"):
        run(work, results, md, "--seeds", "2")


def test_the_rows_are_those_at_the_asked_latency_target(pruned_row, tmp_path, monkeypatch):
    """A model with latency rows at 0.3 and 0.5: the goal's 0.3 by default, --ratio 0.5 the
    other; a ratio without a latency row is refused in one line."""
    from paddleseg.utils.errors import UserError
    work, results = pruned_row
    table = json.loads((results / "results.json").read_text())
    rows = table["models"]["BiSeNetV2"]["rows"]
    rows.append({**rows[0], "ratio": 0.5, "label": "latency target 0.5", "step_key": "b" * 64})
    other = tmp_path / "results"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(table))
    used = []

    def measured(args, model, entry, kind, path):
        used.append((kind, os.path.basename(os.path.dirname(os.path.dirname(path)))))
        return [{"seed": 0, "miou": 0.5}]
    monkeypatch.setattr(retrain_seeds, "measure", measured)
    md = tmp_path / "seeds.md"
    assert run(work, other, md, "--seeds", "0") == 0
    assert used == [("latency", "prune-" + "a" * 12), ("latency_equal_loss", "prune-" + "b" * 12)]
    assert "| latency target 0.3 |" in md.read_text()
    used.clear()
    assert run(work, other, md, "--seeds", "0", "--ratio", "0.5", "--rows", "latency") == 0
    assert used == [("latency", "prune-" + "b" * 12)]
    assert "| latency target 0.5 |" in md.read_text() and "target 0.3" not in md.read_text()
    with pytest.raises(UserError, match="no latency row at --ratio 0.4"):
        run(work, other, md, "--ratio", "0.4")


def test_a_report_this_code_does_not_reproduce_is_refused(pruned_row, tmp_path):
    from paddleseg.utils.errors import UserError
    work, results = pruned_row
    path = work / "BiSeNetV2" / f"prune-{'a' * 12}" / "out" / "report.json"
    report = json.loads(path.read_text())
    report["miou_pruned"] += 0.01   # as if the code that made the row pruned other channels
    with pytest.raises(UserError, match="prunes differently"):
        retrain_seeds.retrain_once(report, 5, 1, json.loads(
            (results / "results.json").read_text())["models"]["BiSeNetV2"]["data"]["root"],
            str(tmp_path / "w"))


def test_another_allocation_reruns_the_row_s_command_and_is_retrained_per_seed(
        pruned_row, tmp_path, monkeypatch):
    from paddleseg.utils.errors import UserError
    work, results = pruned_row
    md = tmp_path / "seeds.md"
    report = json.loads((work / "BiSeNetV2" / f"prune-{'a' * 12}" / "out" / "report.json")
                        .read_text())
    assert report["target"] == "latency"
    ran_commands = []

    def in_this_process(cmd, cwd):
        # the study's prune.py command, run here (no interpreter start-up) with coarse timing
        ran_commands.append(cmd)
        assert cmd[:2] == [sys.executable, "slim/prune/prune.py"] and cwd == ROOT
        return subprocess.CompletedProcess(cmd, run_cli(cmd[1], *cmd[2:]).returncode)
    coarse_latency_checks(monkeypatch)
    monkeypatch.setattr(retrain_seeds.subprocess, "run", in_this_process)
    assert run(work, results, md, "--seeds", "0", "1", "--allocations", "balanced") == 0
    assert len(ran_commands) == 1
    text = md.read_text()
    assert "| latency target 0.3, balanced allocation | not a row |" in text
    assert "The balanced allocation minus equal-loss control, per seed:" in text
    made = [d for d in os.listdir(work / "BiSeNetV2" / "retrain_seeds")
            if d.startswith("balanced-")]
    assert len(made) == 1
    variant = json.loads((work / "BiSeNetV2" / "retrain_seeds" / made[0] / "out" / "report.json")
                         .read_text())
    assert variant["latency"]["allocation"] == "balanced"
    cells = text.split("| latency target 0.3, balanced allocation |")[1].split("|")
    assert cells[3].strip() == f"{variant['miou_retrained']:.4f}"    # seed 0: the run's own
    # a second run prunes and retrains nothing
    def ran(*args, **kwargs):
        raise RuntimeError("ran")
    monkeypatch.setattr(retrain_seeds.subprocess, "run", ran)
    monkeypatch.setattr(retrain_seeds, "retrain_once", ran)
    assert run(work, results, md, "--seeds", "0", "1", "--allocations", "balanced") == 0
    assert md.read_text() == text
    # only the latency row beside the variant (the equal-loss control's retrainings saved):
    # the variant is compared with the latency row alone, from the same cached results
    assert run(work, results, md, "--seeds", "0", "1", "--allocations", "balanced",
               "--rows", "latency") == 0
    alone = md.read_text()
    assert "FLOPs-target allocation |" not in alone and "equal-loss" not in alone
    assert "Rows retrained: latency." in alone
    assert "The balanced allocation minus the latency target (loss_per_ms), per seed:" in alone
    assert alone.split("| latency target 0.3, balanced allocation |")[1].split("\n")[0] == \
        text.split("| latency target 0.3, balanced allocation |")[1].split("\n")[0]
    with pytest.raises(UserError, match="keep latency among --rows"):
        run(work, results, md, "--allocations", "balanced", "--rows", "latency_equal_loss")


def test_a_flops_row_has_no_speedup_of_its_own(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"target": "flops", "miou_retrained": 0.5}))
    assert retrain_seeds.measured_speedup(str(path)) == "not timed"
    path.write_text(json.dumps({"target": "latency", "latency": {
        "measured_ms_before": 30.0, "measured_ms_after": 20.0}}))
    assert retrain_seeds.measured_speedup(str(path)) == "1.50x"


def test_a_flops_row_s_allocation_is_refused_with_prune_py(tmp_path, monkeypatch):
    """--latency_allocation has no meaning for a FLOPs run: prune.py refuses (exit 2), and the
    study says which run failed instead of retraining nothing."""
    variant, cmd = refused_variant_run(
        tmp_path, monkeypatch, "python slim/prune/prune.py --config c.yml --pruning_ratio 0.3 "
        "--save_dir out", ["--allocations", "balanced"],
        "allocation's prune.py run for BiSeNetV2 failed")
    assert cmd[cmd.index("--latency_allocation") + 1] == "balanced"


def refused_variant_run(tmp_path, monkeypatch, recorded, flags, message):
    """(the variant of ``flags``, the prune.py command it ran): a benchmark folder whose
    latency row recorded ``recorded``, the variant's run refused by prune.py (exit 2), which
    the study reports as ``message`` instead of retraining nothing."""
    from paddleseg.utils.errors import UserError
    work = tmp_path / "work"
    record = work / "BiSeNetV2" / f"prune-{'a' * 12}"
    record.mkdir(parents=True)
    (record / "step.json").write_text(json.dumps({"commands": [recorded]}))
    ran = []

    def refuse(cmd, **kwargs):
        ran.append(cmd)
        return retrain_seeds.subprocess.CompletedProcess(cmd, 2)
    monkeypatch.setattr(retrain_seeds.subprocess, "run", refuse)
    args = retrain_seeds.parse_args(["--work_dir", str(work), *flags])
    variant, = retrain_seeds.variants_of(args)
    with pytest.raises(UserError, match=message):
        retrain_seeds.variant_report(args, "BiSeNetV2", {"step_key": "a" * 64}, variant)
    assert len(ran) == 1
    return variant, ran[0]


# --- bn_calibration.py ------------------------------------------------------------------------

def run_bn_study(work, results, md, *more):
    return bn_calibration.main(["--work_dir", str(work), "--out_dir", str(results), "--out",
                                str(md), "--models", "BiSeNetV2", "--threads", "1", *more])


def test_bn_study_scores_every_row_both_ways_and_keeps_the_scores(pruned_row, tmp_path,
                                                                   monkeypatch):
    work, results = pruned_row
    md = tmp_path / "bn.md"
    assert run_bn_study(work, results, md, "--batches", "2") == 0
    text = md.read_text()
    report = json.loads((work / "BiSeNetV2" / f"prune-{'a' * 12}" / "out" / "report.json")
                        .read_text())
    plain = f"{report['miou_pruned']:.4f}"
    # each row: its speedup, its retrained change (one retraining), its plain score (the
    # report's mIoU right after pruning, checked), then the recalibrated one
    cells = text.split("| latency target 0.3 |")[1].split("\n")[0].split("|")
    assert [c.strip() for c in cells[:4]] == ["1.40x", f"{report['flops_reduction']:.1%}",
                                              "-2.0 (1 seed)", plain]
    assert 0.0 <= float(cells[4]) <= 1.0
    assert "| latency target 0.3, FLOPs-target allocation | 1.45x |" in text
    assert "Unpruned model: " in text and "over the 2 rows: too few rows." in text
    # the pair at latency target 0.3: one retraining each, so no verdict on the noise; both rows
    # are one pruned model here, so neither score prefers one
    assert "| 0.3 | -1.0 (1 seed each: noise unknown) | +0.0 (agrees) | +0.0 (agrees) | no |" \
        in text
    kept = sorted(os.listdir(work / "BiSeNetV2" / "bn_calibration"))
    assert len(kept) == 3 and sum(k.startswith("unpruned-") for k in kept) == 1
    # again: nothing is scored; other batches are scored, not taken from these files
    def scored(*args):
        raise RuntimeError("scored")
    monkeypatch.setattr(bn_scores, "scores", scored)
    assert run_bn_study(work, results, md, "--batches", "2") == 0 and md.read_text() == text
    with pytest.raises(RuntimeError, match="scored"):
        run_bn_study(work, results, md, "--batches", "3")


def test_two_rows_are_compared_over_the_seeds_each_has():
    """A pair whose rows were retrained over different numbers of seeds says so (the latency
    row over 3 seeds, its FLOPs-target allocation once), instead of '1 seed each'; seed means
    are judged against the noise only where both rows have them."""
    import bench_accuracy
    assert bench_accuracy.seed_counts_text(1, 1) == "1 seed each"
    assert bench_accuracy.seed_counts_text(3, 1) == "3 seeds against 1"
    assert bench_accuracy.seed_counts_text(1, 3) == "1 seed against 3"
    assert bench_accuracy.seed_counts_text(3, 3) == "3 seeds each"
    rows = [{"row": "latency", "ratio": 0.3, "miou": 0.30, "status": "ok"},
            {"row": "latency_equal_loss", "ratio": 0.3, "miou": 0.35, "status": "ok"}]
    recovery = {"ratio": 0.3, "row_step_key": "k" * 64,
                "controls": {"config schedule": {"mious": [0.40, 0.40, 0.40]}},
                "recipes": {"plain": {"mious": [0.36, 0.37, 0.38], "control": "config schedule"}},
                "rows": []}
    results = {"models": {"M": {"rows": [dict(r, step_key="k" * 64 if r["row"] == "latency"
                                               else "x" * 64) for r in rows]}},
               "recovery": {"M": recovery}}
    diff, noise, beyond, counts = bench_accuracy.row_gap(results, "M", *rows)
    # the latency row's seed mean (0.37) against the other's one retraining (0.35)
    assert diff == pytest.approx(2.0) and noise is None and not beyond
    assert counts == "3 seeds against 1"
    recovery["rows"] = [{"kind": "latency_equal_loss", "ratio": 0.3, "mious": [0.30, 0.31, 0.32]}]
    diff, noise, beyond, counts = bench_accuracy.row_gap(results, "M", *rows)
    assert diff == pytest.approx(6.0) and noise > 0 and beyond and counts == "3 seeds each"


def test_the_latency_goal_says_which_allocation_a_trial_keeps_and_if_the_seeds_agree():
    """--trial_allocations keeps the row whose own retraining (seed 0) scored higher; the seed
    means, where both rows have them, say whether that was right, wrong or a coin toss."""
    import bench_accuracy
    import bench_report
    lat = {"row": "latency", "ratio": 0.3, "miou": 0.30, "status": "ok", "step_key": "k" * 64}
    ctl = {"row": "latency_equal_loss", "ratio": 0.3, "miou": 0.35, "status": "ok"}
    recovery = {"ratio": 0.3, "row_step_key": "k" * 64,
                "controls": {"config schedule": {"mious": [0.40, 0.40, 0.40]}},
                "recipes": {"plain": {"mious": [0.36, 0.37, 0.38], "control": "config schedule"}},
                "rows": []}
    results = {"models": {"M": {"rows": [lat, ctl]}}, "recovery": {"M": recovery}}

    def trial_cell():
        return bench_report.trial_cell(lat, ctl, bench_accuracy.row_gap(results, "M", lat, ctl))
    assert trial_cell() == "equal_loss (seed means not measured)"
    recovery["rows"] = [{"kind": "latency_equal_loss", "ratio": 0.3, "mious": [0.30, 0.31, 0.32]}]
    assert trial_cell() == "equal_loss (wrong by the seed means)"
    lat["miou"] = 0.36   # its own retraining now scores higher: the trial keeps loss_per_ms
    assert trial_cell() == "loss_per_ms (right by the seed means)"
    recovery["rows"][0]["mious"] = [0.36, 0.38, 0.37]
    assert trial_cell() == \
        "loss_per_ms (either: the seed means are within the noise)"


def test_bn_study_refuses_a_report_this_code_does_not_reproduce(pruned_row, tmp_path,
                                                               monkeypatch):
    from paddleseg.utils.errors import UserError
    work, results = pruned_row
    real = bn_calibration.row_report

    def other_channels(args, model_name, row):
        raw, report = real(args, model_name, row)
        report["miou_pruned"] += 0.01   # as if the code that made the row pruned other channels
        return raw + b" ", report
    monkeypatch.setattr(bn_calibration, "row_report", other_channels)
    with pytest.raises(UserError, match="prunes differently"):
        run_bn_study(work, results, tmp_path / "bn.md", "--batches", "1")
    assert not (tmp_path / "bn.md").exists()


def test_bn_study_refuses_bad_arguments(pruned_row, tmp_path):
    from paddleseg.utils.errors import UserError
    work, results = pruned_row
    with pytest.raises(UserError, match="--batches must be at least 1"):
        run_bn_study(work, results, tmp_path / "bn.md", "--batches", "0")
    with pytest.raises(UserError, match="no results for UNet"):
        bn_calibration.main(["--work_dir", str(work), "--out_dir", str(results), "--models",
                             "UNet"])


def test_the_recalibrated_variant_reruns_the_row_with_its_own_sensitivity_file(tmp_path,
                                                                              monkeypatch):
    """--sen_bn_batches K: the row's command with --sen_bn_batches K and a sensitivity file of
    its own (the shared one's points were scored without recalibration: prune.py would refuse
    it), beside the variant's output."""
    variant, cmd = refused_variant_run(
        tmp_path, monkeypatch, "python slim/prune/prune.py --config c.yml --pruning_ratio 0.3 "
        "--sen_file shared.json --target latency --save_dir out --opts "
        "train_dataset.dataset_root=d", ["--sen_bn_batches", "4"],
        r"recalibrated \(4 batches\)'s prune.py run for BiSeNetV2 failed")
    assert variant.kind == "latency_bn4" and "recalibrated (4 batches)" in variant.label
    value = lambda flag: cmd[cmd.index(flag) + 1]   # noqa: E731
    assert value("--sen_bn_batches") == "4"
    folder = os.path.dirname(value("--save_dir"))
    # one file per model and variant, whatever the target: prune.py's fingerprint check refuses
    # it where it was measured otherwise
    assert value("--sen_file") == os.path.join(os.path.dirname(folder), "bn4-sensitivity.json")
    assert os.path.basename(folder).startswith("bn4-")
    # flags go before --opts, which takes the rest of the line
    assert cmd.index("--sen_bn_batches") < cmd.index("--opts") and cmd[-1] == \
        "train_dataset.dataset_root=d"


@pytest.mark.parametrize("recipe, expected", [
    (None, ["--retrain_schedule", "config", "--reconstruct", "0"]),   # a row older than both
    ({"schedule": "config", "distill": "none", "prune_steps": 1, "reconstruct_batches": 8},
     ["--retrain_schedule", "config", "--reconstruct", "8"]),
    ({"schedule": "config", "distill": "none", "prune_steps": 2},
     ["--retrain_schedule", "config", "--prune_steps", "2", "--reconstruct", "0"]),
])
def test_a_row_is_retrained_with_its_own_recipe_refit_included(recipe, expected):
    """The seeds retrain the row's model as the row did: with its refit, or explicitly
    without one (whatever prune.py's default is now)."""
    assert retrain_seeds.recipe_flags({"retraining_recipe": recipe}) == expected
