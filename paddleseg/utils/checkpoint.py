"""Model and optimizer state on disk, checked against the model before loading.

Every ``.pdparams`` / ``.pdopt`` is read through :func:`safe_load_state_dict`: Paddle's format is
a pickle, and a plain unpickler runs whatever code a crafted file names.
"""
import io
import json
import os
import pickle

import numpy as np
import paddle

from . import structure
from .download import fetch_pretrained, is_url
from .errors import UserError
from .fileio import atomic_dir
from . import logger


class CheckpointError(UserError):
    pass


class ForbiddenPickleGlobal(pickle.UnpicklingError):
    """A pickle names a callable that no Paddle state dict (or plain data file) uses."""


def _latin1_bytes(text, encoding):
    # pickle protocol 2 (paddle.save(..., protocol=2)) writes bytes as _codecs.encode(s, 'latin1')
    if encoding not in ("latin1", "latin-1"):
        raise ForbiddenPickleGlobal(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _allowed_globals():
    import collections
    import numpy as np
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("collections", "OrderedDict"): collections.OrderedDict,
               ("_codecs", "encode"): _latin1_bytes}
    # numpy >= 2 pickles its array helpers from numpy._core; files from either load here
    reconstruct, scalar = np.core.multiarray._reconstruct, np.core.multiarray.scalar
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _StateDictUnpickler(pickle.Unpickler):
    """Admits only what paddle.save writes for a state dict: dicts, lists, tuples, str, bytes,
    numbers, None and numpy arrays, dtypes and scalars. Any other callable is refused before it
    is looked up, so nothing in the file runs."""
    ALLOWED = None

    def find_class(self, module, name):
        if _StateDictUnpickler.ALLOWED is None:
            _StateDictUnpickler.ALLOWED = _allowed_globals()
        try:
            return _StateDictUnpickler.ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenPickleGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise ForbiddenPickleGlobal("a persistent id")


def restricted_unpickle(data):
    """``pickle.loads`` limited to plain data and numpy arrays (see :class:`_StateDictUnpickler`);
    raises ``pickle.UnpicklingError`` for anything else."""
    return _StateDictUnpickler(io.BytesIO(data), encoding="latin1").load()


# the numpy dtypes a Paddle tensor can hold: paddle.load fails on any other array with a raw
# InvalidArgument that names neither the file nor the entry
PADDLE_DTYPES = frozenset(("bool", "float16", "float32", "float64", "int8", "int16", "int32",
                           "int64", "uint8", "uint16", "complex64", "complex128"))


def dtype_name(dtype):
    """``float32`` for numpy's ``float32`` and Paddle's ``paddle.float32`` alike."""
    return str(dtype).replace("paddle.", "")


def _check_array_dtypes(content, path, expected=None, prefix=""):
    """CheckpointError naming the first array of ``content`` (nested dicts too) that no Paddle
    tensor can hold (objects, strings, ...); ``expected`` maps names to the model's dtypes."""
    for name, value in content.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):
            _check_array_dtypes(value, path, None, prefix=f"{full}.")
        elif isinstance(value, np.ndarray) and value.dtype.name not in PADDLE_DTYPES:
            want = (expected or {}).get(full)
            raise CheckpointError(f"{path}: parameter {full} has dtype {value.dtype}, expected "
                                  + (dtype_name(want) if want is not None else
                                     "a numeric tensor (float32 for weights)"))


def safe_load_state_dict(path, expected=None):
    """``paddle.load(path)`` for a state dict (``.pdparams``) or optimizer state (``.pdopt``),
    refusing any file that would run code: ``not a Paddle checkpoint: PATH (...)``, and any
    array no Paddle tensor holds (``expected``: the model's dtypes by name, for the message)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        content = restricted_unpickle(data)
    except ForbiddenPickleGlobal as e:
        raise CheckpointError(f"not a Paddle checkpoint: {path} (it would call {e}, which no "
                              "Paddle state dict does; refused without running it)") from None
    except Exception as e:  # truncated or foreign bytes fail in many ways
        raise CheckpointError(f"not a Paddle checkpoint: {path} (cannot read it as Paddle "
                              f"parameters: {type(e).__name__}: {e})") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"not a Paddle checkpoint: {path} (it holds a "
                              f"{type(content).__name__}, not a state dict)")
    _check_array_dtypes(content, path, expected)
    del content
    # These bytes are now known to name nothing beyond the globals above, so paddle's own
    # loader may read them: it restores tensors and their parameter names as paddle.load does.
    return paddle.load(io.BytesIO(data))


def params_file(path):
    """The ``.pdparams`` a ``--model_path`` names: the file, or ``model.pdparams`` in a folder."""
    if not path or not os.path.exists(path):
        raise CheckpointError(f"model file not found: {path}")
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.pdparams")
        if not os.path.isfile(candidate):
            raise CheckpointError(f"{path} is a directory without model.pdparams")
        return candidate
    return path


def read_checkpoint(path, expected=None):
    """(state dict, pruned-structure record or None) of a checkpoint file or folder;
    ``expected``: the model's dtypes by parameter name, for error messages."""
    path = params_file(path)
    state = safe_load_state_dict(path, expected)
    return state, _pop_structure(state, path)


