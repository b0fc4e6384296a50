"""Channel dependency analysis: which channels of which layers must be pruned together.

Every conv output opens a *channel space*. Ops are walked in program order and each tensor gets
a *layout*: a tuple of segments ``(space, mult)`` along its channel axis. A plain tensor is one
segment with ``mult == 1``; ``paddle.concat`` on the channel axis makes a layout of several
segments; a depthwise conv with channel multiplier ``m`` turns ``(s, 1)`` into ``(s, m)``,
meaning tensor channel ``j`` belongs to space channel ``j // m``.

Ops that keep channels pass the layout through; elementwise ops on two channel tensors unite
their spaces (union-find); anything not understood that touches the channel axis *freezes* the
spaces involved. Each unfrozen union of spaces becomes a :class:`PruneGroup`: a set of channels
that can be removed together, with every layer slice that goes with them (its *members*).

A member ``(path, role, offset, mult)`` says: removing space channel ``i`` removes tensor
channels ``offset + i * mult + r`` (``0 <= r < mult``) of that layer along the role's axis:

- ``conv_out``: filters (and bias) of the conv that produces the space,
- ``conv_in``: input channels of a consuming conv (dense, groups == 1),
- ``bn``: a BatchNorm's weight, bias, mean and variance,
- ``depthwise``: input channels of a depthwise conv (groups == in_channels); its filters ride
  along, ``out/in`` of them per input channel (the channel multiplier).
"""
from collections import Counter
from dataclasses import dataclass, field

import paddle.nn as nn

from ..utils.errors import UserError
from . import graph as _graph

OUT, IN, BN, DW = "conv_out", "conv_in", "bn", "depthwise"

try:  # BatchNorm2D, SyncBatchNorm, ... and the older nn.BatchNorm
    from paddle.nn.layer.norm import _BatchNormBase
    BN_TYPES = (_BatchNormBase, nn.BatchNorm)
except ImportError:  # pragma: no cover
    BN_TYPES = (nn.BatchNorm2D, nn.SyncBatchNorm, nn.BatchNorm)

PASS_THROUGH = {
    "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hard_swish", "hard_sigmoid", "swish",
    "silu", "gelu", "elu", "selu", "mish", "softplus", "softsign", "logsigmoid", "brelu",
    "hardtanh", "thresholded_relu", "tanh_shrink", "stanh", "exp", "abs", "sqrt", "square",
    "log", "clip", "scale", "cast", "dropout", "pool2d", "max_pool2d_with_index",
    "bilinear_interp_v2", "nearest_interp_v2", "bicubic_interp_v2", "linear_interp_v2",
    "bilinear_interp", "nearest_interp", "bicubic_interp", "pad2d", "pad3d", "pad", "assign",
    "fill_any_like", "fill_zeros_like", "full_like", "sign", "floor", "ceil", "round",
    "pow", "reciprocal", "share_data", "memcpy",
}
ELEMENTWISE = {"elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div",
               "elementwise_max", "elementwise_min", "elementwise_pow", "elementwise_floordiv",
               "elementwise_mod", "maximum", "minimum"}
REDUCE = {"reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod"}
NO_CHANNEL_EFFECT = {"shape", "shape64", "size", "feed", "fetch", "fetch_v2"}


class LowCoverage(UserError):
    """Too small a share of the model is prunable for the FLOPs target to mean much."""


@dataclass(frozen=True)
class Member:
    path: str
    role: str
    offset: int = 0
    mult: int = 1

    def indices(self, space_channels):
        """Tensor channels of this layer that go with the given space channels."""
        return [self.offset + i * self.mult + r for i in space_channels for r in range(self.mult)]


@dataclass
class PruneGroup:
    id: str                 # dygraph path of the first conv producing these channels
    channels: int           # channels in the space (what a ratio applies to)
    members: list           # [Member]

    @property
    def producers(self):
        return [m.path for m in self.members if m.role == OUT]


