"""The public data sets PaddleSeg release/2.6's configs for our models name: DRIVE, STARE, HRF and
CHASE_DB1 (UNet), Pascal VOC 2012 and PP-HumanSeg14K (FCN), on tiny sets in their layouts;
the download of a missing root from a server on 127.0.0.1, PaddleSeg's UNet DRIVE config trained
unchanged on a tiny DRIVE, and tools/voc_augment.py (SBD's masks for VOC's trainaug)."""
import io
import os
import re
import shutil
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from paddleseg import transforms as T
from paddleseg.datasets import (CHASEDB1, DRIVE, HRF, STARE, DatasetError, PascalVOC,
                                PPHumanSeg14K)
from test_download import dead_port, seg_home, server  # noqa: F401 (fixtures)

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "paddleseg_release26_configs")
VESSEL_SETS = (DRIVE, STARE, HRF, CHASEDB1)


def write_pair(img_path, label_path, seed, num_classes=2, size=(24, 32), palette=False):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(img_path), exist_ok=True)
    os.makedirs(os.path.dirname(label_path), exist_ok=True)
    cv2.imwrite(img_path, rng.integers(0, 255, size + (3,), dtype=np.uint8))
    ids = rng.integers(0, num_classes, size, dtype=np.uint8)
    label = Image.fromarray(ids, mode="P" if palette else "L")
    if palette:   # VOC's colours; the pixels are the class ids
        label.putpalette([c for i in range(256) for c in (i * 40 % 256, i * 80 % 256, i)])
    label.save(label_path)
    return ids


def make_vessel_set(root, num_train=3, num_val=2):
    """PaddleSeg's archive layout: list files in the root, 0/1 labels."""
    for split, n in (("train", num_train), ("val", num_val)):
        lines = []
        for i in range(n):
            img, label = f"images/{split}_{i}.png", f"annotations/{split}_{i}.png"
            write_pair(os.path.join(root, img), os.path.join(root, label), seed=i)
            lines.append(f"{img} {label}\n")
        with open(os.path.join(root, f"{split}_list.txt"), "w") as f:
            f.writelines(lines)
    return str(root)


@pytest.mark.parametrize("cls", VESSEL_SETS, ids=lambda c: c.__name__)
def test_a_vessel_set_reads_its_list_files(cls, tmp_path):
    root = make_vessel_set(tmp_path / cls.ROOT_NAMES[0])
    train = cls(dataset_root=root, transforms=[T.Normalize()], mode="train")
    val = cls(dataset_root=root, transforms=[T.Normalize()], mode="val")
    assert (len(train), len(val), train.num_classes, train.ignore_index) == (3, 2, 2, 255)
    item = val[1]
    assert item["img"].shape == (3, 24, 32) and set(np.unique(item["label"])) <= {0, 1}
    with pytest.raises(DatasetError, match="list file not found"):   # no test_list.txt
        cls(dataset_root=root, transforms=[], mode="test")


