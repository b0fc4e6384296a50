"""Where a model's time goes on the deploy backend: each conv block's share of the measured
latency (Paddle Inference, oneDNN's primitive timer; warmed up, repeated, medians).

    python tools/profile_latency.py --config CONFIG [--model_path PARAMS] \\
        [--latency_shape 1 3 512 1024] [--cpu_threads 2] [--top 20]

Run it before pruning to see which layers hold the time, and on a pruned model
(``--model_path output/pruned/model.pdparams``) to see where it still goes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402

GROUP_SHAPE = (1, 3, 64, 64)    # the dependency analysis only names groups: any size will do


def build_parser():
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configuration file")
    p.add_argument("--model_path", default=None, help="parameters to load (pruned or not)")
    p.add_argument("--latency_shape", type=int, nargs=4, default=None,
                   metavar=("N", "C", "H", "W"),
                   help="input shape (default: the val transforms' Resize, else 1 3 512 1024)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--cpu_threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--top", type=int, default=20, help="how many of the slowest blocks to list")
    p.add_argument("--runs", type=int, default=5, help="profiled runs (medians per block)")
    cli.add_common_args(p)
    return p


def main(argv):
    args = build_parser().parse_args(argv)
    from paddleseg.core.export import parse_input_shape
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.cvlibs import Config
    from paddleseg.slim import build_groups
    from paddleseg.slim.latency import Backend, format_profile, profile_model
    from paddleseg.slim.targets.latency import deploy_shape
    from paddleseg.utils.errors import UserError

    if args.top < 1 or args.runs < 1:
        raise UserError(f"--top and --runs must be >= 1, got {args.top} and {args.runs}")
    cli.set_device(args.device)
    cfg = Config(args.config, opts=args.opts)
    shape = parse_input_shape(args.latency_shape, "--latency_shape") or \
        deploy_shape(cfg.val_dataset_config.get("transforms"))
    backend = Backend(device=args.device, cpu_threads=args.cpu_threads, shape=shape)
    model = build_and_load(cfg, args.model_path)
    model.eval()
    groups = build_groups(model, GROUP_SHAPE).groups
    print(format_profile(profile_model(model, backend, groups, runs=args.runs), top=args.top))
    return 0


if __name__ == "__main__":
    cli.run(main)
