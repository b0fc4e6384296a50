"""Pin the five models' logits on fixed weights and a fixed input, for tests/test_parity.py.

Run against PaddleSeg release/2.6's own code, the pins say what PaddleSeg computes, and the test
checks that our models compute the same:

    git clone -b release/2.6 https://github.com/PaddlePaddle/PaddleSeg /tmp/PaddleSeg
    python tools/make_parity_pins.py --reference_root /tmp/PaddleSeg --out tests/data/parity_pins.json

(PaddleSeg's package needs scikit-learn, filelock and prettytable importable.) Without
``--reference_root`` it pins this repository's models (a drift check only).

Weights and input come from numpy's seeded generator over the state dict's sorted keys, so both
packages get identical tensors as long as their keys and shapes agree (which the test also checks).
This file imports no ``paddleseg`` at module level, so either package can be put on the path.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

# name -> (model class, constructor kwargs, backbone (class, kwargs) or None, input H, W)
# Odd sizes exercise Paddle's asymmetric 'same' padding and the resize paths; UNet's deconv
# decoder (like PaddleSeg's) needs sides divisible by 16.
CASES = {
    "BiSeNetV2": ("BiSeNetV2", {"num_classes": 5}, None, 61, 93),
    "FCN_HRNet_W18": ("FCN", {"num_classes": 5, "backbone_indices": [-1]},
                      ("HRNet_W18", {"align_corners": False}), 61, 93),
    "FastSCNN": ("FastSCNN", {"num_classes": 5, "enable_auxiliary_loss": True}, None, 61, 93),
    "HarDNet": ("HarDNet", {"num_classes": 5}, None, 61, 93),
    "UNet": ("UNet", {"num_classes": 5}, None, 61, 93),
    "UNet_deconv": ("UNet", {"num_classes": 2, "use_deconv": True}, None, 48, 64),
}
SAMPLES = 256  # logits pinned per output (fixed positions), plus per-channel means


def build_case(name):
    from paddleseg import models
    from paddleseg.models import backbones
    cls_name, kwargs, backbone, _, _ = CASES[name]
    kwargs = dict(kwargs)
    if backbone is not None:
        kwargs["backbone"] = getattr(backbones, backbone[0])(**backbone[1])
    return getattr(models, cls_name)(**kwargs)


def seeded_state(model, seed=0):
    """Deterministic weights for every state-dict entry (BN statistics included, so BN is not
    the identity), drawn in sorted-key order."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in sorted(model.state_dict().items()):
        shape = list(value.shape)
        if key.endswith("_variance"):
            arr = rng.uniform(0.5, 2.0, shape)
        elif key.endswith("_mean"):
            arr = rng.normal(0.0, 0.1, shape)
        elif len(shape) >= 2:
            arr = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
        else:
            arr = rng.normal(1.0 if key.endswith("weight") else 0.0, 0.1, shape)
        state[key] = arr.astype("float32")
    return state


def key_digest(model):
    """Hash of the state dict's names and shapes: equal digests mean checkpoints load by name."""
    text = "\n".join(f"{k}:{list(v.shape)}" for k, v in sorted(model.state_dict().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def disable_dropout(model):
    import paddle.nn as nn
    for layer in model.sublayers():
        if isinstance(layer, (nn.Dropout, nn.Dropout2D)):
            layer.p = 0.0


def run_case(name):
    """(model, {'eval': [logits...], 'train': [logits...]}) on the seeded weights and input."""
    import paddle
    # one math thread, as Paddle starts: the float summation order then matches the pins' (BN
    # batch statistics in training mode amplify a changed order to ~1e-4)
    paddle.base.core.set_num_threads(1)
    model = build_case(name)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in seeded_state(model).items()})
    h, w = CASES[name][3:]
    x = paddle.to_tensor(np.random.default_rng(1).normal(0, 1, (1, 3, h, w)).astype("float32"))
    model.eval()
    with paddle.no_grad():
        outputs = {"eval": [t.numpy() for t in model(x)]}
    model.train()
    disable_dropout(model)  # training mode with BN batch statistics, made deterministic
    with paddle.no_grad():
        outputs["train"] = [t.numpy() for t in model(x)]
    return model, outputs


def sample_positions(shape):
    rng = np.random.default_rng(2)
    return [rng.integers(0, dim, SAMPLES).tolist() for dim in shape]


def summarize(logit):
    idx = tuple(np.asarray(p) for p in sample_positions(logit.shape))
    return {"shape": list(logit.shape), "samples": logit[idx].astype(float).tolist(),
            "channel_means": logit.mean(axis=(0, 2, 3)).astype(float).tolist(),
            "max_abs": float(np.abs(logit).max())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_root", help="a PaddleSeg checkout to pin (default: this repo)")
    parser.add_argument("--reference_label", default="PaddleSeg release/2.6",
                        help="what the reference checkout is, recorded in the pins")
    parser.add_argument("--out", default="tests/data/parity_pins.json")
    args = parser.parse_args()
    root = os.path.abspath(args.reference_root or os.path.join(os.path.dirname(__file__), ".."))
    sys.path.insert(0, root)
    import cv2  # noqa: F401  (before paddle, see the stack notes)
    pins = {"source": args.reference_label if args.reference_root else "this repository",
            "cases": {}}
    for name in CASES:
        model, outputs = run_case(name)
        pins["cases"][name] = {"keys_sha256": key_digest(model),
                               "num_keys": len(model.state_dict()),
                               **{mode: [summarize(o) for o in outs] for mode, outs in outputs.items()}}
        print(name, {m: [o.shape for o in outs] for m, outs in outputs.items()}, flush=True)
    with open(args.out, "w") as f:
        json.dump(pins, f, indent=0)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
