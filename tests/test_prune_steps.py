"""Stepwise pruning (``--prune_steps K``, issue 22): the removal schedule, the K-step run reaching
the one-step run's model widths, each step recorded, a killed run resuming at its step with the
same weights, and the refusals. prune.py runs in this process (conftest.run_cli)."""
import json
import os

import numpy as np
import paddle
import pytest

import paddleseg.slim.pipeline as pipeline
from conftest import run_cli, write_optic_config
from paddleseg.core.model_loader import build_and_load
from paddleseg.cvlibs import Config
from paddleseg.slim.apply import channel_plan
from paddleseg.slim.criteria import num_pruned
from paddleseg.slim.output.publish import STEPS_DIR
from paddleseg.slim.steps import iterations_per_step, removal_schedule, step_plan
from test_prune import PRUNE, failure

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


# --- the schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_the_removals_grow_evenly_and_the_last_step_is_the_plan(steps):
    channels = {"a": 64, "b": 24, "c": 7, "d": 128}
    plan = {"a": 0.5, "b": 0.25, "c": 6 / 7, "d": 0.0625}
    schedule = removal_schedule(channels, plan, steps)
    assert len(schedule) == steps
    assert schedule[-1] == {gid: num_pruned(channels[gid], r) for gid, r in plan.items()}
    removed_before = {}
    for k, removed in enumerate(schedule, start=1):
        for gid, n in removed.items():
            total = schedule[-1][gid]
            assert removed_before.get(gid, 0) <= n <= total
            assert abs(n - total * k / steps) <= 0.5  # an even share of the plan's cut so far
        # the ratios of a step, taken of the channels left, remove exactly the step's channels
        ratios = step_plan(channels, removed_before, removed)
        for gid, ratio in ratios.items():
            left = channels[gid] - removed_before.get(gid, 0)
            assert num_pruned(left, ratio) == removed[gid] - removed_before.get(gid, 0)
        assert set(ratios) == {gid for gid in removed if removed[gid] > removed_before.get(gid, 0)}
        removed_before = removed


@pytest.mark.parametrize("total,steps,expected", [(10, 1, [10]), (10, 2, [5, 5]),
                                                  (10, 3, [3, 3, 4]), (3, 3, [1, 1, 1])])
def test_the_retraining_iterations_are_shared_equally(total, steps, expected):
    assert iterations_per_step(total, steps) == expected
    assert sum(iterations_per_step(total, steps)) == total


# --- prune.py with --prune_steps ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fastscnn(tiny_optic_root, tmp_path_factory):
    """Fast-SCNN's tiny config and a sensitivity file shared by this module's runs (the steps,
    not the analysis, are tested here)."""
    folder = tmp_path_factory.mktemp("steps")
    config = write_optic_config(folder / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1.0, 0.4])
    return config, str(folder / "sensitivity.json")


def argv(fastscnn, save_dir, *extra, iters=4):
    config, sen_file = fastscnn
    return ["--config", config, "--pruning_ratio", "0.3", "--retraining_iters", iters,
            "--save_dir", save_dir, "--sen_ratios", "0.3", "0.6", "--sen_eval_num", "1",
            "--sen_evaluator", "dygraph", "--sen_file", sen_file, "--seed", "0", *extra]


def weights(save_dir):
    return {k: v.numpy() for k, v in paddle.load(os.path.join(save_dir, "model.pdparams")).items()
            if hasattr(v, "numpy")}


@pytest.fixture(scope="module")
def two_step_run(fastscnn, tmp_path_factory):
    """(process, output folder) of one --prune_steps 2 run, which the tests below read."""
    out = tmp_path_factory.mktemp("two_steps") / "out"
    proc = run_cli(PRUNE, *argv(fastscnn, out, "--prune_steps", "2"))
    assert proc.returncode == 0, failure(proc)
    return proc, out


