"""Sensitivity analysis (resumable, fingerprinted) and ratio allocation to a FLOPs target."""
import json

import numpy as np
import paddle
import pytest

from paddleseg import slim
from paddleseg.slim import sensitivity
from paddleseg.slim.allocate import TargetUnreachable
from test_slim_nets import build_toy

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

SHAPE = (1, 3, 32, 32)
RATIOS = [0.1, 0.3, 0.5, 0.7]


class Similarity:
    """eval_fn: closeness of the model's output to the unpruned output on a fixed batch."""

    def __init__(self, model, stop_after=None):
        self.model = model
        paddle.seed(1)
        self.x = paddle.rand([2, 3, 32, 32])
        model.eval()
        self.ref = model(self.x)[0].numpy()
        self.calls = 0
        self.stop_after = stop_after

    def __call__(self):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt
        y = self.model(self.x)[0].numpy()
        return 1.0 / (1.0 + float(np.abs(y - self.ref).mean()))


def test_sensitivity_resumes_without_redoing_points(tmp_path):
    model = build_toy("Concat")
    groups = slim.build_groups(model, SHAPE).groups
    sen_file = str(tmp_path / "sen.json")
    seen = []
    first = Similarity(model, stop_after=7)
    with pytest.raises(KeyboardInterrupt):
        sensitivity.analyze(model, groups, first, RATIOS, sen_file, "l1", extra="cfg-1",
                            progress=lambda *a: seen.append(a))
    assert seen[0] == (1, len(groups), groups[0].id, 0.1)
    assert len(seen) == 7      # the 8th eval (base + 7 points) was interrupted
    saved = json.load(open(sen_file))
    assert saved["base"] == 1.0
    assert sum(len(v) for v in saved["losses"].values()) >= 6

    second = Similarity(model)
    sens = sensitivity.analyze(model, groups, second, RATIOS, sen_file, "l1", extra="cfg-1")
    needed = sum(slim.criteria.num_pruned(g.channels, r) > 0 for g in groups for r in RATIOS)
    assert second.calls == needed - 6   # no base, none of the 6 finished points again
    assert set(sens) == {g.id for g in groups}
    assert all(set(v) == set(RATIOS) for v in sens.values())
    assert max(max(v.values()) for v in sens.values()) > 0

    third = Similarity(model)
    assert sensitivity.analyze(model, groups, third, RATIOS, sen_file, "l1",
                               extra="cfg-1") == sens
    assert third.calls == 0


def test_sensitivity_restores_the_model(tmp_path):
    model = build_toy("GatherExpand")
    groups = slim.build_groups(model, SHAPE).groups
    ev = Similarity(model)
    sensitivity.analyze(model, groups, ev, [0.5], str(tmp_path / "s.json"), "fpgm")
    np.testing.assert_array_equal(model(ev.x)[0].numpy(), ev.ref)


@pytest.mark.parametrize("change", ["extra", "criterion", "ratios", "groups"])
def test_a_foreign_sensitivity_file_is_refused(change, tmp_path):
    model = build_toy("Residual")
    groups = slim.build_groups(model, SHAPE).groups
    sen_file = str(tmp_path / "sen.json")
    sensitivity.analyze(model, groups[:1], Similarity(model), [0.5], sen_file, "l1", extra="a")
    kwargs = dict(groups=groups[:1], ratios=[0.5], criterion="l1", extra="a")
    kwargs.update({"extra": {"extra": "b"}, "criterion": {"criterion": "fpgm"},
                   "ratios": {"ratios": [0.5, 0.6]}, "groups": {"groups": groups}}[change])
    ev = Similarity(model)
    with pytest.raises(sensitivity.SensitivityMismatch, match="different setup"):
        sensitivity.analyze(model, kwargs["groups"], ev, kwargs["ratios"], sen_file,
                            kwargs["criterion"], extra=kwargs["extra"])
    assert ev.calls == 0


def wide_toy():
    from test_slim_nets import Residual, CBR
    paddle.seed(0)
    model = Residual()
    model.head = CBR(32, 96)
    model.cls = paddle.nn.Conv2D(96, 2, 1)
    return model


@pytest.mark.parametrize("target", [0.1, 0.2, 0.3])
def test_allocation_lands_on_the_target(target, tmp_path):
    model = wide_toy()
    analysis = slim.build_groups(model, SHAPE)
    flops = slim.FlopsModel(analysis)
    sens = sensitivity.analyze(model, analysis.groups, Similarity(model), RATIOS,
                               str(tmp_path / "sen.json"), "l1")
    alloc = slim.allocate_ratios(analysis.groups, sens, flops, target)
    assert abs(alloc.reduction - target) <= 0.01
    assert alloc.max_reduction > target
    base = slim.count_flops(model, SHAPE)
    slim.prune_model(model, analysis, alloc.plan, "l1")
    assert abs(1 - slim.count_flops(model, SHAPE) / base - target) <= 0.01


def test_an_uninformative_eval_does_not_overshoot():
    model = wide_toy()
    analysis = slim.build_groups(model, SHAPE)
    flops = slim.FlopsModel(analysis)
    flat = {g.id: {r: 0.0 for r in RATIOS} for g in analysis.groups}
    alloc = slim.allocate_ratios(analysis.groups, flat, flops, 0.3)
    assert abs(alloc.reduction - 0.3) <= 0.01
    assert max(alloc.plan.values()) < 0.7      # spread out, not everything at the grid max


def test_the_least_sensitive_groups_are_pruned_first():
    model = wide_toy()
    analysis = slim.build_groups(model, SHAPE)
    flops = slim.FlopsModel(analysis)
    sens = {g.id: {r: r * (10.0 if g.id == "head.conv" else 0.1) for r in RATIOS}
            for g in analysis.groups}
    # channel_step=1: whole-channel steps, so the ordering is not blurred by 8-channel blocks
    alloc = slim.allocate_ratios(analysis.groups, sens, flops, 0.2, channel_step=1)
    assert alloc.plan.get("head.conv", 0) < min(v for k, v in alloc.plan.items()
                                                 if k != "head.conv")


def test_channel_step_keeps_pruned_widths_aligned():
    model = wide_toy()
    analysis = slim.build_groups(model, SHAPE)
    flops = slim.FlopsModel(analysis)
    sens = {g.id: {r: r for r in RATIOS} for g in analysis.groups}
    alloc = slim.allocate_ratios(analysis.groups, sens, flops, 0.3, channel_step=8)
    sizes = {g.id: g.channels for g in analysis.groups}
    assert alloc.pruned
    for gid, n in alloc.pruned.items():
        if sizes[gid] % 8 == 0 and sizes[gid] >= 16:
            assert n % 8 == 0 and (sizes[gid] - n) % 8 == 0, (gid, sizes[gid], n)
    assert abs(alloc.reduction - 0.3) <= 0.03


def test_an_unreachable_target_says_how_far_it_can_go():
    model = wide_toy()
    analysis = slim.build_groups(model, SHAPE)
    flops = slim.FlopsModel(analysis)
    sens = {g.id: {0.1: 0.01, 0.2: 0.02} for g in analysis.groups}
    with pytest.raises(TargetUnreachable, match="reachable") as err:
        slim.allocate_ratios(analysis.groups, sens, flops, 0.6)
    assert 0 < err.value.max_reduction < 0.6
