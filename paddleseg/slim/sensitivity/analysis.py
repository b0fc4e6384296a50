"""The sensitivity analysis loop: the metric lost when one group alone is pruned at each ratio.

Results go to the sensitivity file (:mod:`.store`) after every measured point, so a killed run
resumes where it stopped. Loss is relative: ``(base - metric) / base`` (``base - metric`` when
base is 0), where base is the unpruned model's metric, also stored in the file.

Under ``paddle.distributed.launch`` the points are shared out: every rank takes every N-th
point still missing and writes the metric it measured to its own part file (written durably
after every point); rank 0 also measures the base. At the end the ranks exchange their
metrics, rank 0 writes the merged file (losses relative to its base, in the order a single
process writes them, so the two files are identical) and the part files are removed. A run
killed on any rank loses at most the points in flight: the next run, with any number of ranks
or none, reads the file and every part file beside it, and a point measured twice is kept once.

The loop knows nothing of how a point is evaluated: it asks an evaluator (:mod:`.evaluators`).
"""
import json
import os

from ...utils import distributed, logger
from ...utils.fileio import write_durably
from .. import apply as _apply
from ..criteria import num_pruned
from .protocol import as_evaluator
from .store import (FORMAT, fingerprint, load_matching, load_part, new_contents, part_file,
                    part_files, ratio_key, save)


def _losses_of(data, groups, ratios):
    wanted = {ratio_key(r): float(r) for r in ratios}
    return {g.id: {wanted[k]: v for k, v in data["losses"].get(g.id, {}).items() if k in wanted}
            for g in groups}


def relative_loss(base, metric):
    return (base - metric) / base if base else base - metric


def analyze(model, groups, evaluator, ratios, sen_file, criterion="l1", progress=None, setup=None):
    """Measure {group id: {ratio: relative loss}} for ``groups`` on ``model``, resumably.

    ``evaluator``: an :class:`~.protocol.Evaluator` (or a callable returning the metric of the
    model as it is, higher is better). Each group is pruned alone at each ratio, evaluated,
    and restored exactly (original parameters put back). ``progress(k, n, group_id, ratio)``
    is called before each evaluation (group k of n). Points whose ratio removes no channel are
    recorded as 0 without an evaluation. ``setup``: the caller's facts for the fingerprint
    (plain JSON values: config digest, eval images...). In a job of several ranks every rank
    calls this with the same arguments and gets the same result; the points are shared out
    between them (see the module's doc).
    """
    ratios = sorted({float(r) for r in ratios})
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"sensitivity ratios must lie in (0, 1), got {ratios}")
    groups = list(groups)
    evaluator = as_evaluator(evaluator)
    run = _Run(model, groups, evaluator, ratios, sen_file, criterion, progress,
               fingerprint(model, groups, criterion, ratios, setup, evaluator.facts))
    if distributed.world_size() > 1:
        return run.shared()
    return run.alone()


def _add_points(into, points):
    """Add {group: {key: value}} to ``into``; a point both have keeps ``into``'s value."""
    for gid, values in points.items():
        mine = into.setdefault(gid, {})
        for key, value in values.items():
            mine.setdefault(key, value)


def _resumed(sen_file, fp):
    """(the file's contents, the metrics of every part file beside it)."""
    data = load_matching(sen_file, fp) or new_contents(fp)
    metrics = {}
    for path in part_files(sen_file):
        _add_points(metrics, load_part(path, fp))
    return data, metrics


def _fold(data, metrics):
    """Turn measured metrics into losses against the file's base (points it lacks only)."""
    _add_points(data["losses"], {gid: {k: relative_loss(data["base"], m) for k, m in v.items()}
                                 for gid, v in metrics.items()})


def _canonical(data, groups, ratios):
    """``data`` with groups and ratios in analysis order: a merged file reads like one written
    by a single process."""
    keys = [ratio_key(r) for r in ratios]
    losses = {}
    for g in groups:
        points = data["losses"].get(g.id, {})
        losses[g.id] = {k: points[k] for k in keys if k in points}
    return {**data, "losses": losses}


