"""The sensitivity file: its format, its fingerprint, and the part files of a job's ranks.

A sensitivity file is JSON: ``{"format": 2, "fingerprint": {...}, "base": metric, "losses":
{group id: {ratio key: relative loss}}}``. The fingerprint says what was measured, as fields:
the model class, group ids and sizes, criterion, ratio grid, ``setup`` (the caller's facts, such
as the config digest, the weights' digest and the number of eval images) and ``evaluator``
(what evaluated the points: see :mod:`.evaluators`). A file with another fingerprint is
refused, never silently reused. Files of format 1 (whose setup and evaluator were one prose
string) are read by converting that string once, so an analysis begun before resumes.

Writes are durable (temporary name, flush, rename). A ``.pickle`` / ``.pkl`` name (PaddleSlim's
habit) is honoured: the same content is pickled, and read back through an unpickler that
builds plain data only, so a crafted file cannot run code. PaddleSlim's own sensitivity pickles
are recognised and refused with a reason: they key losses by parameter names
(``conv2d_12.w_0``), which do not identify this engine's groups.

Part files (``SEN_FILE.partR.json``, always JSON) hold the metrics rank R of a job measured,
with the same fingerprint.
"""
import json
import math
import os
import pickle
import re

from ...utils.checkpoint import ForbiddenPickleGlobal, restricted_unpickle
from ...utils.errors import UserError
from ...utils.fileio import not_a_readable_file, write_durably

FORMAT = 2
# format 1 kept the caller's setup and the evaluator as one string, e.g. "config 0123abcd;
# weights none; eval images 2; evaluated in Paddle Inference predictors for the first 5 groups"
LEGACY_EXTRA = re.compile(r"config (?P<config>\w+); weights (?P<weights>\w+); "
                          r"eval images (?P<eval_images>\d+)"
                          r"(?P<predictors>; evaluated in Paddle Inference predictors"
                          r"(?: for the first (?P<predictor_groups>\d+) groups)?)?"
                          r"(?P<paddleslim>; engine paddleslim)?")
METRIC_SLACK = 1e-9   # a metric (mIoU) lies in [0, 1]; its relative loss follows from the base


class SensitivityMismatch(UserError):
    """The sensitivity file cannot be used: made for another model, grid, criterion or eval
    setup, damaged, or not a sensitivity file of this engine."""


def fingerprint(model, groups, criterion, ratios, setup=None, evaluator=None):
    """What makes two analyses' points interchangeable. ``setup``: the caller's facts (plain
    JSON values); ``evaluator``: the evaluator's facts (:attr:`.evaluators.Evaluator.facts`)."""
    return {
        "model": type(model).__name__,
        "groups": [[g.id, int(g.channels)] for g in sorted(groups, key=lambda g: g.id)],
        "criterion": criterion,
        "ratios": [ratio_key(r) for r in ratios],
        "setup": dict(setup or {}),
        "evaluator": dict(evaluator or {}),
    }


def upgraded_fingerprint(fp):
    """A format-1 fingerprint in format 2's fields; its prose ``extra`` is read once here. An
    ``extra`` this project never wrote is kept as ``setup: {"extra": ...}``, which matches no
    new analysis, so such a file is refused with the difference named."""
    fp = dict(fp)
    extra = str(fp.pop("extra", ""))
    found = LEGACY_EXTRA.fullmatch(extra)
    if not found:
        return {**fp, "setup": {"extra": extra}, "evaluator": {}}
    setup = {"config": found["config"], "weights": found["weights"],
             "eval_images": int(found["eval_images"])}
    if found["paddleslim"]:
        evaluator = {"name": "paddleslim"}
    elif not found["predictors"]:
        evaluator = {"name": "dygraph"}
    elif found["predictor_groups"] is None:
        evaluator = {"name": "predictor"}
    else:
        evaluator = {"name": "mixed", "predictor_groups": int(found["predictor_groups"])}
    return {**fp, "setup": setup, "evaluator": evaluator}


def ratio_key(r):
    return f"{float(r):.6g}"


def describe_difference(old, new):
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
        with open(sen_file, "rb") as f:
            raw = f.read()
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:   # binary bytes, or text in another encoding (UTF-16)
            why = "its bytes are not UTF-8 text"
        except ValueError as e:
            why = f"{type(e).__name__}: {e}"
        raise SensitivityMismatch(f"{sen_file} is not a JSON sensitivity file ({why}); delete it "
                                  "or choose another --sen_file to measure afresh")
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
    return (isinstance(data, dict) and data.get("format") in (1, FORMAT)
            and isinstance(data.get("fingerprint"), dict)
            and _is_number(data.get("base"), none_ok=True)
            and isinstance(data.get("losses"), dict)
            and all(isinstance(v, dict) for v in data["losses"].values()))


