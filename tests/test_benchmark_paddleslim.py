"""prune.py --method paddleslim: PaddleSeg 2.6's method through PaddleSlim, on toy nets (it
prunes a plain conv net; it fails in one line, naming the layer, on a depthwise conv with a
channel multiplier) and end to end through the command line on a tiny set."""
import json
import os
import sys

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from conftest import ROOT, TINY_CONFIG, make_tiny_optic
from paddleseg.slim import count_flops
from paddleseg.slim import paddleslim_engine as engine
from paddleseg.slim import sensitivity as sens_mod
from paddleseg.slim.output.storage import save_pruned
from paddleseg.utils import cli
from paddleseg.utils.checkpoint import load_model_weights

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import prune_speedup  # noqa: E402

pytest.importorskip("paddleslim")
SHAPE = [1, 3, 32, 32]


def cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2D(cin, cout, k, stride, k // 2, groups=groups, bias_attr=False),
                         nn.BatchNorm2D(cout), nn.ReLU())


class PlainNet(nn.Layer):
    """conv-bn-relu chain: what PaddleSlim handles."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16), cbr(16, 32, stride=2), cbr(32, 32))
        self.head = nn.Conv2D(32, 2, 1)

    def forward(self, x):
        return [F.interpolate(self.head(self.body(x)), size=x.shape[2:], mode="bilinear")]


class MultiplierNet(nn.Layer):
    """BiSeNetV2's GatherAndExpansion pattern: a depthwise conv with channel multiplier 6."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1, self.head = cbr(3, 16, stride=2), cbr(16, 16), nn.Conv2D(16, 2, 1)
        self.expand = nn.Sequential(nn.Conv2D(16, 96, 3, 1, 1, groups=16, bias_attr=False),
                                    nn.BatchNorm2D(96))
        self.project = nn.Sequential(nn.Conv2D(96, 16, 1, bias_attr=False), nn.BatchNorm2D(16))

    def forward(self, x):
        y = self.stem(x)
        y = F.relu(self.project(self.expand(self.c1(y))) + y)
        return [F.interpolate(self.head(y), size=x.shape[2:], mode="bilinear")]


def build(net_class):
    with paddle.utils.unique_name.guard():   # parameter names as in a fresh process
        paddle.seed(0)
        model = net_class()
    model.eval()
    return model


def agreement_metric(model, x):
    """Share of pixels where the model still predicts what it predicted unpruned."""
    reference = model(x)[0].argmax(1)
    return lambda: float((model(x)[0].argmax(1) == reference).astype("float32").mean())


def test_plain_conv_net_is_pruned_and_reloads(tmp_path):
    model = build(PlainNet)
    x = paddle.rand(SHAPE)
    flops0 = count_flops(model, SHAPE)
    sen_file = str(tmp_path / "sensitivity.json")
    info = engine.prune_with_paddleslim(model, SHAPE, agreement_metric(model, x), 0.3, "l1",
                                        sen_file, setup={"config": "toy"})
    assert info["collections"] == 3 and info["pruned_convs"] >= 1
    assert count_flops(model, SHAPE) < flops0
    assert not [k for k in model.state_dict() if k.endswith("_backup")]
    for _, layer in model.named_sublayers():
        if isinstance(layer, nn.Conv2D):      # attributes follow PaddleSlim's shrunk weights
            assert layer._out_channels == layer.weight.shape[0]
            assert layer._in_channels == layer.weight.shape[1] * layer._groups
    out = model(x)[0].numpy()
    # the sensitivity file is this project's JSON, PaddleSlim's grid, keyed by parameter names
    data = json.loads(open(sen_file).read())
    assert data["fingerprint"]["ratios"] == [sens_mod.ratio_key(r) for r in engine.PADDLESLIM_RATIOS]
    assert data["fingerprint"]["evaluator"] == {"name": "paddleslim"}
    assert set(data["losses"]) == {"conv2d_0.w_0", "conv2d_1.w_0", "conv2d_2.w_0"}
    # saved like this project's pruned models: a fresh model is shrunk to it on load
    save_pruned(model, str(tmp_path / "pruned"))
    fresh = load_model_weights(build(PlainNet), str(tmp_path / "pruned" / "model.pdparams"))
    np.testing.assert_allclose(fresh(x)[0].numpy(), out, rtol=1e-5, atol=1e-5)


