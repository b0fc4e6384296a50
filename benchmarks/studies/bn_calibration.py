"""Does a pruned model's mIoU right after pruning predict its mIoU after retraining, and does it
once its batch norms are recalibrated ("adaptive BN", paddleseg.slim.bn_calibration)? Writes
docs/bn_calibration.md.

    python benchmarks/studies/bn_calibration.py --work_dir WORK_DIR [--models HarDNet]

The allocations (sensitivity analysis, then ratios per group) are chosen by how much mIoU a
pruned model keeps *before* retraining, but the model is shipped *after* it. On BiSeNetV2 the
two disagreed beyond the noise: at latency target 0.3 the FLOPs-target allocation's pruned model
scored 0.038 and the latency target's own 0.132, and after retraining (3 seeds each) the first
was 1.6 ± 1.1 points ahead. This study scores every pruned row of the benchmark both ways and
sets the scores beside the rows' retrained mIoU change (RESULTS.md's, seed means where the
recovery phase retrained the row over seeds):

- each row's pruned model is rebuilt from its report.json (the same checkpoint, plan and
  criterion); its plain mIoU on the full val split must equal the report's ``miou_pruned``
  (else this code prunes differently from the row's, and the script says so);
- the recalibrated score: the same model with every batch norm's statistics re-estimated on
  ``--batches`` training batches (the config's batch size and training transforms, ``--seed``),
  then evaluated the same way;
- per model, the rank correlation (Spearman) of each score with the retrained change over its
  rows, and for each pair of rows at one latency target (the target's own allocation and the
  FLOPs-target allocation driven to the same latency), which one each score prefers and which
  one retraining kept more mIoU in.

Rows differ in speed as well as allocation, so the correlation over all of a model's rows mixes
"how much was cut" with "how well it was chosen"; the pairs at one target isolate the second,
which is the choice an allocation makes. Each score is cached under ``WORK_DIR/MODEL/
bn_calibration/``, keyed by the report's bytes, the batches, the seed and the code that
scores (bn_scores.py, the engine): a change in how this file words the doc keeps the scores.
"""
import argparse
import json
import os
import sys

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), BENCHMARKS, ROOT]

import bench_accuracy  # noqa: E402
import bench_report  # noqa: E402
import bn_scores  # noqa: E402
from paddleseg.utils import cli, logger  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402
from paddleseg.utils.fileio import write_json, write_text  # noqa: E402
from prune_speedup import LATENCY_ALLOCATIONS, generated_by, step_file  # noqa: E402

PRUNED_ROWS = ("flops", "latency", "latency_equal_loss", "latency_budget")
SAME_PRUNED_MIOU = 1e-6


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", required=True, help="the benchmark's --work_dir")
    p.add_argument("--out_dir", default="benchmarks", help="where results.json is")
    p.add_argument("--out", default="docs/bn_calibration.md")
    p.add_argument("--models", nargs="*", help="default: every model with pruned rows on record")
    p.add_argument("--batches", type=int, default=8,
                   help="training batches the batch-norm statistics are estimated on")
    p.add_argument("--seed", type=int, default=0, help="which training images and transforms")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the evaluations")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def row_report(args, model_name, row):
    """(the bytes of a row's report.json, the report)."""
    path = step_file(args.work_dir, model_name, "prune", row["step_key"], "out", "report.json")
    with open(path, "rb") as f:
        raw = f.read()
    return raw, json.loads(raw)


def row_scores(args, model_name, entry, row, pruned=True):
    """The scores of one pruned row's model (cached), checked against its report; not
    ``pruned``: of the unpruned checkpoint it was pruned from."""
    raw, report = row_report(args, model_name, row)
    name = f"{row['row']}-{row['ratio']}" if pruned else "unpruned"
    key = bn_scores.score_key(raw if pruned else report["model_path"].encode(), args)
    cached = os.path.join(args.work_dir, model_name, "bn_calibration", f"{name}-{key}.json")
    if os.path.isfile(cached):
        with open(cached, encoding="utf-8") as f:
            return json.load(f)
    logger.info(f"{model_name} {row['label'] if pruned else 'unpruned'}: scoring")
    found = bn_scores.scores(*bn_scores.rebuilt(report, entry, pruned), args)
    if pruned and abs(found["plain"] - report["miou_pruned"]) > SAME_PRUNED_MIOU:
        raise UserError(f"{model_name} {row['label']}: the rebuilt pruned model's mIoU is "
                        f"{found['plain']:.6f}, the report's {report['miou_pruned']:.6f}: this "
                        "code prunes differently from the code that made the row; run this "
                        "script at the row's commit")
    write_json(cached, found)
    return found


