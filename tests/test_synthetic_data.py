"""Tests for tools/make_synthetic_optic_disc.py (small, fast sets)."""

import hashlib
import importlib.util
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "make_synthetic_optic_disc.py")

_spec = importlib.util.spec_from_file_location("make_synthetic_optic_disc", SCRIPT)
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

SIZE = 64
NTRAIN, NVAL = 4, 2


def _make(path, seed=0, **kw):
    kw.setdefault("num_train", NTRAIN)
    kw.setdefault("num_val", NVAL)
    kw.setdefault("size", SIZE)
    return syn.make_dataset(str(path), seed=seed, **kw)


def _digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            h.update(os.path.relpath(full, root).encode())
            with open(full, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _read_list(path):
    with open(path) as fh:
        return [line.rstrip("\n").split(" ") for line in fh if line.strip()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("syn") / "optic", seed=0)


def test_layout_and_lists(dataset):
    assert sorted(os.listdir(dataset)) == [
        "Annotations", "JPEGImages", "train_list.txt", "val_list.txt"]
    train = _read_list(os.path.join(dataset, "train_list.txt"))
    val = _read_list(os.path.join(dataset, "val_list.txt"))
    assert len(train) == NTRAIN and len(val) == NVAL
    pairs = train + val
    for pair in pairs:
        assert len(pair) == 2
        img_rel, ann_rel = pair
        assert img_rel.startswith("JPEGImages/") and img_rel.endswith(".jpg")
        assert ann_rel.startswith("Annotations/") and ann_rel.endswith(".png")
        assert os.path.splitext(os.path.basename(img_rel))[0] == \
            os.path.splitext(os.path.basename(ann_rel))[0]
        assert os.path.isfile(os.path.join(dataset, img_rel))
        assert os.path.isfile(os.path.join(dataset, ann_rel))
    # train and val are disjoint and every file is listed exactly once
    assert len({p[0] for p in pairs}) == NTRAIN + NVAL
    assert sorted(os.listdir(os.path.join(dataset, "JPEGImages"))) == \
        sorted(os.path.basename(p[0]) for p in pairs)
    assert sorted(os.listdir(os.path.join(dataset, "Annotations"))) == \
        sorted(os.path.basename(p[1]) for p in pairs)
    # no temporary siblings left behind
    assert os.listdir(os.path.dirname(dataset)) == [os.path.basename(dataset)]


def test_images_and_masks(dataset):
    pairs = _read_list(os.path.join(dataset, "train_list.txt")) + \
        _read_list(os.path.join(dataset, "val_list.txt"))
    for img_rel, ann_rel in pairs:
        img = cv2.imread(os.path.join(dataset, img_rel), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        mask = cv2.imread(os.path.join(dataset, ann_rel), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        frac = float(mask.mean())
        # disc radius 6-12% of the side with eccentricity -> ~0.8%..4.5% of the area
        assert 0.004 < frac < 0.06, frac
        # one connected disc
        n, _ = cv2.connectedComponents(mask)
        assert n == 2
        # corners are outside the fundus field: dark
        for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            assert img[y, x].max() < 20
        # the disc is brighter than the rest of the field on average
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        field = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (0.4 * SIZE) ** 2
        assert gray[mask == 1].mean() > gray[field & (mask == 0)].mean() + 20


def test_same_seed_identical(tmp_path, dataset):
    again = _make(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(dataset)


def test_different_seed_differs(tmp_path, dataset):
    other = _make(tmp_path / "other", seed=1)
    for i in range(NTRAIN + NVAL):
        rel = f"JPEGImages/syn_{i:04d}.jpg"
        a = cv2.imread(os.path.join(dataset, rel)).astype(np.int16)
        b = cv2.imread(os.path.join(other, rel)).astype(np.int16)
        assert np.abs(a - b).mean() > 5


def test_empty_existing_dir_is_used(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    out = _make(target, num_train=1, num_val=1)
    assert os.path.samefile(out, target)
    assert len(os.listdir(target / "JPEGImages")) == 2


def test_refuses_non_empty_dir(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        _make(target)
    r = subprocess.run([sys.executable, SCRIPT, "--save_dir", str(target),
                        "--num_train", "1", "--num_val", "1", "--size", "64"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert os.listdir(target) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["busy"]


def test_overwrite_replaces(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    r = subprocess.run([sys.executable, SCRIPT, "--save_dir", str(target),
                        "--num_train", "1", "--num_val", "1", "--size", "64",
                        "--overwrite"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "keep.txt" not in os.listdir(target)
    assert len(_read_list(target / "train_list.txt")) == 1
    assert sorted(os.listdir(tmp_path)) == ["busy"]


@pytest.mark.parametrize("args", [["--size", "16"], ["--num_train", "-1"],
                                  ["--num_val", "-3"], ["--size", "abc"]])
def test_bad_numbers(tmp_path, args):
    target = tmp_path / "out"
    r = subprocess.run([sys.executable, SCRIPT, "--save_dir", str(target)] + args,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not target.exists()
    assert os.listdir(tmp_path) == []
