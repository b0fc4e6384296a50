"""Sensitivity analysis (resumable, fingerprinted) and ratio allocation to a FLOPs target."""
import json
import os
import pickle

import numpy as np
import paddle
import pytest

from paddleseg import slim
from paddleseg.slim import sensitivity
from paddleseg.slim.allocate import TargetUnreachable, reachable_reduction
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
        sensitivity.analyze(model, groups, first, RATIOS, sen_file, "l1", setup={"config": "cfg-1"},
                            progress=lambda *a: seen.append(a))
    assert seen[0] == (1, len(groups), groups[0].id, 0.1)
    assert len(seen) == 7      # the 8th eval (base + 7 points) was interrupted
    saved = json.load(open(sen_file))
    assert saved["base"] == 1.0
    assert sum(len(v) for v in saved["losses"].values()) >= 6

    second = Similarity(model)
    sens = sensitivity.analyze(model, groups, second, RATIOS, sen_file, "l1", setup={"config": "cfg-1"})
    needed = sum(slim.criteria.num_pruned(g.channels, r) > 0 for g in groups for r in RATIOS)
    assert second.calls == needed - 6   # no base, none of the 6 finished points again
    assert set(sens) == {g.id for g in groups}
    assert all(set(v) == set(RATIOS) for v in sens.values())
    assert max(max(v.values()) for v in sens.values()) > 0

    third = Similarity(model)
    assert sensitivity.analyze(model, groups, third, RATIOS, sen_file, "l1",
                               setup={"config": "cfg-1"}) == sens
    assert third.calls == 0


def as_format_1(path, extra):
    """Rewrite a sensitivity file as the previous format wrote it: setup and evaluator as one
    prose ``extra`` string."""
    data = json.load(open(path))
    fp = {k: v for k, v in data["fingerprint"].items() if k not in ("setup", "evaluator")}
    data.update(format=1, fingerprint={**fp, "extra": extra})
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize("evaluator, note", [
    ({"name": "dygraph"}, ""),
    ({"name": "predictor"}, "; evaluated in Paddle Inference predictors"),
    ({"name": "mixed", "predictor_groups": 2},
     "; evaluated in Paddle Inference predictors for the first 2 groups")])
def test_a_file_of_the_previous_format_resumes_with_its_evaluator(evaluator, note, tmp_path):
    model = build_toy("Concat")
    groups = slim.build_groups(model, SHAPE).groups
    sen_file = str(tmp_path / "sen.json")
    setup = {"config": "0123abcd", "weights": "none", "eval_images": 2}
    first = sensitivity.FunctionEvaluator(Similarity(model), facts=evaluator)
    sens = sensitivity.analyze(model, groups, first, RATIOS, sen_file, "l1", setup=setup)
    as_format_1(sen_file, "config 0123abcd; weights none; eval images 2" + note)
    assert sensitivity.recorded_evaluator(sen_file) == evaluator
    again = Similarity(model)
    resumed = sensitivity.analyze(model, groups, sensitivity.FunctionEvaluator(again, evaluator),
                                  RATIOS, sen_file, "l1", setup=setup)
    assert resumed == sens and again.calls == 0
    # a format-1 file of another setup is refused, the difference named
    as_format_1(sen_file, "config ffffffff; weights none; eval images 2" + note)
    with pytest.raises(sensitivity.SensitivityMismatch, match="setup: file has .*ffffffff"):
        sensitivity.analyze(model, groups, sensitivity.FunctionEvaluator(again, evaluator),
                            RATIOS, sen_file, "l1", setup=setup)


@pytest.mark.parametrize("bad, named", [(float("nan"), "nan"), (float("inf"), "inf"),
                                        (-3.0, "outside"), (1e308, "outside")])
