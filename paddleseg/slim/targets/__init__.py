"""What ``--pruning_ratio`` cuts: one class per ``--target``, each behind the same interface, so
the pipeline (:mod:`paddleseg.slim.pipeline`) has no branch on the target.

A target class has:

- ``name`` and ``only_flags``: ``(option, flag)`` pairs that apply only with this target (given
  with another target, they are refused in one line);
- ``check(options)`` (class method): its option checks, before any slow work;
- ``build(options, config, model, analysis, work_dir, timings)`` (class method): the target of
  one run, on the unpruned model (the latency target measures or reuses its table here);
- ``reachable(options)``: ``(cut to aim at, the lowered target or None)``, before the
  sensitivity analysis; a target the ratio grid cannot reach fails here;
- ``allocate(sensitivities, aim, allow_lower)``: the per-group plan (an
  :class:`~paddleseg.slim.allocate.Allocation`), including any closing loop that measures
  candidates;
- ``snapshot(allocation)`` / ``restore(state)``: a JSON record of an allocation (and of any
  state the report needs of it, such as the closing loop's rounds) and the allocation made the
  run's again (the --max_miou_drop search allocates several and keeps one);
- ``final_report(model, export_dir, timings)``: the target's own figures for report.json
  (``{}`` when it has none), after retraining and export; ``target_met: False`` among them
  when a measured target was missed (kept by ``--allow_lower_target``);
- ``report_lines(report)`` (static): its Markdown lines for report.md (``[]`` when none).
"""
from ...utils.errors import UserError
from .flops import FlopsTarget
from .latency import LatencyTarget

TARGETS = {target.name: target for target in (FlopsTarget, LatencyTarget)}


def target_class(name):
    if name not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {name!r}")
    return TARGETS[name]


def check_target_options(o):
    """The target's own checks, and no flag of another target given."""
    chosen = target_class(o.target)
    for other in TARGETS.values():
        if other is chosen:
            continue
        given = [flag for option, flag in other.only_flags if getattr(o, option) is not None]
        if given:
            raise UserError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                            f"only with --target {other.name}")
    chosen.check(o)


def report_lines(report):
    """The Markdown lines of every target whose figures ``report`` (report.json) holds."""
    return [line for target in TARGETS.values() for line in target.report_lines(report)]
