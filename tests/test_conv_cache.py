"""The refit's conv-output cache (paddleseg.slim.conv_cache): it answers repeated conv calls
only where the answer cannot have changed, and the refit gives the same weights with it as
without it."""
import numpy as np
import paddle

import paddleseg.slim.reconstruct as reconstruct_module
from paddleseg.slim import build_groups, prune_model
from paddleseg.slim.conv_cache import ConvOutputCache
from paddleseg.slim.distill import make_teacher
from test_reconstruct import group_of, images


class Chain(paddle.nn.Layer):
    """conv1 -> conv2 -> conv3 -> head, with a skip from conv1's output into the head's input
    and an in-place scaling of conv2's output (a cached output must not be reused once
    written into)."""

    def __init__(self):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.conv2 = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.conv3 = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.head = paddle.nn.Conv2D(8, 2, 1)

    def forward(self, x):
        a = paddle.nn.functional.relu(self.conv1(x))
        b = self.conv2(a)
        b.scale_(0.5)
        c = paddle.nn.functional.relu(self.conv3(paddle.nn.functional.relu(b)))
        return [self.head(c + a)]


def batch(seed):
    return paddle.to_tensor(np.random.RandomState(seed).randn(2, 3, 8, 8).astype("float32"))


def chain():
    paddle.seed(3)
    net = Chain()
    net.eval()
    return net


def run(net, cache, index, x):
    cache.start_pass(index)
    with paddle.no_grad():
        return net(x)[0].numpy()


def test_calls_before_the_boundary_are_answered_from_the_cache_and_equal():
    net = chain()
    x = batch(0)
    plain = run(net, ConvOutputCache(net), 0, x)   # not entered: no layer is wrapped
    with ConvOutputCache(net) as cache:
        first = run(net, cache, 0, x)
        assert cache.reused == 0
        cache.keep_calls_before(3)      # conv1, conv2, conv3 unchanged; the head may change
        second = run(net, cache, 0, x)
        # conv1 and conv3 are reused; conv2's kept output was scaled in place, so it is not
        assert cache.reused == 2
        np.testing.assert_array_equal(first, plain)
        np.testing.assert_array_equal(second, plain)
        run(net, cache, 1, batch(1))    # another batch: its own calls, nothing reused
        assert cache.reused == 2
    assert all("forward" not in vars(layer) for layer in net.sublayers())
    assert cache.kept == {} and cache.bytes == 0


class WritesThroughAView(paddle.nn.Layer):
    """conv -> an in-place write into a reshaped view of its output -> head."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
        self.head = paddle.nn.Conv2D(4, 2, 1)

    def forward(self, x):
        a = self.conv(x)
        a.reshape([-1]).scale_(0.5)      # the view shares a's memory and its version counter
        return [self.head(a)]


def test_an_output_written_through_a_view_is_not_reused():
    paddle.seed(0)
    net = WritesThroughAView()
    net.eval()
    x = batch(0)
    plain = run(net, ConvOutputCache(net), 0, x)
    with ConvOutputCache(net) as cache:
        run(net, cache, 0, x)
        cache.keep_calls_before(1)
        again = run(net, cache, 0, x)
        assert cache.reused == 0
    np.testing.assert_array_equal(again, plain)


def test_calls_from_the_boundary_on_are_computed_again():
    net = chain()
    x = batch(0)
    with ConvOutputCache(net) as cache:
        run(net, cache, 0, x)
        cache.keep_calls_before(1)
        w = net.conv3.weight.numpy()
        net.conv3.weight.set_value(2 * w)     # a layer after the boundary changes
        changed = run(net, cache, 0, x)
        assert cache.reused == 1               # conv1 only
    net.conv3.weight.set_value(2 * w)
    with paddle.no_grad():
        np.testing.assert_array_equal(changed, net(x)[0].numpy())


def test_nothing_is_kept_past_the_budget():
    net = chain()
    with ConvOutputCache(net, budget_bytes=2 * 8 * 8 * 8 * 4) as cache:  # one conv output
        run(net, cache, 0, batch(0))
        assert len(cache.kept) == 1 and cache.bytes == 2 * 8 * 8 * 8 * 4
        cache.keep_calls_before(4)
        run(net, cache, 0, batch(0))
        assert cache.reused == 1


def pruned_chain():
    net = chain()
    reference = make_teacher(net)
    analysis = build_groups(net, (1, 3, 8, 8))
    plan = {group_of(analysis, "conv2"): 0.5, group_of(analysis, "conv3"): 0.5}
    prune_model(net, analysis, plan, "l1")
    return net, reference, analysis, plan


def test_the_refit_gives_the_same_weights_with_the_cache_as_without(monkeypatch):
    caches = []

    class Recording(ConvOutputCache):
        def __init__(self, model):
            super().__init__(model)
            caches.append(self)
    monkeypatch.setattr(reconstruct_module, "ConvOutputCache", Recording)
    weights = []
    for bytes_allowed in (0, 1 << 20):
        monkeypatch.setattr("paddleseg.slim.conv_cache.CACHE_BYTES", bytes_allowed)
        net, reference, analysis, plan = pruned_chain()
        record = reconstruct_module.reconstruct(net, reference, analysis.by_id(), plan, "l1",
                                                images(6, 0), 3, 2)
        # conv1 and conv3 are one group (their outputs are added): conv2, conv3 and the head
        assert record["convs"] == 3
        weights.append({k: v.numpy() for k, v in net.state_dict().items()})
    assert caches[0].reused == 0
    # conv3's passes reuse conv1's output, and so do the head's (conv2's was written into by
    # scale_), on each of the 3 batches
    assert caches[1].reused == 6
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])


def test_the_refit_speed_study_times_both_ways_and_checks_the_weights(tmp_path):
    """benchmarks/studies/refit_speed.py, at a tiny size: one row per config, the same
    weights both ways, and the doc names the command that made it."""
    import importlib.util
    import os
    from conftest import ROOT
    path = os.path.join(ROOT, "benchmarks", "studies", "refit_speed.py")
    spec = importlib.util.spec_from_file_location("refit_speed", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    out = tmp_path / "refit_speed.md"
    argv = ["--configs", "configs/camvid/fastscnn_camvid_256x192.yml", "--batches", "2",
            "--batch_size", "1", "--crop", "32", "24", "--repeats", "2", "--out", str(out)]
    assert study.main(argv) == 0
    text = out.read_text()
    assert "Generated by `python benchmarks/studies/refit_speed.py --configs" in text
    rows = [line for line in text.splitlines() if line.startswith("| FastSCNN |")]
    assert len(rows) == 1 and rows[0].endswith("| yes |")
    assert int(rows[0].split("|")[2]) > 0      # convs refitted
