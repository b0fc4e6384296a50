"""Predicting images with a trained model, as PaddleSeg's predict.py does: for each image a
pseudo-colour PNG (``pseudo_color_prediction/<relative stem>.png``: palette indices = class
ids) and the image blended with it (``added_prediction/<relative path>``).

Nothing the user had is overwritten: ``save_dir`` may not hold an input image, and an output
path that exists must be one this module wrote (listed in ``save_dir/.predictions.json``).
"""
import os
import time

import numpy as np
import paddle

from paddleseg.utils import distributed, logger
from paddleseg.utils.errors import UserError
from paddleseg.utils.fileio import write_json
from paddleseg.utils.image_io import read_image, shown, write_image
from paddleseg.utils.progress import Progress
from paddleseg.utils.visualize import overlay, save_pseudo_color
from .infer import scores

# PaddleSeg's: these extensions exactly (case included), hidden files and notebook checkpoints
# left out
IMAGE_SUFFIXES = (".JPEG", ".jpeg", ".JPG", ".jpg", ".BMP", ".bmp", ".PNG", ".png")
MANIFEST = ".predictions.json"
PSEUDO_DIR, ADDED_DIR = "pseudo_color_prediction", "added_prediction"


def image_list(image_path):
    """``[(image path, path relative to the folder named)]``: an image; a text file listing
    images (first field of each line, relative to the file's folder); or a folder searched
    recursively."""
    if os.path.isfile(image_path):
        if os.path.splitext(image_path)[1] in IMAGE_SUFFIXES:
            return [(image_path, os.path.basename(image_path))]
        folder = os.path.dirname(image_path)
        try:
            with open(image_path, encoding="utf-8") as f:
                names = [line.split()[0] for line in f if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"--image_path {shown(image_path)} is neither an image "
                            f"({', '.join(IMAGE_SUFFIXES)}) nor a text file listing images")\
                from None
        found = [(os.path.join(folder, name), name) for name in names]
    elif os.path.isdir(image_path):
        found = []
        for root, dirs, files in os.walk(image_path):
            dirs.sort()
            if ".ipynb_checkpoints" in root:
                continue
            for name in sorted(files):
                if not name.startswith(".") and os.path.splitext(name)[1] in IMAGE_SUFFIXES:
                    full = os.path.join(root, name)
                    found.append((full, os.path.relpath(full, image_path)))
    else:
        raise UserError(f"--image_path not found: {image_path} (an image, a text file listing "
                        "images, or a folder of images)")
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in --image_path {image_path}")
    return found


def output_paths(images, save_dir):
    """(pseudo-colour PNG, overlay) paths of each image, under ``save_dir``."""
    return [(os.path.join(save_dir, PSEUDO_DIR, os.path.splitext(rel)[0] + ".png"),
             os.path.join(save_dir, ADDED_DIR, rel)) for _, rel in images]


def claim_outputs(images, outputs, save_dir):
    """Refuse a ``save_dir`` holding an input image or a file (not an earlier prediction) where
    an output goes; then record every output in the manifest before any is written (a killed
    run's outputs stay ours)."""
    root = os.path.realpath(save_dir)
    for path, _ in images:
        if os.path.commonpath([root, os.path.realpath(path)]) == root:
            raise UserError(f"--save_dir {save_dir} holds the input image {shown(path)}; "
                            "predictions would overwrite inputs: choose another folder")
    manifest = os.path.join(save_dir, MANIFEST)
    ours = set(read_manifest(manifest))
    planned = [os.path.relpath(p, save_dir) for pair in outputs for p in pair]
    foreign = [p for p in planned if p not in ours and os.path.lexists(os.path.join(save_dir, p))]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"--save_dir {save_dir} already holds {foreign[0]}{more}, which predict.py "
                        "did not write; refusing to overwrite: choose another folder")
    os.makedirs(save_dir, exist_ok=True)
    write_json(manifest, sorted(ours | set(planned)))


def read_manifest(path):
    import json
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            listed = json.load(f)
    except (OSError, ValueError):
        listed = None
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise UserError(f"{path} is not predict.py's list of the files it wrote; move it away")
    return listed


def predict(model, model_path, transforms, image_list, image_dir=None, save_dir="output",
            aug_pred=False, scales=1.0, flip_horizontal=True, flip_vertical=False,
            is_slide=False, stride=None, crop_size=None, custom_color=None):
    """PaddleSeg's ``paddleseg.core.predict``: ``model_path``'s weights into ``model`` (a
    pruned checkpoint shrinks it first), then every path of ``image_list`` predicted, named by
    its path under ``image_dir`` (else its file name). Options as PaddleSeg's (note its
    ``flip_horizontal`` default: on, with ``aug_pred``)."""
    from paddleseg.utils.checkpoint import load_model_weights
    from paddleseg.utils.visualize import color_map
    from .infer import EvalOptions
    load_model_weights(model, model_path)
    options = EvalOptions.from_config(
        dict(aug_eval=aug_pred, scales=scales, flip_horizontal=flip_horizontal,
             flip_vertical=flip_vertical, is_slide=is_slide, stride=stride, crop_size=crop_size),
        where="predict()")
    images = [(path, os.path.relpath(path, image_dir) if image_dir else os.path.basename(path))
              for path in image_list]
    predict_images(model, transforms, images, save_dir, options, color_map(custom_color))


def predict_images(model, transforms, images, save_dir, options, palette):
    """Predict every image of ``images`` (image_list's) with ``options`` (core.infer.EvalOptions:
    aug_eval, is_slide) and write its two outputs; with several ranks each takes its share."""
    outputs = output_paths(images, save_dir)
    if distributed.is_main():
        claim_outputs(images, outputs, save_dir)
    distributed.barrier()
    mine = list(range(distributed.rank(), len(images), distributed.world_size()))
    model.eval()
    bar = Progress(len(mine), "predict")
    start = time.time()
    with paddle.no_grad():
        for k, i in enumerate(mine):
            path = images[i][0]
            data = transforms({"img": path})
            logit = scores(model, paddle.to_tensor(data["img"][None]), data["trans_info"], options)
            label = logit.argmax(axis=1).numpy()[0].astype(np.int32)
            pseudo_path, added_path = outputs[i]
            save_pseudo_color(label, pseudo_path, palette)
            write_image(added_path, overlay(read_image(path), label, palette))
            bar.step(k + 1)
    logger.info(f"{len(mine)} image(s) predicted in {time.time() - start:.1f} s: "
                f"{os.path.join(save_dir, PSEUDO_DIR)}, {os.path.join(save_dir, ADDED_DIR)}")

