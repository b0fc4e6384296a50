"""FLOPs and parameter counts: measured by a forward pass, or predicted for a pruning plan.

FLOPs are multiply-adds of Conv2D, Conv2DTranspose and Linear layers, the way PaddleSlim's
``dygraph_flops`` counts convs and fully connected layers (no bias term, no BN or activation):

- Conv2D: ``out_h * out_w * numel(weight)`` per image,
- Conv2DTranspose: ``in_h * in_w * numel(weight)`` per image (PaddleSlim skips these),
- Linear: ``rows * in * out``.

Counts are for the eval-mode forward (what gets deployed); parameters are all of
``model.parameters()``, BatchNorm statistics included (PaddleSeg's convention).
"""
import paddle.nn as nn

from . import graph as _graph
from .dependency import DW, IN, OUT


def _layer_flops(layer, in_shape, out_shape):
    if isinstance(layer, nn.Conv2DTranspose):
        return in_shape[0] * _graph.numel(in_shape[2:]) * _graph.numel(layer.weight.shape)
    if isinstance(layer, nn.Conv2D):
        return out_shape[0] * _graph.numel(out_shape[2:]) * _graph.numel(layer.weight.shape)
    if isinstance(layer, nn.Linear):
        return _graph.numel(in_shape) // layer.weight.shape[0] * _graph.numel(layer.weight.shape)
    return 0


def count_params(model):
    return sum(_graph.numel(p.shape) for p in model.parameters())


def count_flops(model, input_shape=(1, 3, 64, 64)):
    """Multiply-adds of one eval-mode forward at ``input_shape``."""
    calls = _graph.record_calls(model, input_shape)
    layers = dict(model.named_sublayers())
    return sum(_layer_flops(layers[p], c.in_shape, c.out_shape)
               for p, cs in calls.items() for c in cs)


def count_flops_params(model, input_shape=(1, 3, 64, 64)):
    """(FLOPs, parameters) of ``model``; see the module docstring for what is counted."""
    return count_flops(model, input_shape), count_params(model)


class FlopsModel:
    """Predicts the FLOPs of a pruning plan from the traced sizes, without a forward pass.

    ``flops(pruned)`` takes {group id: number of channels removed}; it is exact for the
    layers it models (convs and linears), and groups not named keep all their channels.
    """

    def __init__(self, analysis):
        traced = analysis.traced
        self.group_ids = [g.id for g in analysis.groups]
        index = {g.id: i for i, g in enumerate(analysis.groups)}
        touches = {}        # layer path -> {"in": [(group index, mult)], "out": [...]}
        for g in analysis.groups:
            for m in g.members:
                side = "out" if m.role == OUT else "in" if m.role in (IN, DW) else None
                if side:
                    touches.setdefault(m.path, {"in": [], "out": []})[side].append(
                        (index[g.id], m.mult))
        self.constant = 0
        self.convs = []     # (pixels * kernel area, in, out, groups, depthwise, in refs, out refs)
        for path, calls in traced.calls.items():
            layer = traced.layers[path]
            base = sum(_layer_flops(layer, c.in_shape, c.out_shape) for c in calls)
            t = touches.get(path)
            if t is None or not isinstance(layer, _graph.CONV_TYPES):
                self.constant += base
                continue
            transpose = isinstance(layer, nn.Conv2DTranspose)
            w = layer.weight.shape
            cin, cout = (w[0], w[1] * layer._groups) if transpose else \
                (w[1] * layer._groups, w[0])
            self.convs.append((base / max(cin * cout // layer._groups, 1), cin, cout,
                               layer._groups, layer._groups == cin and layer._groups > 1,
                               t["in"], t["out"]))
        self.base = self.flops({})

    def _counts(self, pruned):
        return [int(pruned.get(gid, 0)) for gid in self.group_ids]

    def flops(self, pruned):
        n = self._counts(pruned)
        total = self.constant
        for unit, cin, cout, groups, dw, ins, outs in self.convs:
            cin2 = cin - sum(n[i] * m for i, m in ins)
            if dw:
                total += unit * cin2 * (cout // cin)
            else:
                cout2 = cout - sum(n[i] * m for i, m in outs)
                total += unit * cin2 * cout2 / groups
        return int(round(total))

    def reduction(self, pruned):
        return 1.0 - self.flops(pruned) / self.base if self.base else 0.0
