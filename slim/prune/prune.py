"""Prune a segmentation model's conv channels: sensitivity analysis, FLOPs-targeted per-layer
ratios (FPGM or L1 criterion), retraining, evaluation, saving and export."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--pruning_ratio", type=float, required=True,
                   help="the pruning ratio: target FLOPs reduction, in (0, 1)")
    p.add_argument("--retraining_iters", type=int, required=True,
                   help="retraining iterations after pruning, >= 0")
    p.add_argument("--config", required=True, help="configuration file")
    p.add_argument("--batch_size", type=int, default=None,
                   help="batch size when retraining (default: from the config)")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="learning rate when retraining (default: from the config)")
    p.add_argument("--model_path", default=None, help="trained parameters to prune")
    p.add_argument("--num_workers", type=int, default=0, help="data-loading workers")
    p.add_argument("--save_dir", default="output", help="where the pruned model goes")
    p.add_argument("--criterion", choices=["l1", "fpgm"], default="fpgm",
                   help="channel importance: fpgm (geometric median, default) or l1 (filter norm)")
    p.add_argument("--sen_file", default=None,
                   help="sensitivity file, resumed when it exists (default: save_dir/sen.pickle)")
    p.add_argument("--sen_eval_num", type=int, default=None,
                   help="evaluate sensitivity on the first N val images (default: all)")
    p.add_argument("--sen_ratios", type=float, nargs="+", default=None,
                   help="the ratio grid of the sensitivity analysis (default: 0.1 ... 0.9)")
    p.add_argument("--channel_step", type=int, default=8,
                   help="remove channels in multiples of this where a layer's width allows, so "
                        "pruned widths stay aligned for fast CPU/GPU kernels (1: any count)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
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
    from paddleseg.cvlibs import Config
    from paddleseg.slim.pipeline import DEFAULT_RATIOS, PruneOptions, check_options, run

    options = PruneOptions(config=None, pruning_ratio=args.pruning_ratio,
                           retraining_iters=args.retraining_iters, model_path=args.model_path,
                           save_dir=args.save_dir, criterion=args.criterion, sen_file=args.sen_file,
                           sen_eval_num=args.sen_eval_num,
                           sen_ratios=tuple(args.sen_ratios or DEFAULT_RATIOS),
                           num_workers=args.num_workers, seed=args.seed,
                           channel_step=args.channel_step)
    check_options(options)  # before any slow work
    cli.set_device(args.device)
    # the retraining schedule spans --retraining_iters, as a fresh training run of that length
    options.config = Config(args.config, learning_rate=args.learning_rate,
                            batch_size=args.batch_size,
                            iters=args.retraining_iters or None, opts=args.opts)
    report = run(options)
    cut = 1 - report["flops_after"] / report["flops_before"]
    print(f"pruned {report['model_name']}: FLOPs -{cut:.1%}, "
          f"mIoU {report['miou_baseline']:.4f} -> {report['miou_pruned']:.4f} (pruned) -> "
          f"{report['miou_retrained']:.4f} (retrained); saved to {args.save_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
