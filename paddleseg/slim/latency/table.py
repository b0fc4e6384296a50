"""The latency table: a model of one network's latency on one backend, built by measurement.

How it is built (:func:`build`): a handful of *sample plans* (the unpruned model, every group at
its largest prunable ratio, and random aligned plans in between) are exported and run on the
backend. Each is timed in turn with the unpruned export (so the ratio of the two is immune to
the machine's load changing between plans), and profiled with oneDNN's own primitive timer
(:mod:`.onednn`). The profile splits the time per conv *block* (the conv and the bias, batch
norm, activation, pooling or resize ops the predictor runs after it, up to the next conv), so
every sample plan measures every layer at once, in context, at the widths that plan gives it.

The model fitted to those measurements (:class:`LatencyModel`):

- each block: ``a + b * cin/cin0 + c * cout/cout0 + d * macs/macs0 + e * ragged`` with
  non-negative coefficients (fixed cost, reading the input, writing the output, arithmetic,
  and the penalty of a width that leaves a partial vector register), fitted to the block's
  times in the sample plans. Widths count whole registers (16 floats with AVX-512, 8 with
  AVX2): oneDNN pads to them, and falls back to slower kernels when a width does not fill
  them;
- the whole model: ``s * (sum of the blocks) + r0 + r1 * activation volume + r2 * MACs of
  convs without a profile``, fitted to the sample plans' measured times: ``s`` rescales the
  blocks (profiled runs are fewer than timed ones, so other jobs on the machine can inflate
  them), the rest is framework overhead, ops outside oneDNN and primitives no block took. On
  a backend without oneDNN (GPU) every conv is "without a profile" and the fit is a
  whole-model one.

The table is cached as JSON under a key (backend, device, threads, shape, Paddle version,
channel step, model structure): a second run on the same machine reuses it, a table made for
another key is refused with one line.
"""
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
from scipy.optimize import nnls

from ...utils import logger
from ...utils.download import seg_home
from ...utils.errors import UserError
from ...utils.fileio import check_file_target, check_parent_folder, not_a_readable_file, write_json
from ...utils.progress import format_seconds
from ..allocate import Curve
from ..apply import channel_plan
from . import measure
from .sites import Site, WidthModel, assign_blocks, conv_sites

FORMAT = 3
DEFAULT_SAMPLES = 8
PROFILE_RUNS = 4
CONTENDED = 1.05    # profiled blocks above this share of the plain runs' time: contended
# a table's values are checked when it is read (an edited or damaged file would steer the
# allocation): every coefficient in ms, and every prediction, at most this many times the
# table's own measured full-model time (features are widths relative to the unpruned model,
# so no term of a real fit comes near it); the blocks' scale at most this factor
PLAUSIBLE = 10.0
# and the fit's prediction for each plan it was fitted to (the unpruned model and the sample
# plans) within this factor of the time measured for it
FIT_SLACK = 3.0
BLOCK_FEATURES, REST_FEATURES = 5, 4   # see _Features: [1, cin, cout, MACs, ragged]; [s, r0..r2]
KEY_FIELDS = ("backend", "device", "threads", "shape", "paddle", "channel_step", "model",
              "structure")


class LatencyTableMismatch(UserError):
    """A latency table file that cannot be used for this run (other key, damaged, foreign)."""


