"""Accuracy over retraining seeds, as RESULTS.md reports it: means and spreads, differences
judged against the noise, and the accuracy-recovery section (the issues' goals: bench_goals.py).

Pure functions of results.json (its ``recovery`` entries and its ``models`` rows), kept apart
from bench_recovery.py: that file is part of every recovery unit's cache key, so a change to how
the numbers are written must not throw the measured units away.
"""
import math
import re

from scipy import stats

# a difference of means counts when it is outside the 95% interval of Welch's t-test: with three
# seeds a side the t quantile (2.8 at 4 degrees of freedom, 4.3 at 2) is well above the normal
# approximation's 2, which called too many 3-seed differences real
CONFIDENCE = 0.95
WITHIN_POINTS = 1.0   # the accuracy issue's goal: within 1 point of the control (bench_goals)
# the benchmark's models, in RESULTS.md's order (prune_speedup.MODELS); a study's results.json
# may hold fewer of them
MODEL_ORDER = ("BiSeNetV2", "FCN-HRNetW18", "FastSCNN", "HarDNet", "UNet")


def mean_sd(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def compare(a, b):
    """(difference of means in points, the noise bound in points, beyond it?) of two seed
    lists: the bound is the half-width of Welch's t interval of the difference (CONFIDENCE)."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    diff = 100 * (ma - mb)
    if len(a) < 2 or len(b) < 2:   # one seed has no spread to judge by
        return diff, 0.0, False
    noise = welch_half_width(sa ** 2 / len(a), sb ** 2 / len(b), len(a) - 1, len(b) - 1)
    return diff, 100 * noise, abs(ma - mb) > noise


def welch_half_width(var_a, var_b, dof_a, dof_b):
    """Half-width of the CONFIDENCE interval of a difference of two means whose squared
    standard errors are ``var_a`` and ``var_b`` (Welch-Satterthwaite degrees of freedom)."""
    variance = var_a + var_b
    if variance == 0:
        return 0.0
    dof = variance ** 2 / (var_a ** 2 / dof_a + var_b ** 2 / dof_b)
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) * math.sqrt(variance)


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


def row_recipe(entry):
    """The recipe the recovery entry retrained the headline rows with over seeds
    (``--row_recipe``; entries from before it: the config schedule, ``plain``)."""
    return entry.get("row_recipe", "plain")


def seed_mious(results, model):
    """(the seed mIoUs of the control the seeded rows are measured against, or None,
    {(row kind, ratio): seed mIoUs}) of the headline rows the recovery phase retrained over
    seeds with its row recipe (row_recipe): the latency row, and the ``--frontier_seeds`` rows;
    the control is that recipe's (the unpruned model fine-tuned with its schedule). Empty where
    the recovery phase has not run or retrained other rows than the headline table's
    (retrains_headline)."""
    entry = (results.get("recovery") or {}).get(model)
    if (not entry or row_recipe(entry) not in entry["recipes"]
            or not retrains_headline(results, model)):
        return None, {}
    recipe = entry["recipes"][row_recipe(entry)]
    mious = {("latency", entry["ratio"]): recipe["mious"]}
    mious.update({(r["kind"], r["ratio"]): r["mious"] for r in entry.get("rows", [])})
    return entry["controls"][recipe["control"]]["mious"], mious


def row_recipe_lines(results):
    """A sentence naming the models whose rows' seeds are another recipe's than the config
    schedule's (``--row_recipe``), or none."""
    named = [f"{model}: {entry['recipes'][row_recipe(entry)]['label']}"
             for model, entry in (results.get("recovery") or {}).items()
             if row_recipe(entry) != "plain" and row_recipe(entry) in entry["recipes"]]
    if not named:
        return []
    return ["Rows retrained over seeds with another recipe than the config schedule "
            "(`--row_recipe`), each against the control fine-tuned with that recipe's schedule "
            f"and the same seeds: {'; '.join(named)}."]


def seed_deltas(results, model):
    """(the config-schedule control's seed mean or None, {(row kind, ratio): (mean mIoU change
    in points, its sd in points, seeds)}) of the rows of seed_mious, against the seed mean of
    their control. The first is what a row retrained once (as the headline table's rows and
    PaddleSlim's are: config schedule) is measured against."""
    control_mious, mious = seed_mious(results, model)
    if control_mious is None:
        return None, {}
    config = results["recovery"][model]["controls"].get("config schedule")
    control = mean_sd(control_mious)[0]
    return (mean_sd(config["mious"])[0] if config else None), {
        key: (100 * (mean_sd(v)[0] - control), 100 * mean_sd(v)[1], len(v))
        for key, v in mious.items()}


def row_delta(results, model, row):
    """(mIoU change in points against the control, sd in points or None, seeds) of a headline
    row: its seed mean where the recovery phase retrained it over seeds (against its recipe's
    control); else its one retraining, against the config-schedule control's seed mean where
    there is one (so that every point of a model has the same baseline), else against the
    single-seed control."""
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
             "Δ vs control, points (± 95% CI) | Δ vs config schedule, points (± 95% CI) | "
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
    lines += ["", f"Within {WITHIN_POINTS:.1f} point of the control ({len(entry['seeds'])}-seed "
              "means): "
              + (", ".join(within) if within else "no recipe") + ".", ""]
    if entry.get("rows"):
        name = row_recipe(entry)
        label = recipes[name]["label"] if name in recipes else name
        lines += [f"The frontier's other rows, retrained with the same seeds and the row recipe "
                  f"(`--row_recipe {name}`: {label}), each against that recipe's control:", "",
                  "| Row | mIoU mean ± sd | its control | Δ vs control, points (± 95% CI) |",
                  "|---|---|---|---|"]
        for r in entry["rows"]:
            control = controls[r["control"]]["mious"]
            lines.append(f"| {r['label']} | {spread(r['mious'])} | {spread(control)} | "
                         f"{verdict(*compare(r['mious'], control))} |")
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
             f"split. A difference counts only outside the {CONFIDENCE:.0%} interval of Welch's "
             "t-test on the seeds (± below: its half-width); inside it, it is reported as "
             "noise.", ""]
    for model, entry in recovery.items():
        lines += model_lines(model, entry)
        if not retrains_headline(results, model):
            headline_code = results.get("models", {}).get(model, {}).get("git", "not measured")
            lines += [f"This row is not the headline table's {entry['row_label']} row of "
                      f"{model} (that one is from code {headline_code}): the seeds above are not "
                      "put into the headline table, whose row keeps its one retraining until the "
                      "headline is measured again at this code.", ""]
    return lines


# ---------------------------------------------------------------- headline rows
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
def delta_text(delta, sd, seeds, unit=""):
    """A row's mIoU change in points as every table shows it: a seed mean with its sd, or one
    retraining said to be one (``unit`` follows the figure, as in prose)."""
    if seeds > 1:
        return f"{delta:+.1f} ± {sd:.1f}{unit} ({seeds} seeds)"
    return f"{delta:+.1f}{unit} (1 seed)"
