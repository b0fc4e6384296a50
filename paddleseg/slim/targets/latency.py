"""``--target latency`` in the pruning pipeline.

1. The latency table of the unpruned model on the backend (cached; :mod:`.table`), and the
   largest cut it predicts the sensitivity grid allows (checked before the sensitivity
   analysis, so an unreachable target fails early).
2. The closing loop (:meth:`LatencyTarget.search`): allocate for the aimed cut, export the
   candidate, time it in turn with the unpruned export, and re-aim (:func:`next_aim`) until
   the measured cut is in the accepted band, at most ``SHORT_TOLERANCE`` short of the target
   and ``OVER_TOLERANCE`` beyond it (at most ``MAX_ROUNDS`` candidates; :func:`kept_round`).
   A measured cut that stays short of it is an error that
   says why (one line) unless lowering the target is allowed; then the report says plainly that
   the target was not met (``target_met: false``, the target and the measured cut), and so does
   prune.py's closing line.
3. The figures for the report (:meth:`LatencyTarget.measured_report`): predicted and measured
   latency before and after, each group's share of the measured time before and after, and
   the table's error on the final model.
"""
import dataclasses
import os
import shutil

import numpy as np

from ...core.export import parse_input_shape
from ...utils import logger
from ...utils.progress import Phase
from ...utils.errors import UserError
from ..allocate import Allocation
from ..latency import measure
from ..latency.allocate import DEFAULT_ALLOCATION, LatencyTargetUnreachable, allocator, max_reduction
from ..latency.table import (DEFAULT_SAMPLES, blocks_over_runs, check_file, obtain,
                             shares_by_owner, unprunable_share)

# bounds of the latency input shape (N C H W): the latency table exports and runs the model at
# it many times, so a shape far beyond any deployment would only exhaust the memory; below the
# models' total stride (32) the feature maps vanish
MIN_SIDE, MAX_SIDE = 32, 8192
MAX_BATCH = 64
MAX_PIXELS = 4096 * 4096      # N * H * W: e.g. 1x3x4096x4096, 8x3x1024x2048

# The band a measured cut is accepted in. It is narrower on the short side: a user asking for
# a 0.3 cut expects at least about 1/0.7 = 1.43x, and 0.02 short still gives 1.39x, where the
# 0.03 allowed before gave 1.37x; a cut beyond the target only makes the model faster.
SHORT_TOLERANCE = 0.02
OVER_TOLERANCE = 0.03
MAX_ROUNDS = 4
MIN_AIM = 0.005


class LatencyTargetMissed(UserError):
    """The measured latency cut stays short of the target after the closing loop."""


class BeyondPruning(UserError):
    """A latency cut larger than the time pruning can touch."""

    def __init__(self, target, unprunable):
        floor = unprunable["floor"]
        super().__init__(
            f"--pruning_ratio {target:g} asks a latency cut pruning cannot reach: with every "
            f"group pruned to one channel the latency table predicts {floor:.1%} of the time "
            f"left, so no pruning cuts more than {1 - floor:.3f} (a {1 / floor:.2f}x speedup); "
            f"{unprunable_text(unprunable)}; lower the target")


def unprunable_text(unprunable):
    return (f"of the measured time {unprunable['share']:.1%} is outside every pruning group "
            f"(convs no group prunes with the ops after them, such as the classifier, final "
            f"resize and argmax: {unprunable['frozen']:.1%}; outside the conv blocks: "
            f"{unprunable['other']:.1%})")


def _inside(path, folder):
    return os.path.realpath(path).startswith(os.path.realpath(folder).rstrip(os.sep) + os.sep)


def check_latency_shape(shape, what="--latency_shape"):
    """UserError (one line) for a latency input shape outside the bounds above (C = 3 is
    :func:`~paddleseg.core.export.parse_input_shape`'s check)."""
    n, _, h, w = shape
    shown = " ".join(map(str, shape))
    if not 1 <= n <= MAX_BATCH:
        raise UserError(f"{what} {shown}: N must lie in [1, {MAX_BATCH}]")
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise UserError(f"{what} {shown}: H and W must lie in [{MIN_SIDE}, {MAX_SIDE}] (the "
                        f"models downsample by up to {MIN_SIDE})")
    if n * h * w > MAX_PIXELS:
        raise UserError(f"{what} {shown}: N*H*W = {n * h * w} is above the {MAX_PIXELS} "
                        "(4096x4096) a latency table is measured at; use a smaller shape")


