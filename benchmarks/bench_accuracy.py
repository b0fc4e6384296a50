"""Accuracy over retraining seeds, as RESULTS.md reports it: means and spreads, differences
judged against the noise, the accuracy-recovery section and the goals of the accuracy issues.

Pure functions of results.json (its ``recovery`` entries and its ``models`` rows), kept apart
from bench_recovery.py: that file is part of every recovery unit's cache key, so a change to how
the numbers are written must not throw the measured units away.
"""
import math
import re
import statistics

NOISE_SE = 2.0   # a difference of means beyond 2 standard errors is called a difference
WITHIN_POINTS = 1.0   # the accuracy issue's goal: within 1 point of the control
HALF = 0.5   # ... and at least half of the loss the issue was filed with recovered:
# mIoU points against the control at latency target 0.3, from the accuracy issue's own table
# (one retraining each, at the rows of that day); its goal names them ("Fast-SCNN from -11.2 to
# -5.6 or better"), so they are the yardstick, not the default retraining of today's row
FILED_LOSS = {"BiSeNetV2": -4.7, "FCN-HRNetW18": -1.3, "FastSCNN": -11.2, "HarDNet": -5.6,
              "UNet": -2.3}
MAX_COST = 1.5   # ... at most 1.5x the default retraining's time per iteration
# prune.py's message when --max_miou_drop finds no cut within the budget (budget.py)
NO_CUT = "the unpruned model stays the answer"
DEFAULT_WINS = 4   # a recipe becomes the default only where it wins on 4 of the 5 models
GOAL_SPEEDUP = 1.38   # the speedup its rows must keep (latency target 0.3)
BUDGET_MEDIAN_SPEEDUP = 1.5   # the budget issue: --max_miou_drop 1.0 rows' median speedup
DEEP_RATIO, DEEP_SPEEDUP, DEEP_POINTS = 0.5, 1.9, 3.0   # ... and latency target 0.5's goal


