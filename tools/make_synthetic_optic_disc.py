#!/usr/bin/env python
"""Generate a small synthetic optic-disc segmentation data set.

The output has the layout of PaddleSeg's ``optic_disc_seg``::

    DIR/JPEGImages/syn_0000.jpg     RGB fundus-like image, S x S
    DIR/Annotations/syn_0000.png    uint8 mask, 0 background / 1 optic disc
    DIR/train_list.txt              "JPEGImages/x.jpg Annotations/x.png" lines
    DIR/val_list.txt

Each image is a dark circular fundus field with a textured reddish-orange
background (low-frequency illumination + noise), a darker macula, a tree of
curved, branching, thinning vessels radiating from the disc, a few small bright
"exudate" distractors, and a bright yellow-white optic disc (an ellipse of
random position, size, eccentricity and edge softness, with a paler cup and a
faint halo).  The mask is the hard disc ellipse.  Output is a deterministic
function of the seed (and the OpenCV JPEG encoder).

Usage::

    python tools/make_synthetic_optic_disc.py --save_dir DIR \
        [--num_train 60] [--num_val 20] [--size 512] [--seed 0] [--overwrite]
"""

import argparse
import math
import os
import shutil
import sys
import tempfile

import cv2
import numpy as np

__all__ = ["make_dataset", "render_sample", "main"]


# ----------------------------------------------------------------------------
# rendering helpers
# ----------------------------------------------------------------------------

def _smooth_noise(rng, size, grid, channels=1):
    """Zero-mean, unit-ish std noise, smooth at a scale of ``size / grid``."""
    g = rng.standard_normal((grid, grid, channels)).astype(np.float32)
    up = cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    if up.ndim == 2:
        up = up[:, :, None]
    return up


def _blur(img, sigma):
    if sigma <= 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma))


