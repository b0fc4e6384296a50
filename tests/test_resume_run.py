"""A killed prune.py run resumed by the same command: the allocation it chose is restored, not
made again (under the latency target a new closing loop could choose another plan), and its
final retraining continues from its last checkpoint to the very weights of an uninterrupted
run. Another command's state is not reused; a plan's checkpoints serve that plan only."""
import importlib
import json
import os

import numpy as np
import pytest

from conftest import run_cli, write_optic_config
from paddleseg.slim.options import PruneOptions
from paddleseg.slim.output.publish import RESUME_DIR, RETRAINING_CHECKPOINTS
from paddleseg.slim.resume import KilledRunState, checkpoint_interval, last_checkpoint
from test_prune import PRUNE, failure
from test_prune_steps import weights

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")
# the module (paddleseg.core exports its function train under the same name)
core_train = importlib.import_module("paddleseg.core.train")
SEED_STEP = core_train.seed_step


class Killed(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def fastscnn(tiny_optic_root, tmp_path_factory):
    """Fast-SCNN's tiny config and a sensitivity file the module's runs share."""
    folder = tmp_path_factory.mktemp("resume")
    config = write_optic_config(folder / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1.0, 0.4])
    return config, str(folder / "sensitivity.json")


def argv(fastscnn, save_dir, *extra):
    config, sen_file = fastscnn
    return ["--config", config, "--pruning_ratio", "0.3", "--retraining_iters", "4",
            "--save_dir", save_dir, "--sen_ratios", "0.3", "0.6", "--sen_eval_num", "1",
            "--sen_evaluator", "dygraph", "--sen_file", sen_file, "--seed", "0", *extra]


@pytest.fixture(autouse=True)
def checkpoint_every_iteration(monkeypatch):
    """The 4-iteration retrainings here keep a checkpoint after every iteration (a real one
    keeps about ten)."""
    import paddleseg.slim.resume as resume
    monkeypatch.setattr(resume, "MIN_CHECKPOINT_INTERVAL", 1)


@pytest.fixture(scope="module")
def straight(fastscnn, tmp_path_factory):
    """The output folder of the run uninterrupted, which checkpoints its 4-iteration
    retraining at the end only (the default for so short a one)."""
    out = tmp_path_factory.mktemp("straight") / "out"
    proc = run_cli(PRUNE, *argv(fastscnn, out))
    assert proc.returncode == 0, failure(proc)
    saved = [line for line in proc.stdout.splitlines() if "saved checkpoint" in line]
    assert len(saved) == 1 and saved[0].endswith(os.path.join("retraining", "iter_4")), saved
    return out


def iterations_run(monkeypatch, kill_at=None):
    """Record every training iteration started (killed as ``kill_at`` starts)."""
    seen = []

    def step(seed, it):
        if it == kill_at:
            raise Killed()
        seen.append(it)
        return SEED_STEP(seed, it)
    monkeypatch.setattr(core_train, "seed_step", step)
    return seen


def assert_same_weights(got_dir, want_dir):
    got, want = weights(got_dir), weights(want_dir)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)


def test_a_killed_run_resumes_its_retraining_then_keeps_it_to_the_same_weights(
        fastscnn, straight, tmp_path, monkeypatch):
    import paddleseg.core.export as export
    out = tmp_path / "out"
    seen = iterations_run(monkeypatch, kill_at=3)
    assert run_cli(PRUNE, *argv(fastscnn, out)).returncode != 0
    assert seen == [1, 2]
    assert sorted(os.listdir(out / RESUME_DIR)) == [RETRAINING_CHECKPOINTS, "state.json"]
    assert os.listdir(out / RESUME_DIR / RETRAINING_CHECKPOINTS) == ["iter_2"]
    assert not (out / "report.json").exists()

    # resumed, and killed again after its retraining (in the export)
    real_export = export.export_model

    def killed(*args, **kwargs):
        raise Killed()
    monkeypatch.setattr(export, "export_model", killed)
    seen = iterations_run(monkeypatch)
    proc = run_cli(PRUNE, *argv(fastscnn, out))
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert seen == [3, 4]   # iterations 1-2 are not run again
    assert "allocation: restored from the killed run's state" in log
    assert "retraining: resumed from the killed run's checkpoint at iteration 2 of 4" in log

    monkeypatch.setattr(export, "export_model", real_export)
    seen = iterations_run(monkeypatch)
    proc = run_cli(PRUNE, *argv(fastscnn, out))
    assert proc.returncode == 0, failure(proc)
    assert seen == [] and "retraining: finished by the killed run" in proc.stdout + proc.stderr
    assert_same_weights(out, straight)
    report = json.loads((out / "report.json").read_text())
    assert report["resumed"] == {"allocation": True, "retraining_from_iter": 4}
    assert report["layer_ratios"] == json.loads((straight / "report.json").read_text())[
        "layer_ratios"]
    assert json.loads((straight / "report.json").read_text())["resumed"] is None
    assert "Resumed from a killed run: the allocation and the retraining at iteration 4 (the " \
        "seconds below are this run's only)." in (out / "report.md").read_text()
    assert "Resumed" not in (straight / "report.md").read_text()
    assert not (out / RESUME_DIR).exists()   # gone with the run's success