def read_state_dict(path, expected=None):
    """The tensors of a checkpoint file or folder (a pruned one's structure record left out)."""
    return read_checkpoint(path, expected)[0]


def model_dtypes(model):
    """{parameter name: dtype} of ``model``'s state dict."""
    return {k: v.dtype for k, v in model.state_dict().items()}


def check_values(own, state, path, names=None):
    """CheckpointError naming the file and the first parameter (of ``names``, default all of
    ``own``'s found in ``state``) that is not a tensor of the model's dtype, or that holds NaN
    or infinite values: such weights load without complaint and evaluate to nonsense."""
    for k in (names if names is not None else [k for k in own if k in state]):
        value, want = state[k], own[k].dtype
        if not hasattr(value, "dtype") or not hasattr(value, "shape"):
            raise CheckpointError(f"{path}: parameter {k} is a {type(value).__name__}, expected "
                                  f"a {dtype_name(want)} tensor")
        if dtype_name(value.dtype) != dtype_name(want):
            raise CheckpointError(f"{path}: parameter {k} has dtype {dtype_name(value.dtype)}, "
                                  f"expected {dtype_name(want)}")
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise CheckpointError(f"{path}: parameter {k} holds {bad} of {array.size} values that "
                                  "are NaN or infinite (the weights are broken: a diverged "
                                  "training run?); use an earlier checkpoint")


# -- pruned checkpoints: the layer shapes travel inside model.pdparams ------------------------------
# A pruned model's checkpoint holds one extra entry: the JSON of its layer shapes and pruning
# facts (utils.structure.describe) as a uint8 tensor, so model.pdparams alone restores the
# pruned model wherever it is copied. Tools that load by parameter name (PaddleSeg's included)
# see one unexpected key and skip it.
STRUCTURE_KEY = "__pruned_structure__"
# before 0.2 the record was a prune_plan.json beside model.pdparams; such checkpoints still load
LEGACY_PLAN_FILE = "prune_plan.json"


def model_state(model):
    """``model.state_dict()``, plus the structure record when the model is a pruned one."""
    model = getattr(model, "_layers", model)  # a paddle.DataParallel wrapper's model
    state = model.state_dict()
    info = structure.pruned_info(model)
    if info is not None:
        record = json.dumps(structure.describe(model, info), sort_keys=True).encode("utf-8")
        state[STRUCTURE_KEY] = paddle.to_tensor(np.frombuffer(record, np.uint8).copy())
    return state


def save_model_state(model, path):
    """``paddle.save`` of :func:`model_state` (the caller makes the write atomic)."""
    paddle.save(model_state(model), path)


