"""Physical pruning: forward, FLOPs, training, export, criteria, undo and save/load."""
import os

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from paddleseg import slim
from paddleseg.utils.checkpoint import check_state_dict
from paddleseg.slim import apply, criteria
from paddleseg.utils.errors import UserError
from test_slim_nets import TOYS, build_toy

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

SHAPE = (1, 3, 32, 32)
SPEC = [paddle.static.InputSpec([None, 3, None, None], "float32")]


def predictor_output(prefix, x):
    from paddle import inference
    config = inference.Config(prefix + ".pdmodel", prefix + ".pdiparams")
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(1)
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.copy_from_cpu(x)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


@pytest.mark.parametrize("name", sorted(TOYS))
@pytest.mark.parametrize("criterion", ["l1", "fpgm"])
def test_pruned_toy_runs_trains_and_exports(name, criterion, tmp_path):
    model = build_toy(name)
    analysis = slim.build_groups(model, SHAPE)
    predicted = slim.FlopsModel(analysis)
    flops0, params0 = slim.count_flops_params(model, SHAPE)
    assert predicted.base == flops0

    removed = slim.prune_model(model, analysis, {g.id: 0.3 for g in analysis.groups}, criterion)
    assert removed and all(n == round(0.3 * analysis.by_id()[g].channels)
                           for g, n in removed.items())
    flops1, params1 = slim.count_flops_params(model, SHAPE)
    assert flops1 == predicted.flops(removed) < flops0
    assert params1 < params0
    assert not [k for k in model.state_dict() if "backup" in k]

    model.train()
    opt = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
    for _ in range(2):
        loss = sum(out.mean() for out in model(paddle.rand([2, 3, 32, 32])))
        loss.backward()
        opt.step()
        opt.clear_grad()

    model.eval()
    x = paddle.rand([1, 3, 48, 40])
    y = model(x)[0].numpy()
    assert y.shape == (1, 2, 48, 40)
    paddle.jit.save(model, str(tmp_path / "model"), input_spec=SPEC)
    out = predictor_output(str(tmp_path / "model"), x.numpy())
    assert np.abs(out - y).max() <= 1e-4


def test_multiplier_layers_shrink_consistently():
    model = build_toy("GatherExpand")
    analysis = slim.build_groups(model, SHAPE)
    slim.prune_model(model, analysis, {"conv.conv": 0.25}, "l1")
    assert model.conv.conv._out_channels == 12
    dw = model.dwconv.conv
    assert (dw._in_channels, dw._out_channels, dw._groups) == (12, 72, 12)
    assert dw.weight.shape == [72, 1, 3, 3] and model.dwconv.bn.weight.shape == [72]
    assert model.dwconv2.conv.weight.shape == [72, 1, 3, 3]
    assert model.pw.conv.weight.shape == [16, 72, 1, 1]


def test_depthwise_rides_along_with_the_filters_that_feed_it():
    model = build_toy("Separable")
    w = model.stem.conv.weight.numpy()
    analysis = slim.build_groups(model, SHAPE)
    removed = criteria.select(criteria.l1_scores(w.reshape(16, -1)), 4)
    dw_before = model.dw1.conv.weight.numpy()
    slim.prune_model(model, analysis, {"stem.conv": 0.25}, "l1")
    keep = np.setdiff1d(np.arange(16), removed)
    np.testing.assert_array_equal(model.stem.conv.weight.numpy(), w[keep])
    np.testing.assert_array_equal(model.dw1.conv.weight.numpy(), dw_before[keep])
    assert model.dw1.conv._groups == 12 and model.dw1.conv._op_type == "depthwise_conv2d"


