"""How much of a latency-target row's mIoU is retraining noise: the benchmark's latency-target row
and its equal-loss control (RESULTS.md, "The latency target against its goal") retrained again
with other seeds, from the same pruned model. Writes docs/retrain_seeds.md.

    python benchmarks/studies/retrain_seeds.py --work_dir WORK_DIR --seeds 0 1 2   # the misses
    python benchmarks/studies/retrain_seeds.py --work_dir WORK_DIR --models UNet --seeds 0 1 2
    python benchmarks/studies/retrain_seeds.py --work_dir WORK_DIR --models UNet --ratio 0.5 \
        --rows latency --sen_bn_batches 4 --out docs/sen_bn_batches.md

The rows are those at latency target ``--ratio`` (0.3, the goal's, by default).

Each row's pruned model is rebuilt from its report.json: the same checkpoint, the same plan (its
``layer_ratios``) and criterion; its mIoU right after pruning must equal the row's (else the code
prunes differently now, and the script says so). It is then fine-tuned as prune.py does
(``--retraining_iters`` and recipe of the row, ``--seed S``, the benchmark's training threads;
benchmarks/bench_recovery.py's ``retrain_unit``) and evaluated on the full val split. Seed 0 repeats the row's own retraining: whether it
gives the row's mIoU again is shown. Each (row, seed) result is kept under
``WORK_DIR/MODEL/retrain_seeds/``, keyed by the report's bytes, the seed, the threads and the
code, so a killed run resumes and other arguments never reuse it.

``--allocations balanced`` adds, per model, the latency row's recorded prune.py command run again
with ``--latency_allocation balanced`` (same checkpoint, sensitivities, latency table, target and
seed; kept under ``retrain_seeds/`` keyed by the command and the code), its own retraining as the
run's seed and the other seeds retrained as above: whether another allocation keeps more mIoU
than the benchmark's at the same target, beyond retraining noise. ``--sen_bn_batches K`` adds
the same command run with ``--sen_bn_batches K`` (its own sensitivity file, one per model that
the rows at every target share: the points
are scored with batch norms recalibrated, so the allocation and the plan change), retrained the
same way. Speed for every row is then also given as prune.py measured it (its own timing of the
exports in turn, after retraining), the one figure all rows have.
"""
import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # prune_speedup, bench_*
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [BENCHMARKS, ROOT]

import bench_accuracy  # noqa: E402
import bench_cache  # noqa: E402
import bench_recovery  # noqa: E402
import bench_report  # noqa: E402
from paddleseg.utils import cli, logger  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402
from paddleseg.utils.fileio import write_json, write_text  # noqa: E402
from paddleseg.slim.latency.allocate import ALLOCATIONS  # noqa: E402
from prune_speedup import LATENCY_ALLOCATIONS, generated_by, step_file  # noqa: E402

