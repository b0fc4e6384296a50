"""benchmarks/gpu_latency.py, the parts that run here: ONNX with explicit paddings (onnx2torch
cannot take auto_pad SAME), weights stripped for the trip and refilled there. ONNX Runtime
stands in for the GPU machine's PyTorch."""
import os
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_latency  # noqa: E402

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("paddle2onnx")
SHAPE = [1, 3, 33, 47]   # odd sizes: SAME pads a stride-2 conv unevenly


class SamePadNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2D(3, 8, 3, stride=2, padding="same")
        self.pool = nn.MaxPool2D(3, stride=2, padding="SAME")
        self.wide = nn.Conv2D(8, 4, 4, stride=1, padding="same")

    def forward(self, x):
        return [self.wide(self.pool(self.down(x)))]


@pytest.fixture(scope="module")
def same_pad_onnx(tmp_path_factory):
    from paddleseg.core.export import export_model
    folder = tmp_path_factory.mktemp("gpu")
    paddle.seed(0)
    model = SamePadNet()
    model.eval()
    export_model(model, str(folder / "export"), output_op="none", val_transforms_config=[])
    x = np.random.RandomState(0).standard_normal(SHAPE).astype("float32")
    expected = model(paddle.to_tensor(x))[0].numpy()
    path = str(folder / "model.onnx")
    gpu_latency.export_onnx(str(folder / "export"), SHAPE, path)
    with open(path, "rb") as f:
        return f.read(), x, expected


def run_onnx(data, x):
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_explicit_paddings_compute_what_paddle_computes(same_pad_onnx):
    data, x, expected = same_pad_onnx
    assert b"SAME_UPPER" not in data and b"auto_pad" not in data
    np.testing.assert_allclose(run_onnx(data, x), expected, rtol=1e-4, atol=1e-4)


def test_weights_travel_stripped_and_come_back_random(same_pad_onnx):
    data, x, expected = same_pad_onnx
    stripped = gpu_latency.strip_weights(data, min_elements=100)
    assert len(stripped) < len(data) - 4 * (8 * 3 * 9 + 4 * 8 * 16) + 64
    assert gpu_latency.stripped_count(stripped) == 2 and gpu_latency.stripped_count(data) == 0
    refilled = gpu_latency.refill_weights(stripped)
    assert gpu_latency.stripped_count(refilled) == 0
    assert gpu_latency.refill_weights(stripped) == refilled            # seeded: reproducible
    out = run_onnx(refilled, x)
    assert out.shape == expected.shape and np.isfinite(out).all()
    assert not np.allclose(out, expected)                              # the values are new
