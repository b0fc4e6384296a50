"""Datasets: OpticDiscSeg on the synthetic set, list-file datasets, Cityscapes, bad data."""
import os
import shutil

import cv2
import numpy as np
import pytest

import paddleseg.datasets.optic_disc_seg as optic_mod
import paddleseg.utils.download as download_mod
from conftest import TINY_SIZE, shared_dataset
from paddleseg import transforms as T
from paddleseg.datasets import Cityscapes, Dataset, DatasetError, OpticDiscSeg
from paddleseg.utils import UserError


def test_dataset_error_is_a_user_error():
    assert issubclass(DatasetError, UserError)


# -- OpticDiscSeg on the synthetic set ----------------------------------------------------------

def test_optic_disc_train_item(tiny_optic_root):
    ds = OpticDiscSeg(dataset_root=tiny_optic_root, mode="train",
                      transforms=[T.Resize(target_size=[48, 32]), T.Normalize()])
    assert len(ds) == 4 and ds.num_classes == 2 and ds.ignore_index == 255
    item = ds[0]
    img, label = item["img"], item["label"]
    assert img.shape == (3, 32, 48) and img.dtype == np.float32
    assert -1.0 <= img.min() and img.max() <= 1.0  # normalized
    assert label.shape == (32, 48) and label.dtype == np.int64  # transformed with the image
    assert set(np.unique(label)) <= {0, 1} and label.max() == 1  # a disc is there
    assert item["img_path"].endswith(os.path.join("JPEGImages", "syn_0000.jpg"))


