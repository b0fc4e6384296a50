"""PaddleSeg-style transforms on a data dict.

The dict holds ``img`` (HWC, RGB), ``label`` (HW, optional), ``gt_fields`` (the keys that get
the geometric transforms an image gets) and ``trans_info`` (what changed the image size, so
predictions can be mapped back to the original label).
"""
import random

import cv2
import numpy as np

from paddleseg.cvlibs import manager
from paddleseg.utils.errors import UserError
from paddleseg.utils.image_io import read_image
from . import functional as F

__all__ = ["Compose", "Resize", "ResizeStepScaling", "RandomPaddingCrop", "RandomHorizontalFlip",
           "RandomVerticalFlip", "RandomDistort", "Normalize", "Padding", "ResizeByLong"]


def _pair(value, name):
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise UserError(f"{name} must be an int or a [width, height] pair, got {value!r}")


def _apply_to_labels(data, fn):
    for key in data.get("gt_fields", []):
        data[key] = fn(data[key])


def _resize_sample(data, size_wh, interp=cv2.INTER_LINEAR, record=True):
    """Resize the image (``interp``) and its labels (nearest) to ``size_wh``; ``record`` notes
    the old size so predictions can be mapped back."""
    if record:
        data["trans_info"].append(("resize", data["img"].shape[:2]))
    data["img"] = F.resize(data["img"], size_wh, interp)
    _apply_to_labels(data, lambda lab: F.resize(lab, size_wh, cv2.INTER_NEAREST))
    return data


class Compose:
    """Read the image (and label) and run the transforms; returns the data dict with the image
    as a CHW float32 array."""

    def __init__(self, transforms, to_rgb=True, img_channels=3):
        if not isinstance(transforms, (list, tuple)):
            raise UserError("transforms must be a list")
        self.transforms = list(transforms)
        self.to_rgb = to_rgb
        self.img_channels = img_channels

    def read_image(self, path):
        img = read_image(path, cv2.IMREAD_COLOR if self.img_channels == 3 else cv2.IMREAD_GRAYSCALE)
        if self.img_channels == 3 and self.to_rgb:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return img

    def __call__(self, data):
        if isinstance(data.get("img"), str):
            data["img"] = self.read_image(data["img"])
        data.setdefault("gt_fields", [])
        data.setdefault("trans_info", [])
        for t in self.transforms:
            data = t(data)
        img = data["img"]
        if img.ndim == 2:
            img = img[..., None]
        data["img"] = np.ascontiguousarray(img.transpose(2, 0, 1).astype(np.float32))
        return data


@manager.TRANSFORMS.add_component
class Resize:
    """Resize to ``target_size`` ([w, h]); labels use nearest neighbour."""

    def __init__(self, target_size=(512, 512), interp="LINEAR", keep_ratio=False):
        self.target_size = _pair(target_size, "Resize.target_size")
        if interp not in F.INTERP and interp != "RANDOM":
            raise UserError(f"Resize.interp must be one of {sorted(F.INTERP)} or RANDOM, got {interp!r}")
        self.interp = interp
        self.keep_ratio = keep_ratio

    def __call__(self, data):
        h, w = data["img"].shape[:2]
        tw, th = self.target_size
        if self.keep_ratio:
            scale = min(tw / w, th / h)
            tw, th = int(round(w * scale)), int(round(h * scale))
        interp = random.choice(list(F.INTERP.values())) if self.interp == "RANDOM" else F.INTERP[self.interp]
        return _resize_sample(data, (tw, th), interp)


@manager.TRANSFORMS.add_component
class ResizeByLong:
    """Resize so the long side equals ``long_size``, keeping the aspect ratio."""

    def __init__(self, long_size):
        self.long_size = int(long_size)

    def __call__(self, data):
        h, w = data["img"].shape[:2]
        scale = self.long_size / max(h, w)
        return _resize_sample(data, (int(round(w * scale)), int(round(h * scale))))


@manager.TRANSFORMS.add_component
class ResizeStepScaling:
    """Scale by a random factor from [min, max] on a grid of ``scale_step_size``."""

    def __init__(self, min_scale_factor=0.75, max_scale_factor=1.25, scale_step_size=0.25):
        if min_scale_factor > max_scale_factor:
            raise UserError("ResizeStepScaling: min_scale_factor must not exceed max_scale_factor")
        self.min_scale_factor = min_scale_factor
        self.max_scale_factor = max_scale_factor
        self.scale_step_size = scale_step_size

    def _factor(self):
        lo, hi, step = self.min_scale_factor, self.max_scale_factor, self.scale_step_size
        if lo == hi:
            return lo
        if step == 0:
            return np.random.uniform(lo, hi)
        return float(np.random.choice(np.linspace(lo, hi, int((hi - lo) / step) + 1)))

    def __call__(self, data):
        factor = self._factor()
        h, w = data["img"].shape[:2]
        # a training-time augmentation: nothing to map back
        return _resize_sample(data, (int(round(w * factor)), int(round(h * factor))), record=False)


