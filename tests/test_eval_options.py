"""PaddleSeg's evaluation options: sliding-window and multi-scale / flip inference, the AUC-ROC,
a config's test_config and val.py's flags (--aug_eval, --is_slide, ...)."""
import json
import os

import numpy as np
import paddle
import pytest

from conftest import run_cli
from paddleseg.core import metrics as M
from paddleseg.core.infer import (EvalOptions, augmented_scores, flips, scores,
                                  sliding_logits)
from paddleseg.utils.errors import UserError


def pairwise_auc(scores_, positive):
    """The AUC by its definition: over every (positive, negative) pair, 1 when the positive
    scores higher, 1/2 on a tie."""
    pos, neg = scores_[positive], scores_[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_the_auc_is_the_chance_a_positive_outscores_a_negative():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores_ = np.round(rng.random(300) + 0.3 * labels, 1)   # rounded: many ties
    assert M.binary_auc(scores_, labels == 1) == pytest.approx(pairwise_auc(scores_, labels == 1))
    assert M.binary_auc([0.1, 0.4, 0.35, 0.8], np.array([0, 0, 1, 1]) == 1) == 0.75  # by hand
    assert M.binary_auc([0.5, 0.6], np.array([True, True])) is None   # no negatives: no curve
    # three classes: the mean of the one-vs-rest AUCs of the classes present
    probs = rng.dirichlet(np.ones(3), 200)
    labels = rng.integers(0, 3, 200)
    expected = np.mean([pairwise_auc(probs[:, c], labels == c) for c in range(3)])
    assert M.auc_roc(probs, labels, 3) == pytest.approx(expected)
    # two classes: class 1's probability
    two = np.stack([1 - probs[:, 0], probs[:, 0]], axis=1)
    assert M.auc_roc(two, labels == 1, 2) == pytest.approx(pairwise_auc(probs[:, 0], labels == 1))


class PixelNet(paddle.nn.Layer):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone; records its inputs'
    sizes (h, w)."""

    def __init__(self):
        super().__init__()
        paddle.seed(0)
        self.conv = paddle.nn.Conv2D(3, 2, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return [self.conv(x)]


def test_sliding_windows_cover_the_image_flush_with_its_border():
    net, img = PixelNet(), paddle.randn([1, 3, 10, 13])
    logits = sliding_logits(net, img, crop_size=(5, 4), stride=(3, 3))
    # rows: ceil((10 - 4) / 3) + 1 = 3, cols: ceil((13 - 5) / 3) + 1 = 4, all full windows
    assert net.seen == [(4, 5)] * 12
    # per-pixel logits: the average of overlapping windows is the whole image's
    np.testing.assert_allclose(logits.numpy(), net.conv(img).numpy(), atol=1e-6)
    # an image smaller than the window is one window
    net.seen.clear()
    sliding_logits(net, paddle.randn([1, 3, 3, 4]), crop_size=(5, 4), stride=(3, 3))
    assert net.seen == [(3, 4)]


def test_flips_and_scales_sum_softmax_scores_as_paddleseg():
    net, img = PixelNet(), paddle.randn([1, 3, 8, 12])
    softmax = paddle.nn.functional.softmax(net.conv(img), axis=1).numpy()
    assert flips(EvalOptions(flip_horizontal=True, flip_vertical=True)) == [
        (False, False), (True, False), (False, True), (True, True)]
    # a per-pixel net is flip-equivariant: each flip adds the same scores
    both = EvalOptions(aug_eval=True, flip_horizontal=True, flip_vertical=True)
    np.testing.assert_allclose(augmented_scores(net, img, both).numpy(), 4 * softmax, atol=1e-5)
    # scales run the net at each size; the scores come back at the input's
    net.seen.clear()
    summed = augmented_scores(net, img, EvalOptions(aug_eval=True, scales=(0.5, 1.5)))
    assert net.seen == [(4, 6), (12, 18)] and summed.shape == [1, 2, 8, 12]
    # and to the original size: the label's, after the transforms' resize is undone
    out = scores(net, img, [("resize", (16, 24))], EvalOptions(aug_eval=True))
    assert out.shape == [1, 2, 16, 24]


@pytest.mark.parametrize("config,message", [
    ({"aug_evl": True}, "aug_evl is not an evaluation option"),
    ({"is_slide": True}, "is_slide needs crop_size as two positive integers"),
    ({"is_slide": True, "crop_size": [64, 64], "stride": [96, 32]}, "leaves pixels unpredicted"),
    ({"aug_eval": True, "scales": [1.0, -0.5]}, "scales must be positive numbers"),
])
def test_a_bad_test_config_is_one_line(config, message):
    with pytest.raises(UserError, match=message):
        EvalOptions.from_config(config)


def test_paddleseg_s_keys_are_the_options():
    options = EvalOptions.from_config({"aug_eval": True, "scales": 0.75, "flip_horizontal": True,
                                       "is_slide": True, "crop_size": [32, 16],
                                       "stride": [16, 8], "auc_roc": True})
    assert options.scales == (0.75,) and options.crop_size == (32, 16)
    assert not options.whole_image and EvalOptions().whole_image


@pytest.fixture(scope="module")
def trained(tiny_config, tmp_path_factory):
    weights = tmp_path_factory.mktemp("eval_options") / "model.pdparams"
    from paddleseg.cvlibs import Config
    paddle.seed(1)
    paddle.save(Config(tiny_config).model.state_dict(), str(weights))
    return tiny_config, str(weights)


def evaluate(trained, tmp_path, *flags):
    config, weights = trained
    out = tmp_path / "metrics.json"
    proc = run_cli("val.py", "--config", config, "--model_path", weights, "--json", out, *flags)
    return proc, (json.loads(out.read_text()) if out.is_file() else None)


def test_val_py_evaluates_with_paddleseg_s_flags(trained, tmp_path):
    proc, plain = evaluate(trained, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "AUC_ROC" not in plain
    proc, slid = evaluate(trained, tmp_path, "--is_slide", "--crop_size", "48", "48",
                          "--stride", "32", "32")
    assert proc.returncode == 0, proc.stderr
    assert "sliding windows 48x48 every 32x32" in proc.stdout + proc.stderr
    proc, aug = evaluate(trained, tmp_path, "--aug_eval", "--scales", "0.75", "1.0",
                         "--flip_horizontal", "--auc_roc", "True")
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "scales 0.75, 1, horizontal flips; AUC-ROC" in log and "AUC-ROC" in log
    assert 0.0 <= aug["AUC_ROC"] <= 1.0


def test_the_auc_of_val_py_is_that_of_the_model_s_pixel_scores(trained, tmp_path):
    from paddleseg.core.infer import inference
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.cvlibs import Config
    proc, result = evaluate(trained, tmp_path, "--auc_roc")
    assert proc.returncode == 0, proc.stderr
    cfg = Config(trained[0])
    model = build_and_load(cfg, trained[1])
    model.eval()
    probs, labels = [], []
    with paddle.no_grad():
        for item in cfg.val_dataset:
            logit = inference(model, paddle.to_tensor(item["img"][None]), item["trans_info"])
            probs.append(paddle.nn.functional.softmax(logit, axis=1).numpy()[0, 1].ravel())
            labels.append(np.asarray(item["label"]).ravel())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    assert result["AUC_ROC"] == pytest.approx(pairwise_auc(probs, labels == 1), abs=1e-6)


def test_val_py_flags_and_test_config_errors_are_one_line(trained, tmp_path):
    proc, _ = evaluate(trained, tmp_path, "--is_slide", "--stride", "8", "8")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "is_slide needs crop_size" in proc.stderr
    config = tmp_path / "bad.yml"
    config.write_text(open(trained[0]).read() + "\ntest_config:\n  auc: true\n")
    proc, _ = evaluate((str(config), trained[1]), tmp_path)
    assert proc.returncode == 2 and "auc is not an evaluation option" in proc.stderr
