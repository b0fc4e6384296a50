"""PaddleSeg release/2.6's own configs for our five models (tests/data/paddleseg_release26_configs,
unchanged) load in our Config and build their model with no dataset on disk; a pretrained URL that
cannot be fetched fails with one line naming it."""
import glob
import os

import pytest

from paddleseg.cvlibs import Config
from paddleseg.utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "tests", "data", "paddleseg_release26_configs")
CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*", "*.yml"))
                 if os.sep + "_base_" + os.sep not in p)


def _pretrained_urls(dic):
    model = dic["model"]
    urls = [v.get("pretrained") for v in (model, model.get("backbone") or {})]
    return [u for u in urls if isinstance(u, str) and u.startswith("http")]


def test_all_eighteen_present():
    assert len(CONFIGS) == 18


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No test touches the internet: every HTTP(S) request goes to a closed local port."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SEG_HOME", str(tmp_path / "seg_home"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, CONFIG_DIR))
def test_paddleseg_config_builds_model(path, offline):
    cfg = Config(path)
    urls = _pretrained_urls(cfg.dic)
    if urls:
        with pytest.raises(UserError) as err:
            cfg.build_model()
        message = str(err.value)
        assert "\n" not in message and urls[0] in message
        assert "pretrained" in message  # says how to pass a local path instead
        opts = ["model.backbone.pretrained=null"] if cfg.dic["model"].get("backbone") else []
        opts += ["model.pretrained=null"]
        cfg = Config(path, opts=opts)
    model = cfg.model
    assert type(model).__name__ == cfg.dic["model"]["type"]
    # HarDNet's and the quick start's model blocks omit num_classes: it comes from the dataset
    # class (Cityscapes 19, OpticDiscSeg 2) without opening any data
    assert cfg.num_classes == cfg.dic["model"].get("num_classes", 19 if "hardnet" in path else 2)


def test_cityscapes_model_exports_without_cityscapes_data(tmp_path, offline):
    """PaddleSeg's HarDNet Cityscapes config omits model.num_classes; building and exporting the
    model reads Cityscapes.NUM_CLASSES and never looks for the data set on disk."""
    import subprocess
    import sys

    import paddle
    config = os.path.join(ROOT, "configs", "hardnet", "hardnet_cityscapes_1024x1024_160k.yml")
    cfg = Config(config)
    assert not os.path.exists(os.path.join(tmp_path, cfg.dic["train_dataset"]["dataset_root"]))
    weights = tmp_path / "model.pdparams"
    paddle.save(cfg.model.state_dict(), str(weights))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--config", config,
                          "--model_path", str(weights), "--save_dir", str(tmp_path / "export"),
                          "--input_shape", "1", "3", "64", "64"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "export" / "deploy.yaml").is_file()
    assert any(p.suffix == ".pdiparams" for p in (tmp_path / "export").iterdir())