def _ellipse_alpha(size, center, axes, angle_deg, sigma):
    """Filled ellipse with a Gaussian-blurred edge, rendered in its bounding box.

    Returns ``(alpha, box)``: a float32 [0, 1] map and the ``(y0, y1, x0, x1)``
    window of the size x size image that it covers.
    """
    reach = max(axes) + 3.0 * sigma + 2.0
    x0 = max(0, int(math.floor(center[0] - reach)))
    x1 = min(size, int(math.ceil(center[0] + reach)) + 1)
    y0 = max(0, int(math.floor(center[1] - reach)))
    y1 = min(size, int(math.ceil(center[1] + reach)) + 1)
    h, w = max(1, y1 - y0), max(1, x1 - x0)
    # very soft shapes are drawn and blurred at a reduced scale, then upsampled
    k = max(1, min(int(sigma // 3), h // 8, w // 8))
    m = np.zeros(((h + k - 1) // k, (w + k - 1) // k), np.uint8)
    shift = 4  # sub-pixel precision for cv2 drawing
    f = (1 << shift) / k
    cv2.ellipse(m, (int(round((center[0] - x0) * f)), int(round((center[1] - y0) * f))),
                (max(1, int(round(axes[0] * f))), max(1, int(round(axes[1] * f)))),
                float(angle_deg), 0, 360, 255, -1, cv2.LINE_AA, shift)
    alpha = m.astype(np.float32) * np.float32(1.0 / 255.0)
    if sigma / k > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma / k, sigmaY=sigma / k,
                                 borderType=cv2.BORDER_CONSTANT)
    if k > 1:
        alpha = cv2.resize(alpha, (m.shape[1] * k, m.shape[0] * k),
                           interpolation=cv2.INTER_LINEAR)[:h, :w]
    return alpha, (y0, y1, x0, x1)


def _blend(img, alpha, color, box=None, strength=1.0):
    """img = img * (1 - a) + color * a with a = strength * alpha, in place.

    ``box`` is the ``(y0, y1, x0, x1)`` window that ``alpha`` covers (whole
    image when None).
    """
    view = img if box is None else img[box[0]:box[1], box[2]:box[3]]
    a = alpha[:, :, None] * np.float32(strength)
    view -= a * (view - np.asarray(color, np.float32))
    return img


def _draw_vessels(rng, size, origin, field_c, field_r, disc_r):
    """Rasterise a branching vessel tree into a float32 [0, 1] map."""
    canvas = np.zeros((size, size), np.uint8)
    step = 0.012 * size
    max_w = max(1.0, 0.013 * size)
    min_w = 0.0022 * size
    n_trunks = int(rng.integers(4, 7))
    base = rng.uniform(0, 2 * math.pi)
    stack = []
    for k in range(n_trunks):
        ang = base + 2 * math.pi * k / n_trunks + rng.normal(0, 0.35)
        # start a little off the disc centre, not exactly at it
        r0 = rng.uniform(0.0, 0.35) * disc_r
        x = origin[0] + r0 * math.cos(ang)
        y = origin[1] + r0 * math.sin(ang)
        w = max_w * rng.uniform(0.6, 1.0)
        curl = rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 0.04)
        stack.append((x, y, ang, w, curl, int(rng.integers(35, 70))))
    segments = 0
    max_segments = 2000
    shift = 4
    f = 1 << shift
    while stack and segments < max_segments:
        x, y, ang, w, curl, steps = stack.pop()
        dang = 0.0
        for jitter in rng.normal(0.0, 0.055, steps):
            dang = 0.6 * dang + jitter
            ang += dang + curl
            nx = x + step * math.cos(ang)
            ny = y + step * math.sin(ang)
            if math.hypot(nx - field_c[0], ny - field_c[1]) > field_r * 0.99:
                break
            thick = max(1, int(round(w)))
            val = int(150 + 105 * min(1.0, w / max_w))
            cv2.line(canvas, (int(nx * f), int(ny * f)), (int(x * f), int(y * f)),
                     val, thick, cv2.LINE_AA, shift)
            segments += 1
            x, y = nx, ny
            w *= 0.985
            if w < min_w:
                break
            if rng.random() < 0.07 and w > 1.6 * min_w:
                side = rng.choice([-1.0, 1.0])
                child_w = w * rng.uniform(0.55, 0.8)
                stack.append((x, y, ang + side * rng.uniform(0.4, 1.0), child_w,
                              -curl * rng.uniform(0.5, 1.5), int(rng.integers(15, 45))))
                w *= 0.9
                ang -= side * rng.uniform(0.05, 0.2)
    canvas = _blur(canvas, 0.0015 * size + 0.3)
    return canvas.astype(np.float32) * np.float32(1.0 / 255.0)


def render_sample(rng, size=512):
    """Render one (image, mask) pair.

    Returns ``image`` (uint8 RGB, size x size x 3) and ``mask`` (uint8
    size x size, values 0 / 1).
    """
    S = int(size)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)

    # fundus field
    fc = (S / 2 + rng.uniform(-0.02, 0.02) * S, S / 2 + rng.uniform(-0.02, 0.02) * S)
    fr = rng.uniform(0.44, 0.49) * S
    rr = np.sqrt((xx - fc[0]) ** 2 + (yy - fc[1]) ** 2) / fr

    # background: reddish orange, illumination gradient, vignette, texture
    base = np.array([rng.uniform(0.72, 0.88), rng.uniform(0.30, 0.44),
                     rng.uniform(0.10, 0.20)], np.float32)
    illum = 1.0 + 0.12 * _smooth_noise(rng, S, 3)
    vign = (1.0 - rng.uniform(0.25, 0.45) * rr ** 2)[:, :, None]
    tex = 0.045 * _smooth_noise(rng, S, max(4, S // 24), 1) \
        + 0.02 * _smooth_noise(rng, S, max(4, S // 6), 3)
    img = base * illum * vign * (1.0 + tex)

    # optic disc geometry (fully inside the field)
    d_ang = rng.uniform(0, 2 * math.pi)
    d_dist = rng.uniform(0.1, 0.6) * fr
    dc = (fc[0] + d_dist * math.cos(d_ang), fc[1] + d_dist * math.sin(d_ang))
    da = rng.uniform(0.06, 0.12) * S
    db = da * rng.uniform(0.72, 1.0)
    dangle = rng.uniform(0, 180)

    # macula: darker blob roughly opposite the disc across the field centre
    m_ang = d_ang + math.pi + rng.normal(0, 0.25)
    m_dist = rng.uniform(0.05, 0.3) * fr
    mc = (fc[0] + m_dist * math.cos(m_ang), fc[1] + m_dist * math.sin(m_ang))
    mrad = da * rng.uniform(0.8, 1.3)
    macula, box = _ellipse_alpha(S, mc, (mrad, mrad), 0, mrad * 0.8)
    _blend(img, macula, base * 0.45, box, rng.uniform(0.25, 0.5))

    # small bright distractors (exudates / reflexes)
    n_spots = int(rng.integers(0, 7))
    for _ in range(n_spots):
        sa = rng.uniform(0, 2 * math.pi)
        sd = rng.uniform(0.0, 0.85) * fr
        sc = (fc[0] + sd * math.cos(sa), fc[1] + sd * math.sin(sa))
        srad = rng.uniform(0.005, 0.022) * S
        spot, box = _ellipse_alpha(S, sc, (srad, srad * rng.uniform(0.6, 1.0)),
                                   rng.uniform(0, 180), 0.004 * S + 0.3)
        _blend(img, spot, (0.98, 0.86, 0.5), box, rng.uniform(0.4, 0.85))

    # optic disc: faint halo, soft disc, paler cup
    edge_sigma = rng.uniform(0.004, 0.02) * S + 0.3
    halo, box = _ellipse_alpha(S, dc, (da * 1.25, db * 1.25), dangle, da * 0.5)
    _blend(img, halo, (0.95, 0.7, 0.4), box, rng.uniform(0.1, 0.3))
    disc, box = _ellipse_alpha(S, dc, (da, db), dangle, edge_sigma)
    disc_col = (rng.uniform(0.92, 1.0), rng.uniform(0.78, 0.92), rng.uniform(0.45, 0.65))
    _blend(img, disc, disc_col, box, rng.uniform(0.65, 0.9))
    cf = rng.uniform(0.3, 0.6)
    cc = (dc[0] + rng.uniform(-0.2, 0.2) * da, dc[1] + rng.uniform(-0.2, 0.2) * db)
    cup, box = _ellipse_alpha(S, cc, (da * cf, db * cf * rng.uniform(0.8, 1.1)),
                              dangle, da * cf * 0.4)
    _blend(img, cup, (1.0, 0.97, 0.85), box, rng.uniform(0.4, 0.8))

    # vessels, radiating from the disc and crossing it
    ves = _draw_vessels(rng, S, dc, fc, fr, min(da, db))
    ves_col = np.array([rng.uniform(0.35, 0.5), rng.uniform(0.05, 0.12),
                        rng.uniform(0.04, 0.1)], np.float32)
    _blend(img, ves, ves_col, None, rng.uniform(0.6, 0.85))

    # per-image brightness / contrast jitter, sensor noise
    mean = img.reshape(-1, 3).mean(0)
    img = (img - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.15)
    img += np.float32(0.012) * rng.standard_normal((S, S, 1), dtype=np.float32)

    # dark outside the field (soft rim, ~1% of the radius wide)
    rim = 0.008 * S + 0.5
    field = np.clip((fr - rr * fr) / rim + 0.5, 0.0, 1.0)
    img *= (field * field * (3.0 - 2.0 * field))[:, :, None]

    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    mask = np.zeros((S, S), np.uint8)
    cv2.ellipse(mask, (int(round(dc[0] * 16)), int(round(dc[1] * 16))),
                (int(round(da * 16)), int(round(db * 16))), float(dangle),
                0, 360, 1, -1, cv2.LINE_8, 4)
    return image, mask


# ----------------------------------------------------------------------------
# data set writer
# ----------------------------------------------------------------------------

def _check_args(num_train, num_val, size, seed):
    for name, v in (("num_train", num_train), ("num_val", num_val),
                    ("size", size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    if num_train + num_val < 1:
        raise ValueError("num_train + num_val must be at least 1")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _write(path, img, params=()):
    # encoded in memory and written by Python: cv2.imwrite crashes on a path that is not UTF-8
    ok, buf = cv2.imencode(os.path.splitext(path)[1], img, list(params))
    if not ok:
        raise OSError(f"could not encode {_shown(path)}")
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())


def _shown(path):
    """``path`` printable anywhere: bytes of a name that are not UTF-8 become \\xNN."""
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def make_dataset(save_dir, num_train=60, num_val=20, size=512, seed=0, overwrite=False):
    """Write the synthetic data set to ``save_dir`` and return ``save_dir``.

    The set is built in a temporary sibling directory and renamed into place.
    Raises ``FileExistsError`` if ``save_dir`` exists and is not an empty
    directory (unless ``overwrite``), ``ValueError`` on bad numbers.
    """
    _check_args(num_train, num_val, size, seed)
    save_dir = os.path.abspath(os.fspath(save_dir))
    if os.path.lexists(save_dir):
        if not os.path.isdir(save_dir) or os.path.islink(save_dir):
            raise FileExistsError(f"{save_dir} exists and is not a directory")
        if os.listdir(save_dir) and not overwrite:
            raise FileExistsError(
                f"{save_dir} already exists and is not empty (use --overwrite)")
    parent = os.path.dirname(save_dir)
    os.makedirs(parent, exist_ok=True)

    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(save_dir) + ".tmp-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "JPEGImages"))
        os.makedirs(os.path.join(tmp, "Annotations"))
        lines = {"train": [], "val": []}
        for i in range(num_train + num_val):
            rng = np.random.default_rng([int(seed), i])
            image, mask = render_sample(rng, size)
            name = f"syn_{i:04d}"
            jpg = f"JPEGImages/{name}.jpg"
            png = f"Annotations/{name}.png"
            _write(os.path.join(tmp, jpg), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                   (cv2.IMWRITE_JPEG_QUALITY, 95))
            _write(os.path.join(tmp, png), mask)
            lines["train" if i < num_train else "val"].append(f"{jpg} {png}\n")
        for split, ls in lines.items():
            with open(os.path.join(tmp, f"{split}_list.txt"), "w") as fh:
                fh.writelines(ls)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700

        old = None
        if os.path.lexists(save_dir):
            if os.listdir(save_dir):
                # move the old set aside first, so the swap itself is one rename
                old = tempfile.mkdtemp(prefix="." + os.path.basename(save_dir) + ".old-",
                                       dir=parent)
                os.rmdir(old)
                os.rename(save_dir, old)
            else:
                os.rmdir(save_dir)
        os.rename(tmp, save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return save_dir


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_args(argv=None):
    p = _ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--save_dir", required=True, help="output directory")
    p.add_argument("--num_train", type=int, default=60, help="training images (default 60)")
    p.add_argument("--num_val", type=int, default=20, help="validation images (default 20)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace save_dir if it exists and is not empty")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    prog = os.path.basename(sys.argv[0]) or "make_synthetic_optic_disc.py"
    try:
        out = make_dataset(args.save_dir, args.num_train, args.num_val, args.size,
                           args.seed, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"{prog}: error: {_shown(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: {_shown(str(e))}", file=sys.stderr)
        return 1
    print(f"wrote {args.num_train} train + {args.num_val} val images "
          f"({args.size}x{args.size}) to {_shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
