"""A model's layer shapes, and replaying them on a freshly built model.

A pruned model is the config's model with narrower convolutions and batch norms. Its checkpoint
carries those shapes (see :mod:`paddleseg.utils.checkpoint`), and loading it first shrinks a
freshly built model to them, so ``train.py``, ``val.py`` and ``export.py`` read a pruned
checkpoint like any other, without the pruning engine. This module is that replay: it lives
with the checkpoint code (``core`` never imports ``slim``); ``slim`` records the shapes with it
and reuses its parameter-replacement helpers.
"""
import paddle
import paddle.nn as nn

from .errors import UserError

CONV_TYPES = (nn.Conv2D, nn.Conv2DTranspose)
try:  # BatchNorm2D, SyncBatchNorm, ... and the older nn.BatchNorm
    from paddle.nn.layer.norm import _BatchNormBase
    BN_TYPES = (_BatchNormBase, nn.BatchNorm)
except ImportError:  # pragma: no cover
    BN_TYPES = (nn.BatchNorm2D, nn.SyncBatchNorm, nn.BatchNorm)

# Shrinking sets private layer attributes (_in_channels, _op_type, _num_features ...) that are
# Paddle 2.6's; the pruning engine also reads its old-IR op names. Paddle 3 differs in both.
SUPPORTED_PADDLE = "2.6"
FORMAT = 1


class UnsupportedPaddle(UserError):
    """The installed Paddle is not the one pruned models are rebuilt (and pruned) with."""


class StructureError(UserError):
    """Saved layer shapes that do not fit the model built from the config."""


def check_paddle_version(version=None):
    """Refuse any Paddle but 2.6.x (develop builds report 0.0.0 and are refused too)."""
    version = paddle.__version__ if version is None else version
    if version.split(".")[:2] != SUPPORTED_PADDLE.split("."):
        raise UnsupportedPaddle(
            f"pruned models need PaddlePaddle {SUPPORTED_PADDLE}.x (the engine reads Paddle "
            f"{SUPPORTED_PADDLE}'s static-graph op names and private layer attributes), "
            f"found {version}")


class Undo:
    """Records replaced parameters and attributes; ``restore()`` puts them back."""

    def __init__(self):
        self.steps = []

    def set_attr(self, layer, name, value):
        self.steps.append((layer, name, getattr(layer, name)))
        setattr(layer, name, value)

    def restore(self):
        for layer, name, old in reversed(self.steps):
            setattr(layer, name, old)
        self.steps = []


def new_param(old, value):
    """A new parameter holding ``value`` with the optimizer settings of ``old``."""
    attr = paddle.ParamAttr(
        initializer=nn.initializer.Constant(0.0),
        learning_rate=(getattr(old, "optimize_attr", None) or {}).get("learning_rate", 1.0),
        regularizer=getattr(old, "regularizer", None),
        trainable=getattr(old, "trainable", True),
        do_model_average=getattr(old, "do_model_average", None),
        need_clip=getattr(old, "need_clip", True))
    new = paddle.create_parameter(list(value.shape), old.dtype, attr=attr)
    new.set_value(value)
    new.stop_gradient = old.stop_gradient
    return new


def renew_parameters(model):
    """Give every parameter of ``model`` a new tensor with the same value and settings. A model
    trained under paddle.DataParallel keeps that wrapper's gradient hooks on its parameters; a
    second DataParallel over it would also run the first one's hooks, whose reducer is gone by
    then (a segmentation fault in Paddle 2.6)."""
    for layer in model.sublayers(include_self=True):
        for name, param in list(layer._parameters.items()):
            if param is not None:
                setattr(layer, name, new_param(param, param.numpy()))


def replace_param(layer, name, value, undo):
    undo.set_attr(layer, name, new_param(getattr(layer, name), value))


def refresh_conv_kernel(layer, undo):
    """Re-derive Conv2D's kernel choice (depthwise or not) the way its constructor does."""
    if not isinstance(layer, nn.Conv2D):
        return      # Conv2DTranspose decides at call time
    cin, cout, groups = layer._in_channels, layer._out_channels, layer._groups
    depthwise = cin == groups and cin != 1 and cout % cin == 0
    op_type = "depthwise_conv2d" if depthwise else "conv2d"
    if op_type == layer._op_type:
        return
    if depthwise:
        use_cudnn = paddle.is_compiled_with_rocm()
    else:
        use_cudnn = paddle.is_compiled_with_cuda() and \
            paddle.device.get_cudnn_version() is not None and \
            not paddle.get_flags("FLAGS_conv2d_disable_cudnn")["FLAGS_conv2d_disable_cudnn"]
    undo.set_attr(layer, "_op_type", op_type)
    undo.set_attr(layer, "_use_cudnn", use_cudnn)


