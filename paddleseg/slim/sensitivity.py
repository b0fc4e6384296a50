"""Sensitivity analysis: the metric lost when one group alone is pruned at each ratio.

Results go to a JSON file after every measured point (written under a temporary name, flushed
to disk, then renamed), so a killed run resumes where it stopped. The file carries a fingerprint
of what was measured (model class, group ids and sizes, criterion, ratio grid and a
caller-given ``extra`` string such as a config hash and eval-set size); a file with another
fingerprint is refused, never silently reused.

A ``.pickle`` / ``.pkl`` name (PaddleSlim's habit) is honoured: the same content is pickled,
and read back through an unpickler that builds plain data only, so a crafted file cannot run
code. PaddleSlim's own sensitivity pickles are recognised and refused with a reason: they key
losses by parameter names (``conv2d_12.w_0``), which do not identify this engine's groups.

Loss is relative: ``(base - metric) / base`` (``base - metric`` when base is 0), where base is
the unpruned model's metric, also stored in the file.

Under ``paddle.distributed.launch`` the points are shared out: every rank takes every N-th
point still missing and writes the metric it measured to its own part file
(``SEN_FILE.partR.json``: JSON with the same fingerprint, written durably after every point);
rank 0 also measures the base. At the end the ranks exchange their metrics, rank 0 writes the
merged file (losses relative to its base, in the order a single process writes them, so the
two files are identical) and the part files are removed. A run killed on any rank loses at
most the points in flight: the next run, with any number of ranks or none, reads the file and
every part file beside it, and a point measured twice is kept once.
"""
import json
import os
import pickle
import re

from ..utils import distributed, logger
from ..utils.checkpoint import ForbiddenPickleGlobal, restricted_unpickle
from ..utils.errors import UserError
from ..utils.fileio import write_durably
from . import apply as _apply
from .criteria import num_pruned

FORMAT = 1


class SensitivityMismatch(UserError):
    """The sensitivity file cannot be used: made for another model, grid, criterion or eval
    setup, damaged, or not a sensitivity file of this engine."""


def fingerprint(model, groups, criterion, ratios, extra=""):
    return {
        "model": type(model).__name__,
        "groups": [[g.id, int(g.channels)] for g in sorted(groups, key=lambda g: g.id)],
        "criterion": criterion,
        "ratios": [ratio_key(r) for r in ratios],
        "extra": str(extra),
    }


def ratio_key(r):
    return f"{float(r):.6g}"


def _describe_difference(old, new):
    diffs = [k for k in new if old.get(k) != new[k]]
    parts = []
    for k in diffs:
        if k == "groups":
            o = {g for g, _ in old.get(k, [])}
            n = {g for g, _ in new[k]}
            parts.append(f"groups differ ({len(o)} in file, {len(n)} now, "
                         f"{len(o ^ n)} ids differ)" if o != n else "group sizes differ")
        else:
            parts.append(f"{k}: file has {old.get(k)!r}, now {new[k]!r}")
    return "; ".join(parts)


def _is_pickle(sen_file):
    # PaddleSlim's tutorials name the file sen.pickle; honour the extension, JSON otherwise
    return sen_file.endswith((".pickle", ".pkl"))


def save(sen_file, data):
    """Write ``data`` durably (temp file, fsync, rename): a kill or power cut mid-write leaves
    the previous version."""
    if _is_pickle(sen_file):
        write_durably(sen_file, pickle.dumps(data, protocol=4))
    else:
        write_durably(sen_file, json.dumps(data, indent=2) + "\n")


def _read(sen_file):
    if not _is_pickle(sen_file):
        with open(sen_file, encoding="utf-8") as f:
            return json.load(f)
    with open(sen_file, "rb") as f:
        raw = f.read()
    try:
        return restricted_unpickle(raw)
    except ForbiddenPickleGlobal as e:
        if str(e).startswith("paddleslim."):   # a pickled paddleslim Status object
            raise SensitivityMismatch(_paddleslim_message(sen_file)) from None
        raise SensitivityMismatch(
            f"{sen_file} is not a sensitivity file: unpickling it would call {e}, which plain "
            "data never does; refused without running it") from None


