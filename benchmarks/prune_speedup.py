"""The headline table: for each model and pruning ratio, GFLOPs, params, mIoU and CPU latency
with speedup over the unpruned model, measured side by side in one run.

    python benchmarks/prune_speedup.py                       # all five models, ratios 0.1 0.2 0.3
    python benchmarks/prune_speedup.py --models UNet --ratios 0.3 --repeats 20

Per model: train (or reuse work_dir/<model>/train/best_model), export the unpruned model, then
per ratio run the pruning pipeline (sensitivity once per model, shared by the ratios; prune;
retrain; export). Finished steps are reused, so an interrupted run continues. Latency: Paddle
Inference on CPU with oneDNN; the exports of one model are timed interleaved (one run of each in
turn) so that machine noise hits them alike. Writes RESULTS.md, results.json and speedup.png.
"""
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402

MODELS = {  # name -> (config dir, config stem)
    "BiSeNetV2": ("bisenetv2", "bisenet"),
    "FCN-HRNetW18": ("fcn", "fcn_hrnetw18"),
    "FastSCNN": ("fastscnn", "fastscnn"),
    "HarDNet": ("hardnet", "hardnet"),
    "UNet": ("unet", "unet"),
}
MEMBRANE = os.path.join(os.path.dirname(ROOT), "shared", "data", "membrane_seg")


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    p.add_argument("--dataset", choices=["auto", "membrane", "synthetic"], default="auto",
                   help="auto: ../shared/data/membrane_seg when present, else the synthetic set")
    p.add_argument("--synthetic_root", default="data/optic_disc_seg",
                   help="where the synthetic optic-disc set is (made if missing)")
    p.add_argument("--size", type=int, default=256, help="train/eval image size")
    p.add_argument("--train_iters", type=int, default=300)
    p.add_argument("--retraining_iters", type=int, default=60)
    p.add_argument("--criterion", choices=["l1", "fpgm"], default="fpgm")
    p.add_argument("--sen_ratios", nargs="+", type=float, default=[0.2, 0.4, 0.6])
    p.add_argument("--sen_eval_num", type=int, default=3)
    p.add_argument("--input_shape", nargs=4, type=int, default=[1, 3, 512, 1024],
                   metavar=("N", "C", "H", "W"), help="latency input (default 1 3 512 1024)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cpu_threads", type=int, default=2)
    p.add_argument("--work_dir", default=os.path.join("benchmarks", "work"))
    p.add_argument("--out_dir", default="benchmarks", help="where RESULTS.md and speedup.png go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase", choices=["all", "prepare", "control", "latency"], default="all",
                   help="prepare: train/prune/export only; control: fine-tune the trained, "
                        "unpruned model --retraining_iters more (the fair mIoU reference); "
                        "latency: time what is prepared (on a quiet machine) and write the "
                        "results; all: prepare, control and latency")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if not all(0 < r < 1 for r in args.ratios):
        raise paddleseg.utils.UserError(f"--ratios must lie in (0, 1), got {args.ratios}")
    return args


def dataset_choice(args):
    if args.dataset == "auto":
        return "membrane" if os.path.isdir(MEMBRANE) else "synthetic"
    if args.dataset == "membrane" and not os.path.isdir(MEMBRANE):
        raise paddleseg.utils.UserError(f"--dataset membrane: {MEMBRANE} is absent")
    return args.dataset


def model_config(name, dataset, args):
    """The model's config on the chosen data at --size."""
    from paddleseg.cvlibs import Config
    folder, stem = MODELS[name]
    if dataset == "membrane":
        path, opts = os.path.join("configs", "membrane", f"{stem}_membrane_256x256.yml"), []
    else:
        path = os.path.join("configs", folder, f"{stem}_optic_disc_512x512_1k.yml")
        opts = [f"train_dataset.dataset_root={args.synthetic_root}",
                f"val_dataset.dataset_root={args.synthetic_root}"]
    if dataset != "membrane" or args.size != 256:
        resize = f"{{type: Resize, target_size: [{args.size}, {args.size}]}}"
        opts += [f"train_dataset.transforms=[{resize}, {{type: RandomHorizontalFlip}}, {{type: Normalize}}]",
                 f"val_dataset.transforms=[{resize}, {{type: Normalize}}]"]
    return path, opts, Config(path, iters=args.train_iters, opts=opts)


