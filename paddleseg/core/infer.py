"""Model prediction mapped back to the original label size: whole-image, sliding-window and
multi-scale / flip inference, as PaddleSeg's evaluation options ask for them."""
import dataclasses
import math

import numpy as np
import paddle
import paddle.nn.functional as F

from paddleseg.utils.errors import UserError


def reverse_transform(logit, trans_info):
    """Undo, newest first, the resizes and paddings the transforms recorded."""
    for op, (h, w) in reversed(trans_info):
        if op == "resize":
            logit = F.interpolate(logit, size=[h, w], mode="bilinear")
        elif op == "padding":
            logit = logit[:, :, :h, :w]
        else:
            raise ValueError(f"unknown transform record {op!r}")
    return logit


def inference(model, img, trans_info=()):
    """Logits [N, C, H, W] at the original image size for a batch of one image."""
    logit = model(img)[0]
    return reverse_transform(logit, trans_info)


def predicted_labels(logit, trans_info=()):
    """The label map ``[H, W]`` (numpy) of one image's logits ``[1, C, h, w]`` at the model's
    size, at the original image size."""
    return reverse_transform(logit, trans_info).argmax(axis=1).numpy()[0]


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """PaddleSeg's evaluation options: a config's ``test_config`` and val.py's flags.

    ``aug_eval``: the softmax scores summed over ``scales`` (factors of the input size) and the
    flips asked for; ``is_slide``: windows of ``crop_size`` (w, h) every ``stride`` (w, h), the
    logits of overlapping windows averaged; ``auc_roc``: the AUC-ROC of the softmax scores too.
    """
    aug_eval: bool = False
    scales: tuple = (1.0,)
    flip_horizontal: bool = False
    flip_vertical: bool = False
    is_slide: bool = False
    crop_size: tuple = None
    stride: tuple = None
    auc_roc: bool = False

    @classmethod
    def from_config(cls, test_config, where="test_config"):
        """The options of a ``test_config`` mapping; UserError naming a key or value PaddleSeg's
        evaluate() would not take."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(test_config) - set(known))
        if unknown:
            raise UserError(f"{where}: {', '.join(unknown)} is not an evaluation option "
                            f"(known: {', '.join(known)})")
        values = dict(test_config)
        scales = values.get("scales", 1.0)
        values["scales"] = tuple(scales) if isinstance(scales, (list, tuple)) else (scales,)
        for key in ("crop_size", "stride"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        options = cls(**values)
        options.check(where)
        return options

    def check(self, where):
        if not self.scales or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                      and s > 0 for s in self.scales):
            raise UserError(f"{where}: scales must be positive numbers, got {list(self.scales)}")
        if not self.is_slide:
            return
        for name in ("crop_size", "stride"):
            value = getattr(self, name)
            if value is None or len(value) != 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise UserError(f"{where}: is_slide needs {name} as two positive integers "
                                f"(width, height), got {value!r}")
        if any(s > c for s, c in zip(self.stride, self.crop_size)):
            raise UserError(f"{where}: a stride {list(self.stride)} wider or taller than the "
                            f"window {list(self.crop_size)} leaves pixels unpredicted")

    @property
    def whole_image(self):
        """Prediction as plain evaluation makes it (AUC-ROC aside)."""
        return not self.aug_eval and not self.is_slide


def sliding_logits(model, img, crop_size, stride):
    """Logits of ``img`` [1, 3, H, W] from windows of ``crop_size`` (w, h) placed every
    ``stride`` (w, h), the last row and column flush with the border; where windows overlap
    their logits are averaged (in float64, as PaddleSeg accumulates them)."""
    h_im, w_im = img.shape[-2:]
    (w_crop, h_crop), (w_stride, h_stride) = crop_size, stride
    rows = 1 if h_im <= h_crop else math.ceil((h_im - h_crop) / h_stride) + 1
    cols = 1 if w_im <= w_crop else math.ceil((w_im - w_crop) / w_stride) + 1
    total, count = None, np.zeros([1, 1, h_im, w_im])
    for row in range(rows):
        for col in range(cols):
            h2, w2 = min(row * h_stride + h_crop, h_im), min(col * w_stride + w_crop, w_im)
            h1, w1 = max(h2 - h_crop, 0), max(w2 - w_crop, 0)
            logit = model(img[:, :, h1:h2, w1:w2])[0].numpy()
            if total is None:
                total = np.zeros([1, logit.shape[1], h_im, w_im])
            total[:, :, h1:h2, w1:w2] += logit[:, :, :h2 - h1, :w2 - w1]
            count[:, :, h1:h2, w1:w2] += 1
    return paddle.to_tensor(total / count)


def window_logits(model, img, options):
    """The logits of one (scaled, flipped) input: whole, or by sliding windows."""
    if options.is_slide:
        return sliding_logits(model, img, options.crop_size, options.stride)
    return model(img)[0]


def flips(options):
    """(horizontal, vertical) flips to average over, no flip first (PaddleSeg's order)."""
    combos = [(False, False)]
    if options.flip_horizontal:
        combos.append((True, False))
    if options.flip_vertical:
        combos.append((False, True))
        if options.flip_horizontal:
            combos.append((True, True))
    return combos


def flipped(x, flip):
    horizontal, vertical = flip
    axes = ([3] if horizontal else []) + ([2] if vertical else [])
    return paddle.flip(x, axes) if axes else x


def augmented_scores(model, img, options):
    """The softmax scores summed over every scale and flip, at the input's size."""
    h, w = img.shape[-2:]
    total = 0
    for scale in options.scales:
        # each scale resizes the previous scale's image, as PaddleSeg's aug_inference does
        img = F.interpolate(img, (int(h * scale + 0.5), int(w * scale + 0.5)), mode="bilinear")
        for flip in flips(options):
            logit = flipped(window_logits(model, flipped(img, flip), options), flip)
            total = total + F.softmax(F.interpolate(logit, (h, w), mode="bilinear"), axis=1)
    return total


def scores(model, img, trans_info, options):
    """One image's class scores [1, C, H, W] at its original size: logits, or with
    ``aug_eval`` the summed softmax scores; their argmax is the prediction."""
    if options.aug_eval:
        return reverse_transform(augmented_scores(model, img, options), trans_info)
    return reverse_transform(window_logits(model, img, options), trans_info)