ROWS = ("latency", "latency_equal_loss")
SAME_PRUNED_MIOU = 1e-6


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", required=True, help="the benchmark's --work_dir")
    p.add_argument("--out_dir", default="benchmarks", help="where results.json is")
    p.add_argument("--out", default="docs/retrain_seeds.md")
    p.add_argument("--models", nargs="*", help="default: those that miss the mIoU goal")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--allocations", nargs="*", default=[],
                   choices=[a for a in ALLOCATIONS if a not in LATENCY_ALLOCATIONS.values()],
                   help="other --latency_allocation values to prune the latency row with and "
                        "retrain the same way")
    p.add_argument("--sen_bn_batches", type=int, default=0,
                   help="also prune the latency row with prune.py --sen_bn_batches K (points "
                        "scored with batch norms recalibrated) and retrain it the same way")
    p.add_argument("--ratio", type=float, default=0.3,
                   help="the latency target whose rows are retrained (the goal's: 0.3)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                   help="the benchmark's rows to retrain (default both; the variants are "
                        "compared with each of them that is retrained)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if (args.allocations or args.sen_bn_batches) and ROWS[0] not in args.rows:
        raise UserError(f"--rows {' '.join(args.rows)}: the variants are the {ROWS[0]} row's "
                        f"command run again; keep {ROWS[0]} among --rows")
    return args


def result_key(report_bytes, seed, threads):
    return bench_cache.digest({"report": hashlib.sha256(report_bytes).hexdigest(), "seed": seed,
                               "threads": threads,
                               "code": bench_cache.code_version(bench_cache.PRUNE_SOURCES + (
                                   "benchmarks/bench_recovery.py",))})[:12]


def retrain_once(report, seed, threads, dataset_root, work):
    """mIoU on the full val split after retraining the report's pruned model with ``seed`` and
    the report's own recipe (bench_recovery.retrain_unit: the pipeline's prune and retrain)."""
    from paddleseg.utils import distributed
    distributed.set_cpu_threads(threads)
    start = time.time()
    result = bench_recovery.retrain_unit(report, recipe_flags(report), seed, work, dataset_root)
    steps = (report.get("retraining_recipe") or {}).get("prune_steps", 1)
    if steps == 1 and abs(result["miou_pruned"] - report["miou_pruned"]) > SAME_PRUNED_MIOU:
        raise UserError(f"the rebuilt pruned model's mIoU is {result['miou_pruned']:.6f}, the "
                        f"row's {report['miou_pruned']:.6f}: this code prunes differently from "
                        "the code that made the row; run this script at the row's commit")
    return {"seed": seed, "miou": result["miou"], "miou_pruned": result["miou_pruned"],
            "seconds": round(time.time() - start, 1)}


def recipe_flags(report):
    """prune.py's flags for the report's retraining recipe (``retraining_recipe``; rows made
    before it existed used the config's schedule, no distillation and no refit)."""
    recipe = report.get("retraining_recipe") or {}
    flags = ["--retrain_schedule", recipe.get("schedule", "config")]
    if recipe.get("schedule") == "finetune":
        flags += ["--learning_rate", str(recipe["learning_rate"])]   # the peak it used
    if recipe.get("distill", "none") != "none":
        flags += ["--distill", recipe["distill"], "--distill_weight",
                  str(recipe["distill_weight"]), "--distill_temperature",
                  str(recipe["distill_temperature"])]
    if recipe.get("prune_steps", 1) != 1:
        flags += ["--prune_steps", str(recipe["prune_steps"])]
    # the refit as the row had it: its batches, or none (rows made before it existed, or without)
    return flags + ["--reconstruct", str(recipe.get("reconstruct_batches", 0))]


def with_flag(argv, flag, value):
    """``argv`` with ``flag value`` set (replaced, or added before ``--opts``, which takes the
    rest of the line)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        at = argv.index("--opts") if "--opts" in argv else len(argv)
        argv[at:at] = [flag, value]
    return argv


class Variant:
    """The latency row's prune.py command run again with other ``flags``: ``name`` in its
    folder's name and the log, ``label`` after the row's in the tables, ``text`` in the
    sentences. ``own_sensitivity``: it needs a sensitivity file of its own (its points are
    measured otherwise), kept beside its output."""

    def __init__(self, name, flags, label, text, own_sensitivity=False):
        self.name, self.flags, self.label, self.text = name, list(flags), label, text
        self.own_sensitivity = own_sensitivity

    @property
    def kind(self):
        return f"latency_{self.name}"


def variants_of(args):
    found = [Variant(a, ["--latency_allocation", a], f"{a} allocation", f"The {a} allocation")
             for a in args.allocations]
    if args.sen_bn_batches:
        k = args.sen_bn_batches
        found.append(Variant(f"bn{k}", ["--sen_bn_batches", str(k)],
                             f"sensitivity with batch norms recalibrated ({k} batches)",
                             f"With batch norms recalibrated ({k} batches)",
                             own_sensitivity=True))
    return found


def variant_report(args, model, row, variant):
    """report.json of the latency row's recorded prune.py command run again with the
    variant's flags; run once per (command, flags, code)."""
    record = step_file(args.work_dir, model, "prune", row["step_key"], bench_cache.RECORD)
    with open(record, encoding="utf-8") as f:
        recorded = json.load(f)["commands"][0]
    argv = shlex.split(recorded)
    if argv[:2] != ["python", "slim/prune/prune.py"]:
        raise UserError(f"{record}: its command is not a prune.py run: {recorded}")
    key = bench_cache.digest({"command": recorded, "flags": variant.flags,
                              "code": bench_cache.code_version(bench_cache.PRUNE_SOURCES)})[:12]
    folder = os.path.join(args.work_dir, model, "retrain_seeds", f"{variant.name}-{key}")
    report = os.path.join(folder, "out", "report.json")
    if os.path.isfile(report):
        logger.info(f"{model} {variant.label}: reusing {report}")
        return report
    cmd = [sys.executable] + argv[1:]
    for flag, value in zip(variant.flags[::2], variant.flags[1::2]):
        cmd = with_flag(cmd, flag, value)
    if variant.own_sensitivity:
        cmd = with_flag(cmd, "--sen_file", variant_sensitivity(args, model, variant))
    cmd = with_flag(cmd, "--save_dir", os.path.join(folder, "out"))
    logger.info(f"{model}: pruning with {' '.join(variant.flags)}: {shlex.join(cmd)}")
    # prune.py's own progress (sensitivity, search rounds, retraining ETA) shows as it runs
    if subprocess.run(cmd, cwd=ROOT).returncode:
        raise UserError(f"the {variant.label}'s prune.py run for {model} failed (its output is "
                        "above)")
    return report


def variant_sensitivity(args, model, variant):
    """The variant's own sensitivity file, one per model and variant: its points do not depend
    on the target, so the rows at every latency target share it. prune.py refuses a file
    measured otherwise (another checkpoint, grid or setting: its fingerprint), naming the
    difference, so a stale file is never reused silently."""
    return os.path.join(args.work_dir, model, "retrain_seeds", f"{variant.name}-sensitivity.json")


def measure(args, model, entry, kind, path):
    """[{seed, miou, ...}] of the pruned model of report ``path`` retrained with each seed."""
    with open(path, "rb") as f:
        raw = f.read()
    report = json.loads(raw)
    threads = entry["args"]["train_threads"]
    folder = os.path.join(args.work_dir, model, "retrain_seeds")
    os.makedirs(folder, exist_ok=True)
    found = []
    for seed in args.seeds:
        if kind not in ROWS and seed == entry["args"]["seed"]:
            # the run's own retraining, with this seed (rows of the benchmark are rebuilt
            # instead, to show whether they repeat)
            found.append({"seed": seed, "miou": report["miou_retrained"],
                          "miou_pruned": report["miou_pruned"]})
            continue
        cached = os.path.join(folder, f"{kind}-s{seed}-{result_key(raw, seed, threads)}.json")
        if os.path.isfile(cached):
            with open(cached, encoding="utf-8") as f:
                found.append(json.load(f))
            logger.info(f"{model} {kind} seed {seed}: reusing {cached}")
            continue
        logger.info(f"{model} {kind}: retraining with seed {seed} "
                    f"({report['retraining_iters']} iterations)")
        result = retrain_once(report, seed, threads, entry["data"]["root"],
                              cached[:-len(".json")] + ".work")
        write_json(cached, result)
        logger.info(f"{model} {kind} seed {seed}: mIoU {result['miou']:.4f}")
        found.append(result)
    return found


def spread_text(values):
    import numpy as np
    v = np.asarray(values)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f} ({v.min():.4f}-{v.max():.4f})"


