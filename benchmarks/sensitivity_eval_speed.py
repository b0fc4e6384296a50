"""Time one sensitivity evaluation the plain way (as before: ``evaluate_metrics``, images decoded
each time, every layer run) and with ``slim.fast_eval.SensitivityEvaluator``, on the same pruned
model, taking turns, and check that both give the same mIoU.

    python benchmarks/sensitivity_eval_speed.py --configs configs/membrane/*.yml \\
        --eval_num 3 --groups 12 --cpu_threads 1
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddleseg import slim  # noqa: E402
from paddleseg.core.val import evaluate_metrics  # noqa: E402
from paddleseg.cvlibs import Config  # noqa: E402
from paddleseg.slim.fast_eval import SensitivityEvaluator  # noqa: E402
from paddleseg.utils import distributed  # noqa: E402


def measure(config, eval_num, max_groups, ratio):
    paddle.seed(0)
    cfg = Config(config)
    model = cfg.model
    model.eval()
    dataset = cfg.val_dataset
    analysis = slim.build_groups(model, [1] + list(dataset[0]["img"].shape))
    groups = analysis.groups
    step = max(1, len(groups) // max_groups)
    chosen = groups[::step][:max_groups]
    by_id = {g.id: g for g in groups}
    plain_s, fast_s, same = [], [], True
    with SensitivityEvaluator(model, dataset, eval_num) as fast:
        start = time.time()
        fast.prepare()
        reference_s = time.time() - start
        for k, g in enumerate(chosen):
            _, undo = slim.apply.prune(model, by_id, {g.id: ratio}, "fpgm")
            try:
                order = ("plain", "fast") if k % 2 == 0 else ("fast", "plain")
                for kind in order:  # take turns: machine noise hits both alike
                    start = time.time()
                    if kind == "plain":
                        plain = evaluate_metrics(model, dataset, eval_num,
                                                 print_detail=False)["mIoU"]
                        plain_s.append(time.time() - start)
                    else:
                        quick = fast()
                        fast_s.append(time.time() - start)
            finally:
                undo.restore()
            same = same and plain == quick
    return {"model": type(model).__name__, "groups": f"{len(chosen)} of {len(groups)}",
            "plain": plain_s, "fast": fast_s, "reference": reference_s, "same": same}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--eval_num", type=int, default=3)
    p.add_argument("--groups", type=int, default=12, help="groups timed per model (spread evenly)")
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--cpu_threads", type=int, default=None)
    args = p.parse_args()
    paddle.set_device("cpu")
    threads = distributed.set_cpu_threads(args.cpu_threads)
    print(f"{args.eval_num} val images, ratio {args.ratio}, {threads} CPU thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| model | groups timed | plain s/eval (median, min-max) | reuse s/eval (median, min-max)"
          " | speed-up (total) | same mIoU | reference pass s |")
    print("|-|-|-:|-:|-:|-|-:|")
    for config in args.configs:
        r = measure(config, args.eval_num, args.groups, args.ratio)
        plain, fast = np.array(r["plain"]), np.array(r["fast"])
        print(f"| {r['model']} | {r['groups']} | {np.median(plain):.3f} ({plain.min():.3f}-"
              f"{plain.max():.3f}) | {np.median(fast):.3f} ({fast.min():.3f}-{fast.max():.3f}) | "
              f"{plain.sum() / fast.sum():.2f}x | {'yes' if r['same'] else 'NO'} | "
              f"{r['reference']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
