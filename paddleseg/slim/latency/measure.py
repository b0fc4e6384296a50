"""Measuring exported models the way they are deployed: Paddle Inference predictors (CPU with
oneDNN, or GPU), a fixed random input of the latency shape, warm-up runs, repeated timed runs
taken in turn across models (so machine noise hits them alike), compared by the fast end of
the runs (other jobs on the machine only ever add time).

A cut the closing loop acts on is timed until its standard error is small against the loop's
tolerance (:func:`paired_until_precise`): on a shared machine a fixed few rounds measure the
same two exports several tolerances apart, and a loop that re-aims at that noise prunes far
past its target (and loses accuracy for speed nobody asked for).
"""
import math
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import paddle

from ...core.export import export_model
from ...deploy.benchmark import random_input, time_runs
from ...deploy.predictor import create_predictor, run_predictor
from ...utils.errors import UserError
from .. import apply as _apply
from .. import graph as _graph
from . import onednn

DEFAULT_SHAPE = (1, 3, 512, 1024)
TIMED_SECONDS = 2.0     # aim for this much timed work per model and measurement
MIN_REPEATS, MAX_REPEATS = 3, 15
# a measured cut the closing loop acts on: timed in rounds of both exports until the cut's
# standard error is within CUT_PRECISION (half the loop's short tolerance of 0.02), at least
# MIN_PAIRED_ROUNDS and at most MAX_PAIRED_ROUNDS rounds or MAX_PAIRED_SECONDS of timing. Fewer
# than 40 rounds leave too few runs below the 10th percentile for the resampled standard
# error to be trusted: it then understates the spread between repeated measurements
CUT_PRECISION = 0.01
MIN_PAIRED_ROUNDS, MAX_PAIRED_ROUNDS, PAIRED_BATCH = 40, 200, 10
MAX_PAIRED_SECONDS = 90.0
BOOTSTRAP_RESAMPLES = 200
LOW_PERCENTILE = 10   # the fast end of a model's runs (see low)


def _cpuinfo():
    """(model name, flags) from /proc/cpuinfo (empty where there is none)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def cpu_isa():
    """The CPU's widest vector ISA among those oneDNN uses, or None."""
    flags = _cpuinfo()[1]
    return next((i for i in ("amx_tile", "avx512f", "avx2", "avx") if i in flags), None)


def cpu_model():
    """The CPU's model string (/proc/cpuinfo) and its widest vector ISA."""
    name, isa = _cpuinfo()[0], cpu_isa()
    return f"{name} ({isa})" if isa else name


@dataclass
class Backend:
    """Where latency is measured: device, threads and input shape."""
    device: str = "cpu"
    cpu_threads: int = None         # None: every core
    shape: tuple = DEFAULT_SHAPE

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise UserError(f"latency device must be cpu or gpu, got {self.device!r}")
        if self.cpu_threads is None:
            self.cpu_threads = os.cpu_count() or 1
        if int(self.cpu_threads) < 1:
            raise UserError(f"--cpu_threads must be >= 1, got {self.cpu_threads}")
        self.cpu_threads = int(self.cpu_threads)
        self.shape = tuple(int(v) for v in self.shape)

    @property
    def name(self):
        return "paddle-inference-cpu-onednn" if self.device == "cpu" else "paddle-inference-gpu"

    def description(self):
        if self.device == "gpu":
            return f"gpu: {paddle.device.cuda.get_device_name()}"
        return f"cpu: {cpu_model()}"

    def key(self):
        """What a latency measurement depends on, besides the model (see table.table_key)."""
        return {"backend": self.name, "device": self.description(),
                "threads": self.cpu_threads if self.device == "cpu" else None,
                "shape": list(self.shape), "paddle": paddle.__version__}

    def lanes(self):
        """Floats per vector register of the CPU's widest ISA (what oneDNN blocks channels
        by); 1 on GPU (not modelled there)."""
        if self.device != "cpu":
            return 1
        isa = cpu_isa()
        return 16 if isa in ("amx_tile", "avx512f") else 8 if isa in ("avx2", "avx") else 1

    def shape_text(self):
        return "x".join(map(str, self.shape))

    def runner(self, export_dir):
        """``run(x)``: one prediction of the export in ``export_dir``."""
        predictor = create_predictor(export_dir, device=self.device, cpu_threads=self.cpu_threads)

        def run(x):
            return run_predictor(predictor, x)
        return run

    def input(self):
        return random_input(self.shape, 0)

    def profile(self, run, x, runs):
        """Primitives of ``runs`` runs of ``run(x)`` (oneDNN's timer), or None where there is
        no per-layer timer: on GPU, or a Paddle without oneDNN."""
        if self.device != "cpu":
            return None
        return onednn.profile_runs(lambda: run(x), runs)