def _is_number(value, none_ok=False):
    return (value is None and none_ok) or (isinstance(value, (int, float))
                                           and not isinstance(value, bool))


def metric_of(base, loss):
    """The metric a relative loss stands for (the inverse of ``relative_loss``)."""
    return base - loss * base if base else -loss


def first_bad_value(data):
    """A description of the first value in a sensitivity file's contents that no analysis
    writes (not finite, or a metric outside [0, 1]), or None."""
    base = data["base"]
    if base is not None and not (math.isfinite(base) and -METRIC_SLACK <= base <= 1 + METRIC_SLACK):
        return f"base metric {base!r} (must be a finite mIoU in [0, 1])"
    for gid, points in data["losses"].items():
        for key, loss in points.items():
            if not _is_number(loss) or not math.isfinite(loss):
                return f"loss {loss!r} of group {gid!r} at ratio {key} (must be a finite number)"
            if base is not None and not -METRIC_SLACK <= metric_of(base, loss) <= 1 + METRIC_SLACK:
                return (f"loss {loss!r} of group {gid!r} at ratio {key} (it puts the metric at "
                        f"{metric_of(base, loss):.4g}, outside [0, 1], with base {base:.4g})")
    return None


def load(sen_file):
    """The contents of a sensitivity file, or None if there is none; SensitivityMismatch
    (one line) for a file that is damaged, refused or of another kind."""
    if not os.path.exists(sen_file):
        return None
    problem = not_a_readable_file(sen_file, "--sen_file", "name a sensitivity file, or a path "
                                  "that does not exist yet to measure one there")
    if problem:
        raise SensitivityMismatch(problem)
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
    bad = first_bad_value(data)
    if bad:
        raise SensitivityMismatch(f"{sen_file} holds a value no analysis writes: {bad}; delete "
                                  "the file (or choose another --sen_file) to measure afresh")
    if data["format"] == 1:
        data = {**data, "format": FORMAT, "fingerprint": upgraded_fingerprint(data["fingerprint"])}
    return data


def recorded_evaluator(sen_file):
    """The evaluator facts of the fingerprint an existing sensitivity file (or, before the
    merge, one of its part files) was begun with; None when there is neither or it cannot be
    read (the analysis itself then says what is wrong)."""
    try:
        data = load(sen_file)
    except SensitivityMismatch:
        return None
    if data is not None:
        return data["fingerprint"].get("evaluator")
    for path in part_files(sen_file):
        if not os.path.isfile(path):   # a FIFO or a device: never opened
            continue
        try:
            with open(path, encoding="utf-8") as f:
                part = json.load(f)
            fp = part["fingerprint"]
            return (upgraded_fingerprint(fp) if part.get("format") == 1 else fp)["evaluator"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None



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


def mismatch(path, old_fp, fp):
    return SensitivityMismatch(f"{path} was made for a different setup "
                               f"({describe_difference(old_fp or {}, fp)}); "
                               "delete it or choose another file")


def load_matching(path, fp):
    """The contents of sensitivity file ``path`` (None if there is none), refused unless made
    with fingerprint ``fp``."""
    data = load(path)
    if data is not None and data.get("fingerprint") != fp:
        raise mismatch(path, data.get("fingerprint"), fp)
    return data


def load_part(path, fp):
    """{group id: {ratio key: metric}} of a part file (SensitivityMismatch when unusable)."""
    if not os.path.isfile(path):   # a FIFO or a device: open() could block or never end
        raise SensitivityMismatch(f"sensitivity part file {path} is not a regular file; "
                                  "delete it")
    try:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
    except (OSError, ValueError) as e:
        raise SensitivityMismatch(f"cannot read sensitivity part file {path}: "
                                  f"{type(e).__name__}: {e}") from None
    metrics = part.get("metrics") if isinstance(part, dict) else None
    if not isinstance(metrics, dict) or part.get("format") not in (1, FORMAT) or not all(
            isinstance(v, dict) and all(_is_number(m) and math.isfinite(m) for m in v.values())
            for v in metrics.values()):
        raise SensitivityMismatch(f"{path} is not a sensitivity part file of this version")
    recorded = part.get("fingerprint")
    if part["format"] == 1 and isinstance(recorded, dict):
        recorded = upgraded_fingerprint(recorded)
    if recorded != fp:
        raise mismatch(path, recorded, fp)
    return metrics


def new_contents(fp):
    return {"format": FORMAT, "fingerprint": fp, "base": None, "losses": {}}