def deploy_shape(val_transforms, default=measure.DEFAULT_SHAPE):
    """N C H W the deployed model sees: the val transforms' fixed Resize, else ``default``."""
    for t in val_transforms or []:
        if isinstance(t, dict) and t.get("type") == "Resize" and not t.get("keep_ratio"):
            size = t.get("target_size", (512, 512))
            w, h = (size, size) if isinstance(size, int) else size
            return (1, 3, int(h), int(w))
    return tuple(default)


def next_aim(tried, target):
    """The cut to aim the allocation at next, from the (aimed, measured) cuts ``tried`` so far.

    Measured cuts trail the aimed ones by an offset as much as by a factor (a table that
    overpredicts the time of the layers it prunes, say), so with two tries on either side of
    the target the aim is interpolated between them, with two on one side extrapolated from the
    last two (secant), and after a single try scaled by target / measured."""
    below = [t for t in tried if t[1] < target]
    above = [t for t in tried if t[1] >= target]
    if below and above:
        pair = (max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1]))
    else:
        pair = tuple(tried[-2:])
    if len(pair) == 2:
        (a0, m0), (a1, m1) = pair
        if abs(m1 - m0) >= 1e-3 and (a1 - a0) * (m1 - m0) > 0:   # neither flat nor reversed
            return a0 + (target - m0) * (a1 - a0) / (m1 - m0)
    aim, cut = tried[-1]
    return aim * target / cut if cut > 0.02 else aim + (target - cut)


def meets_target(cut, target):
    """Whether a measured cut counts as the target met: at most SHORT_TOLERANCE short of it."""
    return bool(cut >= target - SHORT_TOLERANCE)   # a plain bool: it goes into report.json


def kept_round(rounds, target, allow_lower):
    """The closing loop's round to keep: the one measured closest to ``target`` among those
    that meet it (at most SHORT_TOLERANCE short), as a faster model than asked beats a run that
    stops short; the closest of all where none meets it, or where a lower cut is allowed (a
    --max_miou_drop step, whose cuts are waypoints, not a user's target)."""
    met = [r for r in rounds if meets_target(r["measured"], target)]
    pool = rounds if allow_lower or not met else met
    return min(pool, key=lambda r: abs(r["measured"] - target))