@dataclass
class GroupAnalysis:
    """What :func:`analyze` returns: the groups, the frozen spaces, coverage numbers."""
    groups: list
    traced: object                      # graph.TracedModel
    frozen: list = field(default_factory=list)    # [(first conv path or origin, [reasons])]
    unknown_ops: Counter = field(default_factory=Counter)
    coverage: dict = field(default_factory=dict)
    seconds: float = 0.0                # time build_groups took

    def by_id(self):
        return {g.id: g for g in self.groups}

    def summary(self):
        """A few lines for logs: group count, coverage, why the rest is frozen."""
        c = self.coverage
        lines = [f"{c['groups']} prunable channel groups; {c['prunable_convs']} of {c['convs']} "
                 f"convs ({c['flops_coverage']:.1%} of conv FLOPs) have prunable outputs "
                 f"[traced {'+'.join(self.traced.modes)} in {self.seconds:.1f}s]"]
        reasons = Counter(r for _, rs in self.frozen for r in rs)
        for reason, n in reasons.most_common(8):
            lines.append(f"  frozen ({n}x): {reason}")
        if self.coverage.get("frozen_by_ops"):
            lines.append("  " + self.frozen_by_ops_text())
        return "\n".join(lines)

    def frozen_by_ops_text(self):
        return describe_op_freezes(self.coverage)

    def require_coverage(self, min_coverage):
        """Refuse a model too little of which can be pruned (LowCoverage, one line)."""
        share = self.coverage["flops_coverage"]
        if share < min_coverage:
            reasons = Counter(r for _, rs in self.frozen for r in rs).most_common(3)
            raise LowCoverage(
                f"only {share:.1%} of conv FLOPs can be pruned, below --min_coverage "
                f"{min_coverage:g}; {self.frozen_by_ops_text()}; frozen most often for: "
                + "; ".join(f"{r} ({n}x)" for r, n in reasons))


def describe_op_freezes(coverage):
    """One line: the op types that freeze channels and the share of conv FLOPs that costs
    (from a coverage dict, as :func:`analyze` makes and report.json keeps)."""
    ops = ", ".join(f"{t} x{v['ops']} ({v['flops_share']:.1%})"
                    for t, v in coverage.get("frozen_by_ops", {}).items())
    if not ops:
        return "no op freezes channels"
    return (f"ops that freeze the channels they touch cost "
            f"{coverage['frozen_by_ops_share']:.1%} of conv FLOPs: {ops}")


class _Spaces:
    """Union-find over channel spaces; a frozen flag (with reasons) and members per space."""

    def __init__(self):
        self.parent, self.length, self.origin = [], [], []
        self.reasons, self.members = [], []

    def new(self, length, origin, frozen=None):
        self.parent.append(len(self.parent))
        self.length.append(int(length))
        self.origin.append(origin)
        self.reasons.append([frozen] if frozen else [])
        self.members.append([])
        return len(self.parent) - 1

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.length[ra] != self.length[rb]:
            self.freeze(ra, "united with a space of another size")
            self.freeze(rb, "united with a space of another size")
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.reasons[ra] += self.reasons[rb]

    def freeze(self, i, reason):
        r = self.find(i)
        if len(self.reasons[r]) < 20:
            self.reasons[r].append(reason)

    def frozen(self, i):
        return bool(self.reasons[self.find(i)])


def _channels(layout):
    return None if layout is None else sum(mult * n for _, mult, n in layout)


