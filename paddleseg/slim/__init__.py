"""Channel pruning for PaddleSeg models, without PaddleSlim's graph pruners.

Typical use::

    from paddleseg import slim
    analysis = slim.build_groups(model, (1, 3, 256, 256))      # dependency groups
    flops = slim.FlopsModel(analysis)                           # analytic FLOPs of a plan
    sens = slim.sensitivity.analyze(model, analysis.groups, eval_fn, [0.1, 0.2, ...],
                                    "sen.json", criterion="fpgm", setup={"config": config_hash})
    alloc = slim.allocate_ratios(analysis.groups, sens, flops, target=0.3)
    slim.prune_model(model, analysis, alloc.plan, criterion="fpgm")
    ... fine-tune ...
    slim.save_pruned(model, "output/best_model", info={"plan": alloc.plan})
    # later, on a freshly built model (train.py / val.py / export.py do the same):
    slim.load_pruned(model, "output/best_model")

Modules: ``graph`` (static trace), ``dependency`` (groups), ``criteria`` (l1/fpgm),
``apply`` (physical pruning, channel plans), ``flops``, ``sensitivity``, ``allocate``,
``output`` (the pruned checkpoint: its layer shapes travel inside ``model.pdparams``; the report;
the save_dir, switched in as one folder), ``targets`` (flops, latency), ``options``, ``retrain``.
"""
import time

from . import (allocate, apply, criteria, dependency, flops, graph,  # noqa: F401
               output, sensitivity)
from .allocate import Allocation, TargetUnreachable, allocate_ratios  # noqa: F401
from .apply import channel_plan, rebuild_from_plan  # noqa: F401
from .dependency import GroupAnalysis, Member, PruneGroup  # noqa: F401
from .flops import FlopsModel, count_flops, count_flops_params, count_params  # noqa: F401
from .output.storage import load_pruned, save_pruned  # noqa: F401
from ..utils.structure import mark_pruned, pruned_info


def build_groups(model, input_shape=(1, 3, 64, 64), modes=("eval", "train")):
    """Trace ``model`` and return its :class:`GroupAnalysis` (groups, coverage, frozen spaces).

    ``modes``: the forward modes traced; "train" adds training-only branches (auxiliary heads)
    as consumers. ``analysis.seconds`` is the time it took.
    """
    start = time.time()
    traced = graph.trace(model, input_shape, modes)
    analysis = dependency.analyze(traced)
    analysis.seconds = time.time() - start
    return analysis


def prune_model(model, analysis, plan, criterion="l1"):
    """Remove channels in place: ``plan`` is {group id: ratio}. Returns {group id: removed}.

    ``analysis`` (or a list of groups) must come from :func:`build_groups` on the model as it
    is now; a ratio removes ``round(ratio * channels)`` channels and always keeps one.
    ``criterion``: "l1" or "fpgm". Touched parameters are replaced by new, smaller ones, so
    create the optimizer after pruning.
    """
    groups = analysis.groups if isinstance(analysis, GroupAnalysis) else analysis
    removed, _ = apply.prune(model, groups, plan, criterion)
    # from now on every checkpoint of this model carries its layer shapes
    mark_pruned(model, {**(pruned_info(model) or {}), "criterion": criterion})
    return removed


__all__ = ["build_groups", "prune_model", "save_pruned", "load_pruned", "count_flops_params",
           "count_flops", "count_params", "FlopsModel", "allocate_ratios", "Allocation",
           "TargetUnreachable", "channel_plan", "rebuild_from_plan", "GroupAnalysis",
           "PruneGroup", "Member", "sensitivity", "criteria"]
