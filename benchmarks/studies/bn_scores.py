"""The two scores of the bn_calibration study (studies/bn_calibration.py): a benchmark row's
pruned model rebuilt from its report.json, and its full-val mIoU as it is and with its batch
norms recalibrated. Kept apart from the study because this file, not the study's wording, is
part of every cached score's key."""
import argparse
import hashlib
import os
import sys
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [BENCHMARKS, ROOT]

import bench_cache  # noqa: E402
from prune_speedup import build_config  # noqa: E402

SOURCES = ("paddleseg/slim/bn_calibration.py", "benchmarks/studies/bn_scores.py")


def score_key(report_bytes, args):
    return bench_cache.digest({
        "report": hashlib.sha256(report_bytes).hexdigest(), "batches": args.batches,
        "seed": args.seed,
        "code": bench_cache.code_version(bench_cache.PRUNE_SOURCES + SOURCES)})[:12]


def rebuilt(report, entry, pruned=True):
    """(the model of ``report`` right after pruning, its least-squares refit included where the
    row had one, or its unpruned checkpoint where not ``pruned``; the config)."""
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.slim import build_groups
    from paddleseg.slim.distill import make_teacher
    from paddleseg.slim.options import PruneOptions
    from paddleseg.slim.reconstruct import prune_for_retraining
    cfg = build_config(report["config"], argparse.Namespace(dataset_root=entry["data"]["root"]))
    model = build_and_load(cfg, os.path.join(ROOT, report["model_path"]))
    model.eval()
    if pruned:
        shape = [1] + list(cfg.val_dataset[0]["img"].shape)
        refit = (report.get("retraining_recipe") or {}).get("reconstruct_batches", 0)
        options = PruneOptions(config=report["config"], pruning_ratio=report["pruning_ratio"],
                               retraining_iters=0, criterion=report["criterion"],
                               reconstruct=refit)
        prune_for_retraining(options, cfg, model, build_groups(model, shape),
                             report["layer_ratios"], make_teacher(model) if refit else None)
    return model, cfg


def scores(model, cfg, args):
    """{plain, recalibrated}: full-val mIoU of ``model`` as it is and with its batch norms
    recalibrated on training batches."""
    from paddleseg.slim.bn_calibration import calibration_batches, recalibrated_batchnorm
    from paddleseg.slim.retrain import miou
    val = cfg.val_dataset
    start = time.time()
    plain = miou(model, val)
    batches = calibration_batches(cfg.train_dataset, args.batches, cfg.batch_size, args.seed)
    with recalibrated_batchnorm(model, batches):
        recalibrated = miou(model, val)
    return {"plain": plain, "recalibrated": recalibrated,
            "seconds": round(time.time() - start, 1)}
