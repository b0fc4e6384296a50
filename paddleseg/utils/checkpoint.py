"""Model and optimizer state on disk, checked against the model before loading."""
import os

import paddle

from .errors import UserError
from .fileio import atomic_dir
from . import logger


class CheckpointError(UserError):
    pass


def read_state_dict(path):
    if not path or not os.path.exists(path):
        raise CheckpointError(f"model file not found: {path}")
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.pdparams")
        if not os.path.isfile(candidate):
            raise CheckpointError(f"{path} is a directory without model.pdparams")
        path = candidate
    try:
        return paddle.load(path)
    except Exception as e:  # paddle raises many kinds on a corrupt or foreign file
        raise CheckpointError(f"cannot read {path} as Paddle parameters: {type(e).__name__}: {e}") from None


def check_state_dict(model, state, path):
    """Refuse a checkpoint whose keys or shapes do not fit ``model``; returns nothing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [(k, list(state[k].shape), list(own[k].shape)) for k in own
                  if k in state and list(state[k].shape) != list(own[k].shape)]
    if len(missing) == len(own):
        raise CheckpointError(f"{path} does not belong to this model: none of its "
                              f"{len(own)} parameter names match (wrong --config or --model_path?)")
    if missing or mismatched:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(mismatched)} with other shapes (e.g. {mismatched[0][0]}: file "
                  f"{mismatched[0][1]} vs model {mismatched[0][2]})")
        hint = " - a pruned checkpoint needs its prune_plan.json beside it" if mismatched else ""
        raise CheckpointError(f"{path} does not fit the model built from the config: {detail}{hint}")


def load_model_weights(model, path):
    """Strictly load a checkpoint (file or ``iter_N`` dir) into ``model``."""
    state = read_state_dict(path)
    check_state_dict(model, state, path)
    model.set_state_dict(state)
    return model


def load_pretrained_model(model, pretrained):
    """Lenient load for ``pretrained`` (backbone) weights: matching keys only, with a warning."""
    if not pretrained:
        return model
    if pretrained.startswith(("http://", "https://")):
        raise CheckpointError(f"pretrained URL {pretrained} cannot be downloaded here; "
                              "download it yourself and give its local path")
    state = read_state_dict(pretrained)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and list(v.shape) == list(own[k].shape)}
    if not usable:
        raise CheckpointError(f"pretrained weights {pretrained} share no parameter with the model")
    model.set_state_dict(usable)
    logger.info(f"loaded {len(usable)}/{len(own)} pretrained tensors from {pretrained}")
    return model


def save_checkpoint(save_dir, model, optimizer=None, extra_files=None):
    """Write ``save_dir/model.pdparams`` (+ ``model.pdopt``) atomically as a directory."""
    with atomic_dir(save_dir) as tmp:
        paddle.save(model.state_dict(), os.path.join(tmp, "model.pdparams"))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), os.path.join(tmp, "model.pdopt"))
        for name, writer in (extra_files or {}).items():
            writer(os.path.join(tmp, name))