class _Analyzer:
    def __init__(self, traced):
        self.t = traced
        self.s = _Spaces()
        self.layout = {}        # var -> tuple of (space, mult, space_length)
        self.param_of = {}      # var -> static parameter name it is a reshaped view of
        self.conv_seen = {}     # conv path -> (in layout, out layout)
        self.bn_seen = {}       # bn path -> layout
        self.unknown = Counter()
        self.op_freezes = []    # (op type, space) for every space an op froze
        self.freezing = Counter()   # op type -> ops that froze channels they read

    # -- layouts ----------------------------------------------------------------------------
    def shape(self, var):
        return self.t.shapes.get(var, ())

    def is_map(self, var):
        return len(self.shape(var)) == 4

    def fresh(self, channels, origin, frozen=None):
        sid = self.s.new(channels, origin, frozen)
        return ((sid, 1, int(channels)),)

    def get(self, var, origin=None):
        """Layout of a var; a 4-D tensor of unknown origin gets a frozen space."""
        if var in self.layout:
            return self.layout[var]
        if not self.is_map(var):
            return None
        c = self.shape(var)[1]
        if c is None or c < 0:
            return None
        lay = self.fresh(c, var, frozen=origin or f"unknown source of {var}")
        self.layout[var] = lay
        return lay

    def freeze_layout(self, layout, reason):
        for sid, _, _ in layout or ():
            self.s.freeze(sid, reason)

    def unify(self, a, b, reason):
        """Tie two layouts channel by channel; freeze both where segments do not line up."""
        if a is None or b is None or a == b:
            return
        if len(a) == len(b) and all(x[1] == y[1] and x[2] == y[2] for x, y in zip(a, b)):
            for x, y in zip(a, b):
                self.s.union(x[0], y[0])
        else:
            self.freeze_layout(a, reason)
            self.freeze_layout(b, reason)

    def add_members(self, layout, path, role):
        off = 0
        for sid, mult, n in layout:
            self.s.members[sid].append(Member(path, role, off, mult))
            off += mult * n

    # -- op handlers ------------------------------------------------------------------------
    def run(self):
        for var in self.t.inputs:
            self.get(var, origin="model input")
        for op in self.t.ops:
            handler = _HANDLERS.get(op.type)
            if handler is None:
                if op.type in PASS_THROUGH:
                    handler = _pass_through
                elif op.type in ELEMENTWISE:
                    handler = _elementwise
                elif op.type in REDUCE:
                    handler = _reduce
                elif op.type in NO_CHANNEL_EFFECT:
                    continue
                else:
                    handler = _generic
            handler(self, op)
        for var in self.t.outputs:
            self.freeze_layout(self.get(var), "reaches a model output")

    def generic(self, op, reason=None, understood=False):
        """Freeze the channels of every input and output of ``op``.

        ``understood``: the op is known and freezing is the right answer (argmax indexes
        channels), not a gap in the analysis; it is left out of ``unknown``.
        """
        reason = reason or f"op {op.type}"
        touched = False
        for names in op.inputs.values():
            for v in names:
                lay = self.layout.get(v)
                if lay is not None:
                    self.freeze_layout(lay, reason)
                    self.op_freezes += [(op.type, sid) for sid, _, _ in lay]
                    touched = True
        for names in op.outputs.values():
            for v in names:
                if self.is_map(v) and self.shape(v)[1] > 0:
                    # an output added to a conv's output later freezes that conv too
                    self.layout[v] = self.fresh(self.shape(v)[1], v, frozen=reason)
                    self.op_freezes.append((op.type, self.layout[v][0][0]))
                else:
                    self.layout.pop(v, None)
        if touched:
            self.freezing[op.type] += 1
            if not understood:
                self.unknown[op.type] += 1


def _generic(a, op):
    a.generic(op)


def _pass_through(a, op):
    src = None
    for slot in ("X", "Input", "x"):
        if op.input(slot):
            src = op.input(slot)[0]
            break
    lay = a.layout.get(src) if src else None
    if lay is None:
        if src in a.param_of:
            for names in op.outputs.values():
                for v in names:
                    a.param_of[v] = a.param_of[src]
            return
        return a.generic(op) if src is None or a.is_map(src) else None
    c = _channels(lay)
    for names in op.outputs.values():
        for v in names:
            if a.is_map(v) and a.shape(v)[1] == c:
                a.layout[v] = lay
            elif a.is_map(v):
                a.freeze_layout(lay, f"{op.type} changes the channel count")
                a.layout[v] = a.fresh(a.shape(v)[1], v, frozen=f"{op.type} output")


def _conv_layer(a, op, types):
    path, layer = a.t.layer_of(op.input("Filter")[0]) if op.input("Filter") else (None, None)
    if layer is None or not isinstance(layer, types):
        return None, None
    if op.attr("data_format", "NCHW") not in ("NCHW", "AnyLayout"):
        return None, None
    return path, layer


