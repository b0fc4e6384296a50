"""Colouring predictions as PaddleSeg does: its palette, pseudo-colour PNGs and overlays."""
import os

import numpy as np

from .errors import UserError


def color_map(custom_color=None, num=256):
    """PaddleSeg's palette, ``[num, 3]`` uint8 RGB: the PASCAL VOC colours of labels 1..num
    (so class 0 is dark red, as in PaddleSeg's outputs), the first entries replaced by
    ``custom_color`` (a flat list r, g, b, r, g, b, ...: PaddleSeg's --custom_color)."""
    cmap = np.zeros((num, 3), dtype=np.uint8)
    for i in range(num):
        label, rgb = i + 1, [0, 0, 0]
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((label >> ch) & 1) << bit
            label >>= 3
        cmap[i] = rgb
    if custom_color:
        values = list(custom_color)
        if len(values) % 3 or len(values) > 3 * num or not all(
                isinstance(v, int) and 0 <= v <= 255 for v in values):
            raise UserError(f"--custom_color takes r g b values (0-255) for up to {num} classes, "
                            f"three per class, got {values}")
        cmap[:len(values) // 3] = np.asarray(values, np.uint8).reshape(-1, 3)
    return cmap


def overlay(image_bgr, label, palette, weight=0.6):
    """The image blended with its prediction's colours (``weight`` of the image), as PaddleSeg's
    added_prediction images are."""
    import cv2
    colours = palette[np.asarray(label, np.int64) % len(palette)][..., ::-1]   # RGB -> BGR
    return cv2.addWeighted(image_bgr, weight, np.ascontiguousarray(colours), 1 - weight, 0)


def save_pseudo_color(label, path, palette, text=None):
    """Write an ``[H, W]`` label map as a palette PNG (values = class ids; 16-bit grey ids where
    there are more classes than a palette holds), with the PNG text chunk ``text`` (key, value)
    if given, atomically."""
    from PIL import Image, PngImagePlugin
    from .fileio import atomic_path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text(*text)
    with atomic_path(path) as tmp:
        if label.max(initial=0) > 255:
            img = Image.fromarray(label.astype(np.uint16))
        else:
            img = Image.fromarray(label.astype(np.uint8))
            img.putpalette(palette.flatten().tolist())
        try:
            img.save(tmp, format="PNG", pnginfo=info)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e}") from None
