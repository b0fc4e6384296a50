"""Which channels of a group to remove: importance scores and the pick for a ratio.

- ``l1``: the L1 norm of each output filter, summed over the group's producer convs
  (Li et al. 2017). Low norm = unimportant.
- ``fpgm``: for each filter, the sum of its Euclidean distances to the other filters of the same
  conv, summed over producers (He et al. 2019, "Filter Pruning via Geometric Median"). Filters
  near the geometric median are the most replaceable by the others, so they go first.

Scores are computed from the current weights of the producing convs only; the BN and consumer
slices that ride along are not scored.
"""
import numpy as np
import paddle.nn as nn

CRITERIA = ("l1", "fpgm")


def producer_filters(layer):
    """[out_channels, rest] matrix of a producing conv's filters."""
    w = layer.weight.numpy()
    if isinstance(layer, nn.Conv2DTranspose):   # [in, out/groups, kh, kw]
        w = np.swapaxes(w, 0, 1)
    return w.reshape(w.shape[0], -1).astype(np.float64)


def l1_scores(filters):
    return np.abs(filters).sum(axis=1)


def fpgm_scores(filters):
    sq = (filters ** 2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * filters @ filters.T, 0.0)
    return np.sqrt(d2).sum(axis=1)


def importance(group, layers, criterion="l1"):
    """Per-channel importance of ``group`` (higher = keep); ``layers``: path -> layer."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; choose one of {CRITERIA}")
    score = l1_scores if criterion == "l1" else fpgm_scores
    total = np.zeros(group.channels, dtype=np.float64)
    for path in group.producers:
        total += score(producer_filters(layers[path]))
    return total


def num_pruned(channels, ratio):
    """Channels removed for ``ratio`` (rounded), always leaving at least one."""
    if not 0.0 <= ratio < 1.0 + 1e-9:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    return max(0, min(int(round(ratio * channels)), channels - 1))


def select(scores, n):
    """Indices (ascending) of the ``n`` least important channels; ties go to lower indices."""
    order = np.argsort(scores, kind="stable")
    return np.sort(order[:n])
