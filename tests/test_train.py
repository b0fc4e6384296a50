"""Training end to end on the tiny synthetic set: the acceptance run, exact resume, fresh runs
into a used save_dir, atomic checkpoints, --seed, keep_checkpoint_max and PaddleSeg's keywords."""
import hashlib
import inspect
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
from conftest import ROOT, run_cli, write_tiny_config
from paddleseg.core import train
from paddleseg.cvlibs import Config
from paddleseg.utils.checkpoint import save_checkpoint
from paddleseg.utils.errors import UserError

TRAIN_LINE = re.compile(r"\[TRAIN\] iter (\d+)/(\d+), loss ([0-9.]+), lr ([0-9.]+)")


def run(script, *args, timeout=240):
    """``script`` as a program (the acceptance run: train.py's and val.py's smoke test)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_main(script, *args):
    """The script's main(argv) in this process, through cli.run (conftest.run_cli)."""
    return run_cli(script, *args)


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
    """Config, model (its initial weights from ``seed``), optimizer."""
    paddle.seed(seed)
    cfg = Config(config, iters=iters, batch_size=batch_size)
    model = cfg.build_model()
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

@pytest.fixture(scope="module")
def six_image_config(tmp_path_factory):
    """Fast-SCNN (it has dropout) at 32x32 with RandomHorizontalFlip over 6 training images:
    batch 2 gives 3 batches an epoch, so an 8-iteration run crosses two epoch boundaries."""
    from conftest import make_tiny_optic
    folder = tmp_path_factory.mktemp("six")
    root = make_tiny_optic(folder / "optic_disc_seg", num_train=6, num_val=2)
    path = write_tiny_config(folder / "six.yml", root, flip=True, model="FastSCNN")
    text = open(path).read().replace("[64, 64]", "[32, 32]").replace("[1, 1, 1, 1, 1]", "[1.0, 0.4]")
    with open(path, "w") as f:
        f.write(text)
    return path


def record_batches(model):
    """A list that gets a digest of every batch ``model`` is trained on (order, images and
    their random flips)."""
    seen = []
    model.register_forward_pre_hook(
        lambda layer, inputs: seen.append(hashlib.sha1(inputs[0].numpy().tobytes()).hexdigest()[:12])
        if layer.training else None)
    return seen


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, six_image_config):
    # straight: 8 iterations, the loader in the main process
    cfg, model_a, opt_a = build(six_image_config, seed=0, iters=8, batch_size=2)
    seen_a = record_batches(model_a)
    api_train(cfg, model_a, opt_a, tmp_path / "A", save_interval=4, seed=5)
    assert len(seen_a) == 8 and len(set(seen_a)) == 8  # flips make even repeated images differ

    # the same run interrupted after iteration 4 of its 8-iteration schedule, then resumed, both
    # with worker processes; the resumed model is built anew (other initial weights, other
    # parameter names): all it has is the checkpoint
    cfg, model_b, opt_b = build(six_image_config, seed=0, iters=8, batch_size=2)
    seen_b = record_batches(model_b)
    api_train(cfg, model_b, opt_b, tmp_path / "B", save_interval=4, seed=5, iters=4, num_workers=2)
    state = json.loads((tmp_path / "B" / "iter_4" / "train_state.json").read_text())
    assert state == {"seed": 5, "epoch": 1, "batches_done": 1}  # 3 batches an epoch
    cfg, model_b, opt_b = build(six_image_config, seed=2, iters=8, batch_size=2)
    seen_resumed = record_batches(model_b)
    api_train(cfg, model_b, opt_b, tmp_path / "B", save_interval=4, num_workers=2,
              resume_model=str(tmp_path / "B" / "iter_4"))  # the seed comes from the checkpoint

    assert seen_b + seen_resumed == seen_a  # the same images, in the same order, with the same flips
    final_a, final_b = model_a.state_dict(), model_b.state_dict()
    mid = paddle.load(str(tmp_path / "A" / "iter_4" / "model.pdparams"))
    moved = max(float(np.abs(final_a[k].numpy() - mid[k].numpy()).max()) for k in final_a)
    assert moved > 1e-3  # iterations 5-8 changed the weights far beyond the tolerance below
    for key in final_a:  # weights, BN statistics; dropout masks and momentum shaped them
        np.testing.assert_allclose(final_b[key].numpy(), final_a[key].numpy(), rtol=0, atol=1e-6,
                                   err_msg=key)
    assert opt_b.get_lr() == pytest.approx(opt_a.get_lr())


