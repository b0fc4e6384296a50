"""The pruning report: a sensitivity plot and a Markdown summary."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..dependency import describe_op_freezes  # noqa: E402
from ..reconstruct import summary as refit_summary  # noqa: E402
from ..targets import report_lines as target_report_lines  # noqa: E402

TOP_LAYERS = 8  # labelled curves; the rest are drawn thin and grey


def decisive_layers(sens, plan, k=TOP_LAYERS):
    """The groups that decide the result: the most sensitive ones and those pruned hardest."""
    worst = sorted(sens, key=lambda g: -max(sens[g].values(), default=0))[:k // 2]
    hardest = [g for g, _ in sorted(plan.items(), key=lambda x: -x[1]) if g not in worst]
    return worst + hardest[:k - len(worst)]


def plot_sensitivity(sens, plan, path):
    """Relative mIoU loss against pruning ratio, one curve per group."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    labelled = decisive_layers(sens, plan)
    for gid, curve in sens.items():
        if gid in labelled or not curve:
            continue
        rs = sorted(curve)
        ax.plot(rs, [curve[r] for r in rs], color="0.8", linewidth=0.8)
    for gid in labelled:
        rs = sorted(sens[gid])
        chosen = f" (pruned {plan[gid]:.0%})" if gid in plan else " (kept)"
        ax.plot(rs, [sens[gid][r] for r in rs], marker="o", linewidth=1.6, label=gid + chosen)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("pruning ratio of the layer (its group) alone")
    ax.set_ylabel("relative mIoU loss")
    ax.set_title(f"Sensitivity of {len(sens)} prunable groups (grey: the rest)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def recipe_lines(recipe):
    """The retraining recipe, when it is not the default (the config's schedule, no teacher)."""
    if not recipe or (recipe.get("schedule"), recipe.get("distill"), recipe.get("prune_steps", 1),
                      recipe.get("reconstruct_batches", 0)) == ("config", "none", 1, 0):
        return []
    text = ", ".join(f"{k} {v}" for k, v in recipe.items() if v is not None)
    return [f"Retraining recipe: {text}.", ""]


def reconstruction_lines(refit):
    """What the --reconstruct refit did (nothing without it)."""
    if not refit:
        return []
    return [f"Least-squares reconstruction: {refit_summary(refit)}.", ""]


def step_lines(steps):
    """The table of a stepwise run's steps (none for a one-step run)."""
    if not steps:
        return []
    return ["| step | channels removed (in all) | mIoU right after its pruning | retraining "
            "iterations |", "|-|-|-|-|"] + [
        f"| {s['step']} | {s['channels_removed']} | {s['miou_pruned']:.4f} | "
        f"{s['retraining_iters']} |" for s in steps] + [""]


def percent(value):
    return "-" if value is None else f"{value:.1%}"


def measured_text(step):
    cut = step.get("measured_latency_reduction")
    return "-" if cut is None else f"{cut:.1%} ({step['speedup']:.2f}x)"


def seeds_text(step):
    """A step's mIoU: its one retraining's, or the mean of the seeds that decided it."""
    mious = step.get("mious") or [step["miou"]]
    return f"{step['miou']:.4f}" + (f" (mean of {len(mious)} seeds)" if len(mious) > 1 else "")


def budget_lines(budget):
    """The --max_miou_drop search: the reference, every step and why it stopped."""
    if not budget:
        return []
    ref = budget["reference"]
    lines = [f"Accuracy budget {budget['max_miou_drop']:g} mIoU points against the unpruned "
             f"model fine-tuned {ref['iters']} iterations: {ref['mean']:.4f} (two seeds: "
             f"{', '.join(f'{m:.4f}' for m in ref['mious'])}; noise "
             f"{ref['noise_points']:.1f} points). {budget['why'][0].upper()}{budget['why'][1:]}.",
             "", "| step | cut | FLOPs cut | measured latency cut (speedup) | mIoU after its "
             "retraining | points below the reference | verdict |", "|-|-|-|-|-|-|-|"]
    lines += [f"| {s['step']} | {s['cut']:g} | {percent(s.get('flops_reduction'))} | "
              f"{measured_text(s)} | {seeds_text(s)} | {s['drop_points']:+.1f} | "
              f"{'accepted' if s['accepted'] else 'refused'} |" for s in budget["steps"]]
    if budget.get("final_model"):   # older reports lack it
        lines += ["", f"The final model: {budget['final_model']}."]
    return lines + [""]


def trial_lines(trial):
    """The --trial_allocations trial: every candidate and why the winner won."""
    if not trial:
        return []
    lines = [f"Allocation trial: each allocation of the latency cut retrained {trial['iters']} "
             f"iterations with the run's seed. {trial['why'][0].upper()}{trial['why'][1:]}.", "",
             "| candidate | allocation | FLOPs cut | measured latency cut (speedup) | mIoU after "
             "its retraining |", "|-|-|-|-|-|"]
    for c in trial["candidates"]:
        result = (f"{percent(c.get('flops_reduction'))} | {measured_text(c)} | {c['miou']:.4f}"
                  if c.get("miou") is not None else f"- | - | failed: {c['error']}")
        lines.append(f"| {c['candidate']} | {c['allocation']} | {result} |")
    return lines + ["", f"The final model: {trial['final_model']}.", ""]


def resumed_lines(resumed):
    """What the run took over from a killed one (its phases' seconds are this run's only)."""
    if not resumed:
        return []
    taken = (["the allocation"] if resumed.get("allocation") else []) + (
        [f"the retraining at iteration {resumed['retraining_from_iter']}"]
        if resumed.get("retraining_from_iter") is not None else [])
    return [f"Resumed from a killed run: {' and '.join(taken)} (the seconds below are this "
            "run's only).", ""]


def render_markdown(r):
    cov = r["coverage"]
    lines = [
        f"# Pruning report: {r['model_name']}",
        "",
        f"Config `{r['config']}`, weights `{r['model_path']}`, criterion {r['criterion']}, "
        f"target {'latency' if r.get('target') == 'latency' else 'FLOPs'} reduction "
        f"{r['pruning_ratio']}, input {r['input_shape']}.",
        "",
        "| | before | after |",
        "|-|-|-|",
        f"| GFLOPs | {r['flops_before'] / 1e9:.4f} | {r['flops_after'] / 1e9:.4f} |",
        f"| params | {r['params_before']:,} | {r['params_after']:,} |",
        "",
        f"Realized FLOPs reduction: {r['flops_reduction']:.3f}"
        + ("" if r["target_reachable"] else
           f" (target {r['pruning_ratio']} lowered to {r['max_reachable_ratio']:.3f}, the most "
           "the sensitivity grid reaches, as --allow_lower_target allowed)"),
        "",
        "| mIoU | value |",
        "|-|-|",
        f"| baseline | {r['miou_baseline']:.4f} |",
        f"| right after pruning | {r['miou_pruned']:.4f} |",
        f"| after {r['retraining_iters']} retraining iterations | {r['miou_retrained']:.4f} |",
        "",
    ] + recipe_lines(r.get("retraining_recipe")) \
        + reconstruction_lines(r.get("reconstruction")) + step_lines(r.get("prune_steps")) \
        + budget_lines(r.get("budget")) + trial_lines(r.get("allocation_trial")) + [
        f"Coverage: {cov['prunable_convs']} of {cov['convs']} convs prunable, "
        f"{cov['flops_coverage']:.1%} of conv FLOPs in prunable groups"
        + (f"; {describe_op_freezes(cov)}." if cov.get("frozen_by_ops") else "."),
        "",
    ] + resumed_lines(r.get("resumed")) + [
        "| phase | seconds |",
        "|-|-|",
    ]
    lines += [f"| {name} | {sec} |" for name, sec in r["seconds"].items()]
    lines += ["", "| layer (group) | ratio |", "|-|-|"]
    lines += [f"| `{gid}` | {ratio:.3f} |" for gid, ratio in r["layer_ratios"].items()]
    lines += target_report_lines(r)
    return "\n".join(lines) + "\n"
