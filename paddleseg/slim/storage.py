"""Save and load pruned models: ``model.pdparams`` plus ``prune_plan.json`` beside it.

The plan file records every conv / batch-norm layer's channel counts and parameter shapes
(keyed by dygraph layer path), so a model rebuilt from its config can be shrunk to the same
structure before the weights are loaded with a strict shape check.
"""
import json
import os

import paddle

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
    plan = {"format": FORMAT, "model": type(model).__name__, "layers": channel_plan(model)}
    if info:
        plan["info"] = info
    write_json(os.path.join(save_dir, PLAN_FILE), plan)
    return save_dir


def _paths(path):
    if os.path.isdir(path):
        return os.path.join(path, PARAMS_FILE), os.path.join(path, PLAN_FILE)
    return path, os.path.join(os.path.dirname(path), PLAN_FILE)


def read_plan(path):
    """The prune plan stored with a checkpoint (dir or .pdparams path), or None if unpruned."""
    plan_file = _paths(path)[1]
    if not os.path.exists(plan_file):
        return None
    with open(plan_file, encoding="utf-8") as f:
        plan = json.load(f)
    if plan.get("format") != FORMAT or "layers" not in plan:
        raise UserError(f"{plan_file} is not a prune plan this version can read")
    return plan


def check_state_matches(model, state, source):
    """Raise unless ``state`` has exactly the model's keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in state and list(state[k].shape) != list(own[k].shape)]
    if missing or extra or shapes:
        lines = [f"{source} does not match the model structure"]
        if missing:
            lines.append(f"missing {len(missing)} keys, e.g. {missing[:3]}")
        if extra:
            lines.append(f"unexpected {len(extra)} keys, e.g. {extra[:3]}")
        if shapes:
            lines.append(f"{len(shapes)} shape mismatches, e.g. {shapes[:3]}")
        raise UserError("; ".join(lines))


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
    state = paddle.load(params_file)
    check_state_matches(model, state, params_file)
    model.set_state_dict(state)
    return plan
