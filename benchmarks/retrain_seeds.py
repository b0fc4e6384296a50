"""How much of a latency-target row's mIoU is retraining noise: the benchmark's latency-target row
and its equal-loss control (RESULTS.md, "The latency target against its goal") retrained again
with other seeds, from the same pruned model. Writes docs/retrain_seeds.md.

    python benchmarks/retrain_seeds.py --work_dir /work/bench_work --seeds 0 1 2         # the misses
    python benchmarks/retrain_seeds.py --work_dir /work/bench_work --models UNet --seeds 0 1 2

Each row's pruned model is rebuilt from its report.json: the same checkpoint, the same plan (its
``layer_ratios``) and criterion; its mIoU right after pruning must equal the row's (else the code
prunes differently now, and the script says so). It is then fine-tuned as prune.py does
(``--retraining_iters`` of the row, the config's schedule, ``--seed S``, the benchmark's training
threads) and evaluated on the full val split. Seed 0 repeats the row's own retraining: whether it
gives the row's mIoU again is shown. Each (row, seed) result is kept under
``WORK_DIR/MODEL/retrain_seeds/``, keyed by the report's bytes, the seed, the threads and the
code, so a killed run resumes and other arguments never reuse it.
"""
import argparse
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import bench_cache  # noqa: E402
import bench_report  # noqa: E402
from paddleseg.utils import cli, logger  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402
from paddleseg.utils.fileio import write_json, write_text  # noqa: E402
from prune_speedup import data_opts, generated_by, step_file  # noqa: E402

ROWS = ("latency", "latency_equal_loss")
SAME_PRUNED_MIOU = 1e-6


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", required=True, help="the benchmark's --work_dir")
    p.add_argument("--out_dir", default="benchmarks", help="where results.json is")
    p.add_argument("--out", default="docs/retrain_seeds.md")
    p.add_argument("--models", nargs="*", help="default: those that miss the mIoU goal")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def result_key(report_bytes, seed, threads):
    return bench_cache.digest({"report": hashlib.sha256(report_bytes).hexdigest(), "seed": seed,
                               "threads": threads,
                               "code": bench_cache.code_version(bench_cache.PRUNE_SOURCES)})[:12]


def retrain_once(report, seed, threads, dataset_root, work):
    """mIoU on the full val split after retraining the report's pruned model with ``seed``."""
    import types
    from paddleseg.cvlibs import Config
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.slim import build_groups, prune_model
    from paddleseg.slim.pipeline import miou, retrain
    from paddleseg.utils import distributed
    distributed.set_cpu_threads(threads)
    cfg = Config(os.path.join(ROOT, report["config"]), iters=report["retraining_iters"],
                 opts=data_opts(dataset_root))
    model = build_and_load(cfg, report["model_path"])
    model.eval()
    val = cfg.val_dataset
    prune_model(model, build_groups(model, [1] + list(val[0]["img"].shape)),
                report["layer_ratios"], report["criterion"])
    pruned = miou(model, val)
    if abs(pruned - report["miou_pruned"]) > SAME_PRUNED_MIOU:
        raise UserError(f"the rebuilt pruned model's mIoU is {pruned:.6f}, the row's "
                        f"{report['miou_pruned']:.6f}: this code prunes differently from the "
                        "code that made the row; run this script at the row's commit")
    options = types.SimpleNamespace(retraining_iters=report["retraining_iters"], num_workers=0,
                                    seed=seed)
    start = time.time()
    retrain(options, cfg, model, work)
    return {"seed": seed, "miou": miou(model, val), "miou_pruned": pruned,
            "seconds": round(time.time() - start, 1)}


def measure(args, model, entry, row):
    path = step_file(args.work_dir, model, "prune", row["step_key"], "out", "report.json")
    with open(path, "rb") as f:
        raw = f.read()
    report = json.loads(raw)
    threads = entry["args"]["train_threads"]
    folder = os.path.join(args.work_dir, model, "retrain_seeds")
    os.makedirs(folder, exist_ok=True)
    found = []
    for seed in args.seeds:
        cached = os.path.join(folder, f"{row['row']}-s{seed}-{result_key(raw, seed, threads)}.json")
        if os.path.isfile(cached):
            with open(cached, encoding="utf-8") as f:
                found.append(json.load(f))
            logger.info(f"{model} {row['label']} seed {seed}: reusing {cached}")
            continue
        logger.info(f"{model} {row['label']}: retraining with seed {seed} "
                    f"({report['retraining_iters']} iterations)")
        result = retrain_once(report, seed, threads, entry["data"]["root"],
                              cached[:-len(".json")] + ".work")
        write_json(cached, result)
        logger.info(f"{model} {row['label']} seed {seed}: mIoU {result['miou']:.4f}")
        found.append(result)
    return found


def spread_text(values):
    import numpy as np
    v = np.asarray(values)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f} ({v.min():.4f}-{v.max():.4f})"


def model_lines(model, entry, rows, runs):
    import numpy as np
    lines = [f"## {model}", "",
             "| Row | Speedup | The row's mIoU (benchmark) | "
             + " | ".join(f"seed {r['seed']}" for r in runs[ROWS[0]]) + " | mean ± sd (min-max) |",
             "|---|---:|---:|" + "---:|" * len(runs[ROWS[0]]) + "---|"]
    for kind in ROWS:
        row = rows[kind]
        lines.append(f"| {row['label']} | {bench_report.fmt_speedup(row)} | {row['miou']:.4f} | "
                     + " | ".join(f"{r['miou']:.4f}" for r in runs[kind]) + " | "
                     + spread_text([r["miou"] for r in runs[kind]]) + " |")
    gaps = [a["miou"] - b["miou"] for a, b in zip(runs[ROWS[0]], runs[ROWS[1]])]
    same = [abs(r["miou"] - rows[k]["miou"]) < 1e-6
            for k in ROWS for r in runs[k] if r["seed"] == entry["args"]["seed"]]
    lines += ["", f"Latency target minus equal-loss control, per seed: "
              + ", ".join(f"{100 * g:+.1f}" for g in gaps) + f" points; mean "
              f"{100 * float(np.mean(gaps)):+.1f}. The benchmark's seed repeated here gives the "
              f"row's mIoU again: {'yes' if same and all(same) else 'no'}.", ""]
    return lines


def main(argv):
    args = parse_args(argv)
    results = bench_report.load_results(os.path.join(ROOT, args.out_dir))
    lines = ["# Retraining noise of the latency target's rows", "",
             f"{generated_by('retrain_seeds.py', argv)} Each row's pruned model, rebuilt from its report.json, retrained as prune.py does with each seed and "
             "evaluated on the full val split (rows: benchmarks/RESULTS.md).", ""]
    for model, entry in results["models"].items():
        verdict = bench_report.latency_goal(entry)
        if verdict is None or (args.models and model not in args.models) or \
                (not args.models and verdict[3]):
            continue
        rows = {r["row"]: r for r in entry["rows"] if r["row"] in ROWS}
        runs = {kind: measure(args, model, entry, rows[kind]) for kind in ROWS}
        lines += model_lines(model, entry, rows, runs)
    write_text(os.path.join(ROOT, args.out), "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