def _paddleslim_message(sen_file, data=None):
    example = f" such as {next(iter(data))!r}" if data else ""
    return (f"{sen_file} holds PaddleSlim sensitivities, keyed by parameter names{example}, "
            "which do not identify this engine's layer groups; choose another --sen_file "
            "(or delete it) to measure afresh")


def _is_paddleslim_dict(data):
    # paddleslim.prune.sensitivity's file: {parameter name: {ratio: loss}}
    return isinstance(data, dict) and bool(data) and "format" not in data and all(
        isinstance(k, str) and isinstance(v, dict) for k, v in data.items())


def _well_formed(data):
    return (isinstance(data, dict) and data.get("format") == FORMAT
            and isinstance(data.get("fingerprint"), dict)
            and isinstance(data.get("base"), (int, float, type(None)))
            and isinstance(data.get("losses"), dict)
            and all(isinstance(v, dict) for v in data["losses"].values()))


def load(sen_file):
    """The contents of a sensitivity file, or None if there is none; SensitivityMismatch
    (one line) for a file that is damaged, refused or of another kind."""
    if not os.path.exists(sen_file):
        return None
    if os.path.isdir(sen_file):
        raise SensitivityMismatch(f"--sen_file {sen_file} is a folder, not a file")
    try:
        data = _read(sen_file)
    except SensitivityMismatch:
        raise
    except Exception as e:  # truncated or foreign bytes fail in many ways
        raise SensitivityMismatch(f"cannot read sensitivity file {sen_file}: "
                                  f"{type(e).__name__}: {e}") from None
    if _is_paddleslim_dict(data):
        raise SensitivityMismatch(_paddleslim_message(sen_file, data))
    if not _well_formed(data):
        raise SensitivityMismatch(f"{sen_file} is not a sensitivity file of this version")
    return data


def recorded_extra(sen_file):
    """The ``extra`` of the fingerprint an existing sensitivity file (or, before the merge,
    one of its part files) was begun with; None when there is neither or it cannot be read
    (the analysis itself then says what is wrong)."""
    try:
        data = load(sen_file)
    except SensitivityMismatch:
        return None
    if data is not None:
        return data["fingerprint"].get("extra")
    for path in part_files(sen_file):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)["fingerprint"]["extra"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _losses_of(data, groups, ratios):
    wanted = {ratio_key(r): float(r) for r in ratios}
    return {g.id: {wanted[k]: v for k, v in data["losses"].get(g.id, {}).items() if k in wanted}
            for g in groups}


def relative_loss(base, metric):
    return (base - metric) / base if base else base - metric


def analyze(model, groups, eval_fn, ratios, sen_file, criterion="l1", progress=None, extra=""):
    """Measure {group id: {ratio: relative loss}} for ``groups`` on ``model``, resumably.

    ``eval_fn()`` returns the metric of the model as it is (higher is better). Each group is
    pruned alone at each ratio, evaluated, and restored exactly (original parameters put back).
    ``progress(k, n, group_id, ratio)`` is called before each evaluation (group k of n).
    Points whose ratio removes no channel are recorded as 0 without an evaluation. An
    ``eval_fn.prepare()``, when there is one, is called once before the first group is pruned
    (:class:`~paddleseg.slim.fast_eval.SensitivityEvaluator` records its reference pass there);
    an ``eval_fn.for_group(group_id)``, when there is one, gives the evaluator of that group's
    points. In a job of several ranks every rank calls this with the same arguments and gets the same
    result; the points are shared out between them (see the module's doc).
    """
    ratios = sorted({float(r) for r in ratios})
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"sensitivity ratios must lie in (0, 1), got {ratios}")
    groups = list(groups)
    run = _Run(model, groups, eval_fn, ratios, sen_file, criterion, progress,
               fingerprint(model, groups, criterion, ratios, extra))
    if distributed.world_size() > 1:
        return run.shared()
    return run.alone()


