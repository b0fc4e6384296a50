"""predict.py, PaddleSeg's dygraph prediction: what it writes, PaddleSeg's palette and overlay,
the image lists it takes, its options, and what it refuses to overwrite."""
import json
import os
import shutil

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import run_cli
from paddleseg.utils.visualize import color_map, overlay


@pytest.fixture(scope="module")
def weights(tiny_config, tmp_path_factory):
    from paddleseg.cvlibs import Config
    path = tmp_path_factory.mktemp("predict") / "model.pdparams"
    paddle.seed(2)
    paddle.save(Config(tiny_config).model.state_dict(), str(path))
    return str(path)


@pytest.fixture
def images(tiny_optic_root, tmp_path):
    """Two images in a folder tree, and a hidden file PaddleSeg skips."""
    folder = tmp_path / "images"
    src = [os.path.join(tiny_optic_root, "JPEGImages", n)
           for n in sorted(os.listdir(os.path.join(tiny_optic_root, "JPEGImages")))[:2]]
    (folder / "sub").mkdir(parents=True)
    shutil.copy(src[0], folder / "a.jpg")
    shutil.copy(src[1], folder / "sub" / "b.png")
    shutil.copy(src[1], folder / ".hidden.png")
    return folder


def predict(tiny_config, weights, image_path, save_dir, *flags):
    return run_cli("predict.py", "--config", tiny_config, "--model_path", weights,
                   "--image_path", image_path, "--save_dir", save_dir, *flags)


def test_paddleseg_s_palette_starts_at_label_1_and_takes_custom_colours():
    palette = color_map()
    # PaddleSeg's get_color_map_list drops label 0's black: class 0 is VOC's class-1 red
    assert palette[:3].tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert color_map([255, 255, 255, 0, 0, 255])[:3].tolist() == [[255, 255, 255], [0, 0, 255],
                                                                  [128, 128, 0]]
    from paddleseg.utils.errors import UserError
    with pytest.raises(UserError, match="three per class"):
        color_map([255, 0])


def test_the_overlay_is_six_tenths_image():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [1, 0]])
    blended = overlay(image, label, color_map())
    # class 0 is RGB (128, 0, 0): BGR (0, 0, 128); 0.6 * 100 + 0.4 * colour
    assert blended[0, 0].tolist() == [60, 60, 111] and blended[0, 1].tolist() == [60, 111, 60]


def test_predict_writes_pseudo_colour_pngs_and_overlays(tiny_config, weights, images, tmp_path):
    out = tmp_path / "result"
    proc = predict(tiny_config, weights, images, out)
    assert proc.returncode == 0, proc.stderr
    pseudo = out / "pseudo_color_prediction"
    added = out / "added_prediction"
    assert sorted(p.relative_to(pseudo).as_posix() for p in pseudo.rglob("*.png")) == [
        "a.png", "sub/b.png"]
    assert (added / "a.jpg").is_file() and (added / "sub" / "b.png").is_file()
    assert not (pseudo / ".hidden.png").exists()
    with Image.open(pseudo / "a.png") as png:
        assert png.mode == "P" and png.size == Image.open(images / "a.jpg").size
        ids = np.asarray(png)
        assert png.getpalette()[:6] == [128, 0, 0, 0, 128, 0]
    assert set(np.unique(ids)) <= {0, 1}
    # the overlay is the image blended with those ids' colours
    expected = overlay(cv2.imread(str(images / "sub" / "b.png")),
                       np.asarray(Image.open(pseudo / "sub" / "b.png")), color_map())
    np.testing.assert_array_equal(cv2.imread(str(added / "sub" / "b.png")), expected)
    # a second run replaces its own outputs
    assert predict(tiny_config, weights, images, out).returncode == 0


def test_predict_takes_an_image_or_a_list_file_and_paddleseg_s_options(tiny_config, weights,
                                                                      images, tmp_path):
    out = tmp_path / "one"
    assert predict(tiny_config, weights, images / "a.jpg", out).returncode == 0
    assert (out / "pseudo_color_prediction" / "a.png").is_file()
    listing = images / "list.txt"
    listing.write_text("sub/b.png ignored_label.png\n")
    out = tmp_path / "listed"
    proc = predict(tiny_config, weights, listing, out, "--aug_pred", "--scales", "0.5", "1.0",
                   "--is_slide", "--crop_size", "48", "48", "--stride", "32", "32",
                   "--custom_color", "0", "0", "0", "255", "255", "255")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "pseudo_color_prediction" / "sub" / "b.png") as png:
        assert png.getpalette()[:6] == [0, 0, 0, 255, 255, 255]


def test_predict_never_overwrites_what_it_did_not_write(tiny_config, weights, images, tmp_path):
    out = tmp_path / "result"
    (out / "added_prediction").mkdir(parents=True)
    (out / "added_prediction" / "a.jpg").write_bytes(b"the user's own file")
    proc = predict(tiny_config, weights, images, out)
    assert proc.returncode == 2 and "which predict.py did not write" in proc.stderr
    assert (out / "added_prediction" / "a.jpg").read_bytes() == b"the user's own file"
    # nor into the folder of its inputs
    proc = predict(tiny_config, weights, images, images)
    assert proc.returncode == 2 and "holds the input image" in proc.stderr
    proc = predict(tiny_config, weights, tmp_path / "nothing", tmp_path / "r")
    assert proc.returncode == 2 and "--image_path not found" in proc.stderr
    proc = predict(tiny_config, weights, weights, tmp_path / "r")   # binary, not a list
    assert proc.returncode == 2 and "nor a text file listing images" in proc.stderr
    manifest = out / ".predictions.json"
    manifest.write_text("{not json")
    (out / "added_prediction" / "a.jpg").unlink()
    proc = predict(tiny_config, weights, images, out)
    assert proc.returncode == 2 and "move it away" in proc.stderr
    manifest.unlink()
    assert predict(tiny_config, weights, images, out).returncode == 0
    assert sorted(json.loads(manifest.read_text())) == [
        "added_prediction/a.jpg", "added_prediction/sub/b.png",
        "pseudo_color_prediction/a.png", "pseudo_color_prediction/sub/b.png"]


def test_paddleseg_s_predict_function(tiny_config, weights, images, tmp_path):
    """``paddleseg.core.predict`` with PaddleSeg's signature, as its scripts call it."""
    from paddleseg.core import predict as predict_fn
    from paddleseg.core.export import check_transforms
    from paddleseg.cvlibs import Config
    from paddleseg.transforms import Compose
    cfg = Config(tiny_config)
    transforms = Compose(check_transforms(cfg.val_dataset_config["transforms"]))
    paths = [str(images / "a.jpg"), str(images / "sub" / "b.png")]
    predict_fn(cfg.build_model(), model_path=weights, transforms=transforms, image_list=paths,
               image_dir=str(images), save_dir=str(tmp_path / "out"), aug_pred=True,
               custom_color=[1, 2, 3])
    with Image.open(tmp_path / "out" / "pseudo_color_prediction" / "sub" / "b.png") as png:
        assert png.getpalette()[:3] == [1, 2, 3]
    # the same labels as predict.py's with --aug_pred (its horizontal flip on by default)
    proc = predict(tiny_config, weights, images, tmp_path / "cli", "--aug_pred")
    assert proc.returncode == 0, proc.stderr
    for name in ("a.png", "sub/b.png"):
        ours = np.asarray(Image.open(tmp_path / "out" / "pseudo_color_prediction" / name))
        cli = np.asarray(Image.open(tmp_path / "cli" / "pseudo_color_prediction" / name))
        np.testing.assert_array_equal(ours, cli)
