"""Channel dependency groups on small nets with one coupling pattern each."""
import numpy as np
import paddle
import pytest

from paddleseg import slim
from paddleseg.slim import graph
from paddleseg.utils.errors import UserError
from test_slim_nets import IndexOutput, build_toy

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

SHAPE = (1, 3, 32, 32)


def members(analysis, gid):
    return {(m.path, m.role, m.offset, m.mult) for m in analysis.by_id()[gid].members}


def test_residual_add_unites_the_block_outputs_with_their_input():
    a = slim.build_groups(build_toy("Residual"), SHAPE)
    ids = [g.id for g in a.groups]
    assert ids == ["stem.conv", "b1.0.conv", "b2.0.conv", "down.conv", "head.conv"]
    stem = members(a, "stem.conv")
    for path in ("stem.conv", "b1.1.conv", "b2.1.conv"):
        assert (path, "conv_out", 0, 1) in stem
    for path in ("b1.0.conv", "b2.0.conv", "down.conv"):
        assert (path, "conv_in", 0, 1) in stem
    assert ("b1.1.conv", "conv_in", 0, 1) in members(a, "b1.0.conv")
    # the classifier's output (num_classes) is never prunable
    assert all(m.path != "cls" or m.role == "conv_in" for g in a.groups for m in g.members)
    assert ("cls", ["reaches a model output"]) in a.frozen


def test_concat_segments_prune_the_matching_input_slices():
    a = slim.build_groups(build_toy("Concat"), SHAPE)
    # dec2 reads concat([e2 (16), up(e3) (32)]); dec1 reads concat([up(d2) (16), e1 (8)])
    assert ("dec2.conv", "conv_in", 0, 1) in members(a, "enc2.conv")
    assert ("dec2.conv", "conv_in", 16, 1) in members(a, "enc3.conv")
    assert ("dec1.conv", "conv_in", 0, 1) in members(a, "dec2.conv")
    assert ("dec1.conv", "conv_in", 16, 1) in members(a, "enc1.conv")
    assert {g.channels for g in a.groups} == {8, 16, 32}


def test_transposed_conv_produces_and_consumes():
    a = slim.build_groups(build_toy("ConcatTranspose"), SHAPE)
    assert ("up", "conv_in", 0, 1) in members(a, "enc3.conv")
    assert members(a, "up") == {("up", "conv_out", 0, 1), ("dec2.conv", "conv_in", 16, 1)}


def test_depthwise_separable_rides_along():
    a = slim.build_groups(build_toy("Separable"), SHAPE)
    stem = members(a, "stem.conv")
    assert ("dw1.conv", "depthwise", 0, 1) in stem and ("dw1.bn", "bn", 0, 1) in stem
    assert ("pw1.conv", "conv_in", 0, 1) in stem
    # y + mean(pw2(dw2(y))) over H, W (an [N, C, 1, 1] broadcast) ties pw1 and pw2
    pw1 = members(a, "pw1.conv")
    assert ("pw2.conv", "conv_out", 0, 1) in pw1 and ("dw2.conv", "depthwise", 0, 1) in pw1


def test_depthwise_channel_multiplier_expands_the_space():
    a = slim.build_groups(build_toy("GatherExpand"), SHAPE)
    inner = members(a, "conv.conv")
    assert inner == {
        ("conv.conv", "conv_out", 0, 1), ("conv.bn", "bn", 0, 1),
        ("dwconv.conv", "depthwise", 0, 1), ("dwconv.bn", "bn", 0, 6),
        ("dwconv2.conv", "depthwise", 0, 6), ("dwconv2.bn", "bn", 0, 6),
        ("pw.conv", "conv_in", 0, 6)}
    # the residual add ties the projection's output to the block input
    assert ("pw.conv", "conv_out", 0, 1) in members(a, "stem.conv")


def test_grouped_conv_freezes_its_input_and_output():
    a = slim.build_groups(build_toy("Grouped"), SHAPE)
    assert [g.id for g in a.groups] == ["mid.conv"]
    frozen = dict(a.frozen)
    assert "grouped conv grouped.conv (groups=4)" in frozen["stem.conv"]
    assert "grouped.conv" in frozen


def test_training_only_branch_is_a_consumer_but_not_a_group():
    model = build_toy("WithAux")
    a = slim.build_groups(model, SHAPE)
    assert a.traced.modes == ("eval", "train")
    assert ("aux.0.conv", "conv_in", 0, 1) in members(a, "stem.conv")
    assert "aux.0.conv" not in a.by_id()
    # no training-only branch: the slower train-mode trace is skipped
    assert slim.build_groups(build_toy("Residual"), SHAPE).traced.modes == ("eval",)


def test_coverage_counts_prunable_conv_flops():
    a = slim.build_groups(build_toy("Grouped"), SHAPE)
    c = a.coverage
    assert (c["convs"], c["prunable_convs"], c["groups"]) == (4, 1, 1)
    flops = slim.count_flops(build_toy("Grouped"), SHAPE)
    assert c["conv_flops"] == flops
    assert 0 < c["flops_coverage"] < 1
    assert slim.build_groups(build_toy("Residual"), SHAPE).coverage["flops_coverage"] > 0.99