def zipped(folder, top):
    """A zip of ``folder``'s files under the top folder ``top``, as PaddleSeg's archives are."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for here, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(here, name)
                z.write(full, os.path.join(top, os.path.relpath(full, folder)))
    return buf.getvalue()


def test_a_missing_root_named_for_the_set_is_downloaded_once(server, seg_home, tmp_path,  # noqa: F811
                                                              monkeypatch):
    body = zipped(make_vessel_set(tmp_path / "src"), "drive")
    monkeypatch.setattr(DRIVE, "URL", server.serve("/dataset/drive/drive.zip", body))
    root = tmp_path / "data" / "DRIVE"      # PaddleSeg's config: data/DRIVE
    assert len(DRIVE(dataset_root=str(root), transforms=[], mode="train")) == 3
    assert (root / "train_list.txt").is_file() and server.count("/dataset/drive/drive.zip") == 1
    assert len(DRIVE(dataset_root=str(root), transforms=[], mode="val")) == 2
    assert server.count("/dataset/drive/drive.zip") == 1   # there now: no second download
    # no dataset_root: PaddleSeg's place, $SEG_HOME/dataset/<archive name>
    DRIVE(transforms=[], mode="val")
    assert (seg_home / "dataset" / "drive" / "val_list.txt").is_file()


def test_a_missing_root_named_otherwise_is_not_downloaded_into(server, seg_home, tmp_path,  # noqa: F811
                                                               monkeypatch):
    monkeypatch.setattr(STARE, "URL", server.serve("/stare.zip", b"never fetched"))
    with pytest.raises(DatasetError, match="STARE downloads only into a folder named STARE"):
        STARE(dataset_root=str(tmp_path / "data" / "STRAE"), transforms=[])
    assert server.requests == [] and not (tmp_path / "data" / "STRAE").exists()


def test_offline_a_missing_root_is_one_line_naming_the_archive(seg_home, tmp_path,  # noqa: F811
                                                                monkeypatch):
    url = f"http://127.0.0.1:{dead_port()}/chase_db1.zip"
    monkeypatch.setattr(CHASEDB1, "URL", url)
    root = tmp_path / "CHASE_DB1"
    with pytest.raises(DatasetError) as info:
        CHASEDB1(dataset_root=str(root), transforms=[])
    message = str(info.value)
    assert "\n" not in message and url in message and str(root) in message
    assert f"download {url} elsewhere and unpack it there" in message
    assert not root.exists() and set(os.listdir(tmp_path)) <= {"seg_home"}   # nothing half-made


# --- Pascal VOC 2012 ----------------------------------------------------------------------------

def make_voc(root, splits, aug=None):
    """VOCdevkit/VOC2012 with palette labels; ``splits`` {name: image names}; ``aug``: names of
    aug.txt, labelled in SegmentationClassAug. Returns {image name: its class ids}."""
    voc = os.path.join(root, "VOC2012")
    os.makedirs(os.path.join(voc, "ImageSets", "Segmentation"), exist_ok=True)
    ids = {}
    lists = dict(splits, **({"aug": aug} if aug else {}))
    for split, names in lists.items():
        label_dir = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
        for name in names:
            ids[name] = write_pair(os.path.join(voc, "JPEGImages", name + ".jpg"),
                                   os.path.join(voc, label_dir, name + ".png"), seed=sum(map(ord, name)),
                                   num_classes=21, palette=True)
        with open(os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.write("".join(n + "\n" for n in names))
    return ids


def test_pascal_voc_splits_and_palette_labels(tmp_path):
    root = tmp_path / "VOCdevkit"
    ids = make_voc(root, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"],
                          "trainval": ["2007_000032", "2007_000039", "2007_000033"]})
    train = PascalVOC(dataset_root=str(root), transforms=[T.Normalize()], mode="train")
    val = PascalVOC(dataset_root=str(root), transforms=[T.Normalize()], mode="val")
    trainval = PascalVOC(dataset_root=str(root), transforms=[T.Normalize()], mode="trainval")
    assert (len(train), len(val), len(trainval), train.num_classes) == (2, 1, 3, 21)
    assert (train.split, train.mode, trainval.mode, val.mode) == ("train", "train", "train", "val")
    # the labels are the palette's indices (class ids), not its colours
    np.testing.assert_array_equal(val[0]["label"].reshape(24, 32), ids["2007_000033"])
    # a train split's label moves with its image (here: resized with it)
    item = PascalVOC(dataset_root=str(root), transforms=[T.Resize(target_size=(16, 8)),
                                                         T.Normalize()], mode="trainval")[2]
    assert item["img"].shape == (3, 8, 16) and item["label"].shape[-2:] == (8, 16)


def test_pascal_voc_trainaug_needs_the_augmented_set(tmp_path):
    root = tmp_path / "VOCdevkit"
    make_voc(root, {"train": ["a", "b"], "val": ["c"]})
    with pytest.raises(DatasetError, match="trainaug needs .*aug.txt.*tools/voc_augment.py"):
        PascalVOC(dataset_root=str(root), transforms=[], mode="trainaug")
    ids = make_voc(root, {"train": ["a", "b"]}, aug=["2008_000001", "2008_000002", "2008_000003"])
    aug = PascalVOC(dataset_root=str(root), transforms=[T.Normalize()], mode="trainaug")
    assert len(aug) == 5 and aug.split == "trainaug"
    img, label = aug.file_list[4]
    assert label.endswith(os.path.join("SegmentationClassAug", "2008_000003.png"))
    np.testing.assert_array_equal(aug[4]["label"], ids["2008_000003"])


def test_pascal_voc_bad_mode_and_missing_files_are_one_line(tmp_path):
    root = tmp_path / "VOCdevkit"
    make_voc(root, {"train": ["a"]})
    with pytest.raises(DatasetError, match="mode must be one of train, trainval, trainaug, val"):
        PascalVOC(dataset_root=str(root), transforms=[], mode="test")
    with pytest.raises(DatasetError, match=r"val split not found: expected .*val\.txt"):
        PascalVOC(dataset_root=str(root), transforms=[], mode="val")
    os.remove(root / "VOC2012" / "JPEGImages" / "a.jpg")
    with pytest.raises(DatasetError, match=r"a\.jpg is missing"):
        PascalVOC(dataset_root=str(root), transforms=[], mode="train")
    with pytest.raises(DatasetError, match="downloads only into a folder named VOCdevkit"):
        PascalVOC(dataset_root=str(tmp_path / "voc"), transforms=[])


def test_pp_humanseg14k_reads_its_list_files(tmp_path):
    root = tmp_path / "PP-HumanSeg14K"
    for split, n in (("train", 2), ("val", 1)):
        lines = []
        for i in range(n):
            write_pair(str(root / "images" / split / f"{i}.jpg"),
                       str(root / "annotations" / split / f"{i}.png"), seed=i)
            lines.append(f"images/{split}/{i}.jpg annotations/{split}/{i}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    assert len(PPHumanSeg14K(dataset_root=str(root), transforms=[], mode="train")) == 2
    assert len(PPHumanSeg14K(dataset_root=str(root), transforms=[], mode="val")) == 1
    with pytest.raises(DatasetError, match="PPHumanSeg14K needs dataset_root"):
        PPHumanSeg14K(transforms=[])


def test_paddleseg_s_unet_drive_config_trains_unchanged(tmp_path):
    """configs/unet/unet_drive_128x128_40k.yml of release/2.6 (DRIVE, DiceLoss, 128x128 crops,
    test_config auc_roc), its data root and run length set on the command line only."""
    root = make_vessel_set(tmp_path / "DRIVE", num_train=2, num_val=1)
    config = os.path.join(CONFIGS, "unet", "unet_drive_128x128_40k.yml")
    out = tmp_path / "out"
    proc = run_cli("train.py", "--config", config, "--iters", "2", "--batch_size", "2",
                   "--save_interval", "2", "--do_eval", "--save_dir", str(out), "--opts",
                   f"train_dataset.dataset_root={root}", f"val_dataset.dataset_root={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "iter_2" / "model.pdparams").is_file()
    log = proc.stdout + proc.stderr
    assert "[EVAL]" in log and "mIoU" in log
    # its test_config asks for the AUC-ROC, as PaddleSeg reports it for the vessel sets
    assert "evaluating 1 images (AUC-ROC)" in log
    assert re.search(r"AUC-ROC (0\.\d{4}|1\.0000)", log), log[-2000:]


# --- tools/voc_augment.py: SBD's masks for trainaug ---------------------------------------------

def make_sbd(root, train, val, size=(24, 32)):
    """benchmark_RELEASE/dataset with train.txt, val.txt and a class mask (.mat) per image.
    Returns {name: mask}."""
    from scipy.io import savemat
    cls_dir = os.path.join(root, "dataset", "cls")
    os.makedirs(cls_dir)
    masks = {}
    for split, names in (("train", train), ("val", val)):
        with open(os.path.join(root, "dataset", f"{split}.txt"), "w") as f:
            f.write("".join(n + "\n" for n in names))
        for name in names:
            masks[name] = (np.arange(size[0] * size[1]).reshape(size) * len(name) % 21
                           ).astype(np.uint8)
            savemat(os.path.join(cls_dir, name + ".mat"),
                    {"GTcls": {"Segmentation": masks[name], "Boundaries": np.zeros((1, 1))}})
    return masks


def test_voc_augment_adds_sbd_for_trainaug(tmp_path):
    voc = tmp_path / "VOCdevkit"
    make_voc(voc, {"train": ["a", "b"], "val": ["c"], "trainval": ["a", "b", "c"]},
             aug=["sbd_1", "sbd_22"])   # the images of the aug set (aug.txt is remade below)
    os.remove(voc / "VOC2012" / "ImageSets" / "Segmentation" / "aug.txt")
    shutil.rmtree(voc / "VOC2012" / "SegmentationClassAug")
    masks = make_sbd(tmp_path / "benchmark_RELEASE", train=["a", "sbd_1"], val=["sbd_22", "c"])
    argv = ["--voc_path", voc, "--sbd_path", tmp_path / "benchmark_RELEASE", "--num_workers", "1"]
    proc = run_cli("tools/voc_augment.py", *argv)
    assert proc.returncode == 0, proc.stderr
    aug_list = voc / "VOC2012" / "ImageSets" / "Segmentation" / "aug.txt"
    assert aug_list.read_text() == "sbd_1\nsbd_22\n"   # SBD's, less VOC's trainval, sorted
    for name, mask in masks.items():   # every SBD mask, as class ids
        png = cv2.imread(str(voc / "VOC2012" / "SegmentationClassAug" / f"{name}.png"),
                         cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, mask)
    aug = PascalVOC(dataset_root=str(voc), transforms=[T.Normalize()], mode="trainaug")
    assert len(aug) == 4
    np.testing.assert_array_equal(aug[3]["label"], masks["sbd_22"])
    # a killed run resumes: only the missing mask is converted again
    os.remove(voc / "VOC2012" / "SegmentationClassAug" / "c.png")
    proc = run_cli("tools/voc_augment.py", *argv)
    assert proc.returncode == 0 and "4 SBD masks, 3 converted already" in proc.stdout + proc.stderr
    # an aug.txt listing other images is not replaced
    aug_list.write_text("mine\n")
    proc = run_cli("tools/voc_augment.py", *argv)
    assert proc.returncode == 2 and "lists other images; move it away" in proc.stderr
    assert aug_list.read_text() == "mine\n"


def test_voc_augment_downloads_sbd_once(server, seg_home, tmp_path):  # noqa: F811
    import tarfile
    voc = tmp_path / "VOCdevkit"
    make_voc(voc, {"trainval": ["a"]})
    make_sbd(tmp_path / "src" / "benchmark_RELEASE", train=["s1"], val=[])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    url = server.serve("/benchmark.tgz", buf.getvalue())
    argv = ["--voc_path", voc, "--url", url, "--num_workers", "1"]
    assert run_cli("tools/voc_augment.py", *argv).returncode == 0
    assert (seg_home / "dataset" / "benchmark_RELEASE" / "dataset" / "cls" / "s1.mat").is_file()
    os.remove(voc / "VOC2012" / "ImageSets" / "Segmentation" / "aug.txt")
    assert run_cli("tools/voc_augment.py", *argv).returncode == 0
    assert server.count("/benchmark.tgz") == 1


def test_voc_augment_offline_is_one_line(seg_home, tmp_path):  # noqa: F811
    voc = tmp_path / "VOCdevkit"
    make_voc(voc, {"trainval": ["a"]})
    url = f"http://127.0.0.1:{dead_port()}/benchmark.tgz"
    proc = run_cli("tools/voc_augment.py", "--voc_path", voc, "--url", url)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "the SBD folder" in proc.stderr and "--sbd_path" in proc.stderr and url in proc.stderr
    assert not (voc / "VOC2012" / "ImageSets" / "Segmentation" / "aug.txt").exists()