def test_a_sensitivity_file_with_impossible_values_is_refused(bad, named, tmp_path):
    model = build_toy("Concat")
    groups = slim.build_groups(model, SHAPE).groups
    sen_file = str(tmp_path / "sen.json")
    sensitivity.analyze(model, groups, Similarity(model), [0.5], sen_file, "l1")
    data = json.load(open(sen_file))
    data["losses"][groups[1].id]["0.5"] = bad
    with open(sen_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(sensitivity.SensitivityMismatch,
                       match=f"holds a value no analysis writes: loss (?=.*{named}).* of group "
                             f"'{groups[1].id}' at ratio 0.5"):
        sensitivity.load(sen_file)


def test_sensitivity_restores_the_model(tmp_path):
    model = build_toy("GatherExpand")
    groups = slim.build_groups(model, SHAPE).groups
    ev = Similarity(model)
    sensitivity.analyze(model, groups, ev, [0.5], str(tmp_path / "s.json"), "fpgm")
    np.testing.assert_array_equal(model(ev.x)[0].numpy(), ev.ref)


@pytest.mark.parametrize("change", ["setup", "criterion", "ratios", "groups"])
def test_a_foreign_sensitivity_file_is_refused(change, tmp_path):
    model = build_toy("Residual")
    groups = slim.build_groups(model, SHAPE).groups
    sen_file = str(tmp_path / "sen.json")
    sensitivity.analyze(model, groups[:1], Similarity(model), [0.5], sen_file, "l1", setup={"config": "a"})
    kwargs = dict(groups=groups[:1], ratios=[0.5], criterion="l1", setup={"config": "a"})
    kwargs.update({"setup": {"setup": {"config": "b"}}, "criterion": {"criterion": "fpgm"},
                   "ratios": {"ratios": [0.5, 0.6]}, "groups": {"groups": groups}}[change])
    ev = Similarity(model)
    with pytest.raises(sensitivity.SensitivityMismatch, match="different setup"):
        sensitivity.analyze(model, kwargs["groups"], ev, kwargs["ratios"], sen_file,
                            kwargs["criterion"], setup=kwargs["setup"])
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


def test_the_reachable_maximum_is_known_before_measuring():
    model = wide_toy()
    analysis = slim.build_groups(model, SHAPE)
    flops = slim.FlopsModel(analysis)
    grid = [0.1, 0.2]
    most = reachable_reduction(analysis.groups, grid, flops, channel_step=8)
    sens = {g.id: {0.1: 0.01, 0.2: 0.02} for g in analysis.groups}
    with pytest.raises(TargetUnreachable) as err:
        slim.allocate_ratios(analysis.groups, sens, flops, 0.6)
    assert 0 < most == pytest.approx(err.value.max_reduction)
    alloc = slim.allocate_ratios(analysis.groups, sens, flops, most - 1e-9)
    assert alloc.reduction == pytest.approx(most)


# --- sensitivity files: JSON, or a pickle that is read without running code -------------------
class WritesAFile:
    """Unpickling this calls open(path, "w"): what a crafted sensitivity file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(WritesAFile(str(probe)))).close()
    assert probe.exists()  # the payload works on a plain unpickler
    marker = tmp_path / "marker"
    evil = tmp_path / "sen.pickle"
    evil.write_bytes(pickle.dumps(WritesAFile(str(marker))))
    with pytest.raises(sensitivity.SensitivityMismatch, match="refused without running") as err:
        sensitivity.load(str(evil))
    assert "\n" not in str(err.value)
    model = build_toy("Residual")
    groups = slim.build_groups(model, SHAPE).groups
    ev = Similarity(model)
    with pytest.raises(sensitivity.SensitivityMismatch):
        sensitivity.analyze(model, groups, ev, [0.5], str(evil), "l1")
    assert ev.calls == 0
    assert not marker.exists()


PADDLESLIM_SENS = {"conv2d_0.w_0": {np.round(np.float64(0.1), 2): np.float32(0.02), 0.2: 0.05},
                   "conv2d_1.w_0": {np.round(np.float64(0.1), 2): 0.0}}


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated",
                            "ignore:Setuptools is replacing distutils")  # importing paddleslim
def test_paddleslim_sensitivity_pickles_are_read_and_refused_with_the_reason(tmp_path):
    path = tmp_path / "sen.pickle"   # paddleslim.prune.sensitivity: {parameter: {ratio: loss}}
    path.write_bytes(pickle.dumps(PADDLESLIM_SENS))
    # the message quotes a parameter name from the file: it was read, not refused unread
    with pytest.raises(sensitivity.SensitivityMismatch, match="PaddleSlim.*'conv2d_0.w_0'"):
        sensitivity.load(str(path))
    from paddleslim.dygraph.prune.filter_pruner import Status
    status = Status()  # what PaddleSlim's dygraph pruners (PaddleSeg 2.6's prune.py) pickle
    status.sensitivies = PADDLESLIM_SENS
    path.write_bytes(pickle.dumps(status))
    with pytest.raises(sensitivity.SensitivityMismatch, match="PaddleSlim sensitivities"):
        sensitivity.load(str(path))


def test_a_pickle_name_is_written_as_pickle_and_resumes(tmp_path):
    model = build_toy("Residual")
    groups = slim.build_groups(model, SHAPE).groups
    sen_file = tmp_path / "sen.pickle"
    sens = sensitivity.analyze(model, groups, Similarity(model), [0.5], str(sen_file), "l1")
    assert sen_file.read_bytes()[:1] == b"\x80"   # a pickle, as the name asks
    again = Similarity(model)
    assert sensitivity.analyze(model, groups, again, [0.5], str(sen_file), "l1") == sens
    assert again.calls == 0


@pytest.mark.parametrize("name,content", [
    ("s.json", b'{"format": 1, "base"'),
    ("s.json", b"\xff\xfe not text"),
    ("s.json", b"[1, 2]"),
    ("s.json", b'{"format": 1, "fingerprint": {}, "base": null, "losses": [1]}'),
    ("s.pickle", pickle.dumps({"format": 1, "losses": {}})[:12]),
])
def test_a_damaged_sensitivity_file_gives_one_line(name, content, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(sensitivity.SensitivityMismatch) as err:
        sensitivity.load(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_every_sensitivity_update_reaches_the_disk(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sen_file = tmp_path / "s.json"
    sensitivity.save(str(sen_file), {"format": 1, "base": 0.5})
    assert [os.path.basename(p) for p in synced] == [f".tmp.s.json.{os.getpid()}", tmp_path.name]
    assert json.loads(sen_file.read_text())["base"] == 0.5