def test_building_groups_leaves_the_model_untouched(tmp_path):
    model = build_toy("WithAux")
    model.train()
    x = paddle.rand([1, 3, 32, 32])
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    slim.build_groups(model, SHAPE)
    assert model.training and all(layer.training for layer in model.sublayers())
    assert "forward" not in model.__dict__
    assert all("forward" not in layer.__dict__ for layer in model.sublayers())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    model.eval()
    y = model(x)[0].numpy()
    paddle.jit.save(model, str(tmp_path / "m"),
                    input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32")])
    np.testing.assert_allclose(paddle.jit.load(str(tmp_path / "m"))(x).numpy(), y, atol=1e-5)


def test_group_ids_are_stable_across_builds():
    first = slim.build_groups(build_toy("Concat"), SHAPE).groups
    again = slim.build_groups(build_toy("Concat", seed=3), SHAPE).groups
    assert [(g.id, g.channels, g.members) for g in first] == \
        [(g.id, g.channels, g.members) for g in again]


def test_summary_names_the_reasons():
    text = slim.build_groups(build_toy("Grouped"), SHAPE).summary()
    assert "1 prunable channel groups" in text and "grouped conv grouped.conv" in text


def test_ops_not_understood_freeze_the_channels_they_touch():
    a = slim.build_groups(build_toy("Shuffle"), SHAPE)
    assert [g.id for g in a.groups] == ["left.conv", "mid.conv"]
    assert any(r.startswith("op reshape2") for r in dict(a.frozen)["stem.conv"])
    assert a.unknown_ops["reshape2"] >= 1 and a.unknown_ops["split"] == 1
    # left.conv's output sits in a concat with frozen channels: its own slice stays prunable
    assert ("mid.conv", "conv_in", 0, 1) in members(a, "left.conv")


def test_same_padding_convs_are_prunable_and_counted():
    model = build_toy("SamePadding")
    assert model.stem[0]._padding_algorithm == "SAME"
    a = slim.build_groups(model, SHAPE)
    assert [g.id for g in a.groups] == ["stem.0"]
    assert ("dw.0", "depthwise", 0, 1) in members(a, "stem.0")
    assert ("body.0", "conv_out", 0, 1) in members(a, "stem.0")
    assert a.coverage["flops_coverage"] > 0.99
    assert a.coverage["conv_flops"] == slim.count_flops(model, SHAPE)


INDEX_OPS = {
    "argmax": lambda y: paddle.argmax(y, axis=1, keepdim=True),
    "argmin": lambda y: paddle.argmin(y, axis=1),
    "topk": lambda y: paddle.topk(y, 2, axis=1)[1],
    "argsort": lambda y: paddle.argsort(y, axis=1),
    "gather": lambda y: paddle.gather(y, paddle.to_tensor([2, 0]), axis=1),
}


@pytest.mark.parametrize("op", sorted(INDEX_OPS))
def test_channels_read_by_an_index_valued_op_are_frozen(op):
    paddle.seed(0)
    a = slim.build_groups(IndexOutput(op=INDEX_OPS[op]), SHAPE)
    # the classifier's 4 channels are what argmax numbers: pruning one renames the classes
    assert [g.id for g in a.groups] == ["stem.conv", "head.conv"]
    assert "cls" in dict(a.frozen)


def test_argmax_is_a_deliberate_freeze_with_its_cost_reported():
    paddle.seed(0)
    model = IndexOutput()
    a = slim.build_groups(model, SHAPE)
    assert dict(a.frozen)["cls"] == ["arg_max output indexes channels"]
    assert not a.unknown_ops                # understood, not a gap in the analysis
    flops = {p: slim.dependency.conv_flops(model.cls, c) for p, c in a.traced.calls.items()
             if p == "cls"}
    share = flops["cls"] / a.coverage["conv_flops"]
    assert a.coverage["frozen_by_ops"] == {"arg_max": {"ops": 1, "flops_share": share}}


def test_ops_not_understood_are_named_with_the_flops_they_cost():
    model = build_toy("Shuffle")
    a = slim.build_groups(model, SHAPE)
    cov = a.coverage
    stem = slim.dependency.conv_flops(model.stem.conv, a.traced.calls["stem.conv"])
    # the channel shuffle freezes stem.conv; the split after it reads no conv's own channels
    assert cov["frozen_by_ops"]["reshape2"] == {"ops": 1, "flops_share": stem / cov["conv_flops"]}
    assert cov["frozen_by_ops"]["split"]["flops_share"] == 0
    assert cov["frozen_by_ops_share"] == stem / cov["conv_flops"]
    line = a.frozen_by_ops_text()
    assert f"cost {stem / cov['conv_flops']:.1%} of conv FLOPs" in line and "reshape2 x1" in line
    assert line in a.summary()
    assert slim.build_groups(build_toy("Residual"), SHAPE).coverage["frozen_by_ops"] == {}


def test_too_little_coverage_fails_with_one_line_naming_the_ops():
    a = slim.build_groups(build_toy("Shuffle"), SHAPE)
    a.require_coverage(0.5)
    with pytest.raises(UserError) as e:
        a.require_coverage(0.95)
    message = str(e.value)
    assert "\n" not in message and "below --min_coverage 0.95" in message
    assert "reshape2 x1" in message


@pytest.mark.parametrize("version", ["3.0.0", "2.5.2", "0.0.0", "2.60.0"])
def test_engine_refuses_other_paddle_versions(version, monkeypatch):
    monkeypatch.setattr(paddle, "__version__", version)
    with pytest.raises(UserError, match=f"need PaddlePaddle 2.6.x .* found {version}"):
        slim.build_groups(build_toy("Residual"), SHAPE)
    with pytest.raises(UserError, match="need PaddlePaddle 2.6.x"):
        slim.rebuild_from_plan(build_toy("Residual"), {})


def test_engine_accepts_paddle_2_6():
    assert paddle.__version__.startswith("2.6.")
    for version in ("2.6.0", "2.6.2", "2.6.1.post112"):
        graph.check_paddle_version(version)
