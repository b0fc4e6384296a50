"""The share of latency no pruning can remove (issue 23): measured from the latency table's
unpruned sample on toy nets whose unprunable tail the test controls, reported before any
analysis, and a latency target beyond it refused with that figure."""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from paddleseg import slim
from paddleseg.slim.latency import measure
from paddleseg.slim.latency.allocate import LatencyTargetUnreachable
from paddleseg.slim.latency.table import obtain, unprunable_share
from paddleseg.slim.targets.latency import BeyondPruning, LatencyTarget

SHAPE = (1, 3, 32, 32)


class Toy(nn.Layer):
    """Two prunable conv blocks and a classifier; ``tail`` times a large resize of the logits
    and a softmax over it, which no group owns."""

    def __init__(self, tail=0):
        super().__init__()
        self.tail = tail
        self.stem = nn.Sequential(nn.Conv2D(3, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2D(32, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU())
        self.cls = nn.Conv2D(32, 2, 1)

    def forward(self, x):
        y = self.cls(self.body(self.stem(x)))
        for _ in range(self.tail):
            y = F.softmax(F.interpolate(y, scale_factor=8, mode="bilinear"), axis=1)[:, :, ::8, ::8]
        return [y]


def table_of(tail, tmp_path):
    paddle.seed(0)
    model = Toy(tail)
    model.eval()
    groups = slim.build_groups(model, SHAPE).groups
    backend = measure.Backend(cpu_threads=1, shape=SHAPE)
    table, _ = obtain(model, groups, backend, 8, 0.6, str(tmp_path / f"t{tail}.json"), samples=3)
    return model, groups, backend, table


def test_the_unprunable_share_grows_with_the_tail_no_group_owns(tmp_path):
    shares = {}
    for tail in (0, 2):
        model, groups, _, table = table_of(tail, tmp_path)
        cost = table.model(groups)
        share = unprunable_share(table, cost.width.owner)
        # the classifier's block is frozen (no group prunes its 2 outputs)
        assert share["frozen"] > 0 and share["other"] >= 0
        assert share["share"] == pytest.approx(share["frozen"] + share["other"], abs=2e-4)
        base = table.samples[0]
        owned = sum(ms for ms, owner in zip(base["blocks_ms"], cost.width.owner) if owner)
        assert share["share"] == pytest.approx(1 - owned / base["total_ms"], abs=2e-4)
        shares[tail] = share
    # the tail runs after the classifier's conv, so the profile puts it in that (frozen) block
    assert shares[2]["frozen"] > shares[0]["frozen"] + 0.3, shares
    assert shares[2]["share"] > 0.9 and shares[0]["share"] < shares[2]["share"], shares


def test_a_target_beyond_the_unprunable_share_fails_with_it(tmp_path, capsys):
    model, groups, backend, table = table_of(2, tmp_path)
    target = LatencyTarget(model, groups, backend, 8, 0.6, str(tmp_path / "work"),
                           str(tmp_path / "t2.json"), 3)
    share, floor = target.unprunable["share"], target.unprunable["floor"]
    # what no pruning removes includes the tail outside every group (over 90% of the measured
    # time). The floor is the fitted table's prediction with every group at one channel; on this
    # toy, whose convs take microseconds, a loaded machine (the other test worker) moves it by
    # tens of points (0.79 to 1.0 seen, share 0.99), so the test asks for most of the time, not
    # for the share to within a few points. 0.47 was seen with a third process on the two
    # cores; a floor that ignored the tail (over 90% of the time) would be under 0.1
    assert share > 0.9 and floor >= 0.3, target.unprunable
    with pytest.raises(BeyondPruning) as e:
        target.aimed_reduction(1 - floor + 0.01, (0.3, 0.6), allow_lower=False)
    message = str(e.value)
    assert f"{floor:.1%}" in message and f"{1 / floor:.2f}x" in message
    assert f"{share:.1%} is outside every pruning group" in message
    assert "\n" not in message and "lower the target" in message
    # within the bound, or with --allow_lower_target, the grid's own check decides, as before:
    # the aim, or (the toy's convs are so fast that a busy machine can hide their cut) the
    # grid's refusal, never this one
    cases = [(1 - floor + 0.01, True)] + ([((1 - floor) / 2, False)] if floor < 0.998 else [])
    for cut, allow_lower in cases:
        try:
            aim, _ = target.aimed_reduction(cut, (0.3, 0.6), allow_lower=allow_lower)
        except LatencyTargetUnreachable as e:
            assert "latency table predicts" in str(e)
        else:
            assert aim <= cut


def test_an_unprofiled_site_takes_no_time_and_without_any_profile_nothing_is_claimed():
    class Table:
        samples = [{"counts": {}, "blocks_ms": [None, 1.0], "total_ms": 5.0}]
    assert unprunable_share(Table(), ["a", None]) == {"share": 1.0, "frozen": 0.2, "other": 0.8}
    Table.samples = [{"counts": {}, "blocks_ms": [None, None], "total_ms": 5.0}]
    assert unprunable_share(Table(), ["a", None]) is None
    Table.samples = [{"counts": {}, "blocks_ms": [1.0, 2.0], "total_ms": 5.0}]
    assert unprunable_share(Table(), ["a", None]) == {"share": 0.8, "frozen": 0.4, "other": 0.4}