def _conv(a, op, transpose=False):
    path, layer = _conv_layer(a, op, nn.Conv2DTranspose if transpose else nn.Conv2D)
    x, y = op.input("Input")[0], op.output("Output")[0]
    if path is None:
        return a.generic(op, f"{op.type} without a known layer")
    lin = a.get(x)
    if lin is None or not a.is_map(y):
        return a.generic(op, f"{op.type} on a tensor of unknown channels")
    cin, cout = _channels(lin), a.shape(y)[1]
    groups = int(op.attr("groups", 1) or 1)
    if path in a.conv_seen:  # a layer called again: same channels both times
        prev_in, prev_out = a.conv_seen[path]
        a.unify(prev_in, lin, f"conv {path} reused on another input")
        a.layout[y] = prev_out
        return
    if groups == 1:
        a.add_members(lin, path, IN)
        sid = a.s.new(cout, path)
        a.s.members[sid].append(Member(path, OUT))
        lout = ((sid, 1, cout),)
    elif groups == cin and cout % cin == 0:
        mult = cout // cin
        a.add_members(lin, path, DW)
        lout = tuple((sid, m * mult, n) for sid, m, n in lin)
    else:
        a.freeze_layout(lin, f"grouped conv {path} (groups={groups})")
        lout = a.fresh(cout, path, frozen=f"grouped conv {path} (groups={groups})")
        a.s.members[lout[0][0]].append(Member(path, OUT))
    a.conv_seen[path] = (lin, lout)
    a.layout[y] = lout


def _batch_norm(a, op):
    path, layer = a.t.layer_of(op.input("Scale")[0]) if op.input("Scale") else (None, None)
    x, y = op.input("X")[0], op.output("Y")[0]
    lin = a.get(x)
    if layer is None or not isinstance(layer, BN_TYPES) or lin is None or \
            op.attr("data_layout", "NCHW") not in ("NCHW", "AnyLayout"):
        return a.generic(op, f"{op.type} without a known layer")
    if path in a.bn_seen:
        a.unify(a.bn_seen[path], lin, f"batch norm {path} reused")
    else:
        a.bn_seen[path] = lin
        a.add_members(lin, path, BN)
    a.layout[y] = lin


def _prelu(a, op):
    if op.attr("mode") == "all":
        return _pass_through(a, op)
    return a.generic(op, "prelu with per-channel alpha")


def _spans_channels(xshape, yshape, axis):
    """Size of y along x's channel axis under Paddle's broadcast rule (1 when it does not)."""
    r = len(yshape)
    if r == 0:
        return 1
    start = len(xshape) - r if axis is None or axis == -1 else axis
    if start <= 1 < start + r:
        return yshape[1 - start]
    return 1


def _elementwise(a, op):
    x, y = op.input("X")[0], op.input("Y")[0]
    out = op.output("Out")[0]
    lx, ly = a.layout.get(x), a.layout.get(y)
    axis = op.attr("axis", -1)
    if lx is not None and ly is not None:
        cx, cy = _channels(lx), _channels(ly)
        if cx == cy:
            a.unify(lx, ly, f"{op.type} of misaligned concats")
            a.layout[out] = lx
        elif cy == 1:
            a.layout[out] = lx
        elif cx == 1:
            a.layout[out] = ly
        else:
            a.generic(op, f"{op.type} of {cx} and {cy} channels")
        return
    if lx is None and ly is None:
        return a.generic(op) if a.is_map(x) or a.is_map(y) else None
    lay, other = (lx, y) if lx is not None else (ly, x)
    span = _spans_channels(a.shape(x if lx is not None else y), a.shape(other), axis)
    if span == 1:
        a.layout[out] = lay
        return
    pname = a.param_of.get(other, other if other in a.t.params else None)
    if pname is not None:
        path, attr = a.t.params[pname]
        seen = a.conv_seen.get(path)
        if attr == "bias" and seen is not None and seen[1] == lay:
            a.layout[out] = lay     # the bias of the conv that made this tensor
            return
        a.freeze_layout(lay, f"per-channel parameter {path}.{attr} in {op.type}")
        a.layout[out] = lay
        return
    a.generic(op, f"{op.type} with a per-channel operand")


def _reshape_like(a, op):
    src = op.input("X")[0] if op.input("X") else None
    if src is not None and (src in a.t.params or src in a.param_of):
        a.param_of[op.output("Out")[0]] = a.param_of.get(src, src)
        return
    a.generic(op)


