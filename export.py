"""Export a trained or pruned model for deployment: model.pdmodel, model.pdiparams, deploy.yaml."""
import paddleseg  # noqa: F401  (import order: cv2 before paddle)
from paddleseg.utils import cli


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="YAML config file the model was trained with")
    p.add_argument("--model_path", required=True,
                   help="model.pdparams (or its directory); a pruned one restores its pruned structure")
    p.add_argument("--save_dir", default="output/inference_model", help="where the exported model goes")
    p.add_argument("--input_shape", nargs="+", type=int, default=None, metavar="N C H W",
                   help="export with a fixed input shape, e.g. 1 3 512 1024 (default: any batch and size)")
    p.add_argument("--output_op", choices=["argmax", "softmax", "none"], default=None,
                   help="op appended to the logits: argmax (int32 labels, the default), softmax "
                        "or none")
    # PaddleSeg 2.6's way of saying the same (its later releases have --output_op)
    p.add_argument("--without_argmax", action="store_true",
                   help="PaddleSeg 2.6's: no argmax (--output_op none, or softmax with "
                        "--with_softmax)")
    p.add_argument("--with_softmax", action="store_true",
                   help="PaddleSeg 2.6's: softmax on the logits (with --without_argmax: "
                        "--output_op softmax; with the argmax the labels are the same)")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    args.output_op = output_op(args)
    return args


def output_op(args):
    """--output_op, or what PaddleSeg 2.6's two flags ask for; both ways at once must agree."""
    from paddleseg.utils import UserError
    if not (args.without_argmax or args.with_softmax):
        return args.output_op or "argmax"
    legacy = ("softmax" if args.with_softmax else "none") if args.without_argmax else "argmax"
    if args.output_op not in (None, legacy):
        raise UserError(f"--output_op {args.output_op} contradicts --without_argmax/--with_softmax "
                        f"(which ask for {legacy}); give one of the two")
    return legacy


def main(argv):
    args = parse_args(argv)
    from paddleseg.core.export import check_export_target, export_model, parse_input_shape
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.cvlibs import Config
    from paddleseg.utils import logger, UserError
    from paddleseg.utils.fileio import removed_if_left_empty
    from paddleseg.utils.structure import pruned_info

    shape = parse_input_shape(args.input_shape)
    check_export_target(args.save_dir)  # before the slow part; export_model checks again
    cli.set_device("cpu")
    cfg = Config(args.config, opts=args.opts)
    transforms = cfg.val_dataset_config.get("transforms")
    if not transforms:
        raise UserError(f"{args.config} has no val_dataset.transforms; deploy.yaml needs them "
                        "for the deploy-side preprocessing")
    model = build_and_load(cfg, args.model_path)
    pruned = pruned_info(model) is not None
    with removed_if_left_empty(args.save_dir):  # the parent folders export_model makes
        export_model(model, args.save_dir, input_shape=shape, output_op=args.output_op,
                     val_transforms_config=transforms, model_type=cfg.model_config.get("type"))
    logger.info(f"exported {'pruned ' if pruned else ''}{cfg.model_config.get('type')} "
                f"({args.output_op}) to {args.save_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
