"""configs/camvid/: one config per benchmark model; they load and build, and with the CamVid set
beside the project (../shared/data/camvid) their data sets read it."""
import glob
import os
import sys

import numpy as np
import paddle
import pytest

from conftest import ROOT, shared_dataset
from paddleseg.cvlibs import Config

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import prune_speedup  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "camvid", "*.yml")))
TYPES = {"BiSeNetV2": "BiSeNetV2", "FCN-HRNetW18": "FCN", "FastSCNN": "FastSCNN",
         "HarDNet": "HarDNet", "UNet": "UNet"}


def test_the_benchmark_names_one_camvid_config_per_model():
    assert sorted(os.path.join(ROOT, p) for p in prune_speedup.MODELS.values()) == CONFIGS
    assert set(prune_speedup.MODELS) == set(TYPES)


@pytest.mark.parametrize("name", sorted(prune_speedup.MODELS))
def test_camvid_config_loads_and_builds(name):
    cfg = Config(os.path.join(ROOT, prune_speedup.MODELS[name]))
    for key in ("train_dataset", "val_dataset"):
        block = cfg.dic[key]
        assert block["type"] == "Dataset" and block["num_classes"] == 11
        assert block["ignore_index"] == 255
        assert block["dataset_root"] == "../shared/data/camvid"
        assert not any(t["type"] == "Normalize" for t in block["transforms"][:-1])
    train_size = cfg.dic["train_dataset"]["transforms"][0]["target_size"]
    assert cfg.dic["val_dataset"]["transforms"][0]["target_size"] == train_size
    w, h = train_size
    assert w * 3 == h * 4                                   # CamVid's 4:3 frames, not squashed
    assert cfg.num_classes == 11 and cfg.iters >= 100 and cfg.batch_size >= 4
    paddle.seed(0)
    model = cfg.build_model()
    assert type(model).__name__ == TYPES[name]
    model.train()
    logits = model(paddle.rand([1, 3, h, w]))
    assert all(list(logit.shape) == [1, 11, h, w] for logit in logits)
    assert len(cfg.loss["types"]) == len(logits)


def test_dataset_root_is_overridable():
    cfg = Config(CONFIGS[0], opts=["train_dataset.dataset_root=/elsewhere",
                                   "val_dataset.dataset_root=/elsewhere"])
    assert cfg.dic["train_dataset"]["dataset_root"] == "/elsewhere"
    assert cfg.dic["val_dataset"]["dataset_root"] == "/elsewhere"


@pytest.mark.parametrize("path", [CONFIGS[0], CONFIGS[-1]], ids=os.path.basename)
def test_camvid_datasets_read_the_shared_set(path):
    root = shared_dataset("camvid")
    cfg = Config(path, opts=[f"train_dataset.dataset_root={root}",
                             f"val_dataset.dataset_root={root}"])
    train, val = cfg.train_dataset, cfg.val_dataset
    assert (len(train), len(val)) == (367, 101)
    w, h = cfg.dic["train_dataset"]["transforms"][0]["target_size"]
    sample = train[0]
    assert sample["img"].shape == (3, h, w) and sample["label"].shape[-2:] == (h, w)
    label = val[0]["label"]
    assert label.shape[-2:] == (360, 480)                   # mIoU at the labels' full size
    values = set(np.unique(label).tolist())
    assert values <= set(range(11)) | {255} and len(values - {255}) > 3