@manager.TRANSFORMS.add_component
class Padding:
    """Pad bottom/right up to ``target_size`` ([w, h])."""

    def __init__(self, target_size, im_padding_value=127.5, label_padding_value=255):
        self.target_size = _pair(target_size, "Padding.target_size")
        self.im_padding_value = im_padding_value
        self.label_padding_value = label_padding_value

    def __call__(self, data):
        h, w = data["img"].shape[:2]
        tw, th = self.target_size
        if th < h or tw < w:
            raise UserError(f"Padding target {tw}x{th} is smaller than the image {w}x{h}")
        data["trans_info"].append(("padding", (h, w)))
        data["img"] = F.pad(data["img"], th - h, tw - w, self.im_padding_value)
        _apply_to_labels(data, lambda lab: F.pad(lab, th - h, tw - w, self.label_padding_value))
        return data


@manager.TRANSFORMS.add_component
class RandomPaddingCrop:
    """Pad up to ``crop_size`` ([w, h]) when smaller, then crop a random window of that size."""

    def __init__(self, crop_size=(512, 512), im_padding_value=127.5, label_padding_value=255):
        self.crop_size = _pair(crop_size, "RandomPaddingCrop.crop_size")
        self.im_padding_value = im_padding_value
        self.label_padding_value = label_padding_value

    def __call__(self, data):
        cw, ch = self.crop_size
        h, w = data["img"].shape[:2]
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        data["img"] = F.pad(data["img"], pad_h, pad_w, self.im_padding_value)
        _apply_to_labels(data, lambda lab: F.pad(lab, pad_h, pad_w, self.label_padding_value))
        h, w = data["img"].shape[:2]
        y = np.random.randint(h - ch + 1)
        x = np.random.randint(w - cw + 1)
        data["img"] = data["img"][y:y + ch, x:x + cw]
        _apply_to_labels(data, lambda lab: lab[y:y + ch, x:x + cw])
        return data


class _RandomFlip:
    flip = None

    def __init__(self, prob=0.5):
        self.prob = prob

    def __call__(self, data):
        if random.random() < self.prob:
            data["img"] = type(self).flip(data["img"])
            _apply_to_labels(data, type(self).flip)
        return data


@manager.TRANSFORMS.add_component
class RandomHorizontalFlip(_RandomFlip):
    flip = staticmethod(F.horizontal_flip)


@manager.TRANSFORMS.add_component
class RandomVerticalFlip(_RandomFlip):
    flip = staticmethod(F.vertical_flip)


@manager.TRANSFORMS.add_component
class RandomDistort:
    """Random brightness, contrast, saturation, hue and sharpness, each with its own
    probability, applied in random order (image only)."""

    def __init__(self, brightness_range=0.5, brightness_prob=0.5, contrast_range=0.5,
                 contrast_prob=0.5, saturation_range=0.5, saturation_prob=0.5, hue_range=18,
                 hue_prob=0.5, sharpness_range=0.5, sharpness_prob=0):
        self.ops = [
            (F.adjust_brightness, brightness_prob, 1 - brightness_range, 1 + brightness_range),
            (F.adjust_contrast, contrast_prob, 1 - contrast_range, 1 + contrast_range),
            (F.adjust_saturation, saturation_prob, 1 - saturation_range, 1 + saturation_range),
            (F.adjust_hue, hue_prob, -hue_range, hue_range),
            (F.adjust_sharpness, sharpness_prob, 1 - sharpness_range, 1 + sharpness_range),
        ]

    def __call__(self, data):
        img = data["img"].astype(np.uint8)
        if img.ndim == 3 and img.shape[2] == 3:
            for i in np.random.permutation(len(self.ops)):
                fn, prob, lo, hi = self.ops[i]
                if np.random.uniform() < prob:
                    img = fn(img, np.random.uniform(lo, hi))
        data["img"] = img
        return data


@manager.TRANSFORMS.add_component
class Normalize:
    """(img / 255 - mean) / std."""

    def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple))):
            raise UserError("Normalize: mean and std must be lists")
        if any(s == 0 for s in std):
            raise UserError("Normalize: std must not contain 0")
        self.mean = mean
        self.std = std

    def __call__(self, data):
        data["img"] = F.normalize(data["img"], self.mean, self.std)
        return data
