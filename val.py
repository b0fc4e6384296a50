"""Evaluate a trained (or pruned) model on the config's val_dataset and print the metrics."""
import json

import paddleseg  # noqa: F401  (import order: cv2 before paddle)
from paddleseg.utils import cli


def parse_bool(text):
    """PaddleSeg's ``--auc_roc True`` / ``False`` (any case), or the flag alone."""
    value = str(text).lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return value in ("true", "1")


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--model_path", required=True, help="model.pdparams (or its directory) to evaluate")
    p.add_argument("--num_workers", type=int, default=0, help="kept for PaddleSeg compatibility")
    # PaddleSeg's evaluation options; they replace the config's test_config entries they name
    p.add_argument("--aug_eval", action="store_true",
                   help="sum the softmax scores over --scales and the flips asked for")
    p.add_argument("--scales", nargs="+", type=float, default=1.0,
                   help="with --aug_eval: factors of the input size (default 1.0)")
    p.add_argument("--flip_horizontal", action="store_true", help="with --aug_eval")
    p.add_argument("--flip_vertical", action="store_true", help="with --aug_eval")
    p.add_argument("--is_slide", action="store_true",
                   help="predict by sliding windows of --crop_size every --stride")
    p.add_argument("--crop_size", nargs=2, type=int, default=None, metavar=("W", "H"),
                   help="with --is_slide: the window")
    p.add_argument("--stride", nargs=2, type=int, default=None, metavar=("W", "H"),
                   help="with --is_slide: the step between windows")
    p.add_argument("--auc_roc", nargs="?", const=True, default=None, type=parse_bool,
                   help="also compute the AUC-ROC (the config's test_config can ask for it)")
    p.add_argument("--data_format", choices=["NCHW", "NHWC"], default="NCHW",
                   help="PaddleSeg's; NHWC is for DeepLabV3P only, which is not among our models")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    cli.add_common_args(p)
    return p.parse_args(argv)


def test_config(cfg, args):
    """The config's test_config with the flags' options over it, as PaddleSeg's val.py merges
    them (--aug_eval brings its scales and flips, --is_slide its window and stride)."""
    config = cfg.test_config
    if args.aug_eval:
        config.update(aug_eval=True, scales=args.scales, flip_horizontal=args.flip_horizontal,
                      flip_vertical=args.flip_vertical)
    if args.is_slide:   # a window or stride the flags leave out stays the config's
        config.update(is_slide=True, crop_size=args.crop_size or config.get("crop_size"),
                      stride=args.stride or config.get("stride"))
    if args.auc_roc is not None:
        config["auc_roc"] = args.auc_roc
    return config


def main(argv):
    args = parse_args(argv)
    from paddleseg.cvlibs import Config
    from paddleseg.core.infer import EvalOptions
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.core.val import evaluate_metrics
    from paddleseg.utils.fileio import write_json

    if args.data_format != "NCHW":
        raise paddleseg.utils.UserError("--data_format NHWC is for PaddleSeg's DeepLabV3P only; "
                                        "our models take NCHW")
    cli.set_device(args.device)
    cfg = Config(args.config, opts=args.opts)
    options = EvalOptions.from_config(test_config(cfg, args),
                                      where=f"{args.config}: test_config and the flags")
    model = build_and_load(cfg, args.model_path)
    if cfg.val_dataset is None:
        raise paddleseg.utils.UserError(f"{args.config} has no val_dataset")
    result = evaluate_metrics(model, cfg.val_dataset, options=options)
    if args.json:
        write_json(args.json, result)
    headline = ("mIoU", "Acc", "Kappa", "Dice") + (("AUC_ROC",) if options.auc_roc else ())
    print(json.dumps({k: None if result[k] is None else round(result[k], 4) for k in headline}))
    return 0


if __name__ == "__main__":
    cli.run(main)