# -- resuming and merging: the sensitivity file plus the part files of an interrupted job -------
PART_NAME = re.compile(r"\.part(\d+)\.json$")


def part_file(sen_file, rank):
    """Where rank ``rank`` of a job keeps the metrics it measured (always JSON)."""
    return f"{sen_file}.part{rank}.json"


def part_file_names(folder, sen_name):
    """Names of the part files of sensitivity file ``sen_name`` present in ``folder``."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.startswith(sen_name)
                  and PART_NAME.fullmatch(n[len(sen_name):]))


def part_files(sen_file):
    folder = os.path.dirname(os.path.abspath(sen_file))
    return [os.path.join(folder, n) for n in part_file_names(folder, os.path.basename(sen_file))]


def _mismatch(path, old_fp, fp):
    return SensitivityMismatch(f"{path} was made for a different setup "
                               f"({_describe_difference(old_fp or {}, fp)}); "
                               "delete it or choose another file")


def _checked(path, fp):
    data = load(path)
    if data is not None and data.get("fingerprint") != fp:
        raise _mismatch(path, data.get("fingerprint"), fp)
    return data


def _load_part(path, fp):
    """{group id: {ratio key: metric}} of a part file (SensitivityMismatch when unusable)."""
    try:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
    except (OSError, ValueError) as e:
        raise SensitivityMismatch(f"cannot read sensitivity part file {path}: "
                                  f"{type(e).__name__}: {e}") from None
    metrics = part.get("metrics") if isinstance(part, dict) else None
    if not isinstance(metrics, dict) or part.get("format") != FORMAT or not all(
            isinstance(v, dict) and all(isinstance(m, (int, float)) for m in v.values())
            for v in metrics.values()):
        raise SensitivityMismatch(f"{path} is not a sensitivity part file of this version")
    if part.get("fingerprint") != fp:
        raise _mismatch(path, part.get("fingerprint"), fp)
    return metrics


def _add_points(into, points):
    """Add {group: {key: value}} to ``into``; a point both have keeps ``into``'s value."""
    for gid, values in points.items():
        mine = into.setdefault(gid, {})
        for key, value in values.items():
            mine.setdefault(key, value)


def _empty(fp):
    return {"format": FORMAT, "fingerprint": fp, "base": None, "losses": {}}


def _resumed(sen_file, fp):
    """(the file's contents, the metrics of every part file beside it)."""
    data = _checked(sen_file, fp) or _empty(fp)
    metrics = {}
    for path in part_files(sen_file):
        _add_points(metrics, _load_part(path, fp))
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

    def __init__(self, model, groups, eval_fn, ratios, sen_file, criterion, progress, fp):
        self.model, self.groups, self.eval_fn = model, groups, eval_fn
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
        if not self.prepared and hasattr(self.eval_fn, "prepare"):
            self.eval_fn.prepare()
        self.prepared = True
        # an evaluator that picks its engine by group (predictor_eval.MixedEvaluator) says which
        evaluate = self.eval_fn.for_group(g.id) if hasattr(self.eval_fn, "for_group") else \
            self.eval_fn
        _, undo = _apply.prune(self.model, self.by_id, {g.id: r}, self.criterion)
        try:
            return float(evaluate())
        finally:
            undo.restore()

    def alone(self):
        """A single process: the file is rewritten after every point."""
        parts = part_files(self.sen_file)  # left by an interrupted job: folded in, then removed
        data, metrics = _resumed(self.sen_file, self.fp)
        changed = self._fill_unprunable(data) or bool(parts)
        if data["base"] is None:
            data["base"] = float(self.eval_fn())
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
            data["base"] = float(self.eval_fn())
            self._save(data)
            changed = True
        own_path = part_file(self.sen_file, rank)
        # this rank's part from an interrupted run is kept whole until the merged file has it
        own = {"format": FORMAT, "fingerprint": self.fp,
               "metrics": _load_part(own_path, self.fp) if os.path.isfile(own_path) else {}}
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