def per_seed_gaps(text, runs, kind, other):
    """One sentence: mIoU of ``kind`` minus ``other`` per seed, in points, and their mean."""
    import numpy as np
    gaps = [a["miou"] - b["miou"] for a, b in zip(runs[kind], runs[other])]
    return (f"{text}, per seed: " + ", ".join(f"{100 * g:+.1f}" for g in gaps)
            + f" points; mean {100 * float(np.mean(gaps)):+.1f}.")


def measured_speedup(path):
    """prune.py's own measured speedup of a report's model (its exports timed in turn)."""
    with open(path, encoding="utf-8") as f:
        latency = json.load(f).get("latency")
    if latency is None:
        return "not timed"      # a --target flops run
    return f"{latency['measured_ms_before'] / latency['measured_ms_after']:.2f}x"


def model_lines(model, entry, rows, runs, reports):
    """``rows``: {kind: the benchmark's row, or {"label": ..., "text": ...} for a variant}."""
    first = next(iter(runs.values()))
    seeds = " | ".join(f"seed {r['seed']}" for r in first)
    lines = [f"## {model}", "",
             f"| Row | Speedup (benchmark) | Speedup (prune.py) | The row's mIoU (benchmark) | "
             f"{seeds} | mean ± sd (min-max) |",
             "|---|---:|---:|---:|" + "---:|" * len(first) + "---|"]
    for kind, row in rows.items():
        bench = (bench_report.fmt_speedup(row), f"{row['miou']:.4f}") if kind in ROWS else \
            ("not a row", "not a row")
        lines.append(f"| {row['label']} | {bench[0]} | {measured_speedup(reports[kind])} | "
                     f"{bench[1]} | " + " | ".join(f"{r['miou']:.4f}" for r in runs[kind])
                     + " | " + spread_text([r["miou"] for r in runs[kind]]) + " |")
    retrained = [k for k in ROWS if k in runs]
    same = [abs(r["miou"] - rows[k]["miou"]) < 1e-6
            for k in retrained for r in runs[k] if r["seed"] == entry["args"]["seed"]]
    repeats = (" The benchmark's seed repeated here gives the row's mIoU again: "
               f"{'yes' if same and all(same) else 'no'}.")
    lines += ["", (per_seed_gaps("Latency target minus equal-loss control", runs, *ROWS)
                   if len(retrained) == 2 else f"Rows retrained: {', '.join(retrained)}.")
              + repeats]
    against = {ROWS[1]: "minus equal-loss control",
               ROWS[0]: f"minus the latency target ({LATENCY_ALLOCATIONS[ROWS[0]]})"}
    for kind in rows:
        if kind not in ROWS:
            gaps = [per_seed_gaps(f"{rows[kind]['text']} {against[other]}", runs, kind, other)
                    for other in (ROWS[1], ROWS[0]) if other in runs]
            lines += ["", " ".join(gaps)
                      + f" Its seed {entry['args']['seed']} is its prune.py run's own retraining."]
    return lines + [""]


