"""Evaluate a trained (or pruned) model on the config's val_dataset and print the metrics."""
import json

import paddleseg  # noqa: F401  (import order: cv2 before paddle)
from paddleseg.utils import cli


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--model_path", required=True, help="model.pdparams (or its directory) to evaluate")
    p.add_argument("--num_workers", type=int, default=0, help="kept for PaddleSeg compatibility")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    cli.add_common_args(p)
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    from paddleseg.cvlibs import Config
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.core.val import evaluate_metrics
    from paddleseg.utils.fileio import write_json

    cli.set_device(args.device)
    cfg = Config(args.config, opts=args.opts)
    model = build_and_load(cfg, args.model_path)
    if cfg.val_dataset is None:
        raise paddleseg.utils.UserError(f"{args.config} has no val_dataset")
    result = evaluate_metrics(model, cfg.val_dataset)
    if args.json:
        write_json(args.json, result)
    print(json.dumps({k: round(result[k], 4) for k in ("mIoU", "Acc", "Kappa", "Dice")}))
    return 0


if __name__ == "__main__":
    cli.run(main)