def repeats_for(ms_per_run, seconds=TIMED_SECONDS):
    """Timed runs per model: about ``seconds`` of work, between 3 and 15."""
    want = math.ceil(seconds * 1000.0 / max(ms_per_run, 1e-3))
    return int(min(MAX_REPEATS, max(MIN_REPEATS, want)))


def interleaved_ms(runs, x, warmup, repeats, seed=0):
    """Latency samples (ms, numpy arrays) of each runner, one run of each per round, in an
    order drawn afresh each round (so none always runs right after the other)."""
    return time_runs(runs, x, warmup, repeats, shuffle_seed=seed)


def paired_until_precise(run_base, run_other, x, precision=None,
                         max_seconds=MAX_PAIRED_SECONDS, clock=time.perf_counter):
    """:class:`Paired` samples of two runners, timed in turn (one warm-up each, then
    MIN_PAIRED_ROUNDS rounds, then PAIRED_BATCH more at a time) until the cut's standard error
    is within ``precision``, or MAX_PAIRED_ROUNDS rounds or ``max_seconds`` of timing are spent
    (the pair then says how precise it is: :meth:`Paired.cut_se`). ``precision``: default
    CUT_PRECISION."""
    precision = CUT_PRECISION if precision is None else precision
    start = clock()
    pair = Paired(*interleaved_ms([run_base, run_other], x, 1, MIN_PAIRED_ROUNDS))
    batch = 0
    while (pair.cut_se() > precision and pair.rounds < MAX_PAIRED_ROUNDS
           and clock() - start < max_seconds):
        batch += 1
        more = interleaved_ms([run_base, run_other], x, 0, PAIRED_BATCH, seed=batch)
        pair = Paired(np.concatenate([pair.base, more[0]]), np.concatenate([pair.other, more[1]]))
    return pair


def export_plan(model, groups, counts, folder):
    """Export ``model`` with ``counts`` ({group id: channels removed}) pruned to ``folder``;
    the model is left as it was. Which channels go does not change the time: the l1 choice
    is the cheapest to compute."""
    by_id = {g.id: g for g in groups}
    plan = {gid: n / by_id[gid].channels for gid, n in counts.items() if n}
    _, undo = _apply.prune(model, by_id, plan, "l1")
    try:
        # jit.save leaves the layers' forwards converted by dy2static; the model goes on
        # to be evaluated, pruned and trained as a plain dygraph model
        with _graph.forwards_kept(model):
            export_model(model, folder, val_transforms_config=[], model_type=type(model).__name__)
    finally:
        undo.restore()
    return folder


def median(values):
    return float(np.median(np.asarray(values, dtype=float)))


def low(values):
    """A low percentile: the time a run takes when nothing else competes for the cores (other
    load only ever adds time, so the low end of repeated runs is the stable part)."""
    return float(np.percentile(np.asarray(values, dtype=float), LOW_PERCENTILE))


@dataclass
class Paired:
    """Latency samples (ms) of a base and another export, one run of each per round (so a
    change of the machine's load hits both); compared by their fast ends (:func:`low`)."""
    base: np.ndarray
    other: np.ndarray

    @property
    def base_ms(self):
        return low(self.base)

    @property
    def other_ms(self):
        return low(self.other)

    @property
    def ratio(self):
        return self.other_ms / self.base_ms

    @property
    def cut(self):
        """1 - other / base: the latency reduction."""
        return 1.0 - self.ratio

    @property
    def rounds(self):
        return len(self.base)

    def cut_se(self, resamples=BOOTSTRAP_RESAMPLES):
        """The cut's standard error: its spread over the rounds resampled with replacement
        (each round keeps its two runs together, as they were timed; seeded, so repeatable)."""
        picks = np.random.RandomState(0).randint(0, self.rounds, size=(resamples, self.rounds))
        base = np.percentile(np.asarray(self.base, dtype=float)[picks], LOW_PERCENTILE, axis=1)
        other = np.percentile(np.asarray(self.other, dtype=float)[picks], LOW_PERCENTILE, axis=1)
        return float(np.std(1.0 - other / base))
