"""Where a model's time goes on the backend: each conv block's share of the measured latency.

The model is exported, warmed up, timed (repeated runs) and profiled with oneDNN's primitive
timer over a few more runs. Other jobs on the machine only ever add time, so the figures are the
fast end: the 10th percentile of the timed runs, the fastest profiled run of each block. A
block is a conv and the ops the predictor runs after it up to the next conv (bias add, batch
norm, activation, pooling, resize, residual add, concat), so the blocks and "other" (framework,
ops outside oneDNN, the input reorder) add up to the measured latency.
"""
import os
import tempfile
from dataclasses import dataclass

from . import measure
from .sites import WidthModel, conv_sites
from .table import FROZEN, blocks_over_runs

PROFILE_RUNS = 5


@dataclass
class LayerTime:
    path: str
    what: str           # "conv 3x3 s2 64->128 @ 256x512"
    group: str          # the prunable group of its output channels, or "(frozen layers)"
    ms: float
    share: float


@dataclass
class Profile:
    total_ms: float
    layers: list        # LayerTime, slowest first (only convs oneDNN ran)
    other_ms: float
    profiled: bool      # False: no oneDNN on this backend, no per-layer times
    shape: tuple
    threads: int
    backend: str


def _what(site):
    kind = "deconv" if site.transpose else ("dwconv" if site.groups == site.cin > 1 else "conv")
    stride = f" s{site.sh}" if site.sh > 1 else ""
    return f"{kind} {site.kh}x{site.kw}{stride} {site.cin}->{site.cout} @ {site.oh}x{site.ow}"


def profile_model(model, backend, groups=(), runs=PROFILE_RUNS):
    """Profile ``model`` (unpruned or pruned, as it is) on ``backend``."""
    sites = conv_sites(model, backend.shape)
    width = WidthModel(list(groups), sites)
    x = backend.input()
    with tempfile.TemporaryDirectory(prefix="paddleseg_profile_") as tmp:
        folder = os.path.join(tmp, "export")
        measure.export_plan(model, list(groups), {}, folder)
        run = backend.runner(folder)
        warm, = measure.interleaved_ms([run], x, 2, 1)
        times, = measure.interleaved_ms([run], x, 0, measure.repeats_for(float(warm[0])))
        prims = backend.profile(run, x, runs)
    total = measure.low(times)
    blocks, _ = blocks_over_runs(prims or [], width.signatures(width.vector({})))
    layers = [LayerTime(s.path, _what(s), owner or FROZEN, ms, ms / total)
              for s, owner, ms in zip(sites, width.owner, blocks) if ms is not None]
    layers.sort(key=lambda r: -r.ms)
    return Profile(total_ms=total, layers=layers, other_ms=total - sum(r.ms for r in layers),
                   profiled=bool(prims), shape=backend.shape, threads=backend.cpu_threads,
                   backend=backend.name)


def format_profile(p, top=20):
    """The profile as text: the ``top`` slowest blocks, then the rest and the other ops."""
    head = (f"measured latency {p.total_ms:.1f} ms ({p.backend}, {p.threads} threads, input "
            f"{'x'.join(map(str, p.shape))})")
    if not p.profiled:
        return head + "\nno per-layer times: this backend has no oneDNN primitive timer"
    rows = [f"{'rank':>4}  {'ms':>8}  {'share':>6}  {'cum.':>6}  layer / what / group"]
    cum = 0.0
    for i, r in enumerate(p.layers[:top], 1):
        cum += r.share
        rows.append(f"{i:>4}  {r.ms:8.2f}  {r.share:6.1%}  {cum:6.1%}  {r.path}  [{r.what}]  "
                    f"{r.group}")
    rest = p.layers[top:]
    if rest:
        ms = sum(r.ms for r in rest)
        rows.append(f"{'':>4}  {ms:8.2f}  {ms / p.total_ms:6.1%}  {'':>6}  the other "
                    f"{len(rest)} conv blocks")
    rows.append(f"{'':>4}  {p.other_ms:8.2f}  {p.other_ms / p.total_ms:6.1%}  {'':>6}  other "
                "ops (framework, ops outside oneDNN, input/output reorders)")
    return head + "\n" + "\n".join(rows)
