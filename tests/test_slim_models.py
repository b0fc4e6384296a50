"""The pruning engine on the five real models at 64x64: coverage and a 0.3 prune (the time to
build the groups is a benchmark figure, not a unit-test assertion).

That pruning keeps what these models compute is checked in test_slim_function.py."""

import numpy as np
import paddle
import pytest

import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg import slim
from paddleseg.cvlibs import manager

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

SHAPE = (1, 3, 64, 64)
MODELS = ["BiSeNetV2", "FCN", "FastSCNN", "HarDNet", "UNet"]


def build(name):
    if name not in manager.MODELS:
        pytest.skip(f"{name} is not registered")
    paddle.seed(0)
    if name == "FCN":
        backbone = manager.BACKBONES["HRNet_W18"]()
        return manager.MODELS["FCN"](num_classes=2, backbone=backbone, backbone_indices=[-1])
    return manager.MODELS[name](num_classes=2)


@pytest.mark.parametrize("name", MODELS)
def test_real_model_is_mostly_prunable_and_prunes(name, tmp_path):
    model = build(name)
    analysis = slim.build_groups(model, SHAPE)
    cov = analysis.coverage
    print(f"{name}: {cov['prunable_convs']}/{cov['convs']} convs, "
          f"{cov['flops_coverage']:.3f} of conv FLOPs prunable")
    # every conv but the classifier (and a few tiny 1x1s) prunable, ConvBN's padding='same'
    # (asymmetric on stride-2 convs) included; no op the engine does not understand
    assert cov["flops_coverage"] >= 0.99
    assert not analysis.unknown_ops, analysis.unknown_ops
    assert not cov["frozen_by_ops"], analysis.frozen_by_ops_text()

    predicted = slim.FlopsModel(analysis)
    flops0 = slim.count_flops(model, SHAPE)
    removed = slim.prune_model(model, analysis, {g.id: 0.3 for g in analysis.groups}, "l1")
    flops1 = slim.count_flops(model, SHAPE)
    assert flops1 == predicted.flops(removed) < 0.7 * flops0

    model.train()
    loss = sum(out.mean() for out in model(paddle.rand([2, 3, 64, 64])))
    loss.backward()

    model.eval()
    x = paddle.rand([1, 3, 64, 64])
    y = model(x)[0].numpy()
    assert y.shape == (1, 2, 64, 64)
    prefix = str(tmp_path / "model")
    paddle.jit.save(model, prefix,
                    input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32")])
    out = paddle.jit.load(prefix)(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert np.abs(out.numpy() - y).max() <= 1e-4
