"""Physically remove channels: slice Conv2D / Conv2DTranspose / BatchNorm parameters.

Removed channels are gone for good: each touched parameter is replaced by a new, smaller
parameter (no full-size backup is kept) and the layer's channel attributes are updated, so the
model trains, runs and exports (``paddle.jit.save``) like one built at the smaller size.
An :class:`Undo` record puts the original parameters back (used by the sensitivity analysis).

The resulting shapes are stored with the checkpoint and replayed on a freshly built model by
:mod:`paddleseg.utils.structure` (``channel_plan`` / ``rebuild_from_plan`` here are its names in
the engine's vocabulary).
"""
import numpy as np
import paddle.nn as nn

from ..utils.structure import (CONV_TYPES, StructureError, Undo, layer_shapes,  # noqa: F401
                               refresh_conv_kernel, replace_param, resize_to)
from . import criteria as _criteria
from .dependency import BN, BN_TYPES, DW, IN, OUT


def _take(layer, name, keep, axis, undo):
    p = getattr(layer, name, None)
    if p is None:
        return
    replace_param(layer, name, np.take(p.numpy(), keep, axis=axis), undo)


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
        replace_param(layer, "weight", w, undo)
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
    return layer_shapes(model)


def rebuild_from_plan(model, plan):
    """Shrink a freshly built model to the shapes in ``plan`` (from :func:`channel_plan`)."""
    try:
        return resize_to(model, {"layers": plan}, source="the prune plan")
    except StructureError as e:
        raise ValueError(str(e)) from None
