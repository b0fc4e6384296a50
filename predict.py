"""Predict images with a trained (or pruned) model: pseudo-colour PNGs and overlays, as
PaddleSeg's predict.py writes them under --save_dir (pseudo_color_prediction/, added_prediction/).
"""
import paddleseg  # noqa: F401  (import order: cv2 before paddle)
from paddleseg.utils import cli


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config file (its val transforms are used)")
    p.add_argument("--model_path", required=True, help="model.pdparams (or its directory)")
    p.add_argument("--image_path", required=True,
                   help="an image, a text file listing images, or a folder searched recursively")
    p.add_argument("--save_dir", default="./output/result", help="where the predictions go")
    p.add_argument("--aug_pred", action="store_true",
                   help="sum the softmax scores over --scales and flips (horizontal unless the "
                        "config's test_config says otherwise, as in PaddleSeg)")
    p.add_argument("--scales", nargs="+", type=float, default=1.0, help="with --aug_pred")
    p.add_argument("--flip_horizontal", action="store_true", help="with --aug_pred")
    p.add_argument("--flip_vertical", action="store_true", help="with --aug_pred")
    p.add_argument("--is_slide", action="store_true",
                   help="predict by sliding windows of --crop_size every --stride")
    p.add_argument("--crop_size", nargs=2, type=int, default=None, metavar=("W", "H"))
    p.add_argument("--stride", nargs=2, type=int, default=None, metavar=("W", "H"))
    p.add_argument("--custom_color", nargs="+", type=int, default=None,
                   help="r g b of class 0, of class 1, ... (default: PaddleSeg's palette)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    cli.add_common_args(p)
    return p.parse_args(argv)


def prediction_options(test_config, args):
    """The config's test_config with the flags over it, as PaddleSeg's predict.py merges them:
    the config's aug_eval is evaluation's only, flip_horizontal defaults to on with --aug_pred,
    the AUC-ROC has no meaning here."""
    config = {k: v for k, v in test_config.items() if k not in ("aug_eval", "auc_roc")}
    config.setdefault("flip_horizontal", True)
    if args.aug_pred:
        config.update(aug_eval=True, scales=args.scales)
    if args.flip_horizontal:
        config["flip_horizontal"] = True
    if args.flip_vertical:
        config["flip_vertical"] = True
    if args.is_slide:   # a window or stride the flags leave out stays the config's
        config.update(is_slide=True, crop_size=args.crop_size or config.get("crop_size"),
                      stride=args.stride or config.get("stride"))
    return config


def main(argv):
    args = parse_args(argv)
    from paddleseg.core.export import check_transforms
    from paddleseg.core.infer import EvalOptions
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.core.predict import image_list, predict_images
    from paddleseg.cvlibs import Config
    from paddleseg.transforms import Compose
    from paddleseg.utils.fileio import check_folder_target
    from paddleseg.utils.visualize import color_map

    check_folder_target(args.save_dir)
    palette = color_map(args.custom_color)
    images = image_list(args.image_path)
    cli.set_device(args.device)
    cfg = Config(args.config, opts=args.opts)
    options = EvalOptions.from_config(prediction_options(cfg.test_config, args),
                                      where=f"{args.config}: test_config and the flags")
    transforms = Compose(check_transforms(cfg.val_dataset_config.get("transforms") or []))
    model = build_and_load(cfg, args.model_path)
    predict_images(model, transforms, images, args.save_dir, options, palette)
    return 0


if __name__ == "__main__":
    cli.run(main)
