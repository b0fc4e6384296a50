"""Save and load pruned models: ``model.pdparams`` plus ``prune_plan.json`` beside it.

The plan file records every conv / batch-norm layer's channel counts and parameter shapes
(keyed by dygraph layer path), so a model rebuilt from its config can be shrunk to the same
structure before the weights are loaded with a strict shape check.
"""
import json
import os

import paddle

from ..utils.checkpoint import check_state_dict, safe_load_state_dict
from ..utils.errors import UserError
from ..utils.fileio import atomic_path, write_json
from .apply import channel_plan, rebuild_from_plan

PLAN_FILE = "prune_plan.json"
PARAMS_FILE = "model.pdparams"
FORMAT = 1


def save_pruned(model, save_dir, info=None):
    """Write ``save_dir/model.pdparams`` and ``save_dir/prune_plan.json``; returns save_dir.

    ``info``: JSON-serialisable extras stored in the plan (ratios, criterion, FLOPs, ...).
    """
    os.makedirs(save_dir, exist_ok=True)
    with atomic_path(os.path.join(save_dir, PARAMS_FILE)) as tmp:
        paddle.save(model.state_dict(), tmp)
    write_plan(model, os.path.join(save_dir, PLAN_FILE), info)
    return save_dir


def write_plan(model, path, info=None):
    """Write the channel plan of ``model`` (as pruned now) to ``path``."""
    plan = {"format": FORMAT, "model": type(model).__name__, "layers": channel_plan(model)}
    if info:
        plan["info"] = info
    write_json(path, plan)


def _paths(path):
    if os.path.isdir(path):
        return os.path.join(path, PARAMS_FILE), os.path.join(path, PLAN_FILE)
    return path, os.path.join(os.path.dirname(path), PLAN_FILE)


def read_plan(path):
    """The prune plan stored with a checkpoint (dir or .pdparams path), or None if unpruned."""
    plan_file = _paths(path)[1]
    if not os.path.exists(plan_file):
        return None
    try:
        with open(plan_file, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(f"cannot read the prune plan {plan_file}: {type(e).__name__}: {e}") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT \
            or not isinstance(plan.get("layers"), dict) \
            or not all(map(_well_formed_entry, plan["layers"].values())):
        raise UserError(f"{plan_file} is not a prune plan this version can read")
    return plan


def _well_formed_entry(entry):
    """What rebuild_from_plan reads from one layer's entry (see apply.channel_plan)."""
    def ints(values):
        return isinstance(values, list) and all(type(v) is int and v > 0 for v in values)
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) \
            or not isinstance(entry.get("params"), dict) \
            or not all(ints(shape) for shape in entry["params"].values()):
        return False
    keys = ("in_channels", "out_channels", "groups") if "in_channels" in entry else ("num_features",)
    return ints([entry.get(k) for k in keys])


def load_pruned(model, path):
    """Shrink ``model`` (freshly built) to the saved plan and load the weights strictly.

    ``path``: the directory written by :func:`save_pruned` or its ``model.pdparams``. Without a
    plan file beside the weights the checkpoint is taken as unpruned. Returns the plan or None.
    """
    params_file, _ = _paths(path)
    if not os.path.exists(params_file):
        raise UserError(f"no model weights at {params_file}")
    plan = read_plan(path)
    if plan is not None:
        if plan.get("model") not in (None, type(model).__name__):
            raise UserError(f"the prune plan at {path} is for a {plan['model']}, "
                            f"not a {type(model).__name__}")
        try:
            rebuild_from_plan(model, plan["layers"])
        except ValueError as e:
            raise UserError(str(e)) from None
    state = safe_load_state_dict(params_file)
    check_state_dict(model, state, params_file)
    model.set_state_dict(state)
    return plan