def mean_sd(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def compare(a, b):
    """(difference of means in points, the noise bound in points, beyond it?) of two seed
    lists: the bound is NOISE_SE standard errors of the difference."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    noise = NOISE_SE * math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    diff = 100 * (ma - mb)
    return diff, 100 * noise, abs(ma - mb) > noise and len(a) > 1 and len(b) > 1


def spread(values):
    mean, sd = mean_sd(values)
    return f"{mean:.4f} ± {sd:.4f} (n={len(values)})"


def verdict(diff, noise, beyond):
    return f"{diff:+.1f} ± {noise:.1f}: " + ("beyond the noise" if beyond else "within the noise")


def met(ok):
    return "met" if ok else "missed"


# ---------------------------------------------------------------- rows over seeds


def code_of(git):
    """The commit of a recorded ``commit`` or ``commit+dirty``."""
    return (git or "").split("+")[0][:12]


def retrains_headline(results, model):
    """Whether the model's recovery entry retrained the headline table's own latency row: the
    same prune step (its key, recorded since the entry has ``row_step_key``; older entries: the
    same code). A recovery run at other code may allocate another plan (the closing loop times
    the model), so its seeds must not be put beside another row's speedup and widths."""
    entry = (results.get("recovery") or {}).get(model)
    headline = results.get("models", {}).get(model)
    if not entry or not headline:
        return False
    if "row_step_key" in entry:
        row = find_row(headline, "latency", entry["ratio"])
        return row is not None and row.get("step_key") == entry["row_step_key"]
    return code_of(entry.get("git")) == code_of(headline.get("git"))


def seed_mious(results, model):
    """(the config-schedule control's seed mIoUs or None, {(row kind, ratio): seed mIoUs}) of
    the headline rows the recovery phase retrained over seeds: the latency row with the config
    schedule, and the ``--frontier_seeds`` rows. Empty where the recovery phase has not run or
    retrained other rows than the headline table's (retrains_headline)."""
    entry = (results.get("recovery") or {}).get(model)
    if not entry or "plain" not in entry["recipes"] or not retrains_headline(results, model):
        return None, {}
    mious = {("latency", entry["ratio"]): entry["recipes"]["plain"]["mious"]}
    mious.update({(r["kind"], r["ratio"]): r["mious"] for r in entry.get("rows", [])})
    return entry["controls"]["config schedule"]["mious"], mious


def seed_deltas(results, model):
    """(control mean or None, {(row kind, ratio): (mean mIoU change in points, its sd in points,
    seeds)}) of the rows of seed_mious, against the seed mean of the config-schedule control."""
    control_mious, mious = seed_mious(results, model)
    if control_mious is None:
        return None, {}
    control = mean_sd(control_mious)[0]
    return control, {key: (100 * (mean_sd(v)[0] - control), 100 * mean_sd(v)[1], len(v))
                     for key, v in mious.items()}


def row_delta(results, model, row):
    """(mIoU change in points against the control, sd in points or None, seeds) of a headline
    row: its seed mean where the recovery phase retrained it over seeds; else its one
    retraining, against the control's seed mean where there is one (so that every point of a
    model has the same baseline), else against the single-seed control."""
    control, seeded = seed_deltas(results, model)
    if row["row"] == "control":
        return 0.0, None, 1
    key = (row["row"], row["ratio"])
    if key in seeded:
        return seeded[key]
    if control is not None and row.get("miou") is not None:
        return 100 * (row["miou"] - control), None, 1
    return row["miou_delta_points"], None, 1


def seed_counts_text(own, other):
    """'1 seed each', or '3 seeds against 1': the retrainings behind two rows."""
    seeds = f"{own} seed{'s' if own > 1 else ''}"
    return f"{seeds} each" if own == other else f"{seeds} against {other}"


def row_gap(results, model, row, other):
    """``row``'s mIoU change minus ``other``'s (two headline rows of ``model``), in points:
    (difference, noise bound or None, beyond it?, the seed counts in words). Their seed means,
    judged against the noise, where the recovery phase retrained both over seeds; else each
    row's own change as row_delta has it (a seed mean or one retraining), its noise unknown."""
    seeded = seed_mious(results, model)[1]
    mious = [seeded.get((r["row"], r["ratio"])) or [] for r in (row, other)]
    counts = seed_counts_text(*(len(m) or 1 for m in mious))
    if all(len(m) > 1 for m in mious):
        return (*compare(*mious), counts)
    diff = row_delta(results, model, row)[0] - row_delta(results, model, other)[0]
    return diff, None, False, counts


# ---------------------------------------------------------------- the recovery section


def recipe_delta(entry, name):
    """(mean mIoU change in points against the recipe's own control, its cost per iteration
    relative to the config schedule's or None)."""
    recipe = entry["recipes"][name]
    control = entry["controls"][recipe["control"]]["mious"]
    delta = 100 * (mean_sd(recipe["mious"])[0] - mean_sd(control)[0])
    plain = entry["recipes"].get("plain")
    cost = (mean_sd(recipe["seconds_per_iter"])[0] / mean_sd(plain["seconds_per_iter"])[0]
            if plain else None)
    return delta, cost


def unit_threads_text(entry):
    """How the units ran (their time per iteration depends on it); older entries: not said."""
    if "unit_threads" not in entry:
        return ""
    return (f"; each unit {entry['unit_threads']} thread(s), {entry['units_at_once']} unit(s) at "
            "once")


def model_lines(model, entry):
    recipes, controls = entry["recipes"], entry["controls"]
    plain = recipes.get("plain")
    lines = [f"### {model}", "",
             f"Row: {entry['row_label']}, speedup {entry['speedup']} (measured by prune.py on this "
             f"machine), {entry['retraining_iters']} retraining iterations, seeds "
             f"{', '.join(map(str, entry['seeds']))}{unit_threads_text(entry)}. "
             f"Machine: {entry['machine']}; "
             f"`{entry['command']}` (code {entry['git']}, {entry['date']}).", "",
             "| Recipe | prune.py flags | mIoU mean ± sd | its control (same schedule) | "
             "Δ vs control, points (± 2 SE) | Δ vs config schedule, points (± 2 SE) | "
             "retraining s/iter (× config) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in recipes.items():
        control = controls[r["control"]]["mious"]
        vs_plain = verdict(*compare(r["mious"], plain["mious"])) if plain and name != "plain" \
            else ""
        per_iter, cost = mean_sd(r["seconds_per_iter"])[0], recipe_delta(entry, name)[1]
        cost_text = f"{per_iter:.2f}" + (f" ({cost:.2f}x)" if cost is not None else "")
        lines.append(f"| {r['label']} | `{' '.join(r['flags']) or '(none)'}` | "
                     f"{spread(r['mious'])} | {spread(control)} | "
                     f"{verdict(*compare(r['mious'], control))} | {vs_plain} | {cost_text} |")
    within = [recipes[n]["label"] for n in recipes
              if recipe_delta(entry, n)[0] >= -WITHIN_POINTS]
    lines += ["", f"Within {WITHIN_POINTS:.1f} point of the control (3-seed means): "
              + (", ".join(within) if within else "no recipe") + ".", ""]
    if entry.get("rows"):
        control = controls["config schedule"]["mious"]
        lines += ["The frontier's other rows, each retrained as the headline table's (config "
                  "schedule) with the same seeds:", "",
                  "| Row | mIoU mean ± sd | control (config schedule) | Δ vs control, points "
                  "(± 2 SE) |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | {spread(r['mious'])} | {spread(control)} | "
                  f"{verdict(*compare(r['mious'], control))} |" for r in entry["rows"]]
        lines.append("")
    return lines


def recovery_lines(results):
    """RESULTS.md's accuracy recovery section, from results.json's ``recovery``."""
    recovery = results.get("recovery") or {}
    if not recovery:
        return ["Not yet measured: run `benchmarks/prune_speedup.py --phase recovery`."]
    lines = ["Each recipe retrains the latency-target row's own pruned model (same plan, widths "
             "and speed), once per seed; its control fine-tunes the unpruned model as many "
             "iterations with the recipe's schedule and the same seeds. mIoU on the full val "
             f"split. A difference counts only beyond {NOISE_SE:g} standard errors of the "
             "difference of the means (sd of the seeds); inside that it is reported as noise.", ""]
    for model, entry in recovery.items():
        lines += model_lines(model, entry)
        if not retrains_headline(results, model):
            headline_code = results.get("models", {}).get(model, {}).get("git", "not measured")
            lines += [f"This row is not the headline table's {entry['row_label']} row of "
                      f"{model} (that one is from code {headline_code}): the seeds above are not "
                      "put into the headline table, whose row keeps its one retraining until the "
                      "headline is measured again at this code.", ""]
    return lines


# ---------------------------------------------------------------- the goals


def find_row(entry, kind, ratio, status="ok"):
    """The model's row of ``kind`` at ``ratio`` with ``status`` ("ok": it ran), or None."""
    return next((r for r in entry["rows"] if r["row"] == kind and r["status"] == status
                 and r["ratio"] is not None and abs(r["ratio"] - ratio) < 1e-9), None)


def time_limit_seconds(row):
    """The time limit that stopped a failed step (not an error of the method), else None."""
    stopped = re.match(r"stopped after (\d+) s", row.get("error") or "")
    return int(stopped.group(1)) if row["status"] == "failed" and stopped else None


def cell(text):
    """``text`` as one markdown table cell."""
    return (text or "").replace("|", "\\|").replace("\n", " ")


def recipe_iters(entry, name):
    """Retraining iterations of recipe ``name``: its own --retraining_iters, else the row's."""
    flags = entry["recipes"][name]["flags"]
    return next((int(flags[i + 1]) for i in range(len(flags) - 1)
                 if flags[i] == "--retraining_iters"), entry["retraining_iters"])


def equal_length_recipes(entry):
    """The recipes retrained as many iterations as the row: the goal and the defaults compare
    recipes at equal retraining iterations (a longer one is the user's --retraining_iters)."""
    return [name for name in entry["recipes"]
            if recipe_iters(entry, name) == entry["retraining_iters"]]


def best_recipe(entry):
    """The recipe at the row's length with the highest mean mIoU change against its own
    control."""
    return max(equal_length_recipes(entry), key=lambda name: recipe_delta(entry, name)[0])


def recovery_goal(model, results):
    """One model's row of the accuracy-recovery goals (latency target 0.3), or None where its
    recovery phase has not run. The default retraining is the ``plain`` recipe (no recipe is
    the default); "half of the loss" is judged against the loss the issue was filed with
    (FILED_LOSS), else, for a model it did not name, against the default's 3-seed loss."""
    entry = (results.get("recovery") or {}).get(model)
    if not entry or "plain" not in entry["recipes"]:
        return None
    headline = find_row(results["models"].get(model, {"rows": []}), "latency", entry["ratio"])
    if retrains_headline(results, model):
        speedup = headline.get("speedup") if headline else None
    else:   # its own row: the speedup prune.py measured for it ("1.40x", or "not timed")
        speedup = float(entry["speedup"][:-1]) if entry["speedup"].endswith("x") else None
    default_loss = recipe_delta(entry, "plain")[0]
    best = best_recipe(entry)
    best_delta, best_cost = recipe_delta(entry, best)
    filed = FILED_LOSS.get(model, default_loss)
    recovered = best_delta >= HALF * filed if filed < 0 else True
    return {"speedup": speedup, "default": default_loss, "filed": filed, "best": best,
            "best_label": entry["recipes"][best]["label"], "best_delta": best_delta,
            "best_cost": best_cost, "within": best_delta >= -WITHIN_POINTS,
            # its accuracy verdicts are then for a slower model than the goal asks for
            "under_speed": speedup is not None and speedup < GOAL_SPEEDUP,
            "recovered_half": recovered,
            "cost_ok": best_cost is not None and best_cost <= MAX_COST}


def frontier_beats(curve, point):
    """Whether the latency target's curve [(speedup, points)] dominates ``point``: at the
    point's speedup (linear between measured rows) it keeps at least as much mIoU, or one of its
    rows is both faster and at least as accurate. None when the curve cannot say (it does not
    reach the point's speedup and no row is faster)."""
    speed, points = point
    if any(s >= speed and p >= points for s, p in curve):
        return True
    for (s0, p0), (s1, p1) in zip(curve, curve[1:]):
        if s0 <= speed <= s1 and s1 > s0:
            return p0 + (p1 - p0) * (speed - s0) / (s1 - s0) >= points
    return False if any(s >= speed for s, _ in curve) else None


def speed_points(results, model, row):
    return row["speedup"], row_delta(results, model, row)[0]


def delta_text(delta, sd, seeds, unit=""):
    """A row's mIoU change in points as every table shows it: a seed mean with its sd, or one
    retraining said to be one (``unit`` follows the figure, as in prose)."""
    if seeds > 1:
        return f"{delta:+.1f} ± {sd:.1f}{unit} ({seeds} seeds)"
    return f"{delta:+.1f}{unit} (1 seed)"


def budget_goal_lines(results):
    models = results["models"]
    lines = [f"`--max_miou_drop {WITHIN_POINTS:.1f}` rows (mIoU change against the control's "
             "seed mean where the recovery phase ran, with the row's own seed mean where "
             "`--frontier_seeds` retrained it):", "",
             "| Model | chosen cut | speedup | Δ vs control, points | within budget | "
             "why the search stopped |", "|---|---:|---:|---:|---|---|"]
    speedups = []
    for model, entry in models.items():
        row = find_row(entry, "latency_budget", WITHIN_POINTS)
        failed = find_row(entry, "latency_budget", WITHIN_POINTS, "failed")
        if failed and NO_CUT in (failed["error"] or ""):
            # no cut met the budget: the unpruned model is the answer, at 1.00x
            speedups.append(1.0)
            lines.append(f"| {model} | none | 1.00x | +0.0 | met (unpruned) | "
                         f"{cell(failed['error'])} |")
            continue
        if not row or row.get("speedup") is None:
            status = f"failed: {cell(failed['error'])}" if failed else "not measured"
            lines.append(f"| {model} | - | - | - | {status} | |")
            continue
        budget = row.get("budget") or {}
        speedups.append(row["speedup"])
        delta, sd, seeds = row_delta(results, model, row)
        lines.append(f"| {model} | {budget.get('chosen_cut', '-')} | {row['speedup']:.2f}x | "
                     f"{delta_text(delta, sd, seeds)} | {met(delta >= -WITHIN_POINTS)} | "
                     f"{budget.get('why', '')} |")
    if speedups:
        median = statistics.median(speedups)
        judged = (met(median >= BUDGET_MEDIAN_SPEEDUP) if len(speedups) == 5
                  else "not measured on all five")
        lines += ["", f"Median speedup over the {len(speedups)} measured model(s): "
                  f"{median:.2f}x (goal >= {BUDGET_MEDIAN_SPEEDUP}x over all five: {judged})."]
    lines += ["", f"Latency target {DEEP_RATIO:g} (goal: >= {DEEP_SPEEDUP}x where the unprunable "
              f"share allows it, within {DEEP_POINTS:g} points of the control), and the frontier "
              "against PaddleSlim's row (the latency target's curve from the control at 1.00x, "
              "linear between its rows, at PaddleSlim's speedup):", "",
              "| Model | largest speedup pruning can reach | speedup | Δ vs control, points | "
              f"goal at {DEEP_RATIO:g} | frontier dominates PaddleSlim |",
              "|---|---:|---:|---:|---|---|"]
    for model, entry in models.items():
        row = find_row(entry, "latency", DEEP_RATIO)
        reach = next((r["latency_target"]["max_speedup"] for r in entry["rows"]
                      if (r.get("latency_target") or {}).get("max_speedup")), None)
        if row and row.get("speedup") is not None:
            reachable = reach is None or reach >= DEEP_SPEEDUP
            delta, sd, seeds = row_delta(results, model, row)
            goal = (met(row["speedup"] >= DEEP_SPEEDUP and delta >= -DEEP_POINTS) if reachable
                    else f"out of reach ({reach:.2f}x); within {DEEP_POINTS:g} points: "
                    f"{met(delta >= -DEEP_POINTS)}")
            cells = f"{row['speedup']:.2f}x | {delta_text(delta, sd, seeds)} | {goal}"
        else:
            failed = find_row(entry, "latency", DEEP_RATIO, "failed")
            cells = "- | - | " + (f"failed: {cell(failed['error'])}" if failed else "not measured")
        curve = sorted(speed_points(results, model, r) for r in entry["rows"]
                       if r["row"] in ("control", "latency") and r["status"] == "ok"
                       and r.get("speedup") is not None)
        slim = next((r for r in entry["rows"] if r["row"] == "paddleslim"), None)
        if slim is None:
            dominance = "no PaddleSlim row"
        elif time_limit_seconds(slim):
            dominance = "PaddleSlim did not finish"
        elif slim["status"] != "ok":
            dominance = f"PaddleSlim {slim['status']}"
        elif slim.get("speedup") is None:   # --phase prepare ran, --phase latency not yet
            dominance = "PaddleSlim not timed"
        else:
            beats = frontier_beats(curve, speed_points(results, model, slim))
            dominance = ("not measured" if beats is None else met(beats)) + \
                f" ({len(curve) - 1} latency row(s))"
        lines.append(f"| {model} | {f'{reach:.2f}x' if reach else 'not recorded'} | {cells} | "
                     f"{dominance} |")
    return lines


def recipe_outcome(entry, name):
    """("wins", "loses" or "noise", the change in points) of recipe ``name`` against the config
    schedule over the same seeds; None where either was not measured."""
    recipes = entry["recipes"]
    if name not in recipes or "plain" not in recipes:
        return None
    diff, _, beyond = compare(recipes[name]["mious"], recipes["plain"]["mious"])
    return ("wins" if diff > 0 else "loses") if beyond else "noise", diff


def default_decision(wins, unmeasured):
    if wins >= DEFAULT_WINS:
        return "yes"
    if wins + unmeasured < DEFAULT_WINS:
        return f"no: it cannot win on {DEFAULT_WINS} models any more"
    return f"open: {DEFAULT_WINS - wins} more win(s) needed, {unmeasured} model(s) not measured"


def defaults_lines(results):
    """Which recipe may become prune.py's default: one that beats the config schedule beyond
    the noise, at equal retraining iterations, on at least DEFAULT_WINS models."""
    models = list(results["models"])
    recovery = results.get("recovery") or {}
    names = []
    for entry in recovery.values():
        names += [n for n in equal_length_recipes(entry) if n != "plain" and n not in names]
    if not names:
        return []
    lines = [f"A recipe becomes prune.py's default only where it beats the config schedule beyond "
             f"the noise, at equal retraining iterations, on at least {DEFAULT_WINS} of the "
             f"{len(models)} models (change against the config schedule over the same seeds, "
             "points; cost: time per iteration against it, mean over the models measured):", "",
             "| Recipe | " + " | ".join(models) + " | wins | cost | default |",
             "|---|" + "---:|" * len(models) + "---:|---:|---|"]
    for name in names:
        cells, wins, costs, label = [], 0, [], None
        for model in models:
            entry = recovery.get(model)
            outcome = recipe_outcome(entry, name) if entry else None
            if outcome is None:
                cells.append("-")
                continue
            label = entry["recipes"][name]["label"]
            wins += outcome[0] == "wins"
            cells.append(f"{outcome[1]:+.1f} ({outcome[0]})")
            cost = recipe_delta(entry, name)[1]
            if cost is not None:
                costs.append(cost)
        cost_text = f"{statistics.mean(costs):.2f}x" if costs else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {wins} | {cost_text} | "
                     f"{default_decision(wins, cells.count('-'))} |")
    return lines + [""]


def goal_lines(results):
    """RESULTS.md's goals of the accuracy-recovery and the accuracy-budget issues, each stated
    as met, missed or not measured."""
    lines = [f"At the latency target 0.3 (speedup >= {GOAL_SPEEDUP}x), 3-seed means of the "
             "recovery phase: the best recipe within "
             f"{WITHIN_POINTS:.1f} point of its control, at least half of the loss the issue "
             "was filed with recovered (its one-retraining figure, then the goal), at most "
             f"{MAX_COST}x the default retraining's time per iteration.", "",
             "| Model | speedup | default retraining: Δ vs control | best recipe | its Δ | "
             f"within {WITHIN_POINTS:.1f} point | half of the filed loss recovered | "
             "cost (× default) |",
             "|---|---:|---:|---|---:|---|---|---|"]
    for model in results["models"]:
        goal = recovery_goal(model, results)
        if goal is None:
            lines.append(f"| {model} | - | not measured | | | not measured | not measured | |")
            continue
        speed = "-" if goal["speedup"] is None else f"{goal['speedup']:.2f}x"
        cost = "-" if goal["best_cost"] is None else \
            f"{goal['best_cost']:.2f}x ({met(goal['cost_ok'])})"
        # an accuracy goal met on a row slower than the goal's speed is met only for that row
        slow = f" (at {speed})" if goal["under_speed"] else ""
        if goal["under_speed"]:
            speed += f" (under {GOAL_SPEEDUP}x)"
        lines.append(f"| {model} | {speed} | {goal['default']:+.1f} | {goal['best_label']} | "
                     f"{goal['best_delta']:+.1f} | {met(goal['within'])}{slow} | "
                     f"{met(goal['recovered_half'])}{slow} ({goal['filed']:+.1f} -> "
                     f"{HALF * goal['filed']:+.1f}) | {cost} |")
    return (lines + [""] + longer_lines(results) + defaults_lines(results)
            + budget_goal_lines(results))


def longer_lines(results):
    """The recipes that retrain longer than the row, each against its control fine-tuned as
    long: whether the loss is the pruning's or the short retraining's."""
    lines = []
    for model, entry in (results.get("recovery") or {}).items():
        same_length = equal_length_recipes(entry)
        for name in entry["recipes"]:
            if name in same_length:
                continue
            recipe = entry["recipes"][name]
            control = entry["controls"][recipe["control"]]["mious"]
            diff = compare(recipe["mious"], control)
            lines.append(f"| {model} | {recipe['label']} | {recipe_iters(entry, name)} "
                         f"({entry['retraining_iters']}) | {verdict(*diff)} | "
                         f"{met(diff[0] >= -WITHIN_POINTS)} |")
    if not lines:
        return []
    return ([f"Retrained longer than the row (not counted above: the goal compares recipes at "
             "the row's retraining iterations), each against its control fine-tuned as long:",
             "", "| Model | Recipe | iterations (the row's) | Δ vs control, points (± 2 SE) | "
             f"within {WITHIN_POINTS:.1f} point |", "|---|---|---:|---:|---|"] + lines + [""])