def test_optic_disc_val_item_keeps_label_at_original_size(tiny_optic_root):
    ds = OpticDiscSeg(dataset_root=tiny_optic_root, mode="val",
                      transforms=[T.Resize(target_size=[32, 32]), T.Normalize()])
    assert len(ds) == 2
    item = ds[1]
    assert item["img"].shape == (3, 32, 32)
    assert item["label"].shape == (TINY_SIZE, TINY_SIZE) and item["label"].dtype == np.int64
    assert item["trans_info"] == [("resize", (TINY_SIZE, TINY_SIZE))]
    raw = cv2.imread(item["label_path"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(item["label"], raw)  # untouched


def test_optic_disc_flip_moves_label_with_image(tiny_optic_root):
    plain = OpticDiscSeg(dataset_root=tiny_optic_root, transforms=[])[2]
    flipped = OpticDiscSeg(dataset_root=tiny_optic_root,
                           transforms=[T.RandomHorizontalFlip(prob=1.0)])[2]
    assert np.array_equal(flipped["img"], plain["img"][:, :, ::-1])
    assert np.array_equal(flipped["label"], plain["label"][:, ::-1])
    assert not np.array_equal(plain["label"], plain["label"][:, ::-1])  # the flip mattered


def test_optic_disc_missing_root_offline_names_the_generator(tmp_path, monkeypatch):
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise download_mod.DownloadError(f"cannot download {url} (network is unreachable)")

    monkeypatch.setattr(download_mod, "download_file", no_network)
    root = tmp_path / "data" / "optic_disc_seg"
    with pytest.raises(DatasetError) as info:
        OpticDiscSeg(dataset_root=str(root), transforms=[])
    msg = str(info.value)
    assert calls == [optic_mod.URL]
    assert "tools/make_synthetic_optic_disc.py" in msg
    assert str(root) in msg and "network is unreachable" in msg
    assert not root.exists()  # nothing half-made under the final name
    assert os.listdir(tmp_path / "data") == []  # and no leftover zip / temp dirs


def test_optic_disc_never_downloads_into_a_folder_named_otherwise(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(download_mod, "download_file", lambda url, *a, **k: calls.append(url))
    with pytest.raises(DatasetError, match="dataset_root not found"):
        OpticDiscSeg(dataset_root=str(tmp_path / "membrane_seg"), transforms=[])
    assert calls == [] and not (tmp_path / "membrane_seg").exists()


def test_download_failure_on_a_bad_zip(tmp_path, monkeypatch):
    def fake_download(url, path, sha256=None):
        with open(path, "wb") as f:
            f.write(b"not a zip")
        return "0" * 64

    monkeypatch.setattr(download_mod, "download_file", fake_download)
    root = tmp_path / "optic_disc_seg"
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        optic_mod.download_optic_disc(str(root))
    assert not root.exists() and os.listdir(tmp_path) == []


# -- the generic list-file Dataset --------------------------------------------------------------

def make_pairs(root, n=3, size=(6, 8), values=(0, 1, 2)):
    """n images (BGR, pixel value = index*10) and labels under root/img, root/ann."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "ann"), exist_ok=True)
    rel = []
    for i in range(n):
        img = np.full(size + (3,), i * 10, np.uint8)
        label = np.asarray(values, np.uint8)[np.arange(size[0] * size[1]).reshape(size) % len(values)]
        cv2.imwrite(os.path.join(root, "img", f"{i}.png"), img)
        cv2.imwrite(os.path.join(root, "ann", f"{i}.png"), label)
        rel.append((f"img/{i}.png", f"ann/{i}.png"))
    return rel


def write_list(path, pairs, sep=" "):
    with open(path, "w") as f:
        f.write("".join(f"{a}{sep}{b}\n" for a, b in pairs) + "\n")  # a blank line is fine
    return str(path)


def test_list_file_relative_and_absolute_paths(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root)
    rel_list = write_list(tmp_path / "rel.txt", pairs)
    abs_list = write_list(tmp_path / "abs.txt", [(os.path.join(root, a), os.path.join(root, b))
                                                 for a, b in pairs])
    for list_path in (rel_list, abs_list):
        ds = Dataset(mode="train", dataset_root=root, transforms=[], num_classes=3,
                     train_path=list_path)
        assert len(ds) == 3
        assert ds.file_list[1] == (os.path.join(root, "img/1.png"), os.path.join(root, "ann/1.png"))
        item = ds[2]
        assert item["img"].shape == (3, 6, 8) and np.all(item["img"] == 20)
        assert item["label"].dtype == np.int64 and set(np.unique(item["label"])) == {0, 1, 2}


def test_list_file_inside_the_root_and_other_separator(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=2)
    write_list(os.path.join(root, "val.txt"), pairs, sep=",")
    ds = Dataset(mode="val", dataset_root=root, transforms=[], num_classes=3,
                 val_path="val.txt", separator=",")
    assert len(ds) == 2 and ds[0]["label"].shape == (6, 8)


def test_test_mode_list_without_labels(tmp_path):
    root = str(tmp_path / "set")
    make_pairs(root, n=2)
    with open(tmp_path / "test.txt", "w") as f:
        f.write("img/0.png\nimg/1.png\n")
    ds = Dataset(mode="test", dataset_root=root, transforms=[], num_classes=3,
                 test_path=str(tmp_path / "test.txt"))
    item = ds[1]
    assert "label" not in item and item["img"].shape == (3, 6, 8)


def test_list_file_naming_a_missing_image(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=2)
    pairs.append(("img/missing.png", "ann/0.png"))
    list_path = write_list(tmp_path / "train.txt", pairs)
    with pytest.raises(DatasetError) as info:
        Dataset(mode="train", dataset_root=root, transforms=[], num_classes=3,
                train_path=list_path)
    msg = str(info.value)
    assert os.path.join(root, "img/missing.png") in msg and list_path in msg


def test_label_value_not_below_num_classes(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=2, values=(0, 1, 7, 255))
    ds = Dataset(mode="train", dataset_root=root, transforms=[], num_classes=3,
                 train_path=write_list(tmp_path / "train.txt", pairs))
    with pytest.raises(DatasetError) as info:
        ds[1]
    msg = str(info.value)
    assert os.path.join(root, "ann/1.png") in msg
    assert "value 7" in msg and "num_classes is 3" in msg


def test_label_255_is_allowed_and_kept(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=1, values=(0, 1, 255))
    ds = Dataset(mode="train", dataset_root=root, transforms=[], num_classes=2,
                 train_path=write_list(tmp_path / "train.txt", pairs))
    assert set(np.unique(ds[0]["label"])) == {0, 1, 255}


def test_a_palette_label_gives_its_indices_as_paddleseg_reads_it(tmp_path):
    # PaddleSeg's pseudo-colour annotations: a "P" PNG whose pixels are class ids and whose
    # palette only colours them (OpenCV would decode the colours: 3 channels)
    from PIL import Image
    pairs = make_pairs(tmp_path, n=1, values=(0, 1, 2))
    img_path, label_path = pairs[0]
    ids = cv2.imread(str(tmp_path / label_path), cv2.IMREAD_UNCHANGED)
    ids[0, 0] = 255
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)
    palette.save(str(tmp_path / label_path))
    assert cv2.imread(str(tmp_path / label_path), cv2.IMREAD_UNCHANGED).ndim == 3
    write_list(tmp_path / "train.txt", pairs)
    ds = Dataset(mode="val", dataset_root=str(tmp_path), transforms=[T.Normalize()],
                 num_classes=3, train_path=str(tmp_path / "train.txt"),
                 val_path=str(tmp_path / "train.txt"))
    np.testing.assert_array_equal(ds[0]["label"], ids)


def test_color_label_is_refused(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=1)
    cv2.imwrite(os.path.join(root, "ann", "0.png"), np.zeros((6, 8, 3), np.uint8))
    ds = Dataset(mode="train", dataset_root=root, transforms=[], num_classes=2,
                 train_path=write_list(tmp_path / "train.txt", pairs))
    with pytest.raises(DatasetError, match="single-channel"):
        ds[0]


@pytest.mark.parametrize("mode", ["train", "val"])
def test_label_of_another_size_than_its_image_names_the_pair(tmp_path, mode):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=2)
    cv2.imwrite(os.path.join(root, "ann", "1.png"), np.zeros((6, 9), np.uint8))  # image is 8 wide
    ds = Dataset(mode=mode, dataset_root=root, transforms=[T.Resize(target_size=[4, 4])],
                 num_classes=3, **{f"{mode}_path": write_list(tmp_path / "list.txt", pairs)})
    ds[0]
    with pytest.raises(DatasetError) as info:
        ds[1]  # training resized both to 4x4 without a word; evaluation named no file
    msg = str(info.value)
    assert os.path.join(root, "ann/1.png") in msg and os.path.join(root, "img/1.png") in msg
    assert "9x6" in msg and "8x6" in msg


def test_bad_dataset_arguments(tmp_path):
    root = str(tmp_path / "set")
    pairs = make_pairs(root, n=1)
    lst = write_list(tmp_path / "train.txt", pairs)
    with pytest.raises(DatasetError, match="dataset_root not found"):
        Dataset(mode="train", dataset_root=str(tmp_path / "nope"), transforms=[], num_classes=2,
                train_path=lst)
    with pytest.raises(DatasetError, match="mode must be"):
        Dataset(mode="training", dataset_root=root, transforms=[], num_classes=2, train_path=lst)
    with pytest.raises(DatasetError, match="no val_path"):
        Dataset(mode="val", dataset_root=root, transforms=[], num_classes=2, train_path=lst)
    with pytest.raises(DatasetError, match="list file not found"):
        Dataset(mode="train", dataset_root=root, transforms=[], num_classes=2,
                train_path="no_list.txt")
    with open(tmp_path / "bad.txt", "w") as f:
        f.write("img/0.png ann/0.png extra\n")
    with pytest.raises(DatasetError, match="bad.txt:1"):
        Dataset(mode="train", dataset_root=root, transforms=[], num_classes=2,
                train_path=str(tmp_path / "bad.txt"))


def test_optic_disc_bad_label_in_a_copy(tiny_optic_root, tmp_path):
    root = str(tmp_path / "optic")
    shutil.copytree(tiny_optic_root, root)
    path = os.path.join(root, "Annotations", "syn_0003.png")
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    label[0, 0] = 2
    cv2.imwrite(path, label)
    ds = OpticDiscSeg(dataset_root=root, transforms=[])
    ds[2]  # the others are fine
    with pytest.raises(DatasetError, match="syn_0003.png has value 2"):
        ds[3]


# -- Cityscapes (development data) --------------------------------------------------------------

@pytest.fixture(scope="module")
def cityscapes_root():
    return shared_dataset("cityscapes_samples")


@pytest.mark.parametrize("mode", ["train", "val"])
def test_cityscapes_samples(cityscapes_root, mode):
    ds = Cityscapes(transforms=[T.Resize(target_size=[128, 64]), T.Normalize()],
                    dataset_root=cityscapes_root, mode=mode)
    assert len(ds) == 2 and ds.num_classes == 19
    for img_path, label_path in ds.file_list:
        assert f"leftImg8bit{os.sep}{mode}" in img_path
        assert label_path.endswith("_gtFine_labelTrainIds.png")
        raw = cv2.imread(img_path)
        assert raw.shape == (1024, 2048, 3)  # before transforms
    item = ds[0]
    assert item["img"].shape == (3, 64, 128) and item["img"].dtype == np.float32
    assert item["trans_info"] == [("resize", (1024, 2048))]
    label = item["label"]
    values = set(np.unique(label).tolist())
    assert values <= set(range(19)) | {255} and len(values - {255}) >= 3
    if mode == "train":
        assert label.shape == (64, 128)
    else:
        assert label.shape == (1024, 2048)


def test_cityscapes_missing_split(tmp_path):
    with pytest.raises(DatasetError, match="Cityscapes train split not found"):
        Cityscapes(transforms=[], dataset_root=str(tmp_path))