def _remove_files(paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:  # another rank was first
            pass


class _Run:
    """One sensitivity analysis, alone or as one rank of a job."""

    def __init__(self, model, groups, evaluator, ratios, sen_file, criterion, progress, fp):
        self.model, self.groups, self.evaluator = model, groups, evaluator
        self.ratios, self.sen_file, self.criterion = ratios, sen_file, criterion
        self.progress, self.fp = progress, fp
        self.by_id = {g.id: g for g in groups}
        self.index = {g.id: k for k, g in enumerate(groups, 1)}
        self.prepared = False

    def _save(self, data):
        save(self.sen_file, _canonical(data, self.groups, self.ratios))

    def _fill_unprunable(self, data):
        """Points whose ratio removes no channel: 0 without an evaluation. True if any added."""
        added = False
        for g in self.groups:
            points = data["losses"].setdefault(g.id, {})
            for r in self.ratios:
                if num_pruned(g.channels, r) == 0 and ratio_key(r) not in points:
                    points[ratio_key(r)] = 0.0
                    added = True
        return added

    def _pending(self, data, metrics=None):
        metrics = metrics or {}
        return [(g, r) for g in self.groups for r in self.ratios
                if ratio_key(r) not in data["losses"].get(g.id, {})
                and ratio_key(r) not in metrics.get(g.id, {})]

    def _metric(self, g, r):
        """The metric with group ``g`` alone pruned at ratio ``r`` (then restored)."""
        if self.progress is not None:
            self.progress(self.index[g.id], len(self.groups), g.id, r)
        if not self.prepared:
            self.evaluator.prepare()
        self.prepared = True
        _, undo = _apply.prune(self.model, self.by_id, {g.id: r}, self.criterion)
        try:
            return float(self.evaluator.evaluate(g.id))
        finally:
            undo.restore()

    def alone(self):
        """A single process: the file is rewritten after every point."""
        parts = part_files(self.sen_file)  # left by an interrupted job: folded in, then removed
        data, metrics = _resumed(self.sen_file, self.fp)
        changed = self._fill_unprunable(data) or bool(parts)
        if data["base"] is None:
            data["base"] = float(self.evaluator.evaluate(None))
            changed = True
        _fold(data, metrics)
        if changed:
            self._save(data)
            _remove_files(parts)
        for g, r in self._pending(data):
            data["losses"][g.id][ratio_key(r)] = relative_loss(data["base"], self._metric(g, r))
            self._save(data)
        return _losses_of(data, self.groups, self.ratios)

    def shared(self):
        """One rank of a job: measure every N-th missing point, then merge on rank 0."""
        rank, size = distributed.rank(), distributed.world_size()
        data, metrics = _resumed(self.sen_file, self.fp)
        changed = self._fill_unprunable(data) or bool(metrics)
        distributed.barrier()  # every rank has read the part files before any is rewritten
        todo = self._pending(data, metrics)
        mine = todo[rank::size]
        logger.info(f"sensitivity: {len(todo)} points to measure, {len(mine)} of them here",
                    every_rank=True)
        if rank == 0 and data["base"] is None:
            data["base"] = float(self.evaluator.evaluate(None))
            self._save(data)
            changed = True
        own_path = part_file(self.sen_file, rank)
        # this rank's part from an interrupted run is kept whole until the merged file has it
        own = {"format": FORMAT, "fingerprint": self.fp,
               "metrics": load_part(own_path, self.fp) if os.path.isfile(own_path) else {}}
        for g, r in mine:
            own["metrics"].setdefault(g.id, {})[ratio_key(r)] = self._metric(g, r)
            write_durably(own_path, json.dumps(own, indent=2) + "\n")
        gathered = distributed.all_gather({"base": data["base"], "metrics": own["metrics"]})
        data["base"] = gathered[0]["base"]  # rank 0's
        for theirs in gathered:
            _add_points(metrics, theirs["metrics"])
        _fold(data, metrics)
        if rank == 0 and (changed or metrics):  # a complete file is left as it was
            self._save(data)
        distributed.barrier()  # the merged file is on disk before any part file goes
        _remove_files(part_files(self.sen_file) if rank == 0 else [own_path])
        return _losses_of(data, self.groups, self.ratios)
