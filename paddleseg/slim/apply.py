"""Physically remove channels: slice Conv2D / Conv2DTranspose / BatchNorm parameters.

Removed channels are gone for good: each touched parameter is replaced by a new, smaller
parameter (no full-size backup is kept) and the layer's channel attributes are updated, so the
model trains, runs and exports (``paddle.jit.save``) like one built at the smaller size.
An :class:`Undo` record puts the original parameters back (used by the sensitivity analysis).

``channel_plan`` / ``rebuild_from_plan`` store and replay the resulting shapes so that a freshly
built model can load a pruned checkpoint.
"""
import numpy as np
import paddle
import paddle.nn as nn

from . import criteria as _criteria
from . import graph as _graph
from .dependency import BN, BN_TYPES, DW, IN, OUT

CONV_TYPES = (nn.Conv2D, nn.Conv2DTranspose)


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


def _new_param(old, value):
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


def _replace(layer, name, value, undo):
    undo.set_attr(layer, name, _new_param(getattr(layer, name), value))


def _take(layer, name, keep, axis, undo):
    p = getattr(layer, name, None)
    if p is None:
        return
    _replace(layer, name, np.take(p.numpy(), keep, axis=axis), undo)


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


def _shrink_conv(layer, rm, undo):
    transpose = isinstance(layer, nn.Conv2DTranspose)
    cin, cout, groups = layer._in_channels, layer._out_channels, layer._groups
    if rm[DW] is not None:
        if rm[IN] is not None or rm[OUT] is not None or groups != cin:
            raise RuntimeError(f"depthwise conv {layer.full_name()} pruned as a dense conv")
        mult = cout // cin
        keep_in = np.setdiff1d(np.arange(cin), rm[DW])
        keep_out = (keep_in[:, None] * mult + np.arange(mult)).ravel()
        _take(layer, "weight", keep_in if transpose else keep_out, 0, undo)
        undo.set_attr(layer, "_groups", len(keep_in))
    else:
        if groups != 1:
            raise RuntimeError(f"grouped conv {layer.full_name()} cannot be pruned")
        keep_in = np.setdiff1d(np.arange(cin), rm[IN] if rm[IN] is not None else [])
        keep_out = np.setdiff1d(np.arange(cout), rm[OUT] if rm[OUT] is not None else [])
        w = layer.weight.numpy()
        in_axis, out_axis = (0, 1) if transpose else (1, 0)
        if len(keep_in) < cin:
            w = np.take(w, keep_in, axis=in_axis)
        if len(keep_out) < cout:
            w = np.take(w, keep_out, axis=out_axis)
        _replace(layer, "weight", w, undo)
    if len(keep_out) < cout:
        _take(layer, "bias", keep_out, 0, undo)
    undo.set_attr(layer, "_in_channels", len(keep_in))
    undo.set_attr(layer, "_out_channels", len(keep_out))
    refresh_conv_kernel(layer, undo)


def _shrink_bn(layer, removed, undo):
    n = layer.weight.shape[0]
    keep = np.setdiff1d(np.arange(n), removed)
    for name in ("weight", "bias", "_mean", "_variance"):
        _take(layer, name, keep, 0, undo)
    if hasattr(layer, "_num_features"):
        undo.set_attr(layer, "_num_features", len(keep))


def layer_removals(groups, chosen):
    """{layer path: {role: sorted tensor channels to remove}} for {group id: space channels}."""
    out = {}
    for gid, idx in chosen.items():
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            continue
        for m in groups[gid].members:
            t = (m.offset + idx[:, None] * m.mult + np.arange(m.mult)).ravel()
            slot = out.setdefault(m.path, {OUT: None, IN: None, BN: None, DW: None})
            slot[m.role] = t if slot[m.role] is None else np.union1d(slot[m.role], t)
    return out


