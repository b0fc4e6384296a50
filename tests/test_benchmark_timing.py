"""The benchmark's latency rounds: every export once per round, in a seeded random order."""
import numpy as np
import pytest

from paddleseg.deploy import benchmark as bench


def recording_runs(n, calls):
    return [lambda x, i=i: calls.append(i) for i in range(n)]


def rounds_of(calls, n, warmup):
    timed = calls[n * warmup:]
    return [timed[k:k + n] for k in range(0, len(timed), n)]


def test_random_order_within_each_round():
    calls = []
    times = bench.time_runs(recording_runs(4, calls), None, 1, 30, shuffle_seed=0)
    rounds = rounds_of(calls, 4, 1)
    assert len(rounds) == 30 and all(sorted(r) == [0, 1, 2, 3] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 5            # the order changes between rounds
    assert [len(t) for t in times] == [30] * 4
    again = []
    bench.time_runs(recording_runs(4, again), None, 1, 30, shuffle_seed=0)
    assert again == calls                                 # seeded: the same schedule


def test_fixed_order_without_a_seed():
    calls = []
    bench.time_runs(recording_runs(3, calls), None, 0, 5)
    assert rounds_of(calls, 3, 0) == [[0, 1, 2]] * 5


def test_latency_stats():
    stats = bench.latency_stats(np.arange(1, 101, dtype=float))
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p10_ms"] == pytest.approx(10.9) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["min_ms"] == 1.0 and stats["mean_ms"] == pytest.approx(50.5)