def layer_shapes(model):
    """{layer path: channel counts and parameter shapes} of every conv and batch norm layer."""
    shapes = {}
    for path, layer in model.named_sublayers():
        if isinstance(layer, CONV_TYPES):
            entry = {"type": type(layer).__name__, "in_channels": int(layer._in_channels),
                     "out_channels": int(layer._out_channels), "groups": int(layer._groups)}
        elif isinstance(layer, BN_TYPES):
            entry = {"type": type(layer).__name__, "num_features": int(layer.weight.shape[0])}
        else:
            continue
        entry["params"] = {name: [int(v) for v in p.shape]
                           for name, p in layer._parameters.items() if p is not None}
        shapes[path] = entry
    return shapes


def well_formed(structure):
    """Whether ``structure`` (as :func:`describe` writes it) has what :func:`resize_to` reads."""
    def ints(values):
        return isinstance(values, list) and all(type(v) is int and v > 0 for v in values)

    def entry_ok(entry):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) \
                or not isinstance(entry.get("params"), dict) \
                or not all(ints(shape) for shape in entry["params"].values()):
            return False
        keys = ("in_channels", "out_channels", "groups") if "in_channels" in entry else ("num_features",)
        return ints([entry.get(k) for k in keys])

    return isinstance(structure, dict) and structure.get("format") == FORMAT \
        and isinstance(structure.get("layers"), dict) \
        and all(map(entry_ok, structure["layers"].values()))


def describe(model, info=None):
    """The record a pruned checkpoint carries: model type, layer shapes and ``info`` (the
    pruning facts: criterion, ratio, FLOPs before/after, ...)."""
    return {"format": FORMAT, "model": type(model).__name__, "layers": layer_shapes(model),
            "info": dict(info or {})}


def resize_to(model, structure, source="the checkpoint"):
    """Shrink a freshly built ``model`` to the layer shapes in ``structure`` (see
    :func:`describe`). The leading channels are kept as placeholders for the checkpoint's
    weights to overwrite. Raises :class:`StructureError` when the shapes do not fit."""
    check_paddle_version()
    if structure.get("model") not in (None, type(model).__name__):
        raise StructureError(f"{source} holds a pruned {structure['model']}, but the config "
                             f"builds a {type(model).__name__}")
    layers = dict(model.named_sublayers())
    undo = Undo()
    for path, entry in structure["layers"].items():
        layer = layers.get(path)
        if layer is None or type(layer).__name__ != entry["type"]:
            raise StructureError(f"{source} names {entry['type']} {path!r}, which this model does "
                                 "not have: it was saved from another model or config")
        for name, shape in entry["params"].items():
            param = getattr(layer, name, None)
            if param is None or len(param.shape) != len(shape) or \
                    any(s > o for s, o in zip(shape, param.shape)):
                raise StructureError(f"{source}: shape {shape} of {path}.{name} does not fit the "
                                     f"model's {None if param is None else list(param.shape)}")
            if list(param.shape) != list(shape):
                replace_param(layer, name, param.numpy()[tuple(slice(0, s) for s in shape)], undo)
        if isinstance(layer, CONV_TYPES):
            for attr, key in (("_in_channels", "in_channels"), ("_out_channels", "out_channels"),
                              ("_groups", "groups")):
                if getattr(layer, attr) != entry[key]:
                    undo.set_attr(layer, attr, entry[key])
            refresh_conv_kernel(layer, undo)
        elif hasattr(layer, "_num_features"):
            layer._num_features = entry["num_features"]
    mark_pruned(model, structure.get("info"))
    return model


# The pruning facts ride on the model object between loading (or pruning) and saving, so every
# checkpoint and export of a pruned model carries them without the callers passing them along.
_PRUNED_ATTR = "_pruned_structure_info"


def mark_pruned(model, info=None):
    object.__setattr__(model, _PRUNED_ATTR, dict(info or {}))


def pruned_info(model):
    """The pruning facts of a pruned model (a dict, possibly empty), or None when unpruned."""
    return getattr(model, _PRUNED_ATTR, None)
