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
"""
import json
import os
import pickle

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
    Points whose ratio removes no channel are recorded as 0 without an evaluation.
    """
    ratios = sorted({float(r) for r in ratios})
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"sensitivity ratios must lie in (0, 1), got {ratios}")
    groups = list(groups)
    fp = fingerprint(model, groups, criterion, ratios, extra)
    data = load(sen_file)
    if data is not None and data.get("fingerprint") != fp:
        diff = _describe_difference(data.get("fingerprint", {}), fp)
        raise SensitivityMismatch(f"{sen_file} was made for a different setup ({diff}); "
                                  "delete it or choose another file")
    if data is None:
        data = {"format": FORMAT, "fingerprint": fp, "base": None, "losses": {}}
    if data["base"] is None:
        data["base"] = float(eval_fn())
        save(sen_file, data)
    base = data["base"]
    by_id = {g.id: g for g in groups}
    for k, g in enumerate(groups, 1):
        done = data["losses"].setdefault(g.id, {})
        for r in ratios:
            key = ratio_key(r)
            if key in done:
                continue
            if num_pruned(g.channels, r) == 0:
                done[key] = 0.0
            else:
                if progress is not None:
                    progress(k, len(groups), g.id, r)
                _, undo = _apply.prune(model, by_id, {g.id: r}, criterion)
                try:
                    metric = float(eval_fn())
                finally:
                    undo.restore()
                done[key] = relative_loss(base, metric)
            save(sen_file, data)
    return _losses_of(data, groups, ratios)
