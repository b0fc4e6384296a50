"""--reconstruct: the least-squares refit of the convs that lost input channels
(paddleseg.slim.reconstruct), on toy nets whose exact answer is known, and through prune.py."""
import json
import os

import numpy as np
import paddle
import pytest

from paddleseg.slim import build_groups, prune_model
from paddleseg.slim.distill import make_teacher
from paddleseg.slim.reconstruct import consumers_to_refit, forward_order, reconstruct
from paddleseg.utils.errors import UserError
from conftest import ROOT
from test_retrain_recipe import fcn_config, load_prune_cli, prune_argv  # noqa: F401


class Linear(paddle.nn.Layer):
    """conv1 -> conv2 (3x3, stride 2, no bias) -> bn -> relu -> head (1x1 with bias): no
    non-linearity between conv1 and conv2, so a removed conv1 channel that is a multiple of a
    kept one can be put back exactly by conv2's weights."""

    def __init__(self):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, 8, 3, padding=1, bias_attr=False)
        self.conv2 = paddle.nn.Conv2D(8, 6, 3, stride=2, padding=1, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(6)
        self.head = paddle.nn.Conv2D(6, 2, 1)

    def forward(self, x):
        return [self.head(paddle.nn.functional.relu(self.bn(self.conv2(self.conv1(x)))))]


def linear_net():
    paddle.seed(0)
    net = Linear()
    w = net.conv1.weight.numpy()
    # channels 4..7 are half of channels 0..3: L1 removes them first, and they are redundant
    w[4:] = 0.5 * w[:4]
    net.conv1.weight.set_value(w)
    net.eval()
    return net


def images(n, seed):
    rng = np.random.RandomState(seed)
    return [{"img": rng.randn(3, 16, 16).astype("float32")} for _ in range(n)]


def group_of(analysis, producer):
    return next(g.id for g in analysis.groups if producer in g.producers)


def output_error(model, reference, batch):
    with paddle.no_grad():
        return float(np.mean((model(batch)[0].numpy() - reference(batch)[0].numpy()) ** 2))


@pytest.fixture
def plain_least_squares(monkeypatch):
    """The ridge made negligible: the refit is the exact least-squares solution."""
    import paddleseg.slim.reconstruct as reconstruct_module
    monkeypatch.setattr(reconstruct_module, "RIDGE", 1e-9)


def test_redundant_channels_removed_are_put_back_exactly(plain_least_squares):
    model = linear_net()
    reference = make_teacher(model)
    analysis = build_groups(model, (1, 3, 16, 16))
    plan = {group_of(analysis, "conv1"): 0.5}
    assert set(consumers_to_refit(reference, analysis.by_id(), plan, "l1")) == {"conv2"}
    prune_model(model, analysis, plan, "l1")
    batch = paddle.to_tensor(np.stack([d["img"] for d in images(2, 7)]))
    plain_error = output_error(model, reference, batch)
    record = reconstruct(model, reference, analysis.by_id(), plan, "l1", images(8, 0), 4, 2)
    assert record["convs"] == 1 and record["error_before"] > 0.01
    assert record["error_after"] < 1e-4 * record["error_before"]
    # on images it never saw, the pruned model now computes what the unpruned one does
    assert output_error(model, reference, batch) < 1e-4 * plain_error
    assert model.conv2.weight.shape == [6, 4, 3, 3]


def test_the_refit_is_the_least_squares_solution_and_seeded(plain_least_squares):
    """A head that lost channels whose loss cannot be undone: the refit is numpy's least
    squares of the unpruned outputs on the pruned inputs (same sampled positions), and the
    same seed gives the same weights."""
    def pruned():
        paddle.seed(1)
        net = Linear()
        net.eval()
        analysis = build_groups(net, (1, 3, 16, 16))
        plan = {group_of(analysis, "conv2"): 0.5}
        reference = make_teacher(net)
        prune_model(net, analysis, plan, "fpgm")
        return net, reference, analysis, plan
    data = images(6, 3)
    net, reference, analysis, plan = pruned()
    record = reconstruct(net, reference, analysis.by_id(), plan, "fpgm", data, 3, 2, seed=5)
    assert record["convs"] == 1 and record["error_after"] < record["error_before"]
    # the hand computation, on every position (16 x 8 x 8 = 1024 < MIN_SAMPLES: all are used)
    net2, reference2, analysis2, _ = pruned()
    from paddleseg.slim.bn_calibration import calibration_batches
    feats, targets = [], []
    for batch in calibration_batches(data, 3, 2, 5):
        with paddle.no_grad():
            kept = paddle.nn.functional.relu(net2.bn(net2.conv2(net2.conv1(batch))))
            full = reference2.head(paddle.nn.functional.relu(
                reference2.bn(reference2.conv2(reference2.conv1(batch)))))
        feats.append(kept.numpy().transpose(0, 2, 3, 1).reshape(-1, 3))
        targets.append(full.numpy().transpose(0, 2, 3, 1).reshape(-1, 2))
    a = np.hstack([np.concatenate(feats), np.ones((len(np.concatenate(feats)), 1))])
    solution = np.linalg.lstsq(a, np.concatenate(targets), rcond=None)[0]
    np.testing.assert_allclose(net.head.weight.numpy().reshape(2, 3), solution[:3].T, atol=2e-3)
    np.testing.assert_allclose(net.head.bias.numpy(), solution[3], atol=2e-3)
    net3, reference3, analysis3, plan3 = pruned()
    reconstruct(net3, reference3, analysis3.by_id(), plan3, "fpgm", data, 3, 2, seed=5)
    np.testing.assert_array_equal(net3.head.weight.numpy(), net.head.weight.numpy())


def test_the_ridge_pulls_towards_the_pruned_weights(monkeypatch):
    """A large ridge leaves the pruned weights almost as they are (not shrunk towards zero);
    the default one still removes most of the redundant channels' error."""
    import paddleseg.slim.reconstruct as reconstruct_module
    results = {}
    for ridge in (1e6, reconstruct_module.RIDGE):
        monkeypatch.setattr(reconstruct_module, "RIDGE", ridge)
        model = linear_net()
        reference = make_teacher(model)
        analysis = build_groups(model, (1, 3, 16, 16))
        plan = {group_of(analysis, "conv1"): 0.5}
        prune_model(model, analysis, plan, "l1")
        pruned = model.conv2.weight.numpy()
        record = reconstruct(model, reference, analysis.by_id(), plan, "l1", images(8, 0), 4, 2)
        results[ridge] = (np.abs(model.conv2.weight.numpy() - pruned).max(), record)
    change, record = results[1e6]
    assert change < 1e-3 * np.abs(pruned).max()
    assert record["error_after"] == pytest.approx(record["error_before"], rel=1e-3)
    change, record = results[reconstruct_module.RIDGE]
    assert record["error_after"] < 0.1 * record["error_before"]


def test_forward_order_leaves_out_uncalled_and_shared_convs():
    class Shared(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.a = paddle.nn.Conv2D(3, 3, 1)
            self.b = paddle.nn.Conv2D(3, 3, 1)
            self.unused = paddle.nn.Conv2D(3, 3, 1)

        def forward(self, x):
            return self.b(self.a(self.a(x)))
    net = Shared()
    batch = paddle.ones([1, 3, 4, 4])
    assert forward_order(net, ["unused", "b", "a"], batch) == ["b"]


def test_prune_py_reconstructs_and_records_it(fcn_config, tmp_path, capsys,  # noqa: F811
                                              monkeypatch):
    import paddleseg.slim.pipeline as pipeline
    teachers, real_retrain = [], pipeline.retrain

    def spy(o, cfg, model, work_dir, teacher=None, **kwargs):
        teachers.append(teacher)
        return real_retrain(o, cfg, model, work_dir, teacher, **kwargs)
    monkeypatch.setattr(pipeline, "retrain", spy)
    save_dir = tmp_path / "out"
    assert load_prune_cli().main(prune_argv(fcn_config, save_dir, "--reconstruct", "2",
                                            "--seed", "0")) == 0
    # the unpruned copy was the refit's reference only: the retraining goes without it
    assert teachers == [None]
    report = json.loads((save_dir / "report.json").read_text())
    assert report["retraining_recipe"]["reconstruct_batches"] == 2
    assert "reconstruct_batches 2" in (save_dir / "report.md").read_text()
    refit = report["reconstruction"]
    assert refit["batches"] == 2 and refit["convs"] + refit["kept"] >= 1
    assert refit["error_after"] <= refit["error_before"]
    assert f"{refit['convs']} convs refitted" in (save_dir / "report.md").read_text()
    assert report["params_after"] < report["params_before"]


def test_the_refit_does_not_depend_on_the_retraining_seed(fcn_config):  # noqa: F811
    """The refit's sample is fixed: runs with other --seed values refit the same weights (the
    benchmark's seeds retrain the row's very model)."""
    from paddleseg.slim.options import PruneOptions
    from paddleseg.slim.reconstruct import prune_for_retraining
    weights = []
    for seed in (0, 1):
        o = PruneOptions(config=fcn_config, pruning_ratio=0.3, retraining_iters=0,
                         reconstruct=2, seed=seed)
        cfg = o.build_config()
        paddle.seed(3)   # the same unpruned model both times
        model = cfg.build_model()
        model.eval()
        analysis = build_groups(model, [1, 3, 64, 64])
        plan = {g.id: 0.5 for g in analysis.groups}
        record = prune_for_retraining(o, cfg, model, analysis, plan, make_teacher(model))
        assert record["convs"] >= 1
        weights.append({k: v.numpy() for k, v in model.state_dict().items()})
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)


@pytest.mark.parametrize("extra, message", [
    (["--reconstruct", "-1"], "--reconstruct must be >= 0"),
    (["--reconstruct", "2", "--prune_steps", "2"], "does not combine with --prune_steps"),
])
def test_bad_reconstruct_flags_are_refused_before_any_work(extra, message, fcn_config,  # noqa: F811
                                                           tmp_path):
    with pytest.raises(UserError, match=message):
        load_prune_cli().main(prune_argv(fcn_config, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_the_paddleslim_method_has_no_reconstruct(fcn_config, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="PaddleSeg 2.6's method, which has no --reconstruct"):
        load_prune_cli().main(["--config", fcn_config, "--pruning_ratio", "0.3",
                               "--retraining_iters", "2", "--save_dir", str(tmp_path / "out"),
                               "--method", "paddleslim", "--reconstruct", "2"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("padding, stride, dilation, size", [
    ("same", 2, 1, (15, 17)), ("same", 1, 1, (9, 8)), (1, 2, 1, (15, 17)), (0, 1, 1, (6, 7)),
    (2, 1, 2, (9, 10)), ("same", 2, 2, (11, 9))])
def test_patches_times_the_weight_are_the_conv_output(padding, stride, dilation, size):
    """The regression's rows: the input patches at the sampled positions, with the padding the
    conv uses ("same" included, odd sizes and strides where Paddle pads one more pixel at the
    end, and a dilation it ignores), are F.unfold's rows there, and times the weight give the
    conv's output."""
    from paddleseg.slim.reconstruct import (_output_rows, _patch_rows, refittable,
                                            unfold_dilation, unfold_padding)
    paddle.seed(2)
    conv = paddle.nn.Conv2D(3, 5, 3, stride=stride, padding=padding, dilation=dilation)
    assert refittable(conv)
    x = paddle.randn([2, 3, *size])
    out = conv(x)
    every = np.arange(out.shape[0] * out.shape[2] * out.shape[3])
    positions = np.sort(np.random.RandomState(0).choice(every, len(every) // 2, replace=False))
    patches = _patch_rows(conv, x, positions)
    unfolded = paddle.nn.functional.unfold(x, 3, stride, unfold_padding(conv, *size),
                                           unfold_dilation(conv))
    np.testing.assert_array_equal(
        patches, unfolded.numpy().transpose(0, 2, 1).reshape(len(every), -1)[positions])
    predicted = patches @ conv.weight.numpy().reshape(5, -1).T + conv.bias.numpy()
    np.testing.assert_allclose(predicted, _output_rows(out, positions), atol=1e-4)
    np.testing.assert_array_equal(
        _output_rows(out, positions),
        out.numpy().transpose(0, 2, 3, 1).reshape(len(every), 5)[positions])


def test_the_budget_search_s_candidates_are_refitted_too(fcn_config, tmp_path,  # noqa: F811
                                                         monkeypatch):
    """A candidate that a search (--max_miou_drop, --trial_allocations) fine-tunes is pruned
    the way the final model is: refitted with --reconstruct before its retraining."""
    import paddleseg.slim.reconstruct as reconstruct_module
    from paddleseg.slim.candidates import fine_tuned
    from paddleseg.slim.options import PruneOptions
    calls = []
    real = reconstruct_module.reconstruct

    def spy(model, reference, *args, **kwargs):
        calls.append(sum(p.size for p in reference.parameters()) >
                     sum(p.size for p in model.parameters()))
        return real(model, reference, *args, **kwargs)
    monkeypatch.setattr(reconstruct_module, "reconstruct", spy)
    args = load_prune_cli().build_parser().parse_args(
        prune_argv(fcn_config, tmp_path / "out", "--reconstruct", "1", "--seed", "0"))
    options = PruneOptions.from_args(args)
    cfg = options.build_config()
    model_path = tmp_path / "model.pdparams"
    paddle.save(cfg.model.state_dict(), str(model_path))
    shape = [1] + list(cfg.val_dataset[0]["img"].shape)
    analysis = build_groups(cfg.model, shape)
    group = analysis.groups[len(analysis.groups) // 2].id
    fine_tuned(options, str(model_path), shape, cfg.val_dataset, str(tmp_path / "work"),
               plan={group: 0.5})
    assert calls == [True]   # once, against the unpruned (larger) reference


def test_the_bn_study_rebuilds_a_refitted_row_as_it_was(fcn_config, tiny_optic_root,  # noqa: F811
                                                        tmp_path, monkeypatch):
    """benchmarks/studies/bn_scores.rebuilt: a row made with the refit is rebuilt with it, to
    the mIoU its report has right after pruning."""
    from paddleseg.cvlibs import Config
    from paddleseg.slim.retrain import miou
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks", "studies"))
    import bn_scores
    paddle.seed(4)
    checkpoint = tmp_path / "model.pdparams"
    paddle.save(Config(fcn_config).build_model().state_dict(), str(checkpoint))
    save_dir = tmp_path / "out"
    assert load_prune_cli().main(prune_argv(fcn_config, save_dir, "--reconstruct", "2",
                                            "--retraining_iters", "0", "--model_path",
                                            str(checkpoint))) == 0
    report = json.loads((save_dir / "report.json").read_text())
    assert report["reconstruction"]["convs"] >= 1
    model, cfg = bn_scores.rebuilt(report, {"data": {"root": str(tiny_optic_root)}})
    assert miou(model, cfg.val_dataset) == pytest.approx(report["miou_pruned"], abs=1e-6)
