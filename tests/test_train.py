"""Training end to end on the tiny synthetic set: the acceptance run, resume, atomic
checkpoints, --seed and keep_checkpoint_max."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components)
import paddleseg.models  # noqa: F401
from conftest import ROOT, write_tiny_config
from paddleseg.core import train
from paddleseg.cvlibs import Config
from paddleseg.utils.checkpoint import save_checkpoint

TRAIN_LINE = re.compile(r"\[TRAIN\] iter (\d+)/(\d+), loss ([0-9.]+), lr ([0-9.]+)")


def run(script, *args, timeout=240):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def train_log(text):
    """[(iter, loss, lr)] from the [TRAIN] lines."""
    return [(int(it), float(loss), float(lr)) for it, _, loss, lr in TRAIN_LINE.findall(text)]


def poly_lr(it, base=0.01, iters=5, power=0.9):
    """PolynomialDecay's rate for (1-based) iteration ``it``, decay_steps = iters."""
    return base * (1 - (it - 1) / iters) ** power


def tree(path):
    """{relative path: bytes} of every file under ``path``."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


@pytest.fixture(scope="module")
def noflip_config(tiny_optic_root, tmp_path_factory):
    """The tiny config without RandomHorizontalFlip: no randomness in the data."""
    return write_tiny_config(tmp_path_factory.mktemp("noflip") / "noflip.yml", tiny_optic_root,
                             flip=False)


def build(config, seed, iters=4, batch_size=4):
    """Config, model (dropout off: its random masks are not part of a checkpoint), optimizer."""
    paddle.seed(seed)
    cfg = Config(config, iters=iters, batch_size=batch_size)
    model = cfg.build_model()
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Dropout):
            layer.p = 0.0
    return cfg, model, cfg.build_optimizer(model)


def api_train(cfg, model, optimizer, save_dir, **kw):
    kw.setdefault("save_interval", 2)
    kw.setdefault("iters", cfg.iters)
    return train(model, cfg.train_dataset, optimizer=optimizer, save_dir=str(save_dir),
                 batch_size=cfg.batch_size, log_iters=1, losses=cfg.loss, **kw)


# -- the acceptance run ------------------------------------------------------------------

def test_acceptance_run_and_val(tmp_path, tiny_config):
    out = tmp_path / "OUT"
    proc = run("train.py", "--config", tiny_config, "--iters", 5, "--batch_size", 2, "--do_eval",
               "--save_interval", 5, "--save_dir", out, "--log_iters", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best_model" / "model.pdparams").is_file()
    assert (out / "iter_5" / "model.pdparams").is_file()
    assert (out / "iter_5" / "model.pdopt").is_file()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    info = json.loads((out / "best_model" / "model_info.json").read_text())
    assert info["iter"] == 5 and 0.0 <= info["mIoU"] <= 1.0

    log = train_log(proc.stdout)
    assert [it for it, _, _ in log] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(loss) and loss > 0 for _, loss, _ in log)
    # like PaddleSeg, each line shows the rate that iteration used
    for it, _, lr in log:
        assert lr == pytest.approx(poly_lr(it), abs=2e-6), (it, lr)
    assert "[EVAL] best mIoU" in proc.stdout

    val = run("val.py", "--config", tiny_config, "--model_path", out / "best_model" / "model.pdparams")
    assert val.returncode == 0, val.stderr[-3000:]
    result = json.loads(val.stdout.strip().splitlines()[-1])
    assert set(result) >= {"mIoU", "Acc", "Kappa", "Dice"}
    assert 0.0 <= result["mIoU"] <= 1.0 and 0.0 <= result["Acc"] <= 1.0
    assert result["mIoU"] == pytest.approx(info["mIoU"], abs=1e-4)  # the same evaluation

    # an iter_N directory is accepted as --model_path too (here the same weights)
    val_dir = run("val.py", "--config", tiny_config, "--model_path", out / "iter_5",
                  "--json", tmp_path / "metrics.json")
    assert val_dir.returncode == 0, val_dir.stderr[-3000:]
    assert json.loads(val_dir.stdout.strip().splitlines()[-1]) == result
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(result["mIoU"], abs=1e-4) and len(saved["class_IoU"]) == 2


# -- resume --------------------------------------------------------------------------------------

def test_resume_matches_an_uninterrupted_run(tmp_path, noflip_config, capsys):
    # batch 4 = the whole training set, so every iteration sees the same images whatever the
    # sampler's shuffle (after a resume the sampler starts again at its first epoch)
    cfg, model_a, opt_a = build(noflip_config, seed=0)
    api_train(cfg, model_a, opt_a, tmp_path / "A")
    straight = train_log(capsys.readouterr().out)
    assert [it for it, _, _ in straight] == [1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path / "A")) == ["iter_2", "iter_4"]

    # a fresh model (other init, other parameter names) resumed from iter_2
    os.makedirs(tmp_path / "B")
    shutil.copytree(tmp_path / "A" / "iter_2", tmp_path / "B" / "iter_2")
    cfg, model_b, opt_b = build(noflip_config, seed=1)
    api_train(cfg, model_b, opt_b, tmp_path / "B", resume_model=str(tmp_path / "B" / "iter_2"))
    out = capsys.readouterr().out
    resumed = train_log(out)
    assert "at iter 2" in out
    assert [it for it, _, _ in resumed] == [3, 4]  # continues at iter 3
    for (it_a, loss_a, lr_a), (it_b, loss_b, lr_b) in zip(straight[2:], resumed):
        assert it_a == it_b and lr_a == lr_b  # the same schedule point
        assert loss_b == pytest.approx(loss_a, rel=1e-3)
    assert opt_b.get_lr() == pytest.approx(opt_a.get_lr())
    assert (tmp_path / "B" / "iter_4" / "model.pdparams").is_file()

    # weights, BN statistics and momentum carried over: the same model after 4 iterations
    final_a, final_b = model_a.state_dict(), model_b.state_dict()
    mid = paddle.load(str(tmp_path / "A" / "iter_2" / "model.pdparams"))
    moved = max(float(np.abs(final_a[k].numpy() - mid[k].numpy()).max()) for k in final_a)
    assert moved > 1e-2  # iterations 3-4 changed the weights well beyond the tolerance below
    for key in final_a:
        np.testing.assert_allclose(final_b[key].numpy(), final_a[key].numpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=key)


def test_resume_cli_continues_at_the_next_iteration_with_the_same_lr(tmp_path, tiny_config):
    args = ["--config", tiny_config, "--iters", 4, "--batch_size", 2, "--save_interval", 2,
            "--log_iters", 1, "--seed", 3]
    straight = run("train.py", *args, "--save_dir", tmp_path / "A")
    assert straight.returncode == 0, straight.stderr[-3000:]
    os.makedirs(tmp_path / "B")
    shutil.copytree(tmp_path / "A" / "iter_2", tmp_path / "B" / "iter_2")
    resumed = run("train.py", *args, "--save_dir", tmp_path / "B",
                  "--resume_model", tmp_path / "B" / "iter_2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log_a, log_b = train_log(straight.stdout), train_log(resumed.stdout)
    assert [it for it, _, _ in log_b] == [3, 4]
    assert [lr for _, _, lr in log_b] == [lr for _, _, lr in log_a[2:]]
    assert sorted(os.listdir(tmp_path / "B")) == ["iter_2", "iter_4"]


def test_resume_needs_an_iter_dir(tmp_path, noflip_config):
    cfg, model, opt = build(noflip_config, seed=0)
    save_checkpoint(str(tmp_path / "best_model"), model, opt)
    with pytest.raises(paddleseg.utils.UserError, match="iter_N"):
        api_train(cfg, model, opt, tmp_path / "out", resume_model=str(tmp_path / "best_model"))
    os.remove(tmp_path / "best_model" / "model.pdopt")
    shutil.copytree(tmp_path / "best_model", tmp_path / "iter_3")
    with pytest.raises(paddleseg.utils.UserError, match="model.pdopt is missing"):
        api_train(cfg, model, opt, tmp_path / "out", resume_model=str(tmp_path / "iter_3"))


# -- atomic checkpoints ----------------------------------------------------------------------------

def test_crash_while_saving_leaves_the_previous_checkpoints_intact(tmp_path, noflip_config,
                                                                   monkeypatch):
    out = tmp_path / "out"
    cfg, model, opt = build(noflip_config, seed=0)
    api_train(cfg, model, opt, out, val_dataset=cfg.val_dataset, iters=2)
    assert sorted(os.listdir(out)) == ["best_model", "iter_2"]
    before = tree(out)

    real_save = paddle.save
    calls = []

    def save_then_crash(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # the file is written ...
        calls.append(path)
        raise OSError("disk full (simulated)")  # ... and then the process fails

    monkeypatch.setattr(paddle, "save", save_then_crash)
    cfg, model, opt = build(noflip_config, seed=0)
    with pytest.raises(OSError, match="simulated"):
        api_train(cfg, model, opt, out, val_dataset=cfg.val_dataset,
                  resume_model=str(out / "iter_2"))
    assert calls and "iter_4" in calls[0]  # it did crash inside the iter_4 save
    assert sorted(os.listdir(out)) == ["best_model", "iter_2"]  # no iter_4, no temp dir
    assert tree(out) == before

    # the same for a save over an existing directory
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(str(out / "best_model"), model, None)
    assert sorted(os.listdir(out)) == ["best_model", "iter_2"]
    assert tree(out) == before

    # and the run can go on from there
    monkeypatch.undo()
    cfg, model, opt = build(noflip_config, seed=0)
    api_train(cfg, model, opt, out, val_dataset=cfg.val_dataset, resume_model=str(out / "iter_2"))
    assert sorted(os.listdir(out)) == ["best_model", "iter_2", "iter_4"]
    assert set(tree(out / "iter_4")) == {"model.pdparams", "model.pdopt"}


# -- --seed and keep_checkpoint_max ----------------------------------------------------------------

def test_seed_makes_runs_repeatable(tmp_path, tiny_config):
    def go(name, seed, iters=3):
        proc = run("train.py", "--config", tiny_config, "--iters", iters, "--batch_size", 2,
                   "--save_interval", iters, "--log_iters", 1, "--seed", seed,
                   "--save_dir", tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = train_log(proc.stdout)
        assert [it for it, _, _ in log] == list(range(1, iters + 1))
        return ([loss for _, loss, _ in log],
                paddle.load(str(tmp_path / name / f"iter_{iters}" / "model.pdparams")))

    losses_a, params_a = go("a", 7)
    losses_b, params_b = go("b", 7)
    losses_c, _ = go("c", 8, iters=1)
    assert losses_a == losses_b
    for key in params_a:
        np.testing.assert_allclose(params_b[key].numpy(), params_a[key].numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    assert losses_c[0] != losses_a[0]  # the seed matters


def test_keep_checkpoint_max_removes_old_iter_dirs(tmp_path, tiny_config):
    out = tmp_path / "out"
    proc = run("train.py", "--config", tiny_config, "--iters", 4, "--batch_size", 2,
               "--save_interval", 1, "--keep_checkpoint_max", 2, "--save_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["iter_3", "iter_4"]


def test_keep_checkpoint_max_counts_the_dirs_of_a_resumed_run(tmp_path, noflip_config):
    out = tmp_path / "out"
    cfg, model, opt = build(noflip_config, seed=0, iters=3, batch_size=2)
    api_train(cfg, model, opt, out, save_interval=1, keep_checkpoint_max=0)
    assert sorted(os.listdir(out)) == ["iter_1", "iter_2", "iter_3"]  # 0 keeps all
    shutil.rmtree(out / "iter_3")
    cfg, model, opt = build(noflip_config, seed=0, iters=3, batch_size=2)
    api_train(cfg, model, opt, out, save_interval=1, keep_checkpoint_max=2,
              resume_model=str(out / "iter_2"))
    assert sorted(os.listdir(out)) == ["iter_2", "iter_3"]


def test_use_vdl_writes_visualdl_records(tmp_path, noflip_config):
    cfg, model, opt = build(noflip_config, seed=0, iters=2, batch_size=2)
    api_train(cfg, model, opt, tmp_path / "out", use_vdl=True)
    records = [f for f in os.listdir(tmp_path / "out") if f.startswith("vdlrecords")]
    assert records and os.path.getsize(tmp_path / "out" / records[0]) > 0
