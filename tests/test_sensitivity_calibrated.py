"""--sen_bn_batches: sensitivity points scored with batch norms recalibrated on training batches
(paddleseg.slim.sensitivity.calibrated). The dygraph evaluator's reuse of layer outputs gives,
under recalibration, exactly the metrics of a plain evaluation of each recalibrated pruned model;
the model is given back as it was; prune.py records the setting and does not resume a file
measured without it."""
import json

import numpy as np
import paddle
import pytest

from conftest import run_cli
from paddleseg.cvlibs import Config
from paddleseg.slim import apply, build_groups, sensitivity
from paddleseg.slim.bn_calibration import batch_norms, recalibrated_batchnorm
from paddleseg.slim.retrain import miou
from paddleseg.slim.sensitivity.reuse import SensitivityEvaluator
from test_prune import PRUNE, failure, prune_args

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")
RATIO = 0.5


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """(config, model with stale batch-norm statistics, four of its groups, calibration)."""
    cfg = Config(tiny_config)
    paddle.seed(0)
    model = cfg.build_model()
    rng = np.random.default_rng(0)
    for bn in batch_norms(model):   # as far from the data's statistics as a pruned model's
        n = bn._mean.shape[0]
        bn._mean.set_value(rng.normal(0.5, 0.5, n).astype("float32"))
        bn._variance.set_value(rng.uniform(2.0, 4.0, n).astype("float32"))
    model.eval()
    groups = build_groups(model, (1, 3, 64, 64)).groups
    picked = groups[:: max(1, len(groups) // 4)][:4]
    calibration = sensitivity.Calibration(cfg.train_dataset, 2, 2, seed=0)
    return cfg, model, picked, calibration


def parameters(model):
    return [(name, p, p.numpy().copy()) for name, p in model.named_parameters()]


def test_reused_outputs_give_each_recalibrated_points_plain_metric(tiny, tmp_path):
    cfg, model, groups, calibration = tiny
    val = cfg.val_dataset
    before = parameters(model)
    with sensitivity.calibrated_model(model, calibration):
        with SensitivityEvaluator(model, val, len(val)) as reuse:
            evaluator = sensitivity.CalibratedEvaluator(reuse, model, calibration)
            losses = sensitivity.analyze(model, groups, evaluator, [RATIO],
                                         str(tmp_path / "sen.json"), "l1")
            hits = reuse.hits
    assert hits > 0    # the layers before each pruned group were not run again
    stored = json.loads((tmp_path / "sen.json").read_text())
    assert stored["fingerprint"]["evaluator"] == {
        "name": "dygraph", "bn_calibration": {"batches": 2, "batch_size": 2, "seed": 0}}
    # the model is its own again: the same parameter objects, holding the same values
    after = parameters(model)
    assert [(n, p) for n, p, _ in after] == [(n, p) for n, p, _ in before]
    for (name, _, value), (_, _, then) in zip(after, before):
        np.testing.assert_array_equal(value, then, err_msg=name)

    # each point by hand: pruned, recalibrated, evaluated plainly (no reuse), restored
    with recalibrated_batchnorm(model, calibration.batches):
        base = miou(model, val)
    by_id = {g.id: g for g in groups}
    changed = False
    for g in groups:
        _, undo = apply.prune(model, by_id, {g.id: RATIO}, "l1")
        try:
            x = paddle.to_tensor(val[0]["img"][None])
            stale = model(x)[0].numpy()
            with recalibrated_batchnorm(model, calibration.batches):
                metric = miou(model, val)
                changed |= not np.allclose(model(x)[0].numpy(), stale, atol=1e-4)
        finally:
            undo.restore()
        assert losses[g.id][RATIO] == sensitivity.relative_loss(base, metric), g.id
    assert changed     # recalibration did change what the pruned models compute


def test_without_calibration_the_evaluator_is_the_inner_one(tiny):
    _, model, _, _ = tiny
    inner = sensitivity.FunctionEvaluator(lambda: 0.5)
    assert sensitivity.calibrated(inner, model, None) is inner
    with sensitivity.calibrated_model(model, None) as same:
        assert same is model


def test_prune_records_the_setting_and_refuses_a_file_measured_without_it(tiny_config,
                                                                       tmp_path):
    sen_file = tmp_path / "sen.json"
    calibrated = prune_args(tiny_config, None, tmp_path / "a", iters=1, sen_ratios=(0.5,),
                            extra=["--sen_file", sen_file, "--sen_bn_batches", 2, "--seed", 3,
                                   "--sen_evaluator", "dygraph"])
    proc = run_cli(PRUNE, *calibrated)
    assert proc.returncode == 0, failure(proc)
    assert "batch norms recalibrated on 2 training batches" in proc.stderr + proc.stdout
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["sen_bn_calibration"]["batches"] == 2
    assert report["sen_bn_calibration"]["seed"] == 3
    # the same file without recalibration: its points are not this analysis's
    plain = prune_args(tiny_config, None, tmp_path / "b", iters=1, sen_ratios=(0.5,),
                       extra=["--sen_file", sen_file, "--seed", 3, "--sen_evaluator", "dygraph"])
    proc = run_cli(PRUNE, *plain)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "bn_calibration" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_calibration_flags_are_refused_in_one_line(tiny_config, tmp_path):
    negative = prune_args(tiny_config, None, tmp_path / "a", extra=["--sen_bn_batches", -1])
    with_paddleslim = ["--config", tiny_config, "--pruning_ratio", 0.3, "--retraining_iters", 1,
                       "--save_dir", tmp_path / "b", "--method", "paddleslim",
                       "--sen_bn_batches", 2]
    for argv, message in ((negative, "--sen_bn_batches must be >= 0"),
                          (with_paddleslim, "--sen_bn_batches")):
        proc = run_cli(PRUNE, *argv)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
        assert "Traceback" not in proc.stderr


def test_without_seed_the_calibration_images_are_seed_0s(tiny):
    """Every rank, and every resume, must recalibrate on the same images: without --seed
    they are seed 0's, not a fresh draw."""
    from types import SimpleNamespace

    from paddleseg.slim.pipeline import bn_calibration_of
    cfg = tiny[0]
    assert bn_calibration_of(SimpleNamespace(sen_bn_batches=0, seed=None), cfg) is None
    unseeded = bn_calibration_of(SimpleNamespace(sen_bn_batches=1, seed=None), cfg)
    seeded = bn_calibration_of(SimpleNamespace(sen_bn_batches=1, seed=0), cfg)
    assert unseeded.facts == seeded.facts == {"batches": 1, "batch_size": cfg.batch_size,
                                              "seed": 0}
    np.testing.assert_array_equal(unseeded.batches[0].numpy(), seeded.batches[0].numpy())