def spearman(xs, ys):
    """Spearman's rank correlation of two lists, or None with fewer than 3 points."""
    if len(xs) < 3:
        return None
    from scipy.stats import spearmanr
    return float(spearmanr(xs, ys).statistic)


def pair_lines(results, model_name, entry, found):
    """One line per latency target that has both allocations: which one each score prefers,
    and which one retraining kept more mIoU in (beyond the noise where both have seeds)."""
    lines = []
    own, other = LATENCY_ALLOCATIONS   # the row kinds: the target's own allocation, FLOPs-target
    for ratio in sorted({r["ratio"] for r in found if r["row"] == own}):
        rows = {kind: next((r for r in found if r["row"] == kind and r["ratio"] == ratio), None)
                for kind in (own, other)}
        if None in rows.values():
            continue
        a, b = rows[own], rows[other]
        retrained, noise, beyond, counts = bench_accuracy.row_gap(results, model_name, a, b)
        verdict = (bench_accuracy.verdict(retrained, noise, beyond) if noise is not None
                   else f"{retrained:+.1f} ({counts}: noise unknown)")

        def prefers(score):
            gap = 100 * (a["scores"][score] - b["scores"][score])
            agrees = (gap > 0) == (retrained > 0)
            return f"{gap:+.1f} ({'agrees' if agrees else 'disagrees'})"
        lines.append(f"| {ratio:g} | {verdict} | {prefers('plain')} | {prefers('recalibrated')} "
                     f"| {'yes' if beyond else 'no'} |")
    if not lines:
        return []
    return ["", "At one latency target: the target's own allocation minus the FLOPs-target "
            "allocation (points), after retraining and as each score has it:", "",
            "| Latency target | Retrained | Plain score | Recalibrated score | Retrained "
            "difference beyond the noise |", "|---:|---|---:|---:|---|", *lines]


def model_lines(results, model_name, entry, args):
    rows = [r for r in entry["rows"] if r["row"] in PRUNED_ROWS and r["status"] == "ok"]
    if not rows:
        return []
    found = [{**row, "scores": row_scores(args, model_name, entry, row)} for row in rows]
    unpruned = row_scores(args, model_name, entry, rows[0], pruned=False)
    deltas = [bench_accuracy.row_delta(results, model_name, r) for r in found]
    lines = [f"## {model_name}", "",
             f"Unpruned model: {unpruned['plain']:.4f} as it is, {unpruned['recalibrated']:.4f} "
             "recalibrated.", "",
             "| Row | Speedup | FLOPs cut | Retrained Δ mIoU (points) | mIoU after pruning | "
             "recalibrated |", "|---|---:|---:|---|---:|---:|"]
    for row, delta in zip(found, deltas):
        lines.append(f"| {row['label']} | {bench_report.fmt_speedup(row)} | "
                     f"{row['flops_cut']:.1%} | {bench_accuracy.delta_text(*delta)} | "
                     f"{row['scores']['plain']:.4f} | {row['scores']['recalibrated']:.4f} |")
    retrained = [d[0] for d in deltas]
    lines.append("")
    for score in ("plain", "recalibrated"):
        rho = spearman([r["scores"][score] for r in found], retrained)
        lines.append(f"- Rank correlation of the {score} score with the retrained change over "
                     f"the {len(found)} rows: " + ("too few rows" if rho is None else
                                                   f"{rho:+.2f}") + ".")
    return lines + pair_lines(results, model_name, entry, found) + [""]


def main(argv):
    args = parse_args(argv)
    if args.batches < 1:
        raise UserError(f"--batches must be at least 1, got {args.batches}")
    from paddleseg.utils import distributed
    distributed.set_cpu_threads(args.threads)
    results = bench_report.load_results(os.path.join(ROOT, args.out_dir))
    unknown = sorted(set(args.models or []) - set(results["models"]))
    if unknown:
        raise UserError(f"--models: no results for {', '.join(unknown)} in "
                        f"{args.out_dir}/results.json (it has {', '.join(results['models'])})")
    lines = ["# Scoring a pruned model before retraining: as it is, or with its batch norms "
             "recalibrated", "",
             f"{generated_by('studies/bn_calibration.py', argv)} Each pruned row of "
             "benchmarks/RESULTS.md rebuilt from its report.json and scored on the full val "
             f"split, as it is and with its batch-norm statistics re-estimated on {args.batches} "
             "training batches (the config's batch size and training transforms); beside them "
             "the row's mIoU change after retraining, from RESULTS.md.", ""]
    for model_name, entry in results["models"].items():
        if args.models and model_name not in args.models:
            continue
        lines += model_lines(results, model_name, entry, args)
    write_text(os.path.join(ROOT, args.out), "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
