"""Pruning keeps what the model computes.

The standard check: pick a plan (which channels each group loses), make exactly those channels
0 in the original model, run it; prune with the plan, run again: the outputs must agree. A
channel made 0 contributes nothing to the layers that read it, so any difference means the
engine removed a slice that does not belong to the channel (a wrong concat offset, a wrong
channel-multiplier mapping, a BN or bias sliced at other indices) even when every shape fits.

Channels are made 0 where they are produced (conv filters and bias), after every batch norm
that carries them (weight and bias 0, so the output is exactly 0 whatever the running
statistics), and after every depthwise conv that carries them (filters and bias of all the
outputs of a removed input channel, the channel multiplier included).

The weights are redrawn first (:func:`randomize`): with fresh batch norms (mean 0, variance 1,
weight 1, bias 0) a BN sliced at the wrong channels computes the same thing and hides the bug,
and a head initialised at std 0.001 (FCN's) makes the output blind to the backbone. Each case
also asserts that its plan does change the output of the unpruned model, so the comparison
cannot pass for want of sensitivity.
"""
import numpy as np
import paddle
import pytest

from paddleseg import slim
from paddleseg.cvlibs import manager
from paddleseg.slim import apply, graph
from paddleseg.slim.dependency import BN, BN_TYPES, DW, OUT
from test_slim_nets import TOYS, build_toy

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

RTOL = 1e-4         # of the largest |output|: fp32 sums in another order, nothing more


# -- the check --------------------------------------------------------------------------------

def randomize(model, seed):
    """Conv filters at a fan-in scale (He), random conv biases and BN weight, bias, mean and
    variance: every channel matters to the output and every BN slice is distinct."""
    rng = np.random.default_rng(seed)

    def draw(param, values):
        param.set_value(values.astype("float32").reshape(param.shape))

    for _, layer in model.named_sublayers():
        if isinstance(layer, BN_TYPES):
            n = layer.weight.shape[0]
            draw(layer.weight, rng.uniform(0.5, 1.5, n))
            draw(layer.bias, rng.normal(0, 0.2, n))
            draw(layer._mean, rng.normal(0, 0.2, n))
            draw(layer._variance, rng.uniform(0.5, 1.5, n))
        elif isinstance(layer, apply.CONV_TYPES):
            w = layer.weight
            fan_in = np.prod(w.shape[1:]) * (layer._groups if isinstance(
                layer, paddle.nn.Conv2DTranspose) else 1)
            draw(w, rng.normal(0, np.sqrt(2.0 / fan_in), w.shape))
            if layer.bias is not None:
                draw(layer.bias, rng.normal(0, 0.2, layer.bias.shape))


def _set(param, index, axis=0):
    value = param.numpy()
    value[(slice(None),) * axis + (np.asarray(index),)] = 0
    param.set_value(value)


def _zero_conv_outputs(layer, out):
    """Filters and bias of output channels ``out``: the channels come out exactly 0."""
    if isinstance(layer, paddle.nn.Conv2DTranspose):   # weight [in, out / groups, kh, kw]
        per_group_out = layer.weight.shape[1]
        per_group_in = layer.weight.shape[0] // layer._groups
        value = layer.weight.numpy()
        for j in out:
            g, r = divmod(int(j), per_group_out)
            value[g * per_group_in:(g + 1) * per_group_in, r] = 0
        layer.weight.set_value(value)
    else:
        _set(layer.weight, out)
    if layer.bias is not None:
        _set(layer.bias, out)


def zero_channels(layers, groups, chosen):
    """Make the channels ``chosen`` ({group id: space channels}) exactly 0 wherever they flow."""
    for path, rm in apply.layer_removals(groups, chosen).items():
        layer = layers[path]
        if isinstance(layer, BN_TYPES):
            _set(layer.weight, rm[BN])
            _set(layer.bias, rm[BN])
            continue
        if rm[OUT] is not None:
            _zero_conv_outputs(layer, rm[OUT])
        if rm[DW] is not None:      # every output of a removed input channel
            mult = layer._out_channels // layer._in_channels
            _zero_conv_outputs(layer, (rm[DW][:, None] * mult + np.arange(mult)).ravel())


