"""Every model: output shapes, PaddleSeg's parameter count, and that it can learn."""
import numpy as np
import paddle
import pytest

from paddleseg.cvlibs import manager
import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg.models.losses import CrossEntropyLoss

# name -> (builder kwargs, PaddleSeg's parameter count at num_classes=19, logits in training)
SPECS = {
    "BiSeNetV2": ({}, 2532215, 5),
    "FCN": ({"backbone": {"type": "HRNet_W18"}, "backbone_indices": [-1]}, 9675595, 1),
    "FastSCNN": ({"enable_auxiliary_loss": True}, 1444086, 2),
    "HarDNet": ({}, 4126701, 1),
    "UNet": ({}, 13414163, 1),
}


def build(name, num_classes):
    kwargs = dict(SPECS[name][0])
    if "backbone" in kwargs:
        spec = dict(kwargs["backbone"])
        kwargs["backbone"] = manager.BACKBONES[spec.pop("type")](**spec)
    return manager.MODELS[name](num_classes=num_classes, **kwargs)


def count_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.mark.parametrize("name", SPECS)
def test_parameter_count_matches_paddleseg(name):
    expected = SPECS[name][1]
    got = count_params(build(name, 19))
    assert abs(got - expected) / expected <= 0.01, f"{name}: {got} params, PaddleSeg has {expected}"


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (50, 70)])
def test_eval_output_is_one_logit_map_at_input_size(name, hw):
    paddle.seed(0)
    model = build(name, 3)
    model.eval()
    with paddle.no_grad():
        out = model(paddle.rand([2, 3, *hw]))
    assert isinstance(out, (list, tuple)) and len(out) == 1
    assert out[0].shape == [2, 3, *hw]


@pytest.mark.parametrize("name", SPECS)
def test_training_returns_one_logit_per_loss_coef(name):
    paddle.seed(0)
    model = build(name, 2)
    model.train()
    out = model(paddle.rand([2, 3, 64, 64]))
    assert len(out) == SPECS[name][2]
    for logit in out:
        assert logit.shape == [2, 2, 64, 64]


@pytest.mark.parametrize("name", SPECS)
def test_loss_falls_on_a_fixed_batch(name):
    paddle.seed(0)
    np.random.seed(0)
    model = build(name, 2)
    model.train()
    x = paddle.rand([2, 3, 64, 64])
    yy, xx = np.mgrid[:64, :64]
    label = paddle.to_tensor(np.stack([((yy - 32) ** 2 + (xx - c) ** 2 < 200) for c in (20, 44)]).astype("int64"))
    x = x + label.unsqueeze(1).astype("float32")  # make the target visible in the input
    loss_fn = CrossEntropyLoss()
    opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters())
    losses = []
    for _ in range(30):
        loss = sum(loss_fn(logit, label) for logit in model(x))
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
