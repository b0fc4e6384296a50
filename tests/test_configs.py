"""Every YAML config under configs/: it loads, its model builds, its loss has one
type/coef per logit the model returns in training, its lr schedule and optimizer build,
and its data sets build (Cityscapes on the shared samples, optic disc on a tiny
synthetic set)."""
import glob
import os
import re
import sys

import numpy as np
import paddle
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components configs name)
import paddleseg.models  # noqa: F401
import paddleseg.models.losses  # noqa: F401
import paddleseg.transforms  # noqa: F401
from conftest import ROOT, shared_dataset
from paddleseg.cvlibs.config import Config, load_config_dict

sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_synthetic_optic_disc import make_dataset  # noqa: E402

CONFIG_DIR = os.path.join(ROOT, "configs")
ALL_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yml"), recursive=True))
# model configs (the _base_ files describe data and schedule only)
MODEL_CONFIGS = [c for c in ALL_CONFIGS if not c.startswith("_base_" + os.sep)]
CITYSCAPES_CONFIGS = [c for c in MODEL_CONFIGS if "cityscapes" in os.path.basename(c)]
OPTIC_CONFIGS = [c for c in MODEL_CONFIGS if "optic_disc" in os.path.basename(c)]

EXPECTED = {  # the files the project ships: model type, logits in training
    "quick_start/bisenet_optic_disc_512x512_1k.yml": ("BiSeNetV2", 5),
    "bisenetv2/bisenet_optic_disc_512x512_1k.yml": ("BiSeNetV2", 5),
    "bisenetv2/bisenet_cityscapes_1024x1024_160k.yml": ("BiSeNetV2", 5),
    "fcn/fcn_hrnetw18_optic_disc_512x512_1k.yml": ("FCN", 1),
    "fcn/fcn_hrnetw18_cityscapes_1024x512_80k.yml": ("FCN", 1),
    "fcn/fcn_hrnetw18_cityscapes_1024x512_80k_bs4.yml": ("FCN", 1),
    "fcn/fcn_hrnetw48_cityscapes_1024x512_80k.yml": ("FCN", 1),
    "fastscnn/fastscnn_cityscapes_1024x1024_40k.yml": ("FastSCNN", 2),
    "fastscnn/fastscnn_optic_disc_512x512_1k.yml": ("FastSCNN", 2),
    "fastscnn/fastscnn_cityscapes_1024x1024_160k.yml": ("FastSCNN", 2),
    "hardnet/hardnet_optic_disc_512x512_1k.yml": ("HarDNet", 1),
    "hardnet/hardnet_cityscapes_1024x1024_160k.yml": ("HarDNet", 1),
    "unet/unet_optic_disc_512x512_1k.yml": ("UNet", 1),
    "unet/unet_cityscapes_1024x512_160k.yml": ("UNet", 1),
}


def path_of(name):
    return os.path.join(CONFIG_DIR, name)


def size_in_name(name):
    """``[w, h]`` from a file name such as ``..._1024x512_80k.yml``."""
    m = re.search(r"_(\d+)x(\d+)_", os.path.basename(name))
    assert m, f"{name}: no WxH in the file name"
    return [int(m.group(1)), int(m.group(2))]


def data_opts(root):
    return [f"train_dataset.dataset_root={root}", f"val_dataset.dataset_root={root}"]