def outputs(model, x):
    """Eval-mode outputs, then train-mode ones: auxiliary heads read pruned feature maps too
    (batch norm and dropout stay in eval mode, so the two runs see the same statistics)."""
    result = []
    for training in (False, True):
        with graph.training_mode(model, training), paddle.no_grad():
            for _, layer in model.named_sublayers(include_self=True):
                if isinstance(layer, graph.STATEFUL_TYPES):
                    layer.training = False
            out = model(x)
        result += [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
    return result


def snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def restore(model, state):
    for k, v in model.state_dict().items():
        v.set_value(state[k])


def random_plan(groups, rng, share=0.6):
    """{group id: ratio} for a random subset of the groups (at least one)."""
    plan = {g.id: float(rng.uniform(0.1, 0.75)) for g in groups if rng.random() < share}
    return plan or {groups[int(rng.integers(len(groups)))].id: 0.5}


def random_channels(groups, plan, rng):
    """{group id: space channels} picked at random (not by a criterion) for the plan's ratios."""
    by_id = {g.id: g for g in groups}
    chosen = {}
    for gid, ratio in plan.items():
        n = slim.criteria.num_pruned(by_id[gid].channels, ratio)
        if n:
            chosen[gid] = np.sort(rng.choice(by_id[gid].channels, n, replace=False))
    return chosen


def max_difference(a, b):
    """Largest |a - b| of any output, relative to that output's largest |a|."""
    return max(float(np.abs(p - q).max()) / (float(np.abs(p).max()) or 1.0)
               for p, q in zip(a, b))


def check_preserves_function(model, analysis, plan, criterion, x, rng=None):
    """Zero-then-run against prune-then-run for one plan.

    Returns (difference, effect): how far the pruned output is from the zeroed one, and how
    far the zeroed output is from the original (what the plan changes), both relative.

    ``criterion``: "l1" / "fpgm" choose the channels through the engine's own path
    (``apply.prune``), "random" removes channels drawn by ``rng``. The model is left as it
    was, so one traced model serves many plans.
    """
    layers = dict(model.named_sublayers(include_self=True))
    groups = {g.id: g for g in analysis.groups}
    state = snapshot(model)
    original = outputs(model, x)
    if criterion == "random":
        chosen = random_channels(analysis.groups, plan, rng)
        undo = apply.remove_channels(layers, groups, chosen)
        removed = {gid: len(idx) for gid, idx in chosen.items()}
    else:
        chosen = apply.choose_channels(layers, groups, plan, criterion)
        removed, undo = apply.prune(model, analysis.groups, plan, criterion)
    assert removed == {gid: len(idx) for gid, idx in chosen.items()} and removed
    try:
        pruned = outputs(model, x)
    finally:
        undo.restore()
    try:
        zero_channels(layers, groups, chosen)
        zeroed = outputs(model, x)
    finally:
        restore(model, state)
    assert [o.shape for o in pruned] == [o.shape for o in zeroed]
    return max_difference(zeroed, pruned), max_difference(original, zeroed)


def prepared(model, shape, seed=1):
    """(model with random weights, its groups), ready for :func:`check_preserves_function`."""
    randomize(model, seed)
    return model, slim.build_groups(model, shape)


# -- toy nets: one coupling pattern each -----------------------------------------------------

TOY_SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module", params=sorted(TOYS))
def toy(request):
    return prepared(build_toy(request.param), TOY_SHAPE)


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "random"])
def test_pruning_a_toy_net_keeps_its_function(toy, criterion):
    model, analysis = toy
    rng = np.random.default_rng(7)
    x = paddle.to_tensor(rng.normal(size=TOY_SHAPE).astype("float32"))
    for _ in range(3):
        plan = random_plan(analysis.groups, rng)
        difference, effect = check_preserves_function(model, analysis, plan, criterion, x, rng)
        assert difference <= RTOL < effect / 100, plan


def test_the_check_catches_a_wrong_concat_offset():
    """The check must see what it is for: a consumer sliced at a shifted offset."""
    model, analysis = prepared(build_toy("Concat"), TOY_SHAPE)
    x = paddle.rand(list(TOY_SHAPE))
    plan = {"enc1.conv": 0.5}
    assert check_preserves_function(model, analysis, plan, "l1", x)[0] <= RTOL
    enc1 = analysis.by_id()["enc1.conv"]
    enc1.members = [slim.Member(m.path, m.role, m.offset - 1 if m.offset else 0, m.mult)
                    for m in enc1.members]       # dec1 reads enc1 at offset 16, not 15
    assert check_preserves_function(model, analysis, plan, "l1", x)[0] > 100 * RTOL


def test_the_check_catches_a_wrong_channel_multiplier_mapping(monkeypatch):
    """The BN after a 16 -> 96 depthwise conv sliced as if the 6 copies of a channel were
    interleaved (channel i at i, i + 16, ...) rather than adjacent: every shape still fits."""
    model, analysis = prepared(build_toy("GatherExpand"), TOY_SHAPE)
    x = paddle.rand(list(TOY_SHAPE))
    plan = {"conv.conv": 0.25}
    assert check_preserves_function(model, analysis, plan, "fpgm", x)[0] <= RTOL
    right = apply.layer_removals

    def interleaved(groups, chosen):
        removals = right(groups, chosen)
        idx = np.asarray(chosen["conv.conv"])
        removals["dwconv.bn"][BN] = np.sort((idx[None, :] + 16 * np.arange(6)[:, None]).ravel())
        return removals

    monkeypatch.setattr(apply, "layer_removals", interleaved)
    assert check_preserves_function(model, analysis, plan, "fpgm", x)[0] > 100 * RTOL


# -- the five models at a tiny input ---------------------------------------------------------

MODEL_SHAPE = (1, 3, 64, 64)
MODELS = ["BiSeNetV2", "FCN", "FastSCNN", "HarDNet", "UNet"]


def build_real(name):
    paddle.seed(0)
    if name == "UNet-deconv":       # the one real model with transposed convs
        return manager.MODELS["UNet"](num_classes=2, use_deconv=True)
    if name == "FCN":
        backbone = manager.BACKBONES["HRNet_W18"]()
        return manager.MODELS["FCN"](num_classes=2, backbone=backbone, backbone_indices=[-1])
    return manager.MODELS[name](num_classes=2)


@pytest.fixture(scope="module", params=MODELS + ["UNet-deconv"])
def real(request):
    """Each model traced once for all its cases (HRNet's trace is the slow part)."""
    return prepared(build_real(request.param), MODEL_SHAPE, seed=2)


@pytest.mark.parametrize("criterion,seed", [("l1", 0), ("fpgm", 1), ("random", 2)])
def test_pruning_a_real_model_keeps_its_function(real, criterion, seed):
    model, analysis = real
    rng = np.random.default_rng(seed)
    x = paddle.to_tensor(rng.normal(size=MODEL_SHAPE).astype("float32"))
    plan = random_plan(analysis.groups, rng)
    difference, effect = check_preserves_function(model, analysis, plan, criterion, x, rng)
    print(f"{type(model).__name__} {criterion}: {len(plan)} of {len(analysis.groups)} groups "
          f"pruned, changes the output by {effect:.2g}, pruned vs zeroed {difference:.2g}")
    assert difference <= RTOL < effect / 100
