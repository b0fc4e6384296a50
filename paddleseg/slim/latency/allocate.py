"""Per-group channel counts that cut the *predicted latency* by a target, losing little accuracy.

A multiple-choice knapsack solved greedily on its convex hull: each group offers moves "remove
j more steps of channels" (j = 1 .. up to its cap); a move costs the accuracy its sensitivity
curve says it loses and saves the time the latency model says it saves, *given the other
groups' current widths* (a conv's time depends on its input and output widths, so groups
interact). The move with the least loss per millisecond saved is taken, until the predicted
latency is within budget; when the efficient move would overshoot the budget (by more than the
tolerance), the last move is instead the one reaching the budget that loses least. Jumps of
several steps let a group whose curve is flat and then steep be judged on the whole flat part,
and let a layer skip a width that is slow on the backend (a partial vector register).

The cost model is anything with ``group_ids`` and a vectorised ``ms(n)`` (plans as count
vectors in ``group_ids`` order, shape (..., groups)): :class:`.table.LatencyModel`, or a fake
one in tests.

:func:`allocate_balanced` is the same greedy on the *squared* loss: a group's next cut costs
more the more that group has already lost, so the cuts spread over more groups. Plain loss per
millisecond minimises the summed loss, the accuracy right after pruning that the sensitivity
curves predict; but it may cut a few costly groups deep, and retraining need not recover a
deep cut as well as several shallow ones. Squared losses sit between that and
:func:`allocate_equal_loss`, the least largest loss (measured on HarDNet: commit f6ec80a).

:func:`allocate_equal_loss` is the other allocation ``--latency_allocation`` offers: the one
``--target flops`` makes (every group pruned up to one common sensitivity loss), with that
loss set so the *predicted latency* falls by the target. It is blind to what a channel costs
in time, so at an equal measured speedup it is the fair control for :func:`allocate_latency`.
"""
import functools

import numpy as np

from ...utils.errors import UserError
from ..allocate import Allocation, TargetUnreachable, curves_of, allocate_ratios

DEFAULT_ALLOCATION = "loss_per_ms"


class LatencyTargetUnreachable(TargetUnreachable):
    QUANTITY = "latency"
    BOUND = "the latency table predicts"


def _limits(cost, curves):
    """(steps, caps) vectors in the cost model's group order (0 for groups not pruned)."""
    steps = np.array([curves[g].step if g in curves else 0 for g in cost.group_ids])
    caps = np.array([curves[g].cap if g in curves else 0 for g in cost.group_ids])
    return steps, caps


def max_reduction(cost, groups, sensitivities, channel_step=8):
    """Predicted latency reduction with every measured group at its cap."""
    curves = curves_of(groups, sensitivities, channel_step)
    _, caps = _limits(cost, curves)
    return float(1.0 - cost.ms(caps.astype(float)) / cost.ms(np.zeros(len(caps))))


class _Options:
    """Each group's reachable counts (0, step, ..., cap) and its loss at each (raised to
    ``power``), precomputed."""

    def __init__(self, curves, ids, steps, caps, power=1):
        self.steps = steps
        self.losses = [np.array([curves[g].loss(k / curves[g].channels) ** power
                                 for k in range(0, int(cap) + 1, int(step))]) if step else None
                       for g, step, cap in zip(ids, steps, caps)]

    def moves(self, n):
        """Every "j more steps" move from plan ``n``: (group index, new count, loss added)."""
        idx, new, lost = [], [], []
        for i, (k, step, losses) in enumerate(zip(n, self.steps, self.losses)):
            if losses is None:
                continue
            at = int(k) // int(step)
            idx.append(np.full(len(losses) - at - 1, i))
            new.append(np.arange(at + 1, len(losses)) * step)
            lost.append(losses[at + 1:] - losses[at])
        if not idx:
            return np.zeros(0, int), np.zeros(0), np.zeros(0)
        return np.concatenate(idx), np.concatenate(new).astype(float), np.concatenate(lost)