def _concat(a, op):
    xs, out = op.input("X"), op.output("Out")[0]
    if op.input("AxisTensor") or not a.is_map(out):
        return a.generic(op)
    axis = op.attr("axis", 0) % 4
    lays = [a.get(v) for v in xs]
    if any(lay is None for lay in lays):
        return a.generic(op)
    if axis == 1:
        a.layout[out] = tuple(seg for lay in lays for seg in lay)
    else:
        for lay in lays[1:]:
            a.unify(lays[0], lay, f"concat on axis {axis}")
        a.layout[out] = lays[0]


def _sum(a, op):
    lays = [a.layout.get(v) for v in op.input("X")]
    lays = [lay for lay in lays if lay is not None]
    if not lays:
        return a.generic(op)
    for lay in lays[1:]:
        a.unify(lays[0], lay, "sum of misaligned concats")
    a.layout[op.output("Out")[0]] = lays[0]


def _axes_hit_channels(a, var, axes):
    rank = len(a.shape(var)) or 4
    return any(int(ax) % rank == 1 for ax in axes)


def _slice(a, op):
    src, out = op.input("Input")[0], op.output("Out")[0]
    if src not in a.layout:
        return a.generic(op) if a.is_map(src) else None
    if _axes_hit_channels(a, src, op.attr("axes", [])) or not a.is_map(out):
        return a.generic(op)
    a.layout[out] = a.layout[src]


def _split(a, op):
    src = op.input("X")[0]
    if src not in a.layout:
        return a.generic(op) if a.is_map(src) else None
    if op.input("AxisTensor") or _axes_hit_channels(a, src, [op.attr("axis", 0)]):
        return a.generic(op)
    for v in op.output("Out"):
        a.layout[v] = a.layout[src]


def _reduce(a, op):
    src = op.input("X")[0]
    lay = a.layout.get(src)
    if lay is None:
        return a.generic(op) if a.is_map(src) else None
    dims = [int(d) % 4 for d in (op.attr("dim", []) or [])]
    out = op.output("Out")[0]
    if op.attr("reduce_all", False) or not dims or 1 in dims:
        # channels are summed away: the input stays prunable
        if a.is_map(out):
            a.layout[out] = a.fresh(a.shape(out)[1], out, frozen=f"{op.type} over channels")
        return
    if a.is_map(out) and a.shape(out)[1] == _channels(lay):
        a.layout[out] = lay
    else:
        a.generic(op, f"{op.type} keeps channels in a non-4-D tensor")


def _softmax(a, op):
    src = op.input("X")[0]
    if src in a.layout and int(op.attr("axis", -1)) % 4 != 1:
        return _pass_through(a, op)
    a.generic(op)


def _index_valued(a, op):
    """arg_max, arg_min, top_k, argsort: the output holds positions along an axis. Along the
    channel axis (or all axes flattened) removing a channel renumbers the ones after it, so the
    input's channels must stay; along another axis the op is simply not modelled."""
    src = op.input("X")[0]
    rank = len(a.shape(src)) or 4
    if op.attr("flatten", False) or int(op.attr("axis", -1)) % rank == 1:
        return a.generic(op, f"{op.type} output indexes channels", understood=True)
    a.generic(op)


_HANDLERS = {
    "conv2d": _conv,
    "depthwise_conv2d": _conv,
    "conv2d_transpose": lambda a, op: _conv(a, op, transpose=True),
    "depthwise_conv2d_transpose": lambda a, op: _conv(a, op, transpose=True),
    "batch_norm": _batch_norm,
    "sync_batch_norm": _batch_norm,
    "prelu": _prelu,
    "concat": _concat,
    "sum": _sum,
    "reshape2": _reshape_like,
    "reshape": _reshape_like,
    "unsqueeze2": _reshape_like,
    "squeeze2": _reshape_like,
    "slice": _slice,
    "strided_slice": _slice,
    "split": _split,
    "softmax": _softmax,
    "log_softmax": _softmax,
    "arg_max": _index_valued,
    "arg_min": _index_valued,
    "top_k_v2": _index_valued,
    "argsort": _index_valued,
}


