"""Train a segmentation model from a PaddleSeg-format config."""
import paddleseg  # noqa: F401  (import order: cv2 before paddle)
from paddleseg.utils import cli


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--do_eval", action="store_true", help="evaluate at every save and keep best_model/")
    p.add_argument("--use_vdl", action="store_true", help="write VisualDL logs under save_dir")
    p.add_argument("--save_interval", type=int, default=1000, help="iterations between checkpoints")
    p.add_argument("--save_dir", default="output", help="where checkpoints go")
    p.add_argument("--iters", type=int, default=None, help="total iterations (overrides the config)")
    p.add_argument("--batch_size", type=int, default=None, help="batch size per card (overrides the config)")
    p.add_argument("--learning_rate", type=float, default=None, help="overrides lr_scheduler.learning_rate")
    p.add_argument("--resume_model", default=None, help="save_dir/iter_N to continue from")
    p.add_argument("--model_path", default=None,
                   help="weights to start from at iteration 0, e.g. a pruned model to fine-tune "
                        "(a pruned checkpoint restores its pruned structure)")
    p.add_argument("--num_workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible run")
    p.add_argument("--log_iters", type=int, default=10, help="iterations between log lines")
    p.add_argument("--keep_checkpoint_max", type=int, default=5, help="iter_N checkpoints kept")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="run on cpu or gpu")
    p.add_argument("--cpu_threads", type=int, default=None,
                   help="math threads per process on CPU (default: the machine's cores divided "
                        "by the ranks on it)")
    # PaddleSeg's, so that its commands run: fp16 (AMP) and profiling are not implemented here,
    # asking for them is reported and training goes on in fp32
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="PaddleSeg's AMP switch; fp16 is reported as not supported, fp32 is used")
    p.add_argument("--amp_level", choices=["O1", "O2"], default="O1", help="with --precision fp16")
    p.add_argument("--profiler_options", default=None, help="PaddleSeg's; reported, not used")
    p.add_argument("--data_format", choices=["NCHW", "NHWC"], default="NCHW",
                   help="PaddleSeg's; NHWC is for DeepLabV3P only, which is not among our models")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    for name in ("save_interval", "iters", "batch_size", "log_iters"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise paddleseg.utils.UserError(f"--{name} must be >= 1, got {value}")
    if args.cpu_threads is not None and args.cpu_threads < 1:
        raise paddleseg.utils.UserError(f"--cpu_threads must be >= 1, got {args.cpu_threads}")
    if args.num_workers < 0 or args.keep_checkpoint_max < 0:
        raise paddleseg.utils.UserError("--num_workers and --keep_checkpoint_max must be >= 0")
    if args.learning_rate is not None and not args.learning_rate > 0:  # also refuses nan
        raise paddleseg.utils.UserError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.data_format != "NCHW":
        raise paddleseg.utils.UserError("--data_format NHWC is for PaddleSeg's DeepLabV3P only; "
                                        "our models take NCHW")
    from paddleseg.utils.fileio import check_folder_target
    check_folder_target(args.save_dir)
    return args


def main(argv):
    args = parse_args(argv)
    from paddleseg.utils.fileio import removed_if_left_empty
    with removed_if_left_empty(args.save_dir):
        return run_training(args)


def run_training(args):
    from paddleseg.cvlibs import Config
    from paddleseg.core import train
    from paddleseg.core.train import set_seed
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.utils import logger

    cli.set_device(args.device, args.cpu_threads)
    set_seed(args.seed)
    cfg = Config(args.config, learning_rate=args.learning_rate, batch_size=args.batch_size,
                 iters=args.iters, opts=args.opts)
    train_dataset = cfg.train_dataset
    if train_dataset is None:
        raise paddleseg.utils.UserError(f"{args.config} has no train_dataset")
    val_dataset = cfg.val_dataset if args.do_eval else None
    if args.do_eval and val_dataset is None:
        raise paddleseg.utils.UserError(f"--do_eval needs a val_dataset in {args.config}")
    if args.resume_model and args.model_path:
        raise paddleseg.utils.UserError("give --resume_model or --model_path, not both")
    start_from = args.resume_model or args.model_path
    # a pruned checkpoint carries its layer shapes: the model is shrunk to them before loading,
    # and the checkpoints this run writes carry them on
    model = build_and_load(cfg, start_from)
    logger.info(f"config {args.config}: {type(model).__name__}, {len(train_dataset)} train images, "
                f"batch {cfg.batch_size}, {cfg.iters} iters")
    train(model, train_dataset, val_dataset=val_dataset, optimizer=cfg.build_optimizer(model),
          save_dir=args.save_dir, iters=cfg.iters, batch_size=cfg.batch_size,
          resume_model=args.resume_model, save_interval=args.save_interval, log_iters=args.log_iters,
          num_workers=args.num_workers, use_vdl=args.use_vdl, losses=cfg.loss,
          keep_checkpoint_max=args.keep_checkpoint_max, seed=args.seed,
          test_config=cfg.test_config, precision=args.precision, amp_level=args.amp_level,
          profiler_options=args.profiler_options)
    return 0


if __name__ == "__main__":
    cli.run(main)
