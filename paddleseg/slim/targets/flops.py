"""``--target flops``: the analytic FLOPs of the model at its sample input, cut by allocating
per-group ratios at equal sensitivity loss (:func:`~paddleseg.slim.allocate.allocate_ratios`)."""
import dataclasses

from ...utils import logger
from ..allocate import Allocation, TargetUnreachable, allocate_ratios, reachable_reduction
from ..flops import FlopsModel


class FlopsTarget:
    name = "flops"
    only_flags = ()

    def __init__(self, analysis, channel_step, ratios):
        self.groups, self.channel_step, self.ratios = analysis.groups, channel_step, ratios
        self.flops_model = FlopsModel(analysis)

    @classmethod
    def check(cls, o):
        """Nothing beyond the common checks."""

    @classmethod
    def build(cls, o, cfg, model, analysis, work_dir, timings):
        return cls(analysis, o.channel_step, o.sen_ratios)

    def reachable(self, o):
        """(FLOPs reduction to allocate, the lowered target or None): --pruning_ratio when the
        grid can reach it; else TargetUnreachable, or with --allow_lower_target the most it
        can reach. Known before the sensitivity analysis, which cannot change the maximum."""
        most = reachable_reduction(self.groups, self.ratios, self.flops_model, self.channel_step)
        if o.pruning_ratio <= most + 1e-12:
            return o.pruning_ratio, None
        if not o.allow_lower_target or most < 1e-6:
            remedy = "" if most < 1e-6 else f", or pass --allow_lower_target to prune {most:.3f}"
            raise TargetUnreachable(o.pruning_ratio, most, max(self.ratios), remedy)
        logger.warning(f"target FLOPs reduction {o.pruning_ratio:.3f} is above the {most:.3f} "
                       f"the sensitivity grid can reach; lowered to {most:.3f} "
                       "(--allow_lower_target)")
        return most - 1e-9, most

    def allocate(self, sensitivities, aim, allow_lower=False):
        return allocate_ratios(self.groups, sensitivities, self.flops_model, aim,
                               channel_step=self.channel_step)

    def snapshot(self, alloc):
        """What :meth:`restore` needs to make ``alloc`` the run's allocation again (JSON)."""
        return {"allocation": dataclasses.asdict(alloc)}

    def restore(self, state):
        return Allocation(**state["allocation"])

    def final_report(self, model, export_dir, timings):
        return {}

    @staticmethod
    def report_lines(report):
        return []