class LatencyTarget:
    """The latency side of one pruning run (``model``: unpruned); ``work_dir`` holds its
    temporary exports."""

    name = "latency"
    unprunable = None   # {share, frozen, other} of the measured time, when the backend profiles
    # (--cpu_threads is not among them: it also sets the threads every CPU phase of a run uses)
    only_flags = (("latency_shape", "--latency_shape"), ("latency_table", "--latency_table"),
                  ("latency_allocation", "--latency_allocation"),
                  ("trial_allocations", "--trial_allocations"))

    def __init__(self, model, groups, backend, channel_step, max_ratio, work_dir,
                 table_path=None, samples=DEFAULT_SAMPLES, allocation=None):
        self.model = model
        self.groups, self.backend, self.channel_step = groups, backend, channel_step
        self.allocation = allocation or DEFAULT_ALLOCATION
        self.allocator = allocator(self.allocation)
        self.table, self.table_path = obtain(model, groups, backend, channel_step, max_ratio,
                                             table_path, samples)
        self.cost = self.table.model(groups)
        self.unprunable = self._unprunable()
        self.work_dir = work_dir
        self.x = backend.input()
        self.rounds, self.chosen = [], None
        self._full_dir = None

    def _unprunable(self):
        """The measured share outside every group, and the predicted ``floor``: the share of the
        time left with every group pruned to one channel (what no pruning removes)."""
        measured = unprunable_share(self.table, self.cost.width.owner)
        if measured is None:
            return None
        deepest = self.cost.vector({g.id: g.channels - 1 for g in self.groups})
        floor = float(self.cost.ms(deepest)) / self.cost.full_ms()
        return dict(measured, floor=round(min(1.0, max(floor, 1e-6)), 4))

    # -- the target interface (paddleseg.slim.targets) -----------------------------------------
    @classmethod
    def check(cls, o):
        """Before any slow work: the allocation's name, the sample count, the shape, and a
        --latency_table made for another backend, threads, shape or channel step."""
        allocator(o.latency_allocation)    # a bad name fails here, in one line
        if o.latency_samples < 3:
            raise UserError(f"--latency_samples must be >= 3, got {o.latency_samples}")
        if o.latency_table and _inside(o.latency_table, o.save_dir):
            raise UserError(f"--latency_table {o.latency_table} is inside --save_dir, which a "
                            "run replaces as a whole; keep the table outside it")
        shape = parse_input_shape(o.latency_shape, "--latency_shape")
        if shape is not None:
            check_latency_shape(shape)
        backend = measure.Backend(device=o.device, cpu_threads=o.cpu_threads,
                                  shape=shape or measure.DEFAULT_SHAPE)
        check_file(o.latency_table, backend, o.channel_step, check_shape=shape is not None)

    @classmethod
    def build(cls, o, cfg, model, analysis, work_dir, timings):
        """The latency target of a pruning run: its table measured (or reused) here."""
        with Phase(timings, "latency table"):
            shape = o.latency_shape or deploy_shape(cfg.val_dataset_config.get("transforms"))
            check_latency_shape(shape, "the latency shape from the val transforms' Resize")
            backend = measure.Backend(device=o.device, cpu_threads=o.cpu_threads, shape=shape)
            logger.info(f"latency target: {backend.name} on {backend.description()}, "
                        f"{backend.cpu_threads} threads, input {backend.shape_text()}")
            target = cls(model, analysis.groups, backend, o.channel_step, max(o.sen_ratios),
                         work_dir, o.latency_table, o.latency_samples, o.latency_allocation)
        if target.unprunable is not None:
            floor = target.unprunable["floor"]
            logger.info(f"latency target: pruning can make this model at most {1 / floor:.2f}x "
                        f"faster (the table's prediction with every group pruned to one "
                        f"channel); {unprunable_text(target.unprunable)}")
        return target

    def use_allocation(self, name):
        """Share the cut by the allocation ``name`` from now on (--trial_allocations tries
        several on one table)."""
        self.allocation, self.allocator = name, allocator(name)

    def reachable(self, o):
        return self.aimed_reduction(o.pruning_ratio, o.sen_ratios, o.allow_lower_target)

    def allocate(self, sensitivities, aim, allow_lower=False):
        return self.search(self.model, sensitivities, aim, allow_lower)

    def snapshot(self, alloc):
        """What :meth:`restore` needs to make ``alloc`` (the last search's) the run's allocation
        again, its closing loop's rounds and verdict with it (JSON)."""
        return {"allocation": dataclasses.asdict(alloc), "rounds": list(self.rounds),
                "verdict": dict(self.verdict)}

    def restore(self, state):
        self.chosen = Allocation(**state["allocation"])
        self.rounds, self.verdict = list(state["rounds"]), dict(state["verdict"])
        return self.chosen

    def final_report(self, model, export_dir, timings):
        with Phase(timings, "latency measurement"):
            lat = self.measured_report(model, export_dir)
        return {"latency": lat, "target_met": lat["target_met"]}

    @staticmethod
    def report_lines(report):
        return report_lines(report["latency"]) if report.get("latency") else []

    # -- before the sensitivity analysis --------------------------------------------------------
    def aimed_reduction(self, target, ratios, allow_lower):
        """(latency cut to aim at, the lowered target or None), as the FLOPs side does; a cut
        beyond the time outside every group fails first, saying so (lowering cannot help it)."""
        if self.unprunable is not None and target >= 1 - self.unprunable["floor"] \
                and not allow_lower:
            raise BeyondPruning(target, self.unprunable)
        grid = {g.id: {r: 0.0 for r in ratios} for g in self.groups}
        most = max_reduction(self.cost, self.groups, grid, self.channel_step)
        if target <= most + 1e-12:
            return target, None
        if not allow_lower or most < 1e-6:
            remedy = "" if most < 1e-6 else f", or pass --allow_lower_target to prune {most:.3f}"
            raise LatencyTargetUnreachable(target, most, max(ratios), remedy)
        logger.warning(f"target latency reduction {target:.3f} is above the {most:.3f} the "
                       f"latency table predicts the grid can reach; lowered to {most:.3f} "
                       "(--allow_lower_target)")
        return most - 1e-9, most

    # -- the closing loop ----------------------------------------------------------------------
    def _export(self, model, counts, name):
        return measure.export_plan(model, self.groups, counts, os.path.join(self.work_dir, name))

    def _full_runner(self, model):
        if self._full_dir is None:
            self._full_dir = self._export(model, {}, "unpruned")
        return self.backend.runner(self._full_dir)

    def _measure(self, run_full, folder):
        """Times (ms) of the unpruned and the candidate export, taken in turn until the cut is
        known to within measure.CUT_PRECISION (standard error)."""
        return measure.paired_until_precise(run_full, self.backend.runner(folder), self.x)

    def search(self, model, sensitivities, target, allow_lower=False):
        """The allocation whose *measured* cut is closest to ``target`` (see the module doc);
        ``model`` must be unpruned (it is left so)."""
        most = max_reduction(self.cost, self.groups, sensitivities, self.channel_step)
        run_full = self._full_runner(model)
        self.rounds = []   # this search's (a --max_miou_drop run searches once per step)
        tried, aim = {}, min(target, most - 1e-9)
        for i in range(MAX_ROUNDS):
            alloc = self.allocator(self.groups, sensitivities, self.cost, aim,
                                  channel_step=self.channel_step)
            key = tuple(sorted(alloc.pruned.items()))
            if key not in tried:
                folder = self._export(model, alloc.pruned, "candidate")
                tried[key] = (alloc, self._measure(run_full, folder))
            alloc, m = tried[key]
            full_ms, ms, cut, se = m.base_ms, m.other_ms, m.cut, m.cut_se()
            self.rounds.append({"aimed": round(aim, 4), "predicted": round(alloc.reduction, 4),
                                "measured": round(cut, 4), "measured_se": round(se, 4),
                                "timed_rounds": m.rounds, "ms_before": round(full_ms, 3),
                                "ms_after": round(ms, 3), "key": key})
            logger.info(f"latency search: round {i + 1}: aimed at {aim:.3f}, predicted "
                        f"{alloc.reduction:.3f}, measured {cut:.3f} ± {se:.3f} "
                        f"({full_ms:.1f} -> {ms:.1f} ms, {m.rounds} runs each)")
            if meets_target(cut, target) and cut <= target + OVER_TOLERANCE:
                break
            corrected = next_aim([(r["aimed"], r["measured"]) for r in self.rounds], target)
            corrected = float(np.clip(corrected, MIN_AIM, most - 1e-9))
            if abs(corrected - aim) < 1e-4:
                break   # the same aim again (at the grid's most): nothing left to try
            aim = corrected
        best = kept_round(self.rounds, target, allow_lower)
        self.chosen = tried[best["key"]][0]
        for r in self.rounds:
            r.pop("key", None)
        self._judge(best, target, most, allow_lower)
        return self.chosen

    def _judge(self, best, target, most, allow_lower):
        cut = best["measured"]
        # what the report says of the closing loop (measured_report): met, or short by how much
        self.verdict = {"target_met": meets_target(cut, target),
                        "target_reduction": round(float(target), 4),
                        "search_measured_reduction": round(float(cut), 4)}
        if cut > target + OVER_TOLERANCE:
            logger.warning(f"measured latency cut {cut:.3f} is above the target {target:.3f} "
                           f"(+{OVER_TOLERANCE}) after {len(self.rounds)} rounds; keeping it")
        if self.verdict["target_met"]:
            return
        at_most = best["aimed"] >= most - 1e-3
        why = (f"the most the sensitivity grid allows ({most:.3f} predicted) measures "
               f"{cut:.3f} on this backend" if at_most else
               f"the latency table mispredicts this model (predicted {best['predicted']:.3f}, "
               f"measured {cut:.3f}) and {len(self.rounds)} rounds did not close the gap")
        if not allow_lower:
            raise LatencyTargetMissed(
                f"measured latency cut {cut:.3f} is short of the target {target:.3f} "
                f"(-{SHORT_TOLERANCE}): {why}; lower --pruning_ratio, analyse larger "
                f"--sen_ratios, or pass --allow_lower_target to keep the {cut:.3f} plan")
        logger.warning(f"measured latency cut {cut:.3f} is short of the target {target:.3f}: "
                       f"{why}; kept (--allow_lower_target)")

    # -- the report ----------------------------------------------------------------------------
    def _shares(self, run, n, times):
        """{group: share of the time} from a profile; the profile's block times are the
        fastest runs', so the total they are shares of is the fast end of ``times`` too."""
        runs = self.backend.profile(run, self.x, 3) or []
        width = self.cost.width
        blocks, _ = blocks_over_runs(runs, width.signatures(n))
        shares = shares_by_owner(width.owner, blocks, measure.low(times))
        return {k: round(v, 4) for k, v in shares.items()}

    def measured_report(self, model, export_dir=None):
        """Measured and predicted figures of the final (pruned, retrained) model, after
        :meth:`search`; its export is ``export_dir``, or made here when None. Removes the work
        folder."""
        try:
            if export_dir is None:
                export_dir = os.path.join(self.work_dir, "final")
                measure.export_plan(model, [], {}, export_dir)
            run_full = self.backend.runner(self._full_dir)    # exported by search()
            m = self._measure(run_full, export_dir)
            full_ms, ms, cut = m.base_ms, m.other_ms, m.cut
            n = self.cost.vector(self.chosen.pruned)
            zero = np.zeros_like(n)
            pred_before, pred_after = self.cost.full_ms(), float(self.cost.ms(n))
            report = {
                "backend": self.backend.name, "device": self.backend.description(),
                "cpu_threads": self.backend.cpu_threads, "shape": list(self.backend.shape),
                "table": os.path.abspath(self.table_path), "table_method": self.table.method,
                "allocation": self.allocation,
                "target_tolerance": SHORT_TOLERANCE,
                "target_over_tolerance": OVER_TOLERANCE, **self.verdict, "rounds": self.rounds,
                "predicted_ms_before": round(pred_before, 3),
                "predicted_ms_after": round(pred_after, 3),
                "predicted_reduction": round(1 - pred_after / pred_before, 4),
                "measured_ms_before": round(full_ms, 3), "measured_ms_after": round(ms, 3),
                "measured_reduction": round(cut, 4),
                "measured_reduction_se": round(m.cut_se(), 4), "measured_rounds": m.rounds,
                # the table was measured under another load: compare cuts, not raw times
                "table_error": round((pred_after / pred_before) / (1 - cut) - 1, 4),
                "unprunable_share": self.unprunable,
                "max_speedup": (round(1 / self.unprunable["floor"], 3)
                                if self.unprunable else None),
                "group_time_share_before": self._shares(run_full, zero, m.base),
                "group_time_share_after": self._shares(self.backend.runner(export_dir), n,
                                                       m.other),
            }
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return report