def main(argv):
    args = parse_args(argv)
    results = bench_report.load_results(os.path.join(ROOT, args.out_dir))
    lines = ["# Retraining noise of the latency target's rows", "",
             f"{generated_by('studies/retrain_seeds.py', argv)} Each row's pruned model, rebuilt "
             "from its report.json, retrained as prune.py does with each seed and evaluated on the "
             "full val split (rows: benchmarks/RESULTS.md).", ""]
    for model, entry in results["models"].items():
        verdict = bench_report.latency_goal(entry, args.ratio)
        if (model not in args.models) if args.models else (verdict is None or verdict[3]):
            continue
        rows = {kind: row for kind in args.rows
                if (row := bench_accuracy.find_row(entry, kind, args.ratio))}
        if ROWS[0] in args.rows and ROWS[0] not in rows:
            raise UserError(f"{model} has no latency row at --ratio {args.ratio:g} that ran; "
                            "pick a ratio of its latency rows (benchmarks/RESULTS.md)")
        reports = {kind: step_file(args.work_dir, model, "prune", row["step_key"], "out",
                                   "report.json") for kind, row in rows.items()}
        for variant in variants_of(args):
            reports[variant.kind] = variant_report(args, model, rows[ROWS[0]], variant)
            rows[variant.kind] = {"label": f"{rows[ROWS[0]]['label']}, {variant.label}",
                                  "text": variant.text}
        runs = {kind: measure(args, model, entry, kind, path) for kind, path in reports.items()}
        lines += model_lines(model, entry, rows, runs, reports)
    write_text(os.path.join(ROOT, args.out), "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