def remove_channels(layers, groups, chosen):
    """Remove the given space channels of each group from every member layer; returns Undo."""
    undo = Undo()
    try:
        for path, rm in layer_removals(groups, chosen).items():
            layer = layers[path]
            if isinstance(layer, CONV_TYPES):
                _shrink_conv(layer, rm, undo)
            elif isinstance(layer, BN_TYPES):
                _shrink_bn(layer, rm[BN], undo)
            else:
                raise RuntimeError(f"do not know how to prune layer {path} ({type(layer)})")
    except Exception:
        undo.restore()
        raise
    return undo


def check_fresh(groups, layers):
    """Refuse groups built on another version of the model (e.g. before a previous prune)."""
    for g in groups.values():
        for path in g.producers:
            layer = layers[path]
            n = layer.weight.shape[1 if isinstance(layer, nn.Conv2DTranspose) else 0]
            if n != g.channels:
                raise ValueError(
                    f"group {g.id} was built for {g.channels} channels but {path} has {n}: "
                    "rebuild the groups (build_groups) on the model as it is now")


def choose_channels(layers, groups, plan, criterion="l1"):
    """{group id: space channels to remove} for a plan {group id: ratio}.

    Every score is computed before anything is removed, so the order of groups does not matter.
    """
    chosen = {}
    for gid, ratio in plan.items():
        if gid not in groups:
            raise KeyError(f"no prunable group named {gid!r}")
        g = groups[gid]
        n = _criteria.num_pruned(g.channels, float(ratio))
        if n:
            chosen[gid] = _criteria.select(_criteria.importance(g, layers, criterion), n)
    return chosen


def prune(model, groups, plan, criterion="l1"):
    """Prune ``model`` in place by ``plan`` {group id: ratio}; returns (removed, Undo)."""
    layers = dict(model.named_sublayers(include_self=True))
    groups = groups if isinstance(groups, dict) else {g.id: g for g in groups}
    check_fresh({gid: groups[gid] for gid in plan if gid in groups}, layers)
    chosen = choose_channels(layers, groups, plan, criterion)
    undo = remove_channels(layers, groups, chosen)
    return {gid: len(idx) for gid, idx in chosen.items()}, undo


# -- channel plans ----------------------------------------------------------------------------

def channel_plan(model):
    """{layer path: channel counts and parameter shapes} of every conv and batch norm layer."""
    plan = {}
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
        plan[path] = entry
    return plan


def rebuild_from_plan(model, plan):
    """Shrink a freshly built model to the shapes in ``plan`` (from :func:`channel_plan`).

    The leading channels are kept: the values are placeholders for the checkpoint to overwrite.
    """
    _graph.check_paddle_version()   # the private layer attributes set below are Paddle 2.6's
    layers = dict(model.named_sublayers())
    undo = Undo()
    for path, entry in plan.items():
        layer = layers.get(path)
        if layer is None or type(layer).__name__ != entry["type"]:
            raise ValueError(f"the prune plan names {entry['type']} {path!r}, which this model "
                             "does not have: it was saved from another model or config")
        for name, shape in entry["params"].items():
            p = getattr(layer, name, None)
            if p is None or len(p.shape) != len(shape) or \
                    any(s > o for s, o in zip(shape, p.shape)):
                raise ValueError(f"prune plan shape {shape} of {path}.{name} does not fit "
                                 f"the model's {None if p is None else list(p.shape)}")
            if list(p.shape) != list(shape):
                _replace(layer, name, p.numpy()[tuple(slice(0, s) for s in shape)], undo)
        if isinstance(layer, CONV_TYPES):
            for attr, key in (("_in_channels", "in_channels"), ("_out_channels", "out_channels"),
                              ("_groups", "groups")):
                if getattr(layer, attr) != entry[key]:
                    undo.set_attr(layer, attr, entry[key])
            refresh_conv_kernel(layer, undo)
        elif hasattr(layer, "_num_features"):
            layer._num_features = entry["num_features"]
    return model