def missed_text(lat):
    """What a report says of a latency target the closing loop did not reach."""
    return (f"**Target not met**: latency cut {lat['target_reduction']:.3f} asked, "
            f"{lat['search_measured_reduction']:.3f} measured at best in the search (at most "
            f"{lat['target_tolerance']} short accepted); the plan was kept as "
            "--allow_lower_target allows")


def se_text(se):
    """`` ± se`` (a measured cut's standard error), empty for a report made before it was kept."""
    return "" if se is None else f" ± {se:.3f}"


def measured_how(lat):
    """How report.md's measured row was timed (a report made before the rounds were kept
    names neither their count nor the standard error)."""
    fast_end = f"{measure.LOW_PERCENTILE}th percentile"
    if not lat.get("measured_rounds"):
        return f"runs taken in turn, {fast_end}"
    return f"{lat['measured_rounds']} runs each taken in turn, {fast_end}; ± standard error"


def report_lines(lat, top=10):
    """Markdown lines for report.md (``lat``: report.json's ``latency``)."""
    shape = "x".join(map(str, lat["shape"]))
    lines = [
        "", "## Latency", "",
        f"{lat['backend']} on {lat['device']}, {lat['cpu_threads']} threads, input {shape}; "
        f"table `{lat['table']}` ({lat['table_method']}); allocation "
        f"{lat.get('allocation', DEFAULT_ALLOCATION)}.", "",
        "| latency (ms) | before | after | cut |", "|-|-:|-:|-:|",
        f"| predicted by the table | {lat['predicted_ms_before']:.1f} | "
        f"{lat['predicted_ms_after']:.1f} | {lat['predicted_reduction']:.3f} |",
        f"| measured ({measured_how(lat)}) | {lat['measured_ms_before']:.1f} | "
        f"{lat['measured_ms_after']:.1f} | {lat['measured_reduction']:.3f}"
        f"{se_text(lat.get('measured_reduction_se'))} |", "",
        f"The table's error on the final model: {lat['table_error']:+.1%} (predicted against "
        "measured latency, each relative to the unpruned model).", "",
        "| search round | aimed cut | predicted | measured |", "|-|-:|-:|-:|",
    ]
    lines += [f"| {i} | {r['aimed']:.3f} | {r['predicted']:.3f} | {r['measured']:.3f}"
              f"{se_text(r.get('measured_se'))} |" for i, r in enumerate(lat["rounds"], 1)]
    if not lat.get("target_met", True):
        lines += ["", missed_text(lat) + "."]
    before, after = lat["group_time_share_before"], lat["group_time_share_after"]
    if lat.get("unprunable_share"):
        lines += ["", f"No pruning makes this model more than {lat['max_speedup']:.2f}x faster "
                      f"(the table's prediction with every group pruned to one channel); "
                      f"{unprunable_text(lat['unprunable_share'])}."]
    lines += ["", f"Share of the measured time per group (the {top} largest before pruning):", "",
              "| group | before | after |", "|-|-:|-:|"]
    lines += [f"| `{g}` | {s:.1%} | {after.get(g, 0.0):.1%} |"
              for g, s in list(before.items())[:top]]
    return lines