# --- the state -----------------------------------------------------------------------------
class FakeTarget:
    def __init__(self):
        self.restored = None

    def snapshot(self, alloc):
        return {"plan": alloc}

    def restore(self, state):
        self.restored = state["plan"]
        return self.restored


def options(fastscnn, save_dir, **kw):
    return PruneOptions(config=fastscnn[0], pruning_ratio=0.3, retraining_iters=4,
                        save_dir=str(save_dir), **kw)


def test_the_state_serves_the_same_command_and_the_checkpoints_their_plan(fastscnn, tmp_path,
                                                                         capsys):
    def state(sens=None, config_edit=None, **kw):
        o = options(fastscnn, tmp_path, **kw)
        cfg = o.build_config()
        if config_edit:
            config_edit(cfg.dic)
        return KilledRunState(o, cfg, sens or {"g1": {"0.3": 0.1}})
    first = state()
    target = FakeTarget()
    assert first.restored_allocation(target) is None
    first.keep_allocation(target, {"g1": 0.25})
    folder, checkpoint = first.retraining({"g1": 0.25})
    assert checkpoint is None and folder.endswith(os.path.join(RESUME_DIR, "retraining"))
    os.makedirs(os.path.join(folder, "iter_2"))
    os.makedirs(os.path.join(folder, "iter_10"))

    again = state()
    assert again.restored_allocation(target) == {"g1": 0.25}
    assert again.retraining({"g1": 0.25}) == (folder, os.path.join(folder, "iter_10"))
    assert again.resumed == {"allocation": True, "retraining_from_iter": 10}
    # another plan (a budget search's or trial's choice): its checkpoints start afresh
    assert again.retraining({"g1": 0.5}) == (folder, None) and not os.path.exists(folder)

    # another seed, other sensitivities, or a config edited in what only the retraining reads
    for other in (state(seed=1), state(sens={"g1": {"0.3": 0.2}}),
                  state(config_edit=lambda dic: dic["optimizer"].update(momentum=0.5))):
        assert other.restored_allocation(FakeTarget()) is None and other.resumed == {}
    assert "holds what a killed run with other options or weights left" in capsys.readouterr().out


def test_the_retraining_keeps_about_ten_checkpoints(monkeypatch):
    import paddleseg.slim.resume as resume
    monkeypatch.setattr(resume, "MIN_CHECKPOINT_INTERVAL", 10)   # the default, not this file's
    assert [checkpoint_interval(n) for n in (1, 4, 10, 75, 150, 300, 80000)] == \
        [1, 4, 10, 10, 15, 30, 8000]
    assert last_checkpoint("/nonexistent") is None


def test_the_checkpoints_do_not_change_the_retrained_model(fastscnn, straight, tmp_path):
    # a checkpoint after every iteration, against one at the end: the same weights
    proc = run_cli(PRUNE, *argv(fastscnn, tmp_path / "out"))
    assert proc.returncode == 0, failure(proc)
    assert len([line for line in proc.stdout.splitlines() if "saved checkpoint" in line]) == 4
    assert_same_weights(tmp_path / "out", straight)