def test_two_steps_reach_the_one_step_widths_and_record_each_step(fastscnn, tmp_path,
                                                                  two_step_run):
    one, (proc, two) = tmp_path / "one", two_step_run
    assert "stepwise pruning: step 2 of 2" in proc.stderr + proc.stdout
    proc = run_cli(PRUNE, *argv(fastscnn, one))
    assert proc.returncode == 0, failure(proc)

    a = json.loads((one / "report.json").read_text())
    b = json.loads((two / "report.json").read_text())
    # the same plan, so the same widths and FLOPs as the one-step model
    assert b["layer_ratios"] == a["layer_ratios"]
    assert b["flops_after"] == a["flops_after"] and b["params_after"] == a["params_after"]
    cfg = Config(fastscnn[0])
    shapes = [channel_plan(build_and_load(cfg, str(d / "model.pdparams"))) for d in (one, two)]
    assert shapes[0] == shapes[1]
    # but other weights: step 2 chose its channels on what step 1's retraining left
    assert any(not np.array_equal(v, weights(two)[k]) for k, v in weights(one).items())

    assert a["prune_steps"] == [] and a["retraining_recipe"]["prune_steps"] == 1
    steps = b["prune_steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["retraining_iters"] for s in steps] == [2, 2]
    assert 0 < steps[0]["channels_removed"] < steps[1]["channels_removed"]
    assert b["miou_pruned"] == steps[1]["miou_pruned"]
    assert b["retraining_recipe"]["prune_steps"] == 2
    assert "| 2 | " in (two / "report.md").read_text()
    # the steps' checkpoints are scratch: gone with the run's success
    assert not (two / STEPS_DIR).exists()


class Killed(KeyboardInterrupt):
    pass


def kill_in_step_2(monkeypatch):
    """Make the pipeline's retraining record each step's folder name and be "killed" (an
    interrupt) when step 2 starts; returns (the names, the real retrain)."""
    real_retrain, calls = pipeline.retrain, []

    def killed_in_step_2(o, cfg, model, work_dir, teacher=None):
        calls.append(os.path.basename(work_dir))
        if len(calls) == 2:
            raise Killed()
        return real_retrain(o, cfg, model, work_dir, teacher)
    monkeypatch.setattr(pipeline, "retrain", killed_in_step_2)
    return calls, real_retrain


def test_a_killed_stepwise_run_resumes_at_its_step_with_the_same_weights(fastscnn, tmp_path,
                                                                           two_step_run,
                                                                           monkeypatch):
    straight = two_step_run[1]
    calls, real_retrain = kill_in_step_2(monkeypatch)
    resumed = tmp_path / "resumed"
    proc = run_cli(PRUNE, *argv(fastscnn, resumed, "--prune_steps", "2"))
    assert proc.returncode != 0
    assert calls == ["step_1", "step_2"]
    assert sorted(os.listdir(resumed / STEPS_DIR)) == ["state.json", "step_1"]
    assert not (resumed / "report.json").exists()

    monkeypatch.setattr(pipeline, "retrain", lambda *a, **k: (calls.append("again"),
                                                              real_retrain(*a, **k)))
    proc = run_cli(PRUNE, *argv(fastscnn, resumed, "--prune_steps", "2"))
    assert proc.returncode == 0, failure(proc)
    assert "resumed after step 1 of 2" in proc.stderr + proc.stdout
    assert calls == ["step_1", "step_2", "again"]  # step 2 alone was retrained
    got, want = weights(resumed), weights(straight)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)
    report = json.loads((resumed / "report.json").read_text())
    assert [s["step"] for s in report["prune_steps"]] == [1, 2]
    assert not (resumed / STEPS_DIR).exists()


def test_steps_of_a_run_with_other_options_are_not_reused(fastscnn, tmp_path, monkeypatch):
    calls, real_retrain = kill_in_step_2(monkeypatch)
    save_dir = tmp_path / "out"
    run_cli(PRUNE, *argv(fastscnn, save_dir, "--prune_steps", "2"))
    assert (save_dir / STEPS_DIR / "step_1").is_dir()

    monkeypatch.setattr(pipeline, "retrain", lambda *a, **k: (calls.append("again"),
                                                              real_retrain(*a, **k)))
    other = argv(fastscnn, save_dir, "--prune_steps", "2")
    other[other.index("--seed") + 1] = "1"
    proc = run_cli(PRUNE, *other)
    assert proc.returncode == 0, failure(proc)
    assert "holds the steps of a run with other options or weights" in proc.stderr + proc.stdout
    assert calls[2:] == ["again", "again"]  # both steps retrained anew


BAD = {
    "zero": (["--prune_steps", "0"], 4, "error: --prune_steps must be >= 1, got 0"),
    "more than iterations": (["--prune_steps", "3"], 2,
                             "error: --prune_steps 3 retrains after every step: give at least as "
                             "many --retraining_iters (got 2)"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_step_count_is_one_line_before_any_work(case, fastscnn, tmp_path):
    extra, iters, line = BAD[case]
    proc = run_cli(PRUNE, *argv(fastscnn, tmp_path / "out", *extra, iters=iters))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line], proc.stderr
    assert not (tmp_path / "out").exists()


def test_steps_are_refused_with_the_paddleslim_method(fastscnn, tmp_path):
    proc = run_cli(PRUNE, "--config", fastscnn[0], "--pruning_ratio", "0.3", "--retraining_iters",
                   "2", "--save_dir", tmp_path / "out", "--method", "paddleslim",
                   "--prune_steps", "2")
    assert proc.returncode == 2
    assert "has no --prune_steps" in proc.stderr