@pytest.fixture(scope="module")
def synthetic_optic_disc(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs") / "optic_disc_seg"
    return make_dataset(str(root), num_train=2, num_val=1, size=64)


def no_download_opts(name):
    """Overrides that drop pretrained URLs (PaddleSeg's FCN configs name ImageNet weights)."""
    model = load_config_dict(path_of(name))["model"]
    blocks = {"model": model, "model.backbone": model.get("backbone") or {}}
    return [f"{key}.pretrained=null" for key, block in blocks.items()
            if str(block.get("pretrained") or "").startswith("http")]


def load(name, synthetic_root):
    """The config, with optic-disc data pointed at the synthetic set and pretrained URLs
    dropped (nothing is downloaded)."""
    opts = data_opts(synthetic_root) if name in OPTIC_CONFIGS else []
    return Config(path_of(name), opts=opts + no_download_opts(name))


def test_expected_configs_exist():
    missing = [n for n in EXPECTED if n.replace("/", os.sep) not in MODEL_CONFIGS]
    assert not missing, f"missing configs: {missing}"
    for base in ("cityscapes.yml", "cityscapes_1024x1024.yml"):
        assert os.path.isfile(os.path.join(CONFIG_DIR, "_base_", base))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_yaml_resolves_and_offline_configs_name_no_url(name):
    """PaddleSeg's Cityscapes configs keep their pretrained URLs (downloaded on first use); the
    configs the demo, tests and benchmarks train from must run offline."""
    dic = load_config_dict(path_of(name))
    if name in CITYSCAPES_CONFIGS:
        return

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pretrained":
                    assert not (isinstance(v, str) and "://" in v), \
                        f"{name}: {where}{k} is a URL; keep it as a comment, set null"
                walk(v, f"{where}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}{i}.")

    walk(dic, "")


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_loss_and_schedule_build(name, synthetic_optic_disc):
    cfg = load(name, synthetic_optic_disc)
    assert cfg.iters >= 1 and cfg.batch_size >= 1

    paddle.seed(0)
    model = cfg.build_model()
    if name.replace(os.sep, "/") in EXPECTED:
        assert type(model).__name__ == EXPECTED[name.replace(os.sep, "/")][0]
    model.train()
    logits = model(paddle.rand([1, 3, 64, 64]))
    assert isinstance(logits, (list, tuple)) and len(logits) >= 1
    n_classes = cfg.num_classes
    for logit in logits:
        assert logit.shape == [1, n_classes, 64, 64]
    if name.replace(os.sep, "/") in EXPECTED:
        assert len(logits) == EXPECTED[name.replace(os.sep, "/")][1]

    loss = cfg.loss
    assert len(loss["types"]) == len(loss["coef"]) == len(logits), \
        f"{name}: {len(loss['types'])} loss types / {len(loss['coef'])} coef for {len(logits)} logits"
    label = paddle.randint(0, n_classes, [1, 64, 64])
    total = sum(c * fn(l, label) for fn, c, l in zip(loss["types"], loss["coef"], logits))
    assert np.isfinite(float(total))

    sched = cfg.build_lr_scheduler()
    assert isinstance(sched, paddle.optimizer.lr.LRScheduler)
    lr0 = cfg.dic["lr_scheduler"]["learning_rate"]
    assert sched.get_lr() == pytest.approx(lr0)
    opt = cfg.build_optimizer(model, sched)
    assert isinstance(opt, paddle.optimizer.Optimizer)


@pytest.mark.parametrize("name", CITYSCAPES_CONFIGS)
def test_cityscapes_configs_point_at_cityscapes(name):
    dic = load_config_dict(path_of(name))
    for key in ("train_dataset", "val_dataset"):
        assert dic[key]["type"] == "Cityscapes"
        assert dic[key]["dataset_root"] == "data/cityscapes"
    assert Config(path_of(name)).num_classes == 19  # HarDNet's comes from Cityscapes.NUM_CLASSES
    # the crop the file name promises, e.g. 1024x512 -> crop_size [1024, 512]
    size = size_in_name(name)
    crops = [t for t in dic["train_dataset"]["transforms"] if t["type"] == "RandomPaddingCrop"]
    assert crops and list(crops[0]["crop_size"]) == size


@pytest.mark.parametrize("name", CITYSCAPES_CONFIGS)
def test_cityscapes_datasets_build(name):
    root = shared_dataset("cityscapes_samples")
    cfg = Config(path_of(name), opts=data_opts(root) + no_download_opts(name))
    train, val = cfg.train_dataset, cfg.val_dataset
    assert type(train).__name__ == type(val).__name__ == "Cityscapes"
    assert train.num_classes == val.num_classes == cfg.num_classes == 19
    assert len(train) == 2 and len(val) == 2
    w, h = cfg.dic["train_dataset"]["transforms"][1]["crop_size"]
    sample = train[0]
    assert sample["img"].shape == (3, h, w)
    assert sample["label"].shape[-2:] == (h, w)


@pytest.mark.parametrize("name", OPTIC_CONFIGS)
def test_optic_disc_config(name, synthetic_optic_disc):
    dic = load_config_dict(path_of(name))
    for key in ("train_dataset", "val_dataset"):
        assert dic[key]["type"] == "OpticDiscSeg"
        assert dic[key]["dataset_root"] == "data/optic_disc_seg"
    if name.endswith("_1k.yml"):  # the quick-start schedule
        assert dic["batch_size"] == 4 and dic["iters"] == 1000
    w, h = size_in_name(name)

    cfg = load(name, synthetic_optic_disc)
    train, val = cfg.train_dataset, cfg.val_dataset
    assert type(train).__name__ == type(val).__name__ == "OpticDiscSeg"
    assert cfg.num_classes == 2
    assert len(train) == 2 and len(val) == 1
    sample = train[0]
    assert sample["img"].shape == (3, h, w)
    assert sample["label"].shape[-2:] == (h, w)
