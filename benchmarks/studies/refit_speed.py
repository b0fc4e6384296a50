"""The refit's speed (``prune.py --reconstruct``) with and without its conv-output cache, timed in
turns on the same pruned model; regenerates docs/refit_speed.md.

    python benchmarks/studies/refit_speed.py                      # the five CamVid models
    python benchmarks/studies/refit_speed.py --configs configs/camvid/hardnet_camvid_256x192.yml

Each model (seeded, untrained weights) has every prunable group cut by ``--ratio`` and is refitted
on ``--batches`` batches of random images of its config's batch size and crop: the refit's work
depends on the shapes, not on what the images show. "without" is the refit with the cache's
budget at 0 bytes (every pass computes every conv before the one it stops at, as the refit did
before the cache); "with" has the default budget. The refitted weights must be the same to the
bit, which the table checks.
"""
import argparse
import datetime
import os
import shlex
import sys
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [BENCHMARKS, ROOT]

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddleseg.cvlibs import Config  # noqa: E402
from paddleseg.slim import build_groups, conv_cache, prune_model  # noqa: E402
from paddleseg.slim.distill import make_teacher  # noqa: E402
from paddleseg.slim.reconstruct import reconstruct  # noqa: E402
from paddleseg.utils import distributed  # noqa: E402
from paddleseg.utils.fileio import write_text  # noqa: E402

CONFIGS = [f"configs/camvid/{name}.yml" for name in (
    "bisenet_camvid_256x192", "fastscnn_camvid_256x192", "hardnet_camvid_256x192",
    "unet_camvid_128x96", "fcn_hrnetw18_camvid_256x192")]
OUT = os.path.join("docs", "refit_speed.md")
TABLE_HEAD = ("| model | convs refitted | without the cache, s | with it, s | speed-up | same weights "
              "|\n|-|-:|-:|-:|-:|-|")


def pruned_pair(cfg, ratio, crop):
    """(the pruned model, its unpruned copy, the analysis, the plan): every group cut by
    ``ratio``, the same weights every call (seed 0)."""
    paddle.seed(0)
    model = Config(cfg.path).model
    model.eval()
    analysis = build_groups(model, [1, 3, crop[1], crop[0]])
    plan = {group.id: ratio for group in analysis.groups}
    reference = make_teacher(model)
    prune_model(model, analysis, plan, "fpgm")
    return model, reference, analysis, plan


def random_images(count, crop):
    rng = np.random.RandomState(0)
    return [{"img": rng.randn(3, crop[1], crop[0]).astype("float32")} for _ in range(count)]


def timed_refit(cfg, args, crop, budget):
    """(seconds, the refit's record, the refitted weights) with the cache's budget at
    ``budget`` bytes (None: its default)."""
    model, reference, analysis, plan = pruned_pair(cfg, args.ratio, crop)
    batch_size = args.batch_size or cfg.batch_size
    kept_budget = conv_cache.CACHE_BYTES
    conv_cache.CACHE_BYTES = budget
    try:
        start = time.perf_counter()
        record = reconstruct(model, reference, analysis.by_id(), plan, "fpgm",
                             random_images(args.batches * batch_size, crop), args.batches,
                             batch_size)
        seconds = time.perf_counter() - start
    finally:
        conv_cache.CACHE_BYTES = kept_budget
    return seconds, record, {k: v.numpy() for k, v in model.state_dict().items()}


def measure(config, args):
    """One table row: the refit timed ``--repeats`` times each way, in turns."""
    cfg = Config(os.path.join(ROOT, config))   # relative to the repository's root
    crop = args.crop or crop_of(cfg)
    seconds = {"without": [], "with": []}
    weights = {}
    for repeat in range(args.repeats):
        # in turns, the order swapped every repeat: a machine slowing down favours neither
        order = ("without", "with") if repeat % 2 == 0 else ("with", "without")
        for way in order:
            took, record, weights[way] = timed_refit(
                cfg, args, crop, 0 if way == "without" else None)
            seconds[way].append(took)
    same = all(np.array_equal(weights["without"][k], weights["with"][k])
               for k in weights["without"])
    without, with_cache = (float(np.median(seconds[w])) for w in ("without", "with"))
    return (f"| {type(cfg.model).__name__} | {record['convs'] + record['kept']} | "
            f"{spread(seconds['without'])} | {spread(seconds['with'])} | "
            f"{without / with_cache:.2f}x | {'yes' if same else 'NO'} |")


def crop_of(cfg):
    """The config's training crop (width, height): its Resize or crop transform's size."""
    for transform in cfg.train_dataset_config.get("transforms", []):
        size = transform.get("target_size") or transform.get("crop_size")
        if size:
            return list(size) if isinstance(size, (list, tuple)) else [size, size]
    raise SystemExit(f"error: {cfg.path} has no Resize or crop transform to take the image "
                     "size from; give --crop WIDTH HEIGHT")


def spread(values):
    return (f"{values[0]:.1f}" if len(values) == 1 else
            f"{np.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--ratio", type=float, default=0.3, help="every group's cut")
    p.add_argument("--batches", type=int, default=2, help="refit batches (prune.py's N)")
    p.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    p.add_argument("--crop", type=int, nargs=2, default=None, metavar=("WIDTH", "HEIGHT"),
                   help="default: the config's training Resize or crop size")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cpu_threads", type=int, default=1)
    p.add_argument("--out", default=OUT, help="the doc to write (relative to the repository root)")
    args = p.parse_args(argv)
    if args.batches < 1 or args.repeats < 1 or not 0 < args.ratio < 1:
        raise SystemExit("error: --batches and --repeats must be >= 1 and --ratio in (0, 1), got "
                         f"{args.batches}, {args.repeats} and {args.ratio}")
    return args


def main(argv=None):
    from bench_cache import git_commit
    from prune_speedup import machine
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    paddle.set_device("cpu")
    threads = distributed.set_cpu_threads(args.cpu_threads)
    facts = (f"Every group cut by {args.ratio}, {args.batches} refit batches, {threads} CPU "
             f"thread(s), {args.repeats} run(s) each way, load average "
             f"{os.getloadavg()[0]:.1f} at the start")
    print(facts + "\n" + TABLE_HEAD, flush=True)
    rows = []
    for config in args.configs:
        rows.append(measure(config, args))
        print(rows[-1], flush=True)
    command = shlex.join(["python", "benchmarks/studies/refit_speed.py", *argv])
    write_text(os.path.join(ROOT, args.out), f"# The refit's speed, with and without its conv-output cache\n\n"
               f"Generated by `{command}` on {datetime.date.today().isoformat()} at "
               f"{git_commit(ROOT)} ({machine()}); do not edit. {facts}. Seconds are the whole "
               f"refit (`prune.py --reconstruct`), median (min-max) over the runs.\n\n"
               f"{TABLE_HEAD}\n" + "\n".join(rows) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