def test_sensitivity_file_of_another_setup_is_refused(tmp_path):
    sen_file = str(tmp_path / "sensitivity.json")
    model = build(PlainNet)
    x = paddle.rand(SHAPE)
    engine.prune_with_paddleslim(model, SHAPE, agreement_metric(model, x), 0.3, "l1", sen_file)
    model = build(PlainNet)
    with pytest.raises(sens_mod.SensitivityMismatch, match="criterion"):
        engine.prune_with_paddleslim(model, SHAPE, agreement_metric(model, x), 0.3, "fpgm", sen_file)


def test_channel_multiplier_fails_in_one_line_naming_the_layer(tmp_path, capsys):
    model = build(MultiplierNet)
    x = paddle.rand(SHAPE)

    def main(argv):
        engine.prune_with_paddleslim(model, SHAPE, agreement_metric(model, x), 0.3, "l1",
                                     str(tmp_path / "s.json"))
    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: PaddleSlim failed on MultiplierNet")
    assert "at layer expand.0" in err[0]                    # the layer whose forward broke
    assert "after pruning c1.0.weight (conv2d_1.w_0)" in err[0]
    assert "InvalidArgument" in err[0]


def test_native_only_flags_are_refused_with_engine_paddleslim(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "slim", "prune"))
    import prune
    for flag in (["--sen_ratios", "0.5"], ["--target", "latency"], ["--channel_step", "4"]):
        with pytest.raises(engine.UserError, match=f"no {flag[0]}"):
            prune.main(["--method", "paddleslim", "--config", "x.yml", "--pruning_ratio", "0.3",
                        "--retraining_iters", "0", "--save_dir", str(tmp_path / "o"), *flag])
    assert not (tmp_path / "o").exists()


def test_prune_cli_runs_paddleslim_end_to_end(tmp_path, capsys):
    """Tiny FastSCNN on a tiny set: PaddleSlim's sensitivity, sensitive_prune, retraining,
    evaluation, a reloadable checkpoint and an export."""
    sys.path.insert(0, os.path.join(ROOT, "slim", "prune"))
    import prune
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.cvlibs import Config
    root = make_tiny_optic(tmp_path / "data", num_train=2, num_val=1)
    cfg_path = tmp_path / "fastscnn.yml"
    cfg_path.write_text(TINY_CONFIG.format(root=root, extra_train="", model="FastSCNN")
                        .replace("coef: [1, 1, 1, 1, 1]", "coef: [1, 0.4]")
                        .replace("    - type: CrossEntropyLoss\n",
                                 "    - type: CrossEntropyLoss\n    - type: CrossEntropyLoss\n", 1))
    cfg = Config(str(cfg_path))
    paddle.seed(0)
    weights = tmp_path / "w.pdparams"
    paddle.save(cfg.build_model().state_dict(), str(weights))
    out = tmp_path / "pruned"
    assert prune.main(["--method", "paddleslim", "--config", str(cfg_path), "--model_path",
                       str(weights), "--pruning_ratio", "0.3", "--retraining_iters", "1",
                       "--sen_eval_num", "1", "--seed", "0", "--save_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["engine"] == "paddleslim" and report["criterion"] == "l1"
    assert report["flops_after"] < report["flops_before"]
    assert report["paddleslim"]["collections"] > 0 and report["retraining_iters"] == 1
    # PaddleSlim's silent graph walk is announced, and its end said with what it found
    out_text = capsys.readouterr().out
    assert "building its pruning collections from" in out_text
    assert f"PaddleSlim: {report['paddleslim']['collections']} pruning collections in" in out_text
    assert (out / "export" / "deploy.yaml").is_file() and (out / "sensitivity.json").is_file()
    # the benchmark's record of such a row (no --max_miou_drop: its budget section is null)
    kept = prune_speedup.slim_report(report)
    assert kept["flops_after"] == report["flops_after"] and "budget" not in kept
    model = build_and_load(Config(str(cfg_path)), str(out / "model.pdparams"))
    assert count_flops(model, report["input_shape"]) == report["flops_after"]
