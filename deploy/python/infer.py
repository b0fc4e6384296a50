"""Segment images with an exported model (Paddle Inference) and save pseudo-colour PNGs.

    python deploy/python/infer.py --config output/inference_model/deploy.yaml \
        --image_path data/images --save_dir output/result

The preprocessing is deploy.yaml's transforms list; each prediction is mapped back to its
image's size and written as ``<save_dir>/<same relative path and stem>.png`` (a palette PNG
whose pixel values are the class ids, tagged as a prediction). Nothing else is overwritten: a
``save_dir`` that holds an input image, or a file of another kind where a prediction would go
(ground-truth labels, say), is refused before any work.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
# a PNG text chunk on every prediction: how a later run knows which files it may overwrite
PNG_TAG = ("Software", "PaddleSeg deploy/python/infer.py prediction")


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the export's deploy.yaml (or its directory)")
    p.add_argument("--image_path", required=True, help="an image, or a directory searched recursively")
    p.add_argument("--save_dir", default="output/result", help="where the PNGs go")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--use_trt", action="store_true", help="TensorRT subgraphs (GPU builds only)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp16/int8 need --device gpu (int8 also --use_trt)")
    p.add_argument("--enable_mkldnn", action=argparse.BooleanOptionalAction, default=True,
                   help="oneDNN on CPU (default on; --no-enable_mkldnn turns it off)")
    p.add_argument("--cpu_threads", type=int, default=2, help="CPU math threads")
    p.add_argument("--batch_size", type=int, default=1, help="images per predictor run")
    p.add_argument("--benchmark", action="store_true", help="log pre/inference/post-processing times")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.cpu_threads < 1:
        raise paddleseg.utils.UserError("--batch_size and --cpu_threads must be >= 1")
    from paddleseg.utils.fileio import check_folder_target
    check_folder_target(args.save_dir)
    return args


def list_images(path):
    """``[(path, relative path without extension)]``: the image, or a sorted recursive walk."""
    from paddleseg.utils import UserError
    if os.path.isfile(path):
        return [(path, os.path.splitext(os.path.basename(path))[0])]
    if not os.path.isdir(path):
        raise UserError(f"--image_path not found: {path}")
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTS):
                full = os.path.join(root, name)
                found.append((full, os.path.splitext(os.path.relpath(full, path))[0]))
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) under {path}")
    return found


def output_paths(images, save_dir):
    """Where each image's prediction goes: ``save_dir/<relative stem>.png``; a second image of
    the same stem (a.jpg beside a.png) gets its extension added (``a_png.png``)."""
    paths, taken = [], set()
    for path, rel in images:
        if rel in taken:
            rel = f"{rel}_{os.path.splitext(path)[1].lstrip('.').lower()}"
        taken.add(rel)
        paths.append(os.path.join(save_dir, rel + ".png"))
    return paths


def is_prediction(path):
    """Whether ``path`` is a PNG this script wrote (it carries PNG_TAG)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get(PNG_TAG[0]) == PNG_TAG[1]
    except (OSError, ValueError):
        return False


def check_save_dir(images, outputs, save_dir):
    """UserError when writing ``outputs`` would overwrite anything but earlier predictions:
    ``save_dir`` must not hold an input image, and every existing output file must be one
    of ours."""
    from paddleseg.utils import UserError
    root = os.path.realpath(save_dir)
    for path, _ in images:
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) == root:
            raise UserError(f"--save_dir {save_dir} holds the input image {path}; predictions "
                            "would overwrite inputs: choose another folder")
    foreign = [p for p in outputs if os.path.lexists(p) and not is_prediction(p)]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"--save_dir {save_dir} already holds {foreign[0]}{more}, which is not a "
                        "prediction of this script; refusing to overwrite: choose another folder")


def restore_size(label, trans_info):
    """Undo, newest first, the resizes and paddings recorded by the transforms (nearest)."""
    import cv2
    for op, (h, w) in reversed(trans_info):
        if op == "resize":
            label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
        elif op == "padding":
            label = label[:h, :w]
    return label


class Timer:
    def __init__(self):
        self.total = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}

    def add(self, key, start):
        self.total[key] += time.perf_counter() - start


def main(argv):
    args = parse_args(argv)
    import numpy as np
    from paddleseg.core.export import load_deploy_config
    from paddleseg.deploy.predictor import create_predictor, run_predictor
    from paddleseg.cvlibs import manager
    from paddleseg.cvlibs.config import build_component
    from paddleseg.transforms import Compose
    from paddleseg.utils import logger
    from paddleseg.utils.visualize import color_map, save_pseudo_color

    deploy = load_deploy_config(args.config)
    images = list_images(args.image_path)
    outputs = output_paths(images, args.save_dir)
    check_save_dir(images, outputs, args.save_dir)
    compose = Compose([build_component(dict(t), manager.TRANSFORMS) for t in deploy["transforms"]])
    predictor = create_predictor(deploy["model_dir"], device=args.device, use_trt=args.use_trt,
                                 precision=args.precision, enable_mkldnn=args.enable_mkldnn,
                                 cpu_threads=args.cpu_threads,
                                 opt_shape=[args.batch_size, 3, 512, 1024],
                                 max_shape=[args.batch_size, 3, 2048, 2048])
    palette = color_map()
    timer = Timer()
    warmed = not args.benchmark
    for begin in range(0, len(images), args.batch_size):
        chunk = images[begin:begin + args.batch_size]
        start = time.perf_counter()
        datas = [compose({"img": path}) for path, _ in chunk]
        timer.add("preprocess", start)
        # images whose preprocessed sizes differ cannot share a batch: run each size apart
        groups = {}
        for i, data in enumerate(datas):
            groups.setdefault(data["img"].shape, []).append(i)
        for shape, idx in groups.items():
            batch = np.stack([datas[i]["img"] for i in idx])
            if not warmed:  # one untimed run so --benchmark does not count set-up
                run_predictor(predictor, batch)
                warmed = True
            start = time.perf_counter()
            out = run_predictor(predictor, batch)
            timer.add("inference", start)
            start = time.perf_counter()
            labels = out if out.ndim == 3 else out.argmax(axis=1)  # argmax export: [N, H, W]
            for j, i in enumerate(idx):
                label = restore_size(labels[j].astype(np.int32), datas[i]["trans_info"])
                save_pseudo_color(label, outputs[begin + i], palette, PNG_TAG)
            timer.add("postprocess", start)
    logger.info(f"{len(images)} prediction(s) saved under {args.save_dir}")
    if args.benchmark:
        n = len(images)
        t = timer.total
        logger.info(f"benchmark: {n} image(s), batch {args.batch_size}, device {args.device}: "
                    f"preprocess {t['preprocess'] * 1000 / n:.2f} ms/img, "
                    f"inference {t['inference'] * 1000 / n:.2f} ms/img, "
                    f"postprocess {t['postprocess'] * 1000 / n:.2f} ms/img, "
                    f"total {sum(t.values()) * 1000 / n:.2f} ms/img")
    return 0


if __name__ == "__main__":
    cli.run(main)
