"""Array-level image operations used by the transforms (HWC images, HW labels)."""
import cv2
import numpy as np

INTERP = {"NEAREST": cv2.INTER_NEAREST, "LINEAR": cv2.INTER_LINEAR, "CUBIC": cv2.INTER_CUBIC,
          "AREA": cv2.INTER_AREA, "LANCZOS4": cv2.INTER_LANCZOS4}


def resize(img, size_wh, interp=cv2.INTER_LINEAR):
    return cv2.resize(img, tuple(int(s) for s in size_wh), interpolation=interp)


def normalize(img, mean, std):
    img = img.astype(np.float32) / 255.0
    return (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def horizontal_flip(img):
    return img[:, ::-1]


def vertical_flip(img):
    return img[::-1]


def pad(img, pad_h, pad_w, value):
    """Pad at the bottom and right (as PaddleSeg does), keeping image content at the origin."""
    if pad_h <= 0 and pad_w <= 0:
        return img
    if img.ndim == 3:
        value = [value] * img.shape[2] if np.isscalar(value) else list(value)
    return cv2.copyMakeBorder(img, 0, max(pad_h, 0), 0, max(pad_w, 0), cv2.BORDER_CONSTANT,
                              value=value)


def adjust_brightness(img, factor):
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def adjust_contrast(img, factor):
    mean = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean()
    return np.clip((img.astype(np.float32) - mean) * factor + mean, 0, 255).astype(np.uint8)


def adjust_saturation(img, factor):
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None].astype(np.float32)
    return np.clip((img.astype(np.float32) - gray) * factor + gray, 0, 255).astype(np.uint8)


def adjust_hue(img, delta_degrees):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    # OpenCV keeps hue in [0, 180) for 8-bit images
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(delta_degrees / 2))) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def adjust_sharpness(img, factor):
    blurred = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(blurred + (img.astype(np.float32) - blurred) * factor, 0, 255).astype(np.uint8)