def test_l1_and_fpgm_pick_different_channels():
    # filters 0..2 sit together far from the origin; filter 3 is small and far from them
    filters = np.array([[10.0, 0.0], [10.0, 0.2], [10.0, -0.2], [0.5, 0.0]])
    assert list(criteria.select(criteria.l1_scores(filters), 1)) == [3]
    assert list(criteria.select(criteria.fpgm_scores(filters), 1)) == [0]

    conv = nn.Conv2D(2, 4, 1, bias_attr=False)
    conv.weight.set_value(filters.reshape(4, 2, 1, 1).astype("float32"))
    group = slim.PruneGroup("c", 4, [slim.Member("c", "conv_out")])
    l1 = criteria.select(criteria.importance(group, {"c": conv}, "l1"), 1)
    fpgm = criteria.select(criteria.importance(group, {"c": conv}, "fpgm"), 1)
    assert list(l1) != list(fpgm)


def test_a_group_always_keeps_one_channel():
    assert criteria.num_pruned(4, 0.99) == 3
    assert criteria.num_pruned(1, 0.9) == 0
    model = build_toy("Residual")
    analysis = slim.build_groups(model, SHAPE)
    slim.prune_model(model, analysis, {g.id: 0.99 for g in analysis.groups}, "l1")
    assert model.stem.conv._out_channels == 1
    assert model(paddle.rand([1, 3, 32, 32]))[0].shape == [1, 2, 32, 32]


def test_undo_restores_the_model_exactly():
    model = build_toy("Concat")
    model.eval()
    x = paddle.rand([1, 3, 32, 32])
    y = model(x)[0].numpy()
    state = {k: (v.numpy().copy(), v.name) for k, v in model.state_dict().items()}
    analysis = slim.build_groups(model, SHAPE)
    _, undo = apply.prune(model, analysis.groups, {g.id: 0.5 for g in analysis.groups}, "fpgm")
    assert model.enc3.conv.weight.shape[0] == 16
    undo.restore()
    for k, v in model.state_dict().items():
        assert v.name == state[k][1]
        np.testing.assert_array_equal(v.numpy(), state[k][0])
    np.testing.assert_array_equal(model(x)[0].numpy(), y)


def test_groups_from_before_a_prune_are_refused():
    model = build_toy("Residual")
    analysis = slim.build_groups(model, SHAPE)
    slim.prune_model(model, analysis, {"head.conv": 0.5})
    with pytest.raises(ValueError, match="rebuild the groups"):
        slim.prune_model(model, analysis, {"head.conv": 0.5})


@pytest.mark.parametrize("name", ["GatherExpand", "ConcatTranspose"])
def test_save_and_rebuild_round_trip_loads_strictly(name, tmp_path):
    model = build_toy(name)
    analysis = slim.build_groups(model, SHAPE)
    slim.prune_model(model, analysis, {g.id: 0.4 for g in analysis.groups}, "fpgm")
    model.eval()
    x = paddle.rand([1, 3, 32, 32])
    y = model(x)[0].numpy()
    slim.save_pruned(model, str(tmp_path / "best"), info={"ratio": 0.4})
    # one artifact: the weights file alone restores the pruned model, wherever it is copied
    assert sorted(os.listdir(tmp_path / "best")) == ["model.pdparams"]
    os.rename(tmp_path / "best" / "model.pdparams", tmp_path / "copied.pdparams")

    fresh = build_toy(name, seed=1)
    plan = slim.load_pruned(fresh, str(tmp_path / "copied.pdparams"))
    assert plan["info"] == {"ratio": 0.4, "criterion": "fpgm"}
    assert slim.channel_plan(fresh) == slim.channel_plan(model)
    fresh.eval()
    np.testing.assert_allclose(fresh(x)[0].numpy(), y, atol=1e-6)

    # an unpruned model does not take the pruned weights without the plan
    state = paddle.load(str(tmp_path / "copied.pdparams"))
    with pytest.raises(UserError, match="other shapes"):
        check_state_dict(build_toy(name), state, "ckpt")


def test_plan_of_another_model_is_refused(tmp_path):
    model = build_toy("Residual")
    analysis = slim.build_groups(model, SHAPE)
    slim.prune_model(model, analysis, {"head.conv": 0.5})
    slim.save_pruned(model, str(tmp_path))
    with pytest.raises(UserError, match="Residual"):
        slim.load_pruned(build_toy("Concat"), str(tmp_path))