def _collect(a):
    """Gather members per union; freeze unions whose producers never run in eval mode."""
    s = a.s
    by_root = {}
    for sid in range(len(s.parent)):
        by_root.setdefault(s.find(sid), []).append(sid)
    groups, frozen = [], []
    for root, sids in sorted(by_root.items()):
        members, seen = [], set()
        for sid in sids:
            for m in s.members[sid]:
                if m not in seen:
                    seen.add(m)
                    members.append(m)
        producers = [m.path for m in members if m.role == OUT]
        if not producers:
            continue
        reasons = list(s.reasons[root])
        if not reasons and not any(p in a.t.calls for p in producers):
            reasons.append("only used in training (no eval-mode producer)")
        if not reasons and s.length[root] < 2:
            reasons.append("a single channel")
        if reasons:
            frozen.append((producers[0], sorted(set(reasons))))
            continue
        groups.append(PruneGroup(id=producers[0], channels=s.length[root], members=members))
    return groups, frozen


def conv_flops(layer, calls):
    """Multiply-adds of all recorded calls of a conv layer (PaddleSlim's convention)."""
    w = _graph.numel(layer.weight.shape)
    per_pixel = "in_shape" if isinstance(layer, nn.Conv2DTranspose) else "out_shape"
    return sum(_graph.numel(getattr(c, per_pixel)[2:]) * getattr(c, per_pixel)[0] * w
               for c in calls)


def eval_conv_flops(traced):
    """{conv path: FLOPs} of the convs the eval-mode forward runs."""
    return {p: conv_flops(traced.layers[p], calls) for p, calls in traced.calls.items()
            if isinstance(traced.layers[p], _graph.CONV_TYPES)}


def _pruned_outputs(groups):
    return {m.path for g in groups for m in g.members if m.role in (OUT, DW)}


def coverage(groups, traced):
    """Share of eval-mode convs (and their FLOPs) whose output channels are prunable."""
    pruned_out = _pruned_outputs(groups)
    touched = {m.path for g in groups for m in g.members if m.role in (OUT, DW, IN)}
    flops = eval_conv_flops(traced)
    total = sum(flops.values()) or 1
    return {
        "convs": len(flops),
        "prunable_convs": sum(p in pruned_out for p in flops),
        "conv_flops": sum(flops.values()),
        "prunable_flops": sum(f for p, f in flops.items() if p in pruned_out),
        "flops_coverage": sum(f for p, f in flops.items() if p in pruned_out) / total,
        "touched_flops_coverage": sum(f for p, f in flops.items() if p in touched) / total,
        "conv_coverage": sum(p in pruned_out for p in flops) / max(len(flops), 1),
        "groups": len(groups),
    }


def op_freeze_costs(a, groups):
    """What freezing by ops costs: ({op type: {"ops": n, "flops_share": s}}, share of all).

    An op's cost is the FLOPs share of the eval-mode convs whose outputs it keeps from being
    pruned (the producers of every space it froze, through all the spaces united with it).
    A conv frozen by two op types counts for both, once in the total.
    """
    s = a.s
    producers = {}          # space root -> conv paths whose output channels it holds
    for sid in range(len(s.parent)):
        paths = [m.path for m in s.members[sid] if m.role in (OUT, DW)]
        producers.setdefault(s.find(sid), set()).update(paths)
    flops = eval_conv_flops(a.t)
    total = sum(flops.values()) or 1
    pruned_out = _pruned_outputs(groups)
    lost = {}
    for op_type, sid in a.op_freezes:
        lost.setdefault(op_type, set()).update(
            p for p in producers.get(s.find(sid), ()) if p in flops and p not in pruned_out)
    costs = {t: {"ops": a.freezing[t], "flops_share": sum(flops[p] for p in paths) / total}
             for t, paths in lost.items() if a.freezing[t] or paths}
    costs = dict(sorted(costs.items(), key=lambda kv: (-kv[1]["flops_share"], kv[0])))
    every = set().union(*lost.values()) if lost else set()
    return costs, sum(flops[p] for p in every) / total


def analyze(traced):
    """Channel groups of a traced model (see the module docstring)."""
    a = _Analyzer(traced)
    a.run()
    groups, frozen = _collect(a)
    cov = coverage(groups, traced)
    cov["frozen_by_ops"], cov["frozen_by_ops_share"] = op_freeze_costs(a, groups)
    return GroupAnalysis(groups=groups, traced=traced, frozen=frozen, unknown_ops=a.unknown,
                         coverage=cov)
