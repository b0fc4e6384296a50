"""``--trial_allocations`` (choosing the latency allocation by retraining each): the choice on
accuracies the test controls (highest wins, a tie keeps the first, a failed candidate is
skipped, a resumed trial does not redo a finished candidate), the report, the flag checks, and
prune.py end to end on the tiny BiSeNetV2: the winner's model is the final one, and a killed
trial resumes to the same result."""
import json
import os
import shutil

import numpy as np
import pytest

import paddleseg.slim.candidates as candidates
from conftest import coarse_latency_checks
from paddleseg.slim.output.report import trial_lines
from paddleseg.slim.trial import best_candidate, run_trial, why_chosen
from test_prune_steps import weights
from test_slim_latency import failure, prune_args, run_prune

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def trial_of(mious, records=None):
    asked, saved = [], []

    def evaluate(k, name):
        asked.append(name)
        value = mious[name]
        return {"error": value} if isinstance(value, str) else \
            {"miou": value, "flops_reduction": 0.3}
    chosen, out = run_trial(list(mious), evaluate, list(records or []),
                            lambda r: saved.append(len(r)))
    return chosen, out, asked, saved


def test_the_candidate_with_the_highest_miou_wins():
    chosen, records, asked, saved = trial_of({"loss_per_ms": 0.40, "equal_loss": 0.43,
                                              "balanced": 0.41})
    assert chosen == 1 and asked == ["loss_per_ms", "equal_loss", "balanced"]
    assert saved == [1, 2, 3]   # the state after every candidate, for a killed run
    assert [r["candidate"] for r in records] == [1, 2, 3]
    assert why_chosen(records, chosen) == ("equal_loss chosen: the highest mIoU (0.4300; "
                                           "loss_per_ms 3.0 points lower; balanced 2.0 points "
                                           "lower)")


def test_a_tie_keeps_the_first_named_and_a_failed_candidate_is_skipped():
    assert trial_of({"loss_per_ms": 0.40, "equal_loss": 0.40})[0] == 0
    chosen, records, _, _ = trial_of({"loss_per_ms": "the cut is missed", "equal_loss": 0.30})
    assert chosen == 1 and "loss_per_ms failed" in why_chosen(records, chosen)
    assert trial_of({"loss_per_ms": "missed", "equal_loss": "missed too"})[0] is None


def test_a_resumed_trial_does_not_retrain_a_finished_candidate():
    done = [{"miou": 0.45, "flops_reduction": 0.3, "candidate": 1, "allocation": "loss_per_ms"}]
    chosen, records, asked, _ = trial_of({"loss_per_ms": 0.0, "equal_loss": 0.42}, done)
    assert asked == ["equal_loss"] and chosen == 0 and records[0]["miou"] == 0.45
    assert best_candidate([]) is None


def test_the_report_lists_every_candidate_and_the_final_model():
    text = "\n".join(trial_lines({
        "iters": 4, "chosen": "equal_loss", "why": "equal_loss chosen: the highest mIoU",
        "final_model": "the winner retrained 8 iterations", "candidates": [
            {"candidate": 1, "allocation": "loss_per_ms", "error": "cut missed"},
            {"candidate": 2, "allocation": "equal_loss", "miou": 0.41, "flops_reduction": 0.25,
             "measured_latency_reduction": 0.2, "speedup": 1.25}]}))
    assert "retrained 4 iterations with the run's seed. Equal_loss chosen" in text
    assert "| 1 | loss_per_ms | - | - | failed: cut missed |" in text
    assert "| 2 | equal_loss | 25.0% | 20.0% (1.25x) | 0.4100 |" in text
    assert "The final model: the winner retrained 8 iterations." in text
    assert trial_lines(None) == []


