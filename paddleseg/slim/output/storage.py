"""Save and load pruned models.

A pruned model's ``model.pdparams`` carries its layer shapes and pruning facts (see
:mod:`paddleseg.utils.checkpoint`), so that one file restores it anywhere: ``train.py``,
``val.py`` and ``export.py`` load it like any checkpoint. These are the engine's names for
that, plus the pruning facts recorded on the model.
"""
import json
import os
import shutil

from ...utils import logger, structure
from ...utils.checkpoint import load_checkpoint, save_model_state
from ...utils.fileio import atomic_path

PARAMS_FILE = "model.pdparams"


def read_state(path, key, stale):
    """The JSON state file of a killed run at ``path`` when its ``fingerprint`` is ``key``;
    else None: missing or unreadable, or made by a run with other options (then the ``stale``
    warning is logged)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if state.get("fingerprint") != key:
        logger.warning(stale)
        return None
    return state


def save_pruned(model, save_dir, info=None):
    """Write ``save_dir/model.pdparams`` with the model's layer shapes and ``info`` (criterion,
    ratio, FLOPs, ...: JSON-serialisable) inside; returns save_dir."""
    structure.mark_pruned(model, {**(structure.pruned_info(model) or {}), **(info or {})})
    os.makedirs(save_dir, exist_ok=True)
    with atomic_path(os.path.join(save_dir, PARAMS_FILE)) as tmp:
        save_model_state(model, tmp)
    return save_dir


def load_pruned(model, path):
    """Shrink ``model`` (freshly built) to the saved shapes and load the weights strictly.
    Returns the structure record, or None for an unpruned checkpoint (then loaded as is)."""
    return load_checkpoint(model, path)


def keep_only_step(folder, *keep):
    """Remove ``folder``'s ``step_N`` folders except those named in ``keep`` (none: all): a
    killed run's state names the ones it resumes from."""
    for name in os.listdir(folder):
        if name.startswith("step_") and name not in keep:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