def _pop_structure(state, path):
    raw = state.pop(STRUCTURE_KEY, None)
    if raw is None:
        return _legacy_plan(path)
    try:
        data = raw.numpy() if hasattr(raw, "numpy") else np.asarray(raw)
        record = json.loads(data.astype(np.uint8).tobytes().decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: its pruned-structure record is damaged ({e})") from None
    if not structure.well_formed(record):
        raise CheckpointError(f"{path}: its pruned-structure record is not one this version "
                              "can read")
    return record


def _legacy_plan(path):
    plan_file = os.path.join(os.path.dirname(path), LEGACY_PLAN_FILE)
    if not os.path.isfile(plan_file):
        return None
    try:
        with open(plan_file, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise CheckpointError(f"cannot read the prune plan {plan_file}: {type(e).__name__}: {e}") from None
    if isinstance(plan, dict):
        plan.setdefault("info", {})
    if not structure.well_formed(plan):
        raise CheckpointError(f"{plan_file} is not a prune plan this version can read")
    return plan


def check_state_dict(model, state, path):
    """Refuse a checkpoint whose keys, dtypes or shapes do not fit ``model``, or whose values
    are not finite (:func:`check_values`); returns nothing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if len(missing) == len(own):
        raise CheckpointError(f"{path} does not belong to this model: none of its {len(state)} "
                              f"entries is named like one of the model's {len(own)} parameters "
                              "(wrong --config or --model_path?)")
    check_values(own, state, path)
    mismatched = [(k, list(state[k].shape), list(own[k].shape)) for k in own
                  if k in state and list(state[k].shape) != list(own[k].shape)]
    if missing or mismatched:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(mismatched)} with other shapes (e.g. {mismatched[0][0]}: file "
                  f"{mismatched[0][1]} vs model {mismatched[0][2]})")
        hint = (" - a pruned model's checkpoint carries its layer shapes: was this one saved "
                "without them?") if mismatched else ""
        raise CheckpointError(f"{path} does not fit the model built from the config: {detail}{hint}")


def load_checkpoint(model, path):
    """Strictly load a checkpoint (file or ``iter_N`` dir) into ``model``, freshly built from
    its config, and return its pruned-structure record (None when unpruned). A pruned
    checkpoint first shrinks the model to its saved layer shapes: this is the one place where
    pruned models are restored."""
    state, record = read_checkpoint(path, model_dtypes(model))
    source = params_file(path)
    if record is not None:
        structure.resize_to(model, record, source=source)
    check_state_dict(model, state, source)
    model.set_state_dict(state)
    return record


def load_model_weights(model, path):
    """:func:`load_checkpoint`, returning ``model``."""
    load_checkpoint(model, path)
    return model


def load_pretrained_model(model, pretrained):
    """Lenient load of ``pretrained`` weights (a .pdparams file, a folder holding model.pdparams,
    or an http(s) URL, downloaded once into the cache): tensors whose name and shape match are
    loaded, and one log line counts them and names the ones that were not."""
    if not pretrained:
        return model
    path = fetch_pretrained(pretrained) if is_url(pretrained) else pretrained
    try:
        state = read_state_dict(path, model_dtypes(model))
    except CheckpointError as e:
        if path is pretrained:
            raise
        raise CheckpointError(f"{e}; delete {os.path.dirname(path)} to download it again") from None
    own = model.state_dict()
    usable, skipped = match_state_dict(own, state)
    if not usable:
        raise CheckpointError(f"pretrained weights {pretrained} share no parameter with "
                              f"{type(model).__name__} ({skipped})")
    check_values(own, usable, pretrained, names=list(usable))
    model.set_state_dict({**own, **usable})  # complete: paddle warns once per absent key
    logger.info(f"loaded {len(usable)}/{len(own)} pretrained tensors into {type(model).__name__} "
                f"from {pretrained}" + (f"; not loaded: {skipped}" if skipped else ""))
    return model


def match_state_dict(own, state, shown=5):
    """(the tensors of ``state`` that fit ``own`` by name and shape, a short text naming the
    missing / unexpected / shape-mismatched ones, empty when all fit)."""
    def shape(v):  # a foreign file may hold plain values beside its arrays
        return list(getattr(v, "shape", [None]))

    usable = {k: v for k, v in state.items() if k in own and shape(v) == shape(own[k])}
    groups = [("missing", [k for k in own if k not in state]),
              ("unexpected", [k for k in state if k not in own]),
              ("shape mismatch", [f"{k} {shape(state[k])} vs {shape(own[k])}"
                                  for k in own if k in state and k not in usable])]

    def listed(items):
        more = f", ... {len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    return usable, "; ".join(f"{len(items)} {what} ({listed(items)})"
                             for what, items in groups if items)


# what a checkpoint folder of ours may hold: an older one is replaced, a folder with anything
# else is refused (never deleted)
CHECKPOINT_FILES = ("model.pdparams", "model.pdopt", "model_info.json", LEGACY_PLAN_FILE,
                    "train_state.json")


def save_checkpoint(save_dir, model, optimizer=None, extra_files=None):
    """Write ``save_dir/model.pdparams`` (+ ``model.pdopt``) atomically as a directory; a pruned
    model's weights carry its layer shapes (see :func:`model_state`)."""
    with atomic_dir(save_dir, own_names=CHECKPOINT_FILES + tuple(extra_files or ())) as tmp:
        save_model_state(model, os.path.join(tmp, "model.pdparams"))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), os.path.join(tmp, "model.pdopt"))
        for name, writer in (extra_files or {}).items():
            writer(os.path.join(tmp, name))



# -- where a resumed run continues: train_state.json beside model.pdopt --------------------------
TRAIN_STATE_FILE = "train_state.json"
TRAIN_STATE_KEYS = ("seed", "epoch", "batches_done")


def read_train_state(checkpoint_dir):
    """The {seed, epoch, batches_done} saved in ``checkpoint_dir`` (and ``ranks``, the number of
    processes that trained, when recorded), or None when the checkpoint has none (written
    before the file existed)."""
    path = os.path.join(checkpoint_dir, TRAIN_STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(state, dict) or not all(
            type(state.get(k)) is int and state[k] >= 0 for k in TRAIN_STATE_KEYS):
        raise CheckpointError(f"{path} is not a training state: it needs non-negative integers "
                              f"{', '.join(TRAIN_STATE_KEYS)}")
    out = {k: state[k] for k in TRAIN_STATE_KEYS}
    if type(state.get("ranks")) is int and state["ranks"] > 0:  # written by a data-parallel job
        out["ranks"] = state["ranks"]
    return out


def checkpoint_iteration(checkpoint_dir):
    """N of a ``save_dir/iter_N`` checkpoint directory."""
    name = os.path.basename(os.path.normpath(checkpoint_dir))
    if not name.startswith("iter_") or not name[5:].isdigit():
        raise CheckpointError(f"--resume_model must be a save_dir/iter_N directory, got {checkpoint_dir}")
    return int(name[5:])