def test_resume_from_a_checkpoint_without_train_state(tmp_path, noflip_config, capsys):
    # 4 images, batch 2: iter_3 is one batch into the second epoch
    cfg, model, opt = build(noflip_config, seed=0, iters=4, batch_size=2)
    seen_straight = record_batches(model)
    api_train(cfg, model, opt, tmp_path / "out", save_interval=3, seed=1)
    (tmp_path / "out" / "iter_3" / "train_state.json").write_text('{"seed": 1, "epoch": -1}')
    cfg, model, opt = build(noflip_config, seed=0, iters=4, batch_size=2)
    with pytest.raises(paddleseg.utils.UserError, match="train_state.json is not a training state"):
        api_train(cfg, model, opt, tmp_path / "out", resume_model=str(tmp_path / "out" / "iter_3"))

    os.remove(tmp_path / "out" / "iter_3" / "train_state.json")  # as written before it existed
    seen_resumed = record_batches(model)
    api_train(cfg, model, opt, tmp_path / "out", resume_model=str(tmp_path / "out" / "iter_3"))
    assert "has no train_state.json: the data order continues at iteration 3" in capsys.readouterr().out
    assert seen_resumed == seen_straight[3:]  # no random augmentation here: the same batch


def test_resume_cli_continues_at_the_next_iteration_with_the_same_lr(tmp_path, tiny_config):
    args = ["--config", tiny_config, "--iters", 4, "--batch_size", 2, "--save_interval", 2,
            "--log_iters", 1, "--seed", 3]
    straight = run_main("train.py", *args, "--save_dir", tmp_path / "A")
    assert straight.returncode == 0, straight.stderr[-3000:]
    os.makedirs(tmp_path / "B")
    shutil.copytree(tmp_path / "A" / "iter_2", tmp_path / "B" / "iter_2")
    resumed = run_main("train.py", *args, "--save_dir", tmp_path / "B",
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


def test_resume_past_the_last_iteration_says_so(tmp_path, noflip_config):
    cfg, model, opt = build(noflip_config, seed=0, iters=2, batch_size=2)
    api_train(cfg, model, opt, tmp_path / "out")
    before = tree(tmp_path / "out")
    for iters in (2, 1):  # at the end, and beyond it
        with pytest.raises(paddleseg.utils.UserError, match="iteration 2, the run ends at "
                                                             f"{iters}: nothing left to train"):
            api_train(cfg, model, opt, tmp_path / "out", iters=iters,
                      resume_model=str(tmp_path / "out" / "iter_2"))
    assert tree(tmp_path / "out") == before


def test_a_fresh_run_does_not_inherit_the_old_best_model(tmp_path, noflip_config, capsys):
    out = tmp_path / "out"
    cfg, model, opt = build(noflip_config, seed=0, iters=2, batch_size=2)
    api_train(cfg, model, opt, out, iters=1, save_interval=1)  # leaves iter_1
    # an earlier run's best model that no real run can beat
    save_checkpoint(str(out / "best_model"), model, None)
    (out / "best_model" / "model_info.json").write_text(json.dumps({"mIoU": 1.0, "iter": 100}))
    (out / "iter_7").mkdir()
    capsys.readouterr()

    cfg, model, opt = build(noflip_config, seed=0, iters=2, batch_size=2)
    best = api_train(cfg, model, opt, out, val_dataset=cfg.val_dataset)
    log = capsys.readouterr().out
    assert f"{out} already holds iter_1, iter_7, best_model; this fresh run will replace " \
           "best_model (--resume_model continues a run instead)" in log
    info = json.loads((out / "best_model" / "model_info.json").read_text())
    assert info == {"mIoU": best, "iter": 2} and best < 1.0  # its own best, not the old one
    assert sorted(os.listdir(out)) == ["best_model", "iter_1", "iter_2", "iter_7"]  # nothing lost

    # a resumed run does continue the best model of its run
    (out / "best_model" / "model_info.json").write_text(json.dumps({"mIoU": 1.0, "iter": 100}))
    cfg, model, opt = build(noflip_config, seed=0, iters=3, batch_size=2)
    api_train(cfg, model, opt, out, val_dataset=cfg.val_dataset, save_interval=1,
              resume_model=str(out / "iter_2"))
    log = capsys.readouterr().out
    assert "already holds" not in log and "[EVAL] best mIoU 1.0000 at iter 100" in log
    assert json.loads((out / "best_model" / "model_info.json").read_text())["iter"] == 100


def test_a_fresh_run_into_an_empty_or_new_save_dir_says_nothing(tmp_path, noflip_config, capsys):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new"):
        cfg, model, opt = build(noflip_config, seed=0, iters=1, batch_size=2)
        api_train(cfg, model, opt, tmp_path / name)
        assert "already holds" not in capsys.readouterr().out
        assert os.listdir(tmp_path / name) == ["iter_1"]


class UnreadableDataset(paddle.io.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise OSError(f"cannot read sample {index} (simulated)")


def test_a_failed_run_leaves_no_folder_it_created(tmp_path, noflip_config):
    cfg, model, opt = build(noflip_config, seed=0, iters=2, batch_size=2)

    def fail(save_dir):
        with pytest.raises(OSError, match="simulated"):
            train(model, UnreadableDataset(), optimizer=opt, save_dir=str(save_dir), iters=2,
                  batch_size=2, losses=cfg.loss)

    fail(tmp_path / "new" / "deeper")
    assert os.listdir(tmp_path) == []  # both folders it made are gone
    (tmp_path / "mine").mkdir()
    fail(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()  # the user's folder stays
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(paddleseg.utils.UserError, match="is an existing file, not a folder"):
        api_train(cfg, model, opt, tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "x"


# PaddleSeg 2.6's keyword names (paddleseg/core/train.py and val.py)
PADDLESEG_TRAIN_KEYWORDS = {
    "model", "train_dataset", "val_dataset", "optimizer", "save_dir", "iters", "batch_size",
    "resume_model", "save_interval", "log_iters", "num_workers", "use_vdl", "losses",
    "keep_checkpoint_max", "test_config", "precision", "amp_level", "profiler_options",
    "to_static_training"}
PADDLESEG_EVALUATE_KEYWORDS = {
    "model", "eval_dataset", "aug_eval", "scales", "flip_horizontal", "flip_vertical", "is_slide",
    "stride", "crop_size", "precision", "amp_level", "num_workers", "print_detail", "auc_roc"}


def test_train_and_evaluate_take_paddleseg_keywords_and_refuse_misspelt_ones(tmp_path,
                                                                             noflip_config, capsys):
    from paddleseg.core import evaluate
    assert PADDLESEG_TRAIN_KEYWORDS <= set(inspect.signature(train).parameters)
    assert PADDLESEG_EVALUATE_KEYWORDS <= set(inspect.signature(evaluate).parameters)
    with pytest.raises(TypeError, match="save_interal"):
        train(None, None, save_interal=5)
    with pytest.raises(TypeError, match="print_detial"):
        evaluate(None, None, print_detial=False)

    # a PaddleSeg script's call runs; what this trainer does not implement is said, not ignored
    cfg, model, opt = build(noflip_config, seed=0, iters=1, batch_size=2)
    train(model, cfg.train_dataset, optimizer=opt, save_dir=str(tmp_path / "out"), iters=1,
          batch_size=2, losses=cfg.loss, test_config={"auc_roc": True}, precision="fp16",
          amp_level="O2", profiler_options=None, to_static_training=False)
    log = capsys.readouterr().out
    assert "train(): precision='fp16' is not supported" in log
    assert "profiler_options" not in log and "to_static_training" not in log
    assert "test_config" not in log   # implemented (core.infer.EvalOptions), unused without val
    # with a val set the test_config is checked before training starts
    with pytest.raises(UserError, match="is_slide needs crop_size"):
        train(model, cfg.train_dataset, val_dataset=cfg.val_dataset, optimizer=opt,
              save_dir=str(tmp_path / "out2"), iters=1, batch_size=2, losses=cfg.loss,
              test_config={"is_slide": True})
    miou, *_ = evaluate(model, cfg.val_dataset, scales=1.0, flip_horizontal=True, is_slide=True,
                        stride=(8, 8), crop_size=(32, 32), num_workers=2, print_detail=False,
                        precision="fp16")
    assert 0.0 <= miou <= 1.0
    log = capsys.readouterr().out
    assert "evaluate(): precision='fp16' is not supported" in log and "is_slide" not in log


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
    assert set(tree(out / "iter_4")) == {"model.pdparams", "model.pdopt", "train_state.json"}


# -- --seed and keep_checkpoint_max ----------------------------------------------------------------

def test_seed_makes_runs_repeatable(tmp_path, tiny_config):
    def go(name, seed, iters=3):
        proc = run_main("train.py", "--config", tiny_config, "--iters", iters, "--batch_size", 2,
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
    proc = run_main("train.py", "--config", tiny_config, "--iters", 4, "--batch_size", 2,
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