# -- the key ------------------------------------------------------------------------------------
def structure_hash(model, groups):
    """What the table's layers and plans depend on: every layer's widths and the groups."""
    desc = {"layers": channel_plan(model),
            "groups": [[g.id, g.channels, [[m.path, m.role, m.offset, m.mult] for m in g.members]]
                       for g in groups]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def table_key(model, groups, backend, channel_step):
    key = backend.key()
    key.update({"channel_step": int(channel_step), "model": type(model).__name__,
                "structure": structure_hash(model, groups)})
    return {k: key[k] for k in KEY_FIELDS}


def default_table_path(key):
    """``$SEG_HOME/latency/<model>-<digest>.json``: one file per key and table format (a
    table of an older format is not found, so it is measured again)."""
    digest = hashlib.sha256(json.dumps([FORMAT, key], sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(seg_home(), "latency", f"{key['model']}-{digest}.json")


def _shown(field, value):
    if field == "shape" and isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


def describe_mismatch(found, wanted):
    fields = [k for k in KEY_FIELDS if found.get(k) != wanted.get(k)]
    return ", ".join(f"{k} {_shown(k, found.get(k))} (this run: {_shown(k, wanted.get(k))})"
                     for k in fields)


# -- sample plans -------------------------------------------------------------------------------
def plan_limits(groups, max_ratio, channel_step):
    """{group id: (step, cap)}: the allocation removes channels in ``step``s up to ``cap``
    (the rule of :mod:`..allocate`: aligned to the channel step where the width allows)."""
    limits = {}
    for g in groups:
        c = Curve(g.channels, {max_ratio: 0.0}, channel_step)
        if c.cap > 0:
            limits[g.id] = (c.step, c.cap)
    return limits


def random_plan(rng, limits):
    """Each group at a random aligned count below a random share of its cap."""
    scale = rng.uniform(0.15, 1.0)
    return {gid: step * int(rng.randint(0, int(cap * scale) // step + 1))
            for gid, (step, cap) in limits.items()}


def sample_plans(limits, count, seed=0):
    """The unpruned plan, every group at its cap, then random plans (``count`` in all)."""
    rng = np.random.RandomState(seed)
    plans = [{}, {gid: cap for gid, (_, cap) in limits.items()}]
    while len(plans) < count:
        plans.append(random_plan(rng, limits))
    return plans[:max(count, 1)]


# -- measuring ----------------------------------------------------------------------------------
def blocks_over_runs(runs, signatures):
    """Block times over the profiled runs, the fastest of each (other jobs on the machine only
    ever add time); None: the site never ran in oneDNN."""
    if not runs:
        return [None] * len(signatures), 0.0
    per_run = [assign_blocks(prims, signatures) for prims in runs]
    blocks = []
    for i in range(len(signatures)):
        values = [b[i] for b, _ in per_run]
        blocks.append(None if any(v is None for v in values) else min(values))
    return blocks, min(loose for _, loose in per_run)


def _profile(backend, run, x, signatures, total_ms, extra_rounds=2):
    """Block times of ``run`` (see :func:`blocks_over_runs`). When they add up to more than
    the plain runs' time, other jobs slowed the profiled runs down: profile more runs (the
    fastest of each block counts) up to ``extra_rounds`` times."""
    runs = []
    for _ in range(1 + extra_rounds):
        runs += backend.profile(run, x, PROFILE_RUNS) or []
        blocks, loose = blocks_over_runs(runs, signatures)
        if sum(b for b in blocks if b is not None) + loose <= CONTENDED * total_ms:
            break
    return blocks, loose


def _profiled_ms(sample):
    return sum(b for b in sample["blocks_ms"] if b is not None) + sample["loose_ms"]


def _reconcile(samples):
    """Scale down profiles that add up to more than their plan's plain runs leave for them.

    The plain runs (timed in turn with the unpruned model, fast end) are the truth for a
    plan's total; the profiled runs are fewer and taken apart, so other jobs on the machine
    can inflate them all. What a plan's blocks may add up to is its total minus the framework
    time outside oneDNN, taken from the unpruned plan; blocks above that are scaled down
    alike (``profile_scale`` records the factor).
    """
    outside = max(0.0, samples[0]["total_ms"] - _profiled_ms(samples[0]))
    for s in samples:
        room, profiled = s["total_ms"] - outside, _profiled_ms(s)
        scale = min(1.0, room / profiled) if profiled > 0 and room > 0 else 1.0
        s["profile_scale"] = round(scale, 4)
        s["blocks_ms"] = [None if b is None else b * scale for b in s["blocks_ms"]]
        s["loose_ms"] *= scale


class _Eta:
    def __init__(self, total):
        self.total, self.start = total, time.time()

    def text(self, done):
        if done == 0:
            return "?"
        return format_seconds((time.time() - self.start) / done * (self.total - done))


def _measure_samples(model, groups, backend, width, plans):
    """Time and profile each plan's export: ([{counts, ratio to unpruned, blocks_ms,
    loose_ms}], the unpruned export's times, timed runs per plan)."""
    x = backend.input()
    measured, base_times = [], []
    eta = _Eta(len(plans))
    with tempfile.TemporaryDirectory(prefix="paddleseg_latency_") as tmp:
        run0 = backend.runner(measure.export_plan(model, groups, {}, os.path.join(tmp, "p0")))
        warm, = measure.interleaved_ms([run0], x, 1, 1)
        repeats = measure.repeats_for(float(warm[0]))
        for k, counts in enumerate(plans):
            if k == 0:
                t0, = measure.interleaved_ms([run0], x, 0, repeats)
                run, tk = run0, t0
            else:
                folder = measure.export_plan(model, groups, counts, os.path.join(tmp, f"p{k}"))
                run = backend.runner(folder)
                t0, tk = measure.interleaved_ms([run0, run], x, 1, repeats)
            base_times += list(t0)
            blocks, loose = _profile(backend, run, x, width.signatures(width.vector(counts)),
                                     measure.low(tk))
            measured.append({"counts": {g: int(n) for g, n in counts.items() if n},
                             "ratio": measure.Paired(t0, tk).ratio, "blocks_ms": blocks,
                             "loose_ms": loose})
            if k:
                del run     # the predictor's memory goes before the next one is made
                shutil.rmtree(os.path.join(tmp, f"p{k}"), ignore_errors=True)
            timed = sum(b is not None for b in blocks)
            logger.info(f"latency table: plan {k + 1} of {len(plans)} measured, "
                        f"{measure.low(tk):.1f} ms, {timed} of {len(width.sites)} convs "
                        f"profiled, ETA {eta.text(k + 1)}")
    return measured, base_times, repeats


def build(model, groups, backend, channel_step, max_ratio, samples=DEFAULT_SAMPLES, seed=0):
    """Measure the sample plans on ``backend`` and fit the table (see the module docstring)."""
    start = time.time()
    key = table_key(model, groups, backend, channel_step)
    logger.info(f"latency table: tracing the convs at {backend.shape_text()}")
    sites = conv_sites(model, backend.shape)
    width = WidthModel(groups, sites)
    plans = sample_plans(plan_limits(groups, max_ratio, channel_step), samples, seed)
    measured, base_times, repeats = _measure_samples(model, groups, backend, width, plans)
    full_ms = measure.low(base_times)    # the blocks are fastest-run times: the same footing
    for m in measured:
        m["total_ms"] = m.pop("ratio") * full_ms
    _reconcile(measured)
    table = LatencyTable(key=key, sites=[s.to_dict() for s in sites], samples=measured,
                         full_ms=full_ms, lanes=backend.lanes(), repeats=repeats,
                         seconds=round(time.time() - start, 1),
                         created=time.strftime("%Y-%m-%d %H:%M:%S"))
    table.fit(width)
    if not any(table.present):
        logger.warning("latency table: no conv was profiled (no oneDNN on this backend): the "
                       "table is a whole-model fit of the sample plans' times")
    return table


# -- the table and the model fitted to it ------------------------------------------------------
class LatencyTable:
    """The measured samples, the fitted coefficients and the key (JSON round trip)."""

    def __init__(self, key, sites, samples, full_ms, lanes=1, repeats=None, seconds=None,
                 created=None, coef=None, present=None, rest=None, fit_error=None):
        self.key, self.sites, self.samples, self.lanes = key, sites, samples, int(lanes)
        self.full_ms, self.repeats, self.seconds, self.created = full_ms, repeats, seconds, created
        self.coef, self.present, self.rest, self.fit_error = coef, present, rest, fit_error

    @property
    def method(self):
        return "onednn-profile-fit" if any(self.present or ()) else "whole-model-fit"

    def fit(self, width):
        """Fit block and rest coefficients to the samples (non-negative least squares)."""
        plans = np.stack([width.vector(s["counts"]) for s in self.samples])
        blocks = [s["blocks_ms"] for s in self.samples]
        self.present = [any(b[i] is not None for b in blocks) for i in range(len(width.sites))]
        feats, rest_feats = _Features(width, self.lanes, self.present)(plans)
        self.coef = []
        for i in range(len(width.sites)):
            rows = [k for k, b in enumerate(blocks) if b[i] is not None]
            self.coef.append(_nnls(feats[rows, i], [blocks[k][i] for k in rows]) if rows
                             else [0.0] * feats.shape[-1])
        present = np.array(self.present)
        block_sum = (feats * np.array(self.coef)).sum(-1)[:, present].sum(-1)
        # the whole model's times set the blocks' scale (their profiles may be inflated by
        # other jobs, alike for all layers) and the rest of the time
        self.rest = _nnls(np.column_stack([block_sum, rest_feats]),
                          [s["total_ms"] for s in self.samples])
        model = LatencyModel(self, width=width)
        pred = model.ms(plans)
        total = np.array([s["total_ms"] for s in self.samples])
        self.fit_error = float(np.mean(np.abs(pred - total) / total))

    def to_dict(self):
        return {"format": FORMAT, "key": self.key, "method": self.method,
                "full_ms": self.full_ms, "lanes": self.lanes, "fit_mape": self.fit_error,
                "repeats": self.repeats, "seconds": self.seconds, "created": self.created,
                "sites": self.sites,
                "coef": self.coef, "present": self.present, "rest": self.rest,
                "samples": self.samples}

    @classmethod
    def from_dict(cls, d):
        return cls(key=d["key"], sites=d["sites"], samples=d["samples"], full_ms=d["full_ms"],
                   lanes=d["lanes"], repeats=d.get("repeats"), seconds=d.get("seconds"),
                   created=d.get("created"), coef=d["coef"], present=d["present"],
                   rest=d["rest"], fit_error=d.get("fit_mape"))

    def model(self, groups):
        return LatencyModel(self, groups=groups)


def _nnls(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return [float(v) for v in nnls(a, b, maxiter=50 * a.shape[1])[0]]


def _relative(values, base):
    return values / np.where(base > 0, base, 1.0)


def _padded(channels, lanes):
    return np.ceil(channels / lanes) * lanes


class _Features:
    """What the fitted coefficients multiply, for plans ``n`` of shape (..., groups):

    - per site: [1, cin, cout, MACs, ragged]: widths and MACs relative to the unpruned model
      and counted in whole vector registers of ``lanes`` floats (a 56-wide layer costs an
      AVX-512 kernel what a 64-wide one does); ragged = 1 when a width leaves a partial
      register (oneDNN then falls back to slower kernels and adds layout reorders: measured
      here, up to 10x on depthwise convs);
    - for the rest: [1, output volume of the profiled convs, MACs of the others], relative.
    """

    def __init__(self, width, lanes, present):
        self.width, self.lanes = width, lanes
        self.present = np.asarray(present, dtype=bool)
        cin, cout, groups = width.widths(np.zeros(len(width.group_ids)))
        self.base = self._lane_widths(cin, cout)
        self.vol0 = (cout * width.out_pixels)[self.present].sum()
        self.macs0 = width.macs_of(cin, cout, groups)[~self.present].sum()

    def _lane_widths(self, cin, cout):
        w, lanes = self.width, self.lanes
        pin, pout = _padded(cin, lanes), _padded(cout, lanes)
        macs = w.kernel * pout * np.where(w.dw, 1.0, pin / w.groups0) * w.out_pixels
        ragged = ((cin % lanes != 0) | (cout % lanes != 0)).astype(float)
        return pin, pout, macs, ragged

    def __call__(self, n):
        """(block features (..., sites, 5), rest features (..., 3))."""
        w = self.width
        cin, cout, groups = w.widths(n)
        pin, pout, macs, ragged = self._lane_widths(cin, cout)
        pin0, pout0, macs0, _ = self.base
        blocks = np.stack([np.ones_like(pin), _relative(pin, pin0), _relative(pout, pout0),
                           _relative(macs, macs0), ragged], axis=-1)
        vol = (cout * w.out_pixels)[..., self.present].sum(-1)
        other = w.macs_of(cin, cout, groups)[..., ~self.present].sum(-1)
        rest = np.stack([np.ones_like(vol), vol / self.vol0 if self.vol0 else 0 * vol,
                         other / self.macs0 if self.macs0 else 0 * other], axis=-1)
        return blocks, rest


class LatencyModel:
    """Predicted latency (ms) of plans: ``ms(n)`` for plan vectors ``n`` of shape (..., groups)
    in ``group_ids`` order (``vector(counts)`` makes one from {group id: removed})."""

    def __init__(self, table, groups=None, width=None):
        self.width = width or WidthModel(groups, [Site(**d) for d in table.sites])
        self.group_ids = self.width.group_ids
        self.coef = np.array(table.coef, dtype=float)
        self.present = np.array(table.present, dtype=bool)
        self.rest = np.array(table.rest, dtype=float)
        self.features = _Features(self.width, table.lanes, self.present)

    def vector(self, counts):
        return self.width.vector(counts)

    def ms(self, n):
        blocks, rest = self.features(np.asarray(n, dtype=float))
        per_site = np.where(self.present, np.einsum("...sf,sf->...s", blocks, self.coef), 0.0)
        return per_site.sum(-1) * self.rest[0] + rest @ self.rest[1:]

    def full_ms(self):
        return float(self.ms(np.zeros(len(self.group_ids))))

    def reduction(self, n):
        return 1.0 - self.ms(n) / self.full_ms()


FROZEN, OTHER = "(frozen layers)", "(other ops)"


def unprunable_share(table, owners):
    """{share, frozen, other}: the shares of the unpruned model's measured time (its sample in
    ``table``) that no pruning can remove: conv blocks whose output channels no group prunes
    (``owners``: each site's group id or None; the classifier, grouped convs) and the time
    outside every profiled block (final resize, argmax, framework). A site without a profile
    never ran in the exported model (a training-only auxiliary head: on CPU every conv of the
    inference graph runs in oneDNN) and takes no time. None when the backend gave no layer
    profile at all (GPU): then only the whole-model fit is known."""
    base = next((s for s in table.samples if not s["counts"]), None)
    if base is None or all(b is None for b in base["blocks_ms"]) or not base["total_ms"] > 0:
        return None
    shares = shares_by_owner(owners, base["blocks_ms"], base["total_ms"])
    frozen, other = shares.get(FROZEN, 0.0), max(0.0, shares.get(OTHER, 0.0))
    return {"share": round(frozen + other, 4), "frozen": round(frozen, 4),
            "other": round(other, 4)}


def shares_by_owner(owners, blocks, total):
    """{group id: share of ``total``} from per-site times (None = not measured); blocks whose
    outputs no group prunes go to "(frozen layers)", the time outside blocks to "(other ops)"."""
    shares = {}
    for owner, ms in zip(owners, blocks):
        if ms is not None:
            shares[owner or FROZEN] = shares.get(owner or FROZEN, 0.0) + ms
    shares[OTHER] = total - sum(shares.values())
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


# -- files ---------------------------------------------------------------------------------------
def _well_formed(d):
    return isinstance(d, dict) and d.get("format") == FORMAT and isinstance(d.get("key"), dict) \
        and all(isinstance(d.get(k), list) for k in ("sites", "coef", "present", "rest", "samples"))


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad_value(name, value, most=None, what="ms"):
    """Why ``value`` cannot stand in a table (not a number, not finite, negative, above
    ``most``), or None."""
    if not _number(value) or not math.isfinite(value) or value < 0:
        return f"{name} = {value!r} (must be a finite number >= 0)"
    if most is not None and value > most:
        return f"{name} = {value!r} (implausible: above {most:.4g} {what})"
    return None


SITE_FIELDS = {f.name: (bool if f.type in (bool, "bool") else int)
               for f in dataclasses.fields(Site) if f.name != "path"}


def _bad_site(i, d):
    if not isinstance(d, dict) or set(d) != {"path", *SITE_FIELDS} \
            or not isinstance(d["path"], str):
        return f"sites[{i}] is not a conv site"
    for k, kind in SITE_FIELDS.items():
        v = d[k]
        ok = isinstance(v, bool) if kind is bool else (
            isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or k == "call" and v == 0))
        if not ok:
            return f"sites[{i}].{k} = {v!r}"
    return None


def first_bad_entry(d):
    """The first entry of a table file's contents (a dict) that no measurement writes: a
    value not finite, negative or implausible against the table's own full-model time, or a
    structure whose parts disagree; None when there is none."""
    full = d["full_ms"]
    if not _number(full) or not math.isfinite(full) or full <= 0:
        return f"full_ms = {full!r} (must be a finite time > 0)"
    if not isinstance(d["lanes"], int) or isinstance(d["lanes"], bool) or d["lanes"] < 1:
        return f"lanes = {d['lanes']!r} (must be an integer >= 1)"
    n = len(d["sites"])
    if len(d["coef"]) != n or len(d["present"]) != n:
        return (f"{n} sites, {len(d['coef'])} coefficient rows and {len(d['present'])} "
                "'present' flags (must be as many)")
    most = PLAUSIBLE * full
    for i, site in enumerate(d["sites"]):
        bad = _bad_site(i, site)
        if bad:
            return bad
        row = d["coef"][i]
        where = f"coef[{i}] (site {site['path']})"
        if not isinstance(row, list) or len(row) != BLOCK_FEATURES:
            return f"{where} is not a list of {BLOCK_FEATURES} numbers"
        for k, v in enumerate(row):
            bad = _bad_value(f"{where}[{k}]", v, most,
                             f"ms, {PLAUSIBLE:g}x the table's full-model time {full:.4g} ms")
            if bad:
                return bad
        if not isinstance(d["present"][i], bool):
            return f"present[{i}] = {d['present'][i]!r} (must be true or false)"
    rest = d["rest"]
    if len(rest) != REST_FEATURES:
        return f"rest has {len(rest)} numbers (must be {REST_FEATURES})"
    bad = _bad_value("rest[0]", rest[0], PLAUSIBLE, "(the blocks' scale)")
    for k in range(1, REST_FEATURES):
        bad = bad or _bad_value(f"rest[{k}]", rest[k], most,
                                f"ms, {PLAUSIBLE:g}x the table's full-model time {full:.4g} ms")
    if bad:
        return bad
    for i, s in enumerate(d["samples"]):
        if not isinstance(s, dict) or not isinstance(s.get("counts"), dict):
            return f"samples[{i}] is not a sample plan"
        total = s.get("total_ms")
        if not _number(total) or not math.isfinite(total) or total <= 0:
            return f"samples[{i}].total_ms = {total!r} (must be a finite time > 0)"
    return None


def read(path):
    """The table in ``path``; LatencyTableMismatch (one line) when it is not one."""
    problem = not_a_readable_file(path, "--latency_table", "name a JSON file, or a path that "
                                  "does not exist yet to measure a table there")
    if problem:
        raise LatencyTableMismatch(problem)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise LatencyTableMismatch(
            f"cannot read latency table {path}: {type(e).__name__}: {e}") from None
    if not _well_formed(d):
        raise LatencyTableMismatch(f"{path} is not a latency table of this version")
    try:
        table = LatencyTable.from_dict(d)
    except (KeyError, TypeError) as e:
        raise LatencyTableMismatch(f"{path} is not a latency table of this version ({e})") from None
    bad = first_bad_entry(d)
    if bad:
        raise LatencyTableMismatch(f"latency table {path} holds a value no measurement writes: "
                                   f"{bad}; delete it (or pass another --latency_table) to "
                                   "measure afresh")
    return table


def check_fits_model(table, path, model, groups, shape):
    """LatencyTableMismatch (one line) unless the table's conv sites are the ones ``model``
    runs at ``shape`` and its predictions are plausible: the structure hash of its key covers
    the layers and groups, not the sites and coefficients, which an edit can change alone."""
    sites = conv_sites(model, shape)
    listed = [Site(**s) for s in table.sites]
    if listed != sites:
        first = next((i for i, (a, b) in enumerate(zip(listed, sites)) if a != b),
                     min(len(listed), len(sites)))
        found = f"{listed[first].path} call {listed[first].call}" if first < len(listed) \
            else "nothing"
        runs = f"{sites[first].path} call {sites[first].call}" if first < len(sites) \
            else "nothing"
        raise LatencyTableMismatch(
            f"latency table {path} lists {len(listed)} conv sites where the model runs "
            f"{len(sites)} at {'x'.join(map(str, shape))} (site {first}: the table has {found}, "
            f"the model runs {runs}); delete it (or pass another --latency_table) to measure "
            "afresh")
    cost = table.model(groups)
    plans = [("the unpruned model", {}, table.full_ms)] + [
        (f"sample plan {i}", s["counts"], s["total_ms"]) for i, s in enumerate(table.samples)]
    for name, counts, measured in plans:
        unknown = sorted(set(counts) - set(cost.group_ids))
        if unknown:
            raise LatencyTableMismatch(
                f"latency table {path}: {name} prunes group {unknown[0]!r}, which the model "
                "does not have; delete it (or pass another --latency_table) to measure afresh")
        ms = float(cost.ms(cost.vector(counts)))
        if not (math.isfinite(ms) and measured / FIT_SLACK <= ms <= measured * FIT_SLACK):
            raise LatencyTableMismatch(
                f"latency table {path} predicts {ms:.4g} ms for {name}, measured at "
                f"{measured:.4g} ms (more than {FIT_SLACK:g}x apart: its coefficients do not fit "
                "its own measurements); delete it (or pass another --latency_table) to measure "
                "afresh")


def check_key(table, path, key, fields=KEY_FIELDS):
    found = {k: table.key.get(k) for k in fields}
    wanted = {k: key.get(k) for k in fields}
    if found != wanted:
        raise LatencyTableMismatch(
            f"latency table {path} was measured for {describe_mismatch(found, wanted)}; "
            "pass another --latency_table or delete it to measure afresh")


def check_file(path, backend, channel_step, check_shape=True):
    """Refuse early (before any slow work) a --latency_table made for another backend, device,
    threads, shape, Paddle or channel step; the model structure (and the shape, when it comes
    from the config) is checked once the model is built."""
    if path is None:
        return
    check_file_target(path, "--latency_table")
    check_parent_folder(path, "--latency_table")
    if not os.path.exists(path):
        return
    partial = backend.key()
    partial["channel_step"] = int(channel_step)
    if not check_shape:
        partial.pop("shape")
    check_key(read(path), path, partial, fields=tuple(partial))


def obtain(model, groups, backend, channel_step, max_ratio, path=None, samples=DEFAULT_SAMPLES):
    """(table, path): the cached table for this key when there is one, else a new one measured
    and saved (to ``path``, default :func:`default_table_path`)."""
    key = table_key(model, groups, backend, channel_step)
    path = path or default_table_path(key)
    if os.path.exists(path):
        table = read(path)
        check_key(table, path, key)
        check_fits_model(table, path, model, groups, backend.shape)
        logger.info(f"latency table: reusing {path} (measured {table.created}, "
                    f"{table.method}, {table.full_ms:.1f} ms unpruned)")
        if len(table.samples) != samples:
            # the count only shapes a new table; say so rather than ignore the request quietly
            logger.warning(f"latency table: {path} was built from {len(table.samples)} sample "
                           f"plans, not the {samples} asked for; it is reused as it is (delete "
                           "it or name another file to measure a new one)")
        return table, path
    table = build(model, groups, backend, channel_step, max_ratio, samples)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, table.to_dict())
    logger.info(f"latency table: saved to {path} ({table.method}, fit error on its samples "
                f"{table.fit_error:.1%}, measured in {format_seconds(table.seconds)})")
    return table, path