def train_or_reuse(name, cfg, out, args):
    best = os.path.join(out, "best_model", "model.pdparams")
    if os.path.isfile(best):
        return best
    if args.phase == "latency":
        raise paddleseg.utils.UserError(f"{best} is missing: run --phase prepare first")
    from paddleseg.core.train import set_seed, train
    set_seed(args.seed)
    model = cfg.model
    from paddleseg.utils.fileio import write_json
    start = time.time()
    train(model, cfg.train_dataset, val_dataset=cfg.val_dataset, optimizer=cfg.build_optimizer(model),
          save_dir=out, iters=cfg.iters, batch_size=cfg.batch_size,
          save_interval=max(cfg.iters // 3, 1), log_iters=20, losses=cfg.loss, seed=args.seed)
    seconds = time.time() - start
    write_json(os.path.join(out, "train_info.json"),
               {"iters": cfg.iters, "batch_size": cfg.batch_size, "seconds": round(seconds, 1),
                "seconds_per_iter": round(seconds / cfg.iters, 3), "machine": machine()})
    return best


def export_unpruned(name, cfg, ckpt, out, shape):
    """Export the trained model with a report.json (ratio 0) the latency table reads."""
    report_path = os.path.join(out, "report.json")
    if os.path.isfile(report_path):
        return read_json(report_path)
    from paddleseg.core.export import export_model
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.core.val import evaluate_metrics
    from paddleseg.slim import count_flops_params
    from paddleseg.utils.fileio import write_json
    model = build_and_load(cfg, ckpt)
    flops, params = count_flops_params(model, shape)
    report = {"model_name": type(model).__name__, "pruning_ratio": 0.0, "flops_after": flops,
              "params_after": params, "miou_retrained": evaluate_metrics(model, cfg.val_dataset)["mIoU"],
              "input_shape": shape}
    export_model(model, os.path.join(out, "export"),
                 val_transforms_config=cfg.val_dataset_config.get("transforms"),
                 model_type=report["model_name"], extra_deploy_info={"pruned": False})
    write_json(report_path, report)
    return report


def prune_or_reuse(name, cfg_path, opts, ckpt, ratio, out, sen_file, args):
    report_path = os.path.join(out, "report.json")
    if os.path.isfile(report_path):
        return read_json(report_path)
    from paddleseg.cvlibs import Config
    from paddleseg.slim.pipeline import PruneOptions, run
    cfg = Config(cfg_path, iters=args.retraining_iters or None, opts=opts)
    return run(PruneOptions(config=cfg, pruning_ratio=ratio, retraining_iters=args.retraining_iters,
                            model_path=ckpt, save_dir=out, criterion=args.criterion,
                            sen_file=sen_file, sen_eval_num=args.sen_eval_num,
                            sen_ratios=tuple(args.sen_ratios), seed=args.seed))


def control_or_reuse(cfg_path, opts, ckpt, iters, out, args):
    """mIoU of the unpruned model trained ``iters`` more iterations with the retraining
    schedule: what the pruned models' retrained mIoU should be compared with."""
    if os.path.isfile(out):
        return read_json(out)
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.core.train import set_seed, train
    from paddleseg.core.val import evaluate_metrics
    from paddleseg.cvlibs import Config
    from paddleseg.utils.fileio import write_json
    import tempfile
    set_seed(args.seed)
    cfg = Config(cfg_path, iters=iters, opts=opts)
    model = build_and_load(cfg, ckpt)
    with tempfile.TemporaryDirectory() as work:
        train(model, cfg.train_dataset, optimizer=cfg.build_optimizer(model), save_dir=work,
              iters=iters, batch_size=cfg.batch_size, save_interval=iters, log_iters=10,
              losses=cfg.loss, keep_checkpoint_max=1, seed=args.seed)
    result = {"iters": iters, "miou": evaluate_metrics(model, cfg.val_dataset)["mIoU"]}
    write_json(out, result)
    return result


def read_json(path):
    import json
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def conv_time_profile(model, shape, top=5):
    """The convs that take the most dygraph time on ``shape``: [(layer path, share)]."""
    import paddle
    stamps, spent = {}, {}
    convs = [(n, m) for n, m in model.named_sublayers() if isinstance(m, paddle.nn.Conv2D)]
    hooks = []
    for name, layer in convs:
        hooks.append(layer.register_forward_pre_hook(
            lambda lay, inp, name=name: stamps.__setitem__(name, time.perf_counter())))
        hooks.append(layer.register_forward_post_hook(
            lambda lay, inp, out, name=name: spent.__setitem__(
                name, spent.get(name, 0.0) + time.perf_counter() - stamps[name])))
    model.eval()
    with paddle.no_grad():
        start = time.perf_counter()
        model(paddle.rand(shape))
        total = time.perf_counter() - start
    for h in hooks:
        h.remove()
    return [(n, s / total) for n, s in sorted(spent.items(), key=lambda x: -x[1])[:top]]


def main(argv):
    args = parse_args(argv)
    dataset = dataset_choice(args)
    if dataset == "synthetic" and not os.path.isdir(args.synthetic_root):
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        from make_synthetic_optic_disc import make_dataset
        make_dataset(args.synthetic_root)
    from paddleseg.deploy.benchmark import interleaved_latency
    from paddleseg.utils import logger
    rows, notes, training = [], {}, {}
    shape = [1, 3, args.size, args.size]
    for name in args.models:
        cfg_path, opts, cfg = model_config(name, dataset, args)
        base = os.path.join(args.work_dir, dataset, MODELS[name][1])
        logger.info(f"==== {name}: train / reuse ({cfg_path})")
        ckpt = train_or_reuse(name, cfg, os.path.join(base, "train"), args)
        variants = [(0.0, export_unpruned(name, cfg, ckpt, os.path.join(base, "unpruned"), shape),
                     os.path.join(base, "unpruned", "export"))]
        if args.phase == "control":  # only the reference run; the pruned runs may be in flight
            control_or_reuse(cfg_path, opts, ckpt, args.retraining_iters,
                             os.path.join(base, "control.json"), args)
            continue
        for ratio in args.ratios:
            out = os.path.join(base, f"ratio_{ratio:g}")
            logger.info(f"==== {name}: prune {ratio}")
            report = prune_or_reuse(name, cfg_path, opts, ckpt, ratio, out,
                                    os.path.join(base, f"sen_{args.criterion}.pickle"), args)
            variants.append((ratio, report, os.path.join(out, "export")))
        if args.phase == "all":
            control_or_reuse(cfg_path, opts, ckpt, args.retraining_iters,
                             os.path.join(base, "control.json"), args)
        if args.phase == "prepare":
            continue
        logger.info(f"==== {name}: latency at {args.input_shape}, {args.repeats} interleaved repeats")
        samples = interleaved_latency([v[2] for v in variants], args.input_shape, args.warmup,
                                      args.repeats, args.cpu_threads)
        base_ms = samples[0].mean()
        for (ratio, report, _), t in zip(variants, samples):
            rows.append(result_row(name, ratio, report, t, base_ms))
        training[name] = read_json(os.path.join(base, "train", "train_info.json"))
        control = os.path.join(base, "control.json")
        if os.path.isfile(control):
            training[name]["control"] = read_json(control)
        if rows[-1]["speedup"] < 1.3:
            notes[name] = slowest_layers(cfg, variants[-1][2], args.input_shape)
    if args.phase in ("prepare", "control"):
        return 0
    write_results(rows, notes, training, args, dataset)
    return 0


def result_row(name, ratio, report, t, base_ms):
    import numpy as np
    return {"model": name, "ratio": ratio, "gflops": report["flops_after"] / 1e9,
            "retraining_iters": report.get("retraining_iters", 0),
            "params": report["params_after"], "miou": report["miou_retrained"],
            "flops_reduction": report.get("flops_reduction", 0.0),
            "miou_baseline": report.get("miou_baseline", report["miou_retrained"]),
            "mean_ms": float(t.mean()), "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)), "speedup": float(base_ms / t.mean())}


def slowest_layers(cfg, export_dir, input_shape):
    """Where the pruned model still spends its time (dygraph conv timing)."""
    from paddleseg.core.model_loader import build_and_load
    model = build_and_load(cfg, os.path.join(os.path.dirname(export_dir), "model.pdparams"))
    return conv_time_profile(model, input_shape)


def write_results(rows, notes, training, args, dataset):
    from paddleseg.utils.fileio import write_json, write_text
    write_json(os.path.join(args.out_dir, "results.json"),
               {"rows": rows, "slowest_layers": notes, "training": training, "args": vars(args),
                "machine": machine()})
    write_text(os.path.join(args.out_dir, "RESULTS.md"),
               results_markdown(rows, notes, training, args, dataset))
    plot_speedup(rows, os.path.join(args.out_dir, "speedup.png"))


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}"


def results_markdown(rows, notes, training, args, dataset):
    data = "../shared/data/membrane_seg (ISBI-2012 EM, 24 train / 6 val)" if dataset == "membrane" \
        else f"synthetic optic-disc set at {args.synthetic_root}"
    lines = [
        "# Pruning speedup (measured)", "",
        f"Machine: {machine()}. Paddle Inference 2.6.2 on CPU, oneDNN on, {args.cpu_threads} threads.",
        f"Latency input {' x '.join(map(str, args.input_shape))}; {args.warmup} warm-up runs, then "
        f"{args.repeats} timed runs per export, interleaved across the exports of one model.",
        f"Data: {data}, images resized to {args.size}x{args.size}. Pruned with {args.criterion} "
        f"(sensitivity grid {args.sen_ratios} on {args.sen_eval_num} val images).",
        "Training (batch 4, seconds on this machine while other jobs shared it) and retraining: "
        + "; ".join(f"{m} {t['iters']} iters in {t['seconds']:.0f} s, retrained "
                    f"{next(r['retraining_iters'] for r in rows if r['model'] == m and r['ratio'] > 0)}"
                    for m, t in training.items()) + ".",
        f"GFLOPs and params at 1x3x{args.size}x{args.size}; mIoU on the val split.",
        f"Command: `python benchmarks/prune_speedup.py {' '.join(sys.argv[1:])}`", "",
        "| Model | Ratio | GFLOPs | Params | mIoU | FLOPs cut | Mean (ms) | Median (ms) | P90 (ms) | Speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ratio']:.1f} | {r['gflops']:.3f} | {r['params']:,} | "
                     f"{r['miou']:.4f} | {r['flops_reduction']:.1%} | {r['mean_ms']:.1f} | "
                     f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['speedup']:.2f}x |")
    lines += ["", "## Against the goal (ratio 0.3: >= 1.3x and mIoU within 1 point)", ""]
    for r in rows:
        if abs(r["ratio"] - max(args.ratios)) > 1e-9:
            continue
        base = next(b for b in rows if b["model"] == r["model"] and b["ratio"] == 0.0)
        drop = (base["miou"] - r["miou"]) * 100
        ok = r["speedup"] >= 1.3 and drop <= 1.0
        control = training.get(r["model"], {}).get("control")
        fair = (f"; the unpruned model trained the same {control['iters']} extra iterations "
                f"reaches {control['miou']:.4f} ({(r['miou'] - control['miou']) * 100:+.2f} points "
                "for the pruned one)") if control else ""
        lines.append(f"- {r['model']}: {r['speedup']:.2f}x, mIoU {base['miou']:.4f} -> {r['miou']:.4f} "
                     f"({-drop:+.2f} points){fair}: {'meets' if ok else 'misses'} the goal.")
        if r["model"] in notes:
            top = ", ".join(f"`{n}` {s:.0%}" for n, s in notes[r["model"]])
            lines.append(f"  Convs that keep the time in the pruned model (dygraph share): {top}.")
    return "\n".join(lines) + "\n"


def plot_speedup(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    top = max(r["flops_reduction"] for r in rows) + 0.05
    xs = [top * i / 50 for i in range(51)]
    ax.plot(xs, [1 / (1 - x) for x in xs], "k--", linewidth=1, label="ideal: 1 / (1 - FLOPs cut)")
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["flops_reduction"], r["speedup"]) for r in rows if r["model"] == model)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
    ax.set_xlabel("FLOPs reduction")
    ax.set_ylabel("measured speedup (CPU, oneDNN)")
    ax.set_title("Pruning speedup against FLOPs reduction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