def allocate_latency(groups, sensitivities, cost, target, channel_step=8, tolerance=0.005,
                     power=1):
    """Choose {group id: ratio} whose predicted latency reduction is ``target`` (within
    ``tolerance`` of the unpruned latency where channel steps allow, never short of it unless
    nothing more can be removed), by least ``loss ** power`` added per millisecond saved.
    Returns an :class:`~paddleseg.slim.allocate.Allocation` whose ``reduction`` is the
    predicted latency reduction."""
    if not 0.0 < target < 1.0:
        raise UserError(f"the latency reduction target must lie in (0, 1), got {target}")
    curves = curves_of(groups, sensitivities, channel_step)
    if not curves:
        raise UserError("no prunable group has sensitivity measurements")
    ids = list(cost.group_ids)
    steps, caps = _limits(cost, curves)
    full = float(cost.ms(np.zeros(len(ids))))
    most = float(1.0 - cost.ms(caps.astype(float)) / full)
    if target > most + 1e-12:
        raise LatencyTargetUnreachable(target, most, max(c.rmax for c in curves.values()))
    budget, band = (1.0 - target) * full, tolerance * full
    options = _Options(curves, ids, steps, caps, power)
    n = np.zeros(len(ids))
    now = full
    while now > budget:
        idx, new, lost = options.moves(n)
        if not len(idx):
            break
        plans = np.repeat(n[None, :], len(idx), axis=0)
        plans[np.arange(len(idx)), idx] = new
        saved = now - cost.ms(plans)
        useful = saved > 1e-9
        if not useful.any():
            break
        efficiency = np.where(useful, lost / np.where(useful, saved, 1.0), np.inf)
        pick = int(np.lexsort((-saved, efficiency))[0])
        after = now - saved
        if after[pick] < budget - band:
            # the best move overshoots: finish with the move that reaches the budget losing
            # least (the efficient group's smaller jumps are among them), overshooting least
            reach = np.flatnonzero(useful & (after <= budget))
            pick = int(reach[np.lexsort((-after[reach], lost[reach]))[0]])
        n[idx[pick]] = new[pick]
        now = float(cost.ms(n))
    counts = {g: int(k) for g, k in zip(ids, n) if k}
    plan = {g: k / curves[g].channels for g, k in counts.items()}
    return Allocation(plan=plan, pruned=counts, reduction=float(1.0 - now / full), target=target,
                      max_reduction=most, threshold=None)


class _PredictedCut:
    """The latency model seen as :func:`~paddleseg.slim.allocate.allocate_ratios` sees a
    FLOPs model: ``reduction({group id: channels removed})``, here of the predicted latency."""

    def __init__(self, cost):
        self.cost, self.full = cost, float(cost.ms(np.zeros(len(cost.group_ids))))

    def reduction(self, counts):
        n = np.array([counts.get(g, 0) for g in self.cost.group_ids], dtype=float)
        return 1.0 - float(self.cost.ms(n)) / self.full


def allocate_equal_loss(groups, sensitivities, cost, target, channel_step=8, tolerance=0.005):
    """Like :func:`allocate_latency`, but every group is pruned up to one common sensitivity
    loss (the ``--target flops`` allocation) with the loss chosen for the predicted latency
    cut ``target``."""
    predicted = _PredictedCut(cost)
    try:
        return allocate_ratios(groups, sensitivities, predicted, target, tolerance=tolerance,
                               channel_step=channel_step)
    except TargetUnreachable as e:
        raise LatencyTargetUnreachable(e.target, e.max_reduction, e.max_ratio) from None


# least summed squared loss per millisecond (see the module doc)
allocate_balanced = functools.partial(allocate_latency, power=2)

# what each --latency_allocation name runs
ALLOCATORS = {DEFAULT_ALLOCATION: allocate_latency, "balanced": allocate_balanced,
              "equal_loss": allocate_equal_loss}
ALLOCATIONS = tuple(ALLOCATORS)


def allocator(name=None):
    """The allocation function ``--latency_allocation name`` selects (None: the default)."""
    name = name or DEFAULT_ALLOCATION
    if name not in ALLOCATORS:
        raise UserError(f"--latency_allocation must be one of {', '.join(ALLOCATIONS)}, "
                        f"got {name!r}")
    return ALLOCATORS[name]
