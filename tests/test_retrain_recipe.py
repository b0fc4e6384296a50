"""The retraining recipe of issue 22: distillation from the unpruned model (pixel and channel
losses against numpy, a frozen teacher, exact resume) and the finetune schedule (its rates
against the formula), through prune.py end to end and its refusals."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import ROOT, write_optic_config
from test_distributed import failure, launch, worker_logs
from paddleseg.core.train import train
from paddleseg.models.losses import CrossEntropyLoss
from paddleseg.slim.distill import Distillation, channel_kd_loss, make_teacher, pixel_kd_loss
from paddleseg.slim.options import PruneOptions
from paddleseg.slim.retrain import build_schedule, recipe, warmup_iters
from paddleseg.utils.errors import UserError

PRUNE = os.path.join(ROOT, "slim", "prune", "prune.py")


def load_prune_cli():
    spec = importlib.util.spec_from_file_location("prune_cli", PRUNE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the losses against a hand computation -------------------------------------------------------

def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(s, t, axis, temp):
    ps, pt = np_softmax(s / temp, axis), np_softmax(t / temp, axis)
    return (pt * (np.log(pt) - np.log(ps))).sum(axis=axis) * temp ** 2


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_pixel_and_channel_losses_are_the_hand_computed_kl(temp):
    rng = np.random.RandomState(0)
    s, t = rng.randn(2, 3, 4, 5).astype("float32"), rng.randn(2, 3, 4, 5).astype("float32")
    pixel = float(pixel_kd_loss(paddle.to_tensor(s), paddle.to_tensor(t), temp))
    # per pixel: sum over the 3 classes, then the mean over 2 x 4 x 5 pixels
    assert pixel == pytest.approx(np_kl(s, t, 1, temp).mean(), rel=1e-5)
    channel = float(channel_kd_loss(paddle.to_tensor(s), paddle.to_tensor(t), temp))
    # per channel: softmax over the 20 positions, sum over them, mean over 2 x 3 channels
    assert channel == pytest.approx(np_kl(s.reshape(2, 3, 20), t.reshape(2, 3, 20), 2, temp).mean(),
                                    rel=1e-5)
    assert float(pixel_kd_loss(paddle.to_tensor(t), paddle.to_tensor(t), temp)) == pytest.approx(0, abs=1e-6)


# --- a toy teacher and student on the tiny set ------------------------------------------------

class Toy(paddle.nn.Layer):
    def __init__(self, width):
        super().__init__()
        self.body = paddle.nn.Sequential(paddle.nn.Conv2D(3, width, 3, padding=1),
                                         paddle.nn.BatchNorm2D(width), paddle.nn.ReLU(),
                                         paddle.nn.Conv2D(width, 2, 1))

    def forward(self, x):
        return [self.body(x)]


@pytest.fixture(scope="module")
def toy_config(tiny_optic_root, tmp_path_factory):
    """The tiny set at 64x64 with random flips (its model section is not used)."""
    return write_optic_config(tmp_path_factory.mktemp("recipe") / "toy.yml", tiny_optic_root,
                              "FCN", [1], flip=True)


def options(config, iters, **kw):
    return PruneOptions(config=config, pruning_ratio=0.3, retraining_iters=iters, **kw)


def distilled_run(o, teacher, save_dir, stop=None, resume=None, student_seed=1):
    """The finetune schedule and pixel distillation of ``o`` on a fresh toy student, trained
    to ``stop`` (default: the end); returns (student, optimizer)."""
    cfg = o.build_config()
    paddle.seed(student_seed)
    student = Toy(4)
    optimizer = cfg.build_optimizer(student, build_schedule(o, cfg))
    train(student, cfg.train_dataset, optimizer=optimizer, save_dir=str(save_dir),
          iters=stop or o.retraining_iters, batch_size=2, save_interval=2, log_iters=1,
          losses={"types": [CrossEntropyLoss()], "coef": [1]}, seed=3, resume_model=resume,
          extra_loss=Distillation(teacher, o.distill, o.distill_weight, o.distill_temperature))
    return student, optimizer


def test_a_distilled_run_resumed_repeats_the_uninterrupted_one_and_the_teacher_stays(toy_config,
                                                                                  tmp_path):
    o = options(toy_config, 6, distill="pixel", distill_weight=2.0, distill_temperature=2.0,
                retrain_schedule="finetune", learning_rate=0.05)
    paddle.seed(0)
    teacher = make_teacher(Toy(8))
    before = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}

    straight, opt_a = distilled_run(o, teacher, tmp_path / "A")
    distilled_run(o, teacher, tmp_path / "B", stop=4)  # "killed" after iteration 4
    resumed, opt_b = distilled_run(o, teacher, tmp_path / "B", resume=str(tmp_path / "B" / "iter_4"),
                                   student_seed=7)  # other initial weights: all it has is iter_4

    for key, value in straight.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[key].numpy(), value.numpy(), rtol=0,
                                   atol=1e-6, err_msg=key)
    assert opt_b.get_lr() == pytest.approx(opt_a.get_lr())
    mid = paddle.load(str(tmp_path / "A" / "iter_4" / "model.pdparams"))
    assert max(float(np.abs(straight.state_dict()[k].numpy() - mid[k].numpy()).max())
               for k in mid) > 1e-3  # iterations 5-6 moved the weights beyond the tolerance
    # the teacher: no gradient ever, weights and BN statistics as they were, still in eval mode
    assert all(p.grad is None and p.stop_gradient for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key], err_msg=key)
    assert not teacher.training


def test_the_distillation_term_reaches_the_student_only(toy_config):
    paddle.seed(0)
    teacher, student = make_teacher(Toy(8)), Toy(4)
    images = paddle.randn([2, 3, 16, 16])
    loss = Distillation(teacher, "channel", 0.5, 2.0)(images, student(images))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if not p.stop_gradient)


def test_make_teacher_shares_nothing_with_the_model():
    paddle.seed(0)
    model = Toy(8)
    teacher = make_teacher(model)
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p * 0)
    assert all(float(p.abs().sum()) > 0 for p in teacher.parameters() if p.ndim > 1)


# --- the finetune schedule --------------------------------------------------------------------

def rates(scheduler, iters):
    """The rate of each (1-based) iteration, stepped as core.train steps it."""
    out = []
    for _ in range(iters):
        out.append(scheduler())
        scheduler.step()
    return out


@pytest.mark.parametrize("given_lr", [None, 0.02])
def test_the_finetune_schedule_is_warm_up_then_cosine(toy_config, given_lr):
    iters = 60
    o = options(toy_config, iters, retrain_schedule="finetune", learning_rate=given_lr)
    peak = 0.02 if given_lr else 0.01 * 0.1  # the config's 0.01 times the default scale 0.1
    warm = warmup_iters(iters)
    assert warm == 3
    lrs = rates(build_schedule(o, o.build_config()), iters)

    def formula(i):
        if i - 1 < warm:
            return peak * (i - 1) / warm
        return peak * (1 + math.cos(math.pi * (i - 1 - warm) / (iters - warm))) / 2
    for i in (1, warm, warm + 1, (iters + warm) // 2, iters):
        assert lrs[i - 1] == pytest.approx(formula(i), rel=1e-6, abs=1e-12), i
    assert lrs[0] == 0 and lrs[warm] == pytest.approx(peak) and max(lrs) == pytest.approx(peak)
    assert 0 < lrs[-1] < peak * 0.01
    assert warmup_iters(5) == 1 and warmup_iters(100) == 5


def test_the_config_schedule_stays_the_default(toy_config):
    o = options(toy_config, 10)
    assert (o.retrain_schedule, o.distill) == ("config", "none")
    cfg = o.build_config()
    assert rates(build_schedule(o, cfg), 10) == rates(cfg.build_lr_scheduler(), 10)
    assert recipe(o, cfg) == {"schedule": "config", "distill": "none", "prune_steps": 1}


# --- prune.py ---------------------------------------------------------------------------------

def prune_argv(config, save_dir, *extra):
    return ["--config", config, "--pruning_ratio", "0.3", "--retraining_iters", "2",
            "--save_dir", str(save_dir), "--sen_ratios", "0.3", "0.6", "--sen_eval_num", "1",
            "--sen_evaluator", "dygraph", *extra]


@pytest.fixture(scope="module")
def fcn_config(tiny_optic_root, tmp_path_factory):
    """Fast-SCNN (two logits) on the tiny set."""
    return write_optic_config(tmp_path_factory.mktemp("fastscnn") / "fastscnn.yml",
                              tiny_optic_root, "FastSCNN", [1.0, 0.4])


def test_prune_with_the_recipe_end_to_end_records_it(fcn_config, tmp_path, capsys, monkeypatch):
    import paddleseg.slim.retrain as retrain_module
    from paddleseg.slim.flops import count_params
    calls = []

    class Spy(Distillation):
        def __call__(self, images, logits):
            calls.append((count_params(self.teacher), self.teacher.training, self.temperature))
            return super().__call__(images, logits)
    monkeypatch.setattr(retrain_module, "Distillation", Spy)
    cli = load_prune_cli()
    save_dir = tmp_path / "out"
    assert cli.main(prune_argv(fcn_config, save_dir, "--distill", "pixel", "--retrain_schedule",
                               "finetune", "--distill_temperature", "2", "--seed", "0")) == 0
    report = json.loads((save_dir / "report.json").read_text())
    assert report["retraining_recipe"] == {
        "schedule": "finetune", "distill": "pixel", "prune_steps": 1,
        "learning_rate": pytest.approx(0.001),
        "warmup_iters": 1, "finetune_lr_scale": 0.1, "distill_weight": 1.0,
        "distill_temperature": 2.0}
    assert "Retraining recipe: schedule finetune, distill pixel" in (save_dir / "report.md").read_text()
    assert "(retrained)" in capsys.readouterr().out
    # one teacher forward per retraining iteration, by the unpruned model in eval mode
    assert calls == [(report["params_before"], False, 2.0)] * 2
    assert report["params_after"] < report["params_before"]


BAD = {
    "weight": (["--distill", "pixel", "--distill_weight", "-1"], "--distill_weight must be > 0"),
    "temperature": (["--distill", "channel", "--distill_temperature", "0"],
                    "--distill_temperature must be > 0"),
    "no kind": (["--distill_weight", "2"], "need --distill pixel or channel"),
    "scale": (["--finetune_lr_scale", "0.5"], "needs --retrain_schedule finetune"),
    "scale and lr": (["--retrain_schedule", "finetune", "--finetune_lr_scale", "0.5",
                      "--learning_rate", "0.01"], "give one of the two"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_recipe_is_refused_before_any_work(case, fcn_config, tmp_path):
    extra, message = BAD[case]
    with pytest.raises(UserError, match=message):
        load_prune_cli().main(prune_argv(fcn_config, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_a_bad_value_is_one_error_line(fcn_config, tmp_path):
    proc = subprocess.run([sys.executable, PRUNE, *prune_argv(fcn_config, tmp_path / "out",
                                                              "--distill", "pixel",
                                                              "--distill_weight", "-1")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: --distill_weight must be > 0, got -1.0"], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--distill", "pixel"], ["--retrain_schedule", "finetune"],
                                   ["--distill_temperature", "2"]])
def test_the_recipe_is_refused_with_the_paddleslim_method(flags, fcn_config, tmp_path):
    with pytest.raises(UserError, match="--method paddleslim runs PaddleSeg 2.6's method, which "
                                        "has no --(distill|retrain_schedule)"):
        load_prune_cli().main(["--config", fcn_config, "--pruning_ratio", "0.3",
                               "--retraining_iters", "2", "--save_dir", str(tmp_path / "out"),
                               "--method", "paddleslim", *flags])
    assert not (tmp_path / "out").exists()


def test_two_ranks_each_distill_from_their_own_teacher(fcn_config, tmp_path):
    """paddle.distributed.launch, 2 CPU ranks: every rank retrains with the recipe (its own
    teacher) in two pruning steps (--prune_steps), rank 0 reports it."""
    log_dir = tmp_path / "log"
    proc = launch(PRUNE, *prune_argv(fcn_config, tmp_path / "out", "--distill", "channel",
                                     "--retrain_schedule", "finetune", "--batch_size", "1",
                                     "--cpu_threads", "1", "--seed", "0", "--prune_steps", "2"),
                  log_dir=log_dir, timeout=300)
    assert proc.returncode == 0, failure(proc, log_dir)
    logs = worker_logs(log_dir)
    for rank, log in enumerate(logs):
        assert f"[rank {rank}] retraining recipe: schedule finetune, distill channel" in log
        # one data-parallel retraining per step, on both ranks
        assert log.count(f"[rank {rank}] training on 2 ranks") == 2, log[-3000:]
    assert "stepwise pruning: step 2 of 2" in logs[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["retraining_recipe"]["distill"] == "channel"
    assert [s["retraining_iters"] for s in report["prune_steps"]] == [1, 1]


def test_two_ranks_refit_as_one_process_does(fcn_config, tmp_path):
    """paddle.distributed.launch, 2 CPU ranks, --reconstruct: the refit's batches are drawn with
    a fixed seed from the whole training set (not a rank's shard), so rank 0 refits exactly as
    a single process does, before the data-parallel retraining."""
    flags = ["--reconstruct", "1", "--batch_size", "1", "--cpu_threads", "1", "--seed", "0"]
    single = tmp_path / "single"
    assert load_prune_cli().main(prune_argv(fcn_config, single, *flags)) == 0
    log_dir = tmp_path / "log"
    proc = launch(PRUNE, *prune_argv(fcn_config, tmp_path / "ranks", *flags), log_dir=log_dir,
                  timeout=300)
    assert proc.returncode == 0, failure(proc, log_dir)
    assert "[rank 1] training on 2 ranks" in worker_logs(log_dir)[1]
    refits = [json.loads((folder / "report.json").read_text())["reconstruction"]
              for folder in (single, tmp_path / "ranks")]
    assert refits[0]["convs"] >= 1
    for field in ("convs", "kept", "not_called_once", "batches", "error_before", "error_after"):
        assert refits[1][field] == refits[0][field], field
