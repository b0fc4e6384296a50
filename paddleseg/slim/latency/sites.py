"""Conv call sites at the latency input shape, their widths under a pruning plan, and the
matching of measured oneDNN primitives to them.

A *site* is one call of a Conv2D / Conv2DTranspose in the eval forward at the shape latency is
measured at. A plan is a vector ``n`` of channels removed per prunable group (in the order of
``WidthModel.group_ids``); every width below is computed for a batch of plans at once
(``n`` of shape ``(..., groups)``), which is what the allocation's search needs.
"""
from collections import defaultdict, deque
from dataclasses import asdict, dataclass

import numpy as np
import paddle
import paddle.nn as nn

from ..dependency import DW, IN, OUT
from .onednn import CONV_KINDS

CONV_TYPES = (nn.Conv2D, nn.Conv2DTranspose)


@dataclass
class Site:
    path: str           # dygraph layer path
    call: int           # which call of that layer (0 for layers called once)
    transpose: bool
    mb: int
    groups: int
    cin: int
    cout: int
    ih: int
    iw: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int

    def to_dict(self):
        return asdict(self)


def conv_sites(model, input_shape):
    """The convs one eval-mode forward at ``input_shape`` runs, in call order."""
    sites, calls, handles = [], defaultdict(int), []
    for path, layer in model.named_sublayers():
        if not isinstance(layer, CONV_TYPES):
            continue

        def hook(layer, inputs, output, path=path):
            x = inputs[0].shape
            sites.append(Site(path, calls[path], isinstance(layer, nn.Conv2DTranspose), int(x[0]),
                              int(layer._groups), int(layer._in_channels),
                              int(layer._out_channels), int(x[2]), int(x[3]),
                              int(output.shape[2]), int(output.shape[3]),
                              *[int(v) for v in layer._kernel_size],
                              *[int(v) for v in layer._stride]))
            calls[path] += 1
        handles.append(layer.register_forward_post_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([int(v) for v in input_shape], dtype="float32"))
    finally:
        for h in handles:
            h.remove()
        if was_training:
            model.train()
    return sites


class WidthModel:
    """Channel widths of every site under a batch of plans, and the group each site's output
    channels belong to (for time shares)."""

    def __init__(self, groups, sites):
        self.group_ids = [g.id for g in groups]
        self.sites = sites
        index = {g.id: i for i, g in enumerate(groups)}
        s_of = defaultdict(list)
        for i, s in enumerate(sites):
            s_of[s.path].append(i)
        n_s, n_g = len(sites), len(groups)
        self.a_in = np.zeros((n_s, n_g))
        self.a_out = np.zeros((n_s, n_g))
        self.owner = [None] * n_s           # group id of the site's output channels
        dw = np.zeros(n_s, dtype=bool)
        for g in groups:
            for m in g.members:
                for i in s_of.get(m.path, ()):
                    if m.role in (IN, DW):
                        self.a_in[i, index[g.id]] += m.mult
                    if m.role == OUT:
                        self.a_out[i, index[g.id]] += m.mult
                    if m.role == DW:
                        dw[i] = True
                    if m.role in (OUT, DW) and self.owner[i] is None:
                        self.owner[i] = g.id
        self.dw = dw
        self.cin0 = np.array([s.cin for s in sites], dtype=float)
        self.cout0 = np.array([s.cout for s in sites], dtype=float)
        self.groups0 = np.array([s.groups for s in sites], dtype=float)
        self.mult = np.where(dw, self.cout0 / np.maximum(self.cin0, 1), 1.0)
        self.kernel = np.array([s.kh * s.kw for s in sites], dtype=float)
        self.out_pixels = np.array([s.mb * s.oh * s.ow for s in sites], dtype=float)

    def vector(self, counts):
        """{group id: removed} -> the plan vector (groups not named keep all channels)."""
        return np.array([float(counts.get(gid, 0)) for gid in self.group_ids])

    def widths(self, n):
        """(cin, cout, groups), each of shape ``n.shape[:-1] + (sites,)``."""
        n = np.asarray(n, dtype=float)
        cin = self.cin0 - n @ self.a_in.T
        cout = np.where(self.dw, cin * self.mult, self.cout0 - n @ self.a_out.T)
        groups = np.where(self.dw, cin, self.groups0)
        return cin, cout, groups

    def macs(self, n):
        """Multiply-adds per site (kernel x in x out / groups x output pixels)."""
        return self.macs_of(*self.widths(n))

    def macs_of(self, cin, cout, groups):
        return self.kernel * cin * cout / groups * self.out_pixels

    def signatures(self, n):
        """What oneDNN prints for each site under plan ``n`` (one plan)."""
        cin, cout, groups = (np.rint(w).astype(int) for w in self.widths(n))
        return [(s.mb, int(g), int(ci), int(co), s.ih, s.iw, s.oh, s.ow, s.kh, s.kw, s.sh, s.sw)
                for s, ci, co, g in zip(self.sites, cin, cout, groups)]


def assign_blocks(primitives, signatures):
    """Time of each site's *block*: its conv primitive plus the primitives run after it up to
    the next conv (bias add, batch norm, activation, pooling, resize, add, concat ...).

    Convs are matched to sites by their sizes; sites of equal sizes are taken in call order
    (their times are alike, whichever way the predictor ordered them). Returns (ms per site
    with None for sites never run, ms of primitives no site took: the input reorder, convs
    that match no site).
    """
    free = defaultdict(deque)
    for i, sig in enumerate(signatures):
        free[sig].append(i)
    blocks = [None] * len(signatures)
    loose, current = 0.0, None
    for p in primitives:
        if p.kind in CONV_KINDS:
            sig = p.conv_shape()
            current = free[sig].popleft() if sig is not None and free.get(sig) else None
            if current is not None:
                blocks[current] = 0.0
        if current is None:
            loose += p.ms
        else:
            blocks[current] += p.ms
    return blocks, loose
