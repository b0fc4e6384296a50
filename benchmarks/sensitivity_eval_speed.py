"""Time one sensitivity evaluation three ways on the same pruned model, taking turns: the plain
way (as before: ``evaluate_metrics``, images decoded each time, every layer run), with
``slim.fast_eval.SensitivityEvaluator`` (layer outputs reused; the same mIoU to the bit) and with
``slim.predictor_eval.PredictorEvaluator`` (a Paddle Inference predictor per point; the mIoU may
move in its last digits, so the largest change is shown). Before the timed points it does what
``--sen_engine auto`` does (both engines on a few pruned probes, where reuse also checks itself
against a plain evaluation, once) and shows what auto takes (one engine, or predictors for the
first groups and reuse for the rest) and the speed-up that gives: each timed point counted with
the time of the engine auto gives its group.

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
from paddleseg.slim.sensitivity.evaluators import kind_of_split, timed_split  # noqa: E402
from paddleseg.slim.sensitivity.predictor import PredictorEvaluator  # noqa: E402
from paddleseg.slim.sensitivity.reuse import SensitivityEvaluator  # noqa: E402
from paddleseg.utils import distributed  # noqa: E402


KINDS = ("plain", "reuse", "predictor")


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
    seconds = {kind: [] for kind in KINDS}
    values = {kind: [] for kind in KINDS}
    # the predictor's export traces the model: before the reuse evaluator wraps its layers
    with PredictorEvaluator(model, dataset, groups, eval_num) as predictor:
        start = time.time()
        problem = predictor.prepare()
        if problem:
            raise SystemExit(f"error: {type(model).__name__}: {problem}")
        set_up = {"predictor": time.time() - start}
        with SensitivityEvaluator(model, dataset, eval_num) as reuse:
            start = time.time()
            reuse.prepare()
            set_up["reuse"] = time.time() - start
            # what --sen_evaluator auto does before an analysis: both on pruned probes
            # (this is also where reuse checks itself against a plain evaluation, once)
            start = time.time()
            split, measured = timed_split(predictor, reuse)
            engine = kind_of_split(split, len(groups))
            set_up["auto"] = time.time() - start
            evaluate = {"plain": lambda: evaluate_metrics(model, dataset, eval_num,
                                                          print_detail=False)["mIoU"],
                        "reuse": reuse, "predictor": predictor}
            index = {g.id: k for k, g in enumerate(groups)}
            # what auto evaluates each timed point with: its group's engine
            auto_kind = ["predictor" if index[g.id] < split else "reuse" for g in chosen]
            for k, g in enumerate(chosen):
                _, undo = slim.apply.prune(model, by_id, {g.id: ratio}, "fpgm")
                try:
                    for kind in KINDS[k % 3:] + KINDS[:k % 3]:  # take turns: noise hits all
                        start = time.time()
                        values[kind].append(evaluate[kind]())
                        seconds[kind].append(time.time() - start)
                finally:
                    undo.restore()
    return {"model": type(model).__name__, "groups": f"{len(chosen)} of {len(groups)}",
            "seconds": seconds, "values": values, "set_up": set_up,
            "in_dygraph": predictor.dygraph_points > 0, "auto": (engine, split, measured),
            "auto_kind": auto_kind}


def spread(values):
    v = np.asarray(values)
    return f"{np.median(v):.3f} ({v.min():.3f}-{v.max():.3f})"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--eval_num", type=int, default=3)
    p.add_argument("--groups", type=int, default=12, help="groups timed per model (spread evenly)")
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--cpu_threads", type=int, default=None)
    args = p.parse_args()
    if args.groups < 1:
        raise SystemExit(f"error: --groups must be >= 1, got {args.groups}")
    paddle.set_device("cpu")
    threads = distributed.set_cpu_threads(args.cpu_threads)
    print(f"{args.eval_num} val images, ratio {args.ratio}, {threads} CPU thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| model | groups timed | plain s/eval | reuse s/eval | predictor s/eval | reuse "
          "speed-up | predictor speed-up | reuse: same mIoU | predictor: most mIoU change | "
          "set-up s (reuse, predictor, auto's probes) | auto measured s/eval (predictor, "
          "dygraph): takes | auto's speed-up |")
    print("|-|-|-:|-:|-:|-:|-:|-|-:|-:|-|-:|")
    for config in args.configs:
        r = measure(config, args.eval_num, args.groups, args.ratio)
        sec, val = r["seconds"], r["values"]
        total = {kind: float(np.sum(sec[kind])) for kind in KINDS}
        same = val["reuse"] == val["plain"]
        change = float(np.max(np.abs(np.subtract(val["predictor"], val["plain"]))))
        note = " (some points in dygraph)" if r["in_dygraph"] else ""
        takes, split, measured = r["auto"]
        if takes == "mixed":
            takes = f"predictor for the first {split} groups, then reuse"
        auto_total = sum(sec[kind][k] for k, kind in enumerate(r["auto_kind"]))
        up = r["set_up"]
        print(f"| {r['model']} | {r['groups']} | {spread(sec['plain'])} | {spread(sec['reuse'])} "
              f"| {spread(sec['predictor'])}{note} | {total['plain'] / total['reuse']:.2f}x | "
              f"{total['plain'] / total['predictor']:.2f}x | {'yes' if same else 'NO'} | "
              f"{change:.4f} | {up['reuse']:.2f}, {up['predictor']:.2f}, {up['auto']:.2f} | "
              f"{measured['predictor']:.2f}, {measured['dygraph']:.2f}: {takes} | "
              f"{total['plain'] / auto_total:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