BAD = {
    "one name": (["--target", "latency", "--trial_allocations", "equal_loss"],
                 "error: --trial_allocations needs two or more different allocations, got "
                 "equal_loss"),
    "twice": (["--target", "latency", "--trial_allocations", "equal_loss", "equal_loss"],
              "error: --trial_allocations needs two or more different allocations, got "
              "equal_loss equal_loss"),
    "iters alone": (["--trial_iters", "2"], "error: --trial_iters needs --trial_allocations"),
    "zero iters": (["--target", "latency", "--trial_allocations", "loss_per_ms", "equal_loss",
                    "--trial_iters", "0"], "error: --trial_iters must be >= 1, got 0"),
    "with one allocation": (["--target", "latency", "--trial_allocations", "loss_per_ms",
                             "equal_loss", "--latency_allocation", "balanced"],
                            "error: --latency_allocation names one allocation and "
                            "--trial_allocations several to choose from: give one of the two"),
    "with a budget": (["--target", "latency", "--trial_allocations", "loss_per_ms",
                       "equal_loss", "--max_miou_drop", "1"],
                      "error: --trial_allocations does not combine with --max_miou_drop (the "
                      "budget search allocates each of its cuts with --latency_allocation)"),
    "flops target": (["--trial_allocations", "loss_per_ms", "equal_loss"],
                     "error: --trial_allocations applies only with --target latency"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_trial_flags_are_one_line_before_any_work(case, bisenet_config, tmp_path):
    extra, line = BAD[case]
    proc = run_prune(*prune_args(bisenet_config, tmp_path / "out", *extra))
    assert proc.returncode == 2, failure(proc)
    assert proc.stderr.strip().splitlines() == [line], proc.stderr
    assert "baseline mIoU" not in proc.stdout and not (tmp_path / "out").exists()


# --- prune.py end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bisenet_config(tmp_path_factory, tiny_optic_root):
    from conftest import write_tiny_config
    return write_tiny_config(tmp_path_factory.mktemp("trial") / "bisenet.yml", tiny_optic_root,
                             flip=False)


@pytest.fixture(scope="module")
def weights_file(bisenet_config, tmp_path_factory):
    """Trained weights to prune: without --model_path each fresh copy would start from its own
    random weights, and the winner's model could not be the final one."""
    import paddle

    from paddleseg.cvlibs import Config
    paddle.seed(0)
    path = tmp_path_factory.mktemp("trial_weights") / "model.pdparams"
    paddle.save(Config(bisenet_config).model.state_dict(), str(path))
    return str(path)


def trial_argv(config, weights_path, save_dir, seg_home):
    return prune_args(config, save_dir, "--target", "latency", "--latency_shape", 1, 3, 64, 64,
                      "--cpu_threads", 1, "--latency_samples", 3, "--allow_lower_target",
                      "--model_path", weights_path, "--seed", 0,
                      "--trial_allocations", "loss_per_ms", "equal_loss")


def controlled(monkeypatch, scores):
    """Each candidate's mIoU from ``scores`` in turn; the closing loop times coarsely (what it
    measures does not decide these tests)."""
    coarse_latency_checks(monkeypatch)
    calls = []

    def fake(model, dataset, max_images=None):
        calls.append(len(calls))
        return scores[len(calls) - 1]
    monkeypatch.setattr(candidates, "miou", fake)
    return calls


def test_a_killed_trial_resumes_and_keeps_the_winner_s_retrained_model(
        bisenet_config, weights_file, tmp_path, monkeypatch):
    env = {"SEG_HOME": str(tmp_path / "seg_home")}   # its latency table, reused on the resume
    out, kept = tmp_path / "out", tmp_path / "kept"
    # equal_loss (candidate 2) scores higher; the run is killed as it starts on candidate 2
    from paddleseg.slim.targets.latency import LatencyTarget
    real_use = LatencyTarget.use_allocation

    def killed_at_candidate_2(self, name):
        if name == "equal_loss":
            raise KeyboardInterrupt()
        real_use(self, name)
    controlled(monkeypatch, [0.40])
    monkeypatch.setattr(LatencyTarget, "use_allocation", killed_at_candidate_2)
    assert run_prune(*trial_argv(bisenet_config, weights_file, out, env), env=env).returncode != 0
    state = json.loads((out / "allocation_trial" / "state.json").read_text())
    assert [c["allocation"] for c in state["candidates"]] == ["loss_per_ms"]
    assert os.listdir(out / "allocation_trial" / "step_1")   # the best model so far

    monkeypatch.setattr(LatencyTarget, "use_allocation", real_use)
    calls = controlled(monkeypatch, [0.45])
    real_save = candidates.save_pruned

    def save_and_keep(model, folder, info=None):   # a copy of the candidate's retrained model
        real_save(model, folder, info)
        shutil.copytree(folder, kept)
    monkeypatch.setattr(candidates, "save_pruned", save_and_keep)
    proc = run_prune(*trial_argv(bisenet_config, weights_file, out, env), env=env)
    assert proc.returncode == 0, failure(proc)
    log = proc.stdout + proc.stderr
    assert len(calls) == 1   # candidate 2 alone: candidate 1 is not retrained again
    assert "allocation trial: 2 allocations (loss_per_ms, equal_loss)" in log
    assert "the winner's model is the final one; resuming after candidate 1" in log
    assert "allocation trial: candidate 2 of 2 (equal_loss): mIoU 0.4500 (FLOPs -" in log
    assert "1 left" not in log and "0 left, ETA" in log
    assert "the allocation trial's winner was this retraining" in log
    report = json.loads((out / "report.json").read_text())
    trial = report["allocation_trial"]
    assert trial["chosen"] == "equal_loss" and trial["iters"] == 1
    assert [c["miou"] for c in trial["candidates"]] == [0.40, 0.45]
    assert all("target_state" not in c and c["speedup"] > 0 for c in trial["candidates"])
    assert "loss_per_ms 5.0 points lower" in trial["why"]
    assert report["latency"]["allocation"] == "equal_loss"
    assert report["layer_ratios"] == pytest.approx(
        {g: round(r, 4) for g, r in sorted(trial["candidates"][1]["plan"].items())})
    assert "| 2 | equal_loss |" in (out / "report.md").read_text()
    assert not (out / "allocation_trial").exists()
    # the winner's retrained model, as its candidate saved it, is the final model
    ours, theirs = weights(kept), weights(out)
    for name in ours:
        if name != "__pruned_structure__":
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
