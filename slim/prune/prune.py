"""Prune a segmentation model's conv channels: sensitivity analysis, per-layer ratios that hit a
FLOPs or measured-latency target (FPGM or L1 criterion), retraining, evaluation, saving and
export."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--pruning_ratio", type=float, required=True,
                   help="the pruning ratio: target reduction of FLOPs (or of measured latency, "
                        "with --target latency), in (0, 1)")
    p.add_argument("--retraining_iters", type=int, required=True,
                   help="retraining iterations after pruning, >= 0")
    p.add_argument("--config", required=True, help="configuration file")
    p.add_argument("--batch_size", type=int, default=None,
                   help="batch size when retraining (default: from the config)")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="learning rate when retraining (default: from the config)")
    p.add_argument("--model_path", default=None, help="trained parameters to prune")
    p.add_argument("--num_workers", type=int, default=0, help="data-loading workers")
    p.add_argument("--save_dir", default="output",
                   help="where the pruned model goes: a new or empty folder, or an earlier "
                        "prune output (replaced as a whole when the run succeeds)")
    p.add_argument("--criterion", choices=["l1", "fpgm"], default=None,
                   help="channel importance: fpgm (geometric median, default) or l1 (filter norm; "
                        "the default with --engine paddleslim, as in PaddleSeg 2.6)")
    p.add_argument("--sen_file", default=None,
                   help="sensitivity file (JSON), resumed when it exists (default: "
                        "save_dir/sensitivity.json); a .pickle name is pickled, read back safely")
    p.add_argument("--sen_eval_num", type=int, default=None,
                   help="evaluate sensitivity on the first N val images (default: all)")
    p.add_argument("--sen_ratios", type=float, nargs="+", default=None,
                   help="the ratio grid of the sensitivity analysis (default: 0.1 ... 0.9)")
    p.add_argument("--sen_engine", choices=["auto", "predictor", "dygraph"], default="auto",
                   help="what runs the sensitivity evaluations: predictor (a Paddle Inference "
                        "predictor per point, oneDNN: several times faster forwards on CPU), "
                        "dygraph, or auto (both timed on pruned probes; the first groups in "
                        "predictors and the rest in dygraph where that is faster; dygraph on "
                        "GPU)")
    p.add_argument("--allow_lower_target", action="store_true",
                   help="when --pruning_ratio is above what the sensitivity grid can reach, prune "
                        "at that maximum instead of failing")
    p.add_argument("--min_coverage", type=float, default=0.5,
                   help="fail when less than this share of the model's conv FLOPs can be "
                        "pruned (ops the engine does not understand freeze channels)")
    p.add_argument("--channel_step", type=int, default=8,
                   help="remove channels in multiples of this where a layer's width allows, so "
                        "pruned widths stay aligned for fast CPU/GPU kernels (1: any count)")
    p.add_argument("--target", choices=["flops", "latency"], default="flops",
                   help="what --pruning_ratio cuts: flops (analytic FLOPs) or latency (the "
                        "exported model's latency measured on --device)")
    p.add_argument("--latency_shape", type=int, nargs=4, default=None,
                   metavar=("N", "C", "H", "W"),
                   help="input shape latency is measured at (default: the val transforms' "
                        "Resize, else 1 3 512 1024)")
    p.add_argument("--latency_table", default=None,
                   help="latency table file: reused when made for this machine, threads, shape "
                        "and model, else measured and written (default: a cache under SEG_HOME)")
    p.add_argument("--latency_allocation", choices=["loss_per_ms", "balanced", "equal_loss"],
                   default=None,
                   help="how --target latency shares the cut among groups: loss_per_ms (least "
                        "accuracy lost per millisecond saved; the default), balanced (least "
                        "squared loss per millisecond: no group cut deep alone) or equal_loss "
                        "(the --target flops allocation, every group pruned to one sensitivity "
                        "loss, scaled to the latency target: a control for comparisons)")
    p.add_argument("--latency_samples", type=int, default=8,
                   help="sample plans a new latency table measures (more: slower, closer fit)")
    p.add_argument("--cpu_threads", type=int, default=None,
                   help="CPU threads per process for evaluation, sensitivity analysis, "
                        "retraining and latency measurement (default: all cores, divided "
                        "between the ranks of a paddle.distributed.launch job)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--engine", choices=["native", "paddleslim"], default="native",
                   help="native: this project's engine; paddleslim: PaddleSeg 2.6's original "
                        "method (PaddleSlim's sensitivity + sensitive_prune), for comparison")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="run on cpu or gpu")
    cli.add_common_args(p)
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise paddleseg.utils.UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise paddleseg.utils.UserError(f"--learning_rate must be > 0, got {args.learning_rate}")
    return args


def main(argv):
    args = parse_args(argv)
    if args.engine == "paddleslim":
        return run_paddleslim(args)
    from paddleseg.cvlibs import Config
    from paddleseg.slim.pipeline import DEFAULT_RATIOS, PruneOptions, check_options, run

    options = PruneOptions(config=None, pruning_ratio=args.pruning_ratio,
                           retraining_iters=args.retraining_iters, model_path=args.model_path,
                           save_dir=args.save_dir, criterion=args.criterion or "fpgm",
                           sen_file=args.sen_file,
                           sen_eval_num=args.sen_eval_num,
                           sen_ratios=tuple(args.sen_ratios or DEFAULT_RATIOS),
                           sen_engine=args.sen_engine,
                           num_workers=args.num_workers, seed=args.seed,
                           channel_step=args.channel_step,
                           allow_lower_target=args.allow_lower_target,
                           min_coverage=args.min_coverage, target=args.target,
                           latency_shape=args.latency_shape, latency_table=args.latency_table,
                           latency_samples=args.latency_samples,
                           latency_allocation=args.latency_allocation, cpu_threads=args.cpu_threads,
                           device=args.device)
    check_options(options)  # before any slow work (save_dir, sensitivity file)
    cli.set_device(args.device, args.cpu_threads)
    # the retraining schedule spans --retraining_iters, as a fresh training run of that length
    options.config = Config(args.config, learning_rate=args.learning_rate,
                            batch_size=args.batch_size,
                            iters=args.retraining_iters or None, opts=args.opts)
    report = run(options)  # a failed run leaves no save_dir (or parent) it made
    if report is None:  # a rank other than 0 of a paddle.distributed.launch job: rank 0 reports
        return 0
    cut = 1 - report["flops_after"] / report["flops_before"]
    lowered = "" if report["target_reachable"] else (
        f" (target {args.pruning_ratio} lowered to {report['target_lowered_to']:.3f}, the most "
        "the sensitivity grid reaches)")
    if "latency" in report:
        lat = report["latency"]
        cut = (f"latency -{lat['measured_reduction']:.1%} measured ({lat['measured_ms_before']:.1f}"
               f" -> {lat['measured_ms_after']:.1f} ms), FLOPs -{cut:.1%}")
    else:
        cut = f"FLOPs -{cut:.1%}"
    print(f"pruned {report['model_name']}: {cut}{lowered}, "
          f"mIoU {report['miou_baseline']:.4f} -> {report['miou_pruned']:.4f} (pruned) -> "
          f"{report['miou_retrained']:.4f} (retrained); saved to {args.save_dir}")
    return 0


# flags of the native engine that PaddleSeg 2.6's method has no equivalent for
NATIVE_ONLY = ("sen_ratios", "sen_engine", "allow_lower_target", "min_coverage", "channel_step", "target",
               "latency_shape", "latency_table", "latency_samples", "latency_allocation")


def run_paddleslim(args):
    from paddleseg.cvlibs import Config
    from paddleseg.slim import paddleslim_engine as engine
    from paddleseg.utils.distributed import world_size
    if world_size() > 1:  # every rank would run the whole method and write the same output
        raise paddleseg.utils.UserError(
            "--engine paddleslim runs in one process; start it without paddle.distributed.launch")
    defaults = build_parser()
    given = [n for n in NATIVE_ONLY if getattr(args, n) != defaults.get_default(n)]
    if given:
        raise paddleseg.utils.UserError(
            f"--engine paddleslim runs PaddleSeg 2.6's method, which has no --{given[0]} "
            "(PaddleSlim's own ratio grid, FLOPs target and channel rounding apply)")
    options = engine.PaddleSlimOptions(
        config=None, pruning_ratio=args.pruning_ratio, retraining_iters=args.retraining_iters,
        model_path=args.model_path, save_dir=args.save_dir, criterion=args.criterion or "l1",
        sen_file=args.sen_file, sen_eval_num=args.sen_eval_num, num_workers=args.num_workers,
        seed=args.seed)
    engine.check_options(options)
    cli.set_device(args.device, args.cpu_threads)
    options.config = Config(args.config, learning_rate=args.learning_rate,
                            batch_size=args.batch_size,
                            iters=args.retraining_iters or None, opts=args.opts)
    r = engine.run(options)
    print(f"pruned {r['model_name']} with PaddleSlim: FLOPs -{r['flops_reduction']:.1%} "
          f"({r['pruning_ratio']:.1%} asked), mIoU {r['miou_baseline']:.4f} -> "
          f"{r['miou_pruned']:.4f} (pruned) -> {r['miou_retrained']:.4f} (retrained); saved to "
          f"{args.save_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
