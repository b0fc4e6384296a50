"""Per-group pruning ratios from sensitivities that land on a FLOPs-reduction target.

1. Each group's loss curve is the running maximum of its measured losses (0 at ratio 0),
   linearly interpolated, plus a tiny slope so that it is strictly increasing: groups whose
   measured losses are all equal (an uninformative eval) then shrink evenly instead of all
   jumping to the grid maximum together.
2. Bisect a loss threshold ``t``: every group takes the largest ratio whose curve is <= t
   (capped at the largest measured ratio), in whole channels; the analytic FLOPs of that plan
   are compared with the target.
3. From the last plan below the target, add single channels greedily, always to the group with
   the lowest loss at its next step, until the target is reached without passing it by more
   than the tolerance.

A target above what the grid allows raises :class:`TargetUnreachable` (a ``UserError``: the CLI
prints it) with the maximum reachable reduction in the message and on the exception. That
maximum depends on the groups and the grid only, so :func:`reachable_reduction` gives it before
any sensitivity is measured.
"""
import math
from dataclasses import dataclass

from ..utils.errors import UserError


class TargetUnreachable(UserError):
    QUANTITY = "FLOPs"
    BOUND = "reachable"  # how the most that pruning can cut is known

    def __init__(self, target, max_reduction, max_ratio, remedy=""):
        self.target, self.max_reduction, self.max_ratio = target, max_reduction, max_ratio
        super().__init__(
            f"target {self.QUANTITY} reduction {target:.3f} is above the {max_reduction:.3f} "
            f"{self.BOUND} when every prunable group is pruned at its largest analysed ratio "
            f"(up to {max_ratio:g}); lower the target or analyse larger ratios{remedy}")


@dataclass
class Allocation:
    plan: dict              # {group id: ratio} (ratio = removed / channels, exact)
    pruned: dict            # {group id: channels removed}
    reduction: float        # predicted FLOPs reduction of the plan
    target: float
    max_reduction: float    # with every group at its largest analysed ratio
    threshold: float        # the loss threshold the bisection settled on


class Curve:
    """A group's loss as a function of ratio: running max, interpolated, strictly increasing."""

    SLOPE = 1e-6

    def __init__(self, channels, losses, step=1):
        pts = sorted((float(r), float(v)) for r, v in losses.items())
        self.channels = channels
        # channels are removed in multiples of ``step`` so that what remains keeps the
        # alignment CPU kernels like (oneDNN packs channels in blocks of 8 or 16)
        self.step = step if channels % step == 0 and channels >= 2 * step else 1
        self.rs, self.ls = [0.0], [0.0]
        for r, v in pts:
            self.rs.append(r)
            self.ls.append(max(self.ls[-1], v) + self.SLOPE * (r - self.rs[-2]))
        self.rmax = self.rs[-1]
        self.cap = self._align(max(0, min(int(math.floor(self.rmax * channels + 1e-9)), channels - 1)))

    def _align(self, n):
        return n - n % self.step

    def loss(self, r):
        for i in range(1, len(self.rs)):
            if r <= self.rs[i]:
                r0, r1, l0, l1 = self.rs[i - 1], self.rs[i], self.ls[i - 1], self.ls[i]
                return l0 + (l1 - l0) * (r - r0) / (r1 - r0)
        return self.ls[-1] + (r - self.rmax)     # beyond the grid: not allowed anyway

    def count_at(self, t):
        """Most channels removable with loss <= t."""
        if t >= self.ls[-1]:
            r = self.rmax
        else:
            r = 0.0
            for i in range(1, len(self.rs)):
                if t < self.ls[i]:
                    l0, l1 = self.ls[i - 1], self.ls[i]
                    r = self.rs[i - 1] + (self.rs[i] - self.rs[i - 1]) * (t - l0) / (l1 - l0)
                    break
        return self._align(max(0, min(int(math.floor(r * self.channels + 1e-9)), self.cap)))

    def next_loss(self, n):
        return self.loss((n + self.step) / self.channels)


def curves_of(groups, sensitivities, channel_step):
    return {g.id: Curve(g.channels, sensitivities[g.id], channel_step) for g in groups
            if sensitivities.get(g.id)}


def _max_reduction(curves, flops_model):
    return flops_model.reduction({gid: c.cap for gid, c in curves.items()})


def reachable_reduction(groups, ratios, flops_model, channel_step=8):
    """The largest FLOPs reduction :func:`allocate_ratios` can reach once every group is measured
    at ``ratios``: each group at its cap. Known before the (slow) sensitivity analysis."""
    unmeasured = {g.id: {r: 0.0 for r in ratios} for g in groups}
    return _max_reduction(curves_of(groups, unmeasured, channel_step), flops_model)


def allocate_ratios(groups, sensitivities, flops_model, target, tolerance=0.01, channel_step=8):
    """Choose {group id: ratio} so the predicted FLOPs reduction is ``target`` (+-tolerance).

    ``groups``: PruneGroups; ``sensitivities``: {group id: {ratio: loss}} (groups without
    measurements are left unpruned); ``flops_model``: a :class:`~paddleseg.slim.FlopsModel`;
    ``channel_step``: remove channels in multiples of this from groups whose size it divides
    (1 disables it).
    """
    if not 0.0 < target < 1.0:
        raise UserError(f"the FLOPs reduction target must lie in (0, 1), got {target}")
    curves = curves_of(groups, sensitivities, channel_step)
    if not curves:
        raise UserError("no prunable group has sensitivity measurements")
    max_red = _max_reduction(curves, flops_model)
    if target > max_red + 1e-12:
        raise TargetUnreachable(target, max_red, max(c.rmax for c in curves.values()))

    def counts_at(t):
        return {gid: c.count_at(t) for gid, c in curves.items()}

    lo, hi = 0.0, max(c.ls[-1] for c in curves.values())
    for _ in range(100):
        mid = (lo + hi) / 2
        if flops_model.reduction(counts_at(mid)) >= target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    counts = counts_at(lo)
    red = flops_model.reduction(counts)
    while red < target:
        best = None
        for gid, c in curves.items():
            n = counts[gid]
            if n >= c.cap:
                continue
            counts[gid] = n + c.step
            r = flops_model.reduction(counts)
            counts[gid] = n
            if r <= target + tolerance and (best is None or c.next_loss(n) < best[0]):
                best = (c.next_loss(n), gid, r)
        if best is None:
            break
        counts[best[1]] += curves[best[1]].step
        red = best[2]
    high = counts_at(hi)
    high_red = flops_model.reduction(high)
    if abs(high_red - target) < abs(red - target) - 1e-12:
        counts, red = high, high_red
    counts = {gid: n for gid, n in counts.items() if n}
    plan = {gid: n / curves[gid].channels for gid, n in counts.items()}
    return Allocation(plan=plan, pruned=counts, reduction=red, target=target,
                      max_reduction=max_red, threshold=hi)
