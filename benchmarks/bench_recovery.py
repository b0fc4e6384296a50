"""Accuracy recovery rows of the benchmark (``prune_speedup.py --phase recovery``): the
latency-target row's pruned model retrained with each retraining recipe and each seed, beside its
control (the unpruned model fine-tuned as many iterations with the recipe's schedule and the same
seeds).

Every recipe prunes to the row's own plan (its report.json ``layer_ratios``, the same criterion
and checkpoint): the widths, hence the speed, are the row's, and the recipes differ only in how
the pruned model is retrained. One unit (a recipe or a control, one seed) runs as

    python benchmarks/bench_recovery.py --report REPORT --seed S --out RESULT.json \\
        [--control] [--dataset_root ROOT] -- RECIPE FLAGS

in its own process (the benchmark caches it as a step). The flags are prune.py's, parsed by
prune.py's parser, and run through the pipeline's own ``prune_and_retrain``. The RESULTS.md
section is written by bench_accuracy.py: this file is part of every unit's cache key.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

# flags of a recipe that only a pruned model has a use for: its control goes without them
PRUNED_ONLY = {"--distill": 1, "--distill_weight": 1, "--distill_temperature": 1,
               "--prune_steps": 1, "--reconstruct": 1}


def control_flags(flags):
    """The recipe's flags its control retrains with: the schedule, not distillation or steps."""
    out, i = [], 0
    while i < len(flags):
        if flags[i] in PRUNED_ONLY:
            i += 1 + PRUNED_ONLY[flags[i]]
            continue
        out.append(flags[i])
        i += 1
    return out


def prune_parser():
    spec = importlib.util.spec_from_file_location(
        "prune_cli", os.path.join(ROOT, "slim", "prune", "prune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def recipe_options(report, flags, seed, save_dir, dataset_root=None):
    """prune.py's options for the report's row with ``flags`` and ``seed``."""
    from paddleseg.slim.options import PruneOptions
    argv = ["--config", os.path.join(ROOT, report["config"]),
            "--pruning_ratio", str(report["pruning_ratio"]),
            "--retraining_iters", str(report["retraining_iters"]), "--save_dir", save_dir,
            "--criterion", report["criterion"], "--seed", str(seed), *flags]
    if dataset_root:
        argv += ["--opts", f"train_dataset.dataset_root={dataset_root}",
                 f"val_dataset.dataset_root={dataset_root}"]
    return PruneOptions.from_args(prune_parser().parse_args(argv))


def retrain_unit(report, flags, seed, save_dir, dataset_root=None, control=False):
    """{miou, seconds_per_iter, ...}: the report's unpruned checkpoint pruned to its plan (not
    for ``control``) and retrained with ``flags`` and ``seed``, evaluated on the full val split.
    A unit killed in its retraining and run again with the same ``save_dir`` continues from the
    last of its checkpoints there (a stepwise one after its last finished step), to the same
    model; its time per iteration is then over the iterations this run made."""
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.slim import build_groups
    from paddleseg.slim.flops import count_flops_params
    from paddleseg.slim.distill import teacher_of
    from paddleseg.slim.pipeline import prune_and_retrain, retrain_resumably
    from paddleseg.slim.resume import CheckpointFolder
    from paddleseg.slim.retrain import miou
    from paddleseg.utils.errors import UserError
    o = recipe_options(report, control_flags(flags) if control else flags, seed, save_dir,
                       dataset_root)
    cfg = o.build_config()
    model = build_and_load(cfg, os.path.join(ROOT, report["model_path"]))
    model.eval()
    val = cfg.val_dataset
    shape = [1] + list(val[0]["img"].shape)
    start, result = time.time(), {"seed": seed, "flags": list(flags), "control": control}
    work_dir = os.path.join(save_dir, "retrain")
    checkpoints = CheckpointFolder(work_dir)
    if control:
        retrain_resumably(o, cfg, model, {}, work_dir, None, checkpoints)
    else:
        pruned, steps, refit = prune_and_retrain(
            o, cfg, model, build_groups(model, shape), report["layer_ratios"], shape, work_dir, {},
            teacher_of(o, model),  # before pruning
            evaluate=lambda: miou(model, val), kept=checkpoints)
        flops = count_flops_params(model, report["input_shape"])[0]
        if flops != report["flops_after"]:
            raise UserError(f"the rebuilt model has {flops} FLOPs, the row's {report['flops_after']}:"
                            " this code prunes differently from the code that made the row")
        result.update(miou_pruned=pruned, steps=steps, reconstruction=refit)
    seconds = time.time() - start
    done_before = checkpoints.resumed.get("retraining_from_iter", 0)
    made = o.retraining_iters - done_before   # the iterations this run made
    result.update(miou=miou(model, val), seconds=round(seconds, 1),
                  seconds_per_iter=round(seconds / made, 3) if made > 0 else None)
    if done_before:
        result["resumed_from_iter"] = done_before
    return result


# ---------------------------------------------------------------- one unit, as a program


def main(argv):
    from paddleseg.utils.fileio import write_json
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", required=True, help="the latency row's report.json")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="result JSON to write")
    p.add_argument("--save_dir", required=True, help="scratch folder")
    p.add_argument("--dataset_root", default=None)
    p.add_argument("--control", action="store_true",
                   help="fine-tune the unpruned model with the recipe's schedule instead")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then prune.py's recipe flags")
    args = p.parse_args(argv)
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    with open(args.report, encoding="utf-8") as f:
        report = json.load(f)
    result = retrain_unit(report, flags, args.seed, args.save_dir, args.dataset_root,
                          args.control)
    write_json(args.out, result)
    print(f"mIoU {result['miou']:.4f}")
    return 0


if __name__ == "__main__":
    import paddleseg  # noqa: F401  (import order: cv2 before paddle)
    from paddleseg.utils import cli
    cli.run(main)
