"""Each transform on small arrays, with numpy's and Python's RNG seeded."""
import random

import cv2
import numpy as np
import pytest

from paddleseg import transforms as T
from paddleseg.utils import UserError


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(0)
    random.seed(0)


def sample(h=8, w=12, classes=(0, 1, 5, 255), with_label=True):
    """Image whose channel 0 is the row, channel 1 the column; label from ``classes``."""
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.stack([rows, cols, (rows * 7 + cols * 3) % 256], axis=-1).astype(np.uint8)
    data = {"img": img, "trans_info": [], "gt_fields": []}
    if with_label:
        data["label"] = np.asarray(classes, np.uint8)[(rows + 2 * cols) % len(classes)]
        data["gt_fields"] = ["label"]
    return data


# -- Resize ------------------------------------------------------------------------------------

def test_resize_image_and_label_to_target_w_h():
    data = T.Resize(target_size=[20, 10])(sample(8, 12))
    assert data["img"].shape == (10, 20, 3) and data["img"].dtype == np.uint8
    assert data["label"].shape == (10, 20)
    assert data["trans_info"] == [("resize", (8, 12))]


def test_resize_label_is_nearest_neighbour():
    d = sample(8, 12)
    label = d["label"].copy()
    data = T.Resize(target_size=[24, 16])(d)  # exactly 2x
    assert set(np.unique(data["label"])) <= {0, 1, 5, 255}  # no blended values
    assert np.array_equal(data["label"], np.repeat(np.repeat(label, 2, 0), 2, 1))
    # and when shrinking by a non-integer factor
    d2 = sample(8, 12)
    small = T.Resize(target_size=[7, 5])(d2)["label"]
    assert set(np.unique(small)) <= {0, 1, 5, 255}


def test_resize_image_is_interpolated_linearly():
    img = np.zeros((2, 2, 3), np.uint8)
    img[:, 1] = 200
    data = {"img": img, "trans_info": [], "gt_fields": []}
    out = T.Resize(target_size=[4, 2])(data)["img"]
    # bilinear: intermediate columns get values between 0 and 200
    assert 0 < out[0, 1, 0] < 200 and 0 < out[0, 2, 0] < 200


def test_resize_keep_ratio_and_bad_arguments():
    data = T.Resize(target_size=[24, 24], keep_ratio=True)(sample(8, 12))
    assert data["img"].shape[:2] == (16, 24)
    with pytest.raises(UserError):
        T.Resize(target_size=[1, 2, 3])
    with pytest.raises(UserError):
        T.Resize(interp="BOGUS")


def test_resize_by_long():
    data = T.ResizeByLong(long_size=24)(sample(8, 12))
    assert data["img"].shape[:2] == (16, 24) and data["label"].shape == (16, 24)
    assert data["trans_info"] == [("resize", (8, 12))]


# -- ResizeStepScaling ---------------------------------------------------------------------------

def test_resize_step_scaling_factors_on_the_grid_and_in_range():
    t = T.ResizeStepScaling(min_scale_factor=0.5, max_scale_factor=2.0, scale_step_size=0.25)
    seen = set()
    for _ in range(80):
        data = t(sample(8, 8))
        h, w = data["img"].shape[:2]
        assert h == w and data["label"].shape == (h, w)
        factor = h / 8
        assert 0.5 <= factor <= 2.0
        assert factor * 4 == int(factor * 4)  # a multiple of the 0.25 step
        seen.add(factor)
    assert seen == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}


def test_resize_step_scaling_continuous_and_fixed():
    t = T.ResizeStepScaling(0.5, 1.5, scale_step_size=0)
    sizes = {t(sample(40, 40))["img"].shape[0] for _ in range(20)}
    assert all(20 <= s <= 60 for s in sizes) and len(sizes) > 5
    fixed = T.ResizeStepScaling(1.5, 1.5)(sample(8, 12))
    assert fixed["img"].shape[:2] == (12, 18) and fixed["label"].shape == (12, 18)
    with pytest.raises(UserError):
        T.ResizeStepScaling(2.0, 1.0)


# -- RandomPaddingCrop ---------------------------------------------------------------------------

def test_random_padding_crop_pads_label_with_255_and_crops_to_size():
    d = sample(20, 30, classes=(0, 1, 2))
    data = T.RandomPaddingCrop(crop_size=[40, 16])(d)  # wider than the image, less tall
    img, label = data["img"], data["label"]
    assert img.shape == (16, 40, 3) and label.shape == (16, 40)
    assert np.all(label[:, 30:] == 255)  # the padded columns (padding goes right/bottom)
    assert np.all(label[:, :30] != 255)
    assert np.all(img[:, 30:] == 128)  # im_padding_value 127.5 on uint8
    # image and label are cut from the same window: channel 0 is the source row
    y0 = int(img[0, 0, 0])
    assert np.array_equal(img[:, 0, 0], np.arange(y0, y0 + 16))
    expected = np.asarray((0, 1, 2), np.uint8)[(np.arange(y0, y0 + 16)[:, None]
                                                 + 2 * np.arange(30)[None]) % 3]
    assert np.array_equal(label[:, :30], expected)


def test_random_padding_crop_windows_vary_and_stay_inside():
    t = T.RandomPaddingCrop(crop_size=[8, 8])
    origins = set()
    for _ in range(30):
        data = t(sample(20, 30))
        img, label = data["img"], data["label"]
        assert img.shape == (8, 8, 3) and label.shape == (8, 8)
        y, x = int(img[0, 0, 0]), int(img[0, 0, 1])
        assert 0 <= y <= 12 and 0 <= x <= 22
        origins.add((y, x))
    assert len(origins) > 10


# -- flips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, axis", [(T.RandomHorizontalFlip, 1), (T.RandomVerticalFlip, 0)])
def test_flips_flip_image_and_label_together(cls, axis):
    d = sample(6, 9)
    img, label = d["img"].copy(), d["label"].copy()
    data = cls(prob=1.0)(d)
    assert np.array_equal(data["img"], np.flip(img, axis))
    assert np.array_equal(data["label"], np.flip(label, axis))
    kept = cls(prob=0.0)(sample(6, 9))
    assert np.array_equal(kept["img"], img) and np.array_equal(kept["label"], label)


def test_flip_probability_is_about_half():
    t = T.RandomHorizontalFlip()
    flipped = 0
    for _ in range(200):
        d = t(sample(2, 3, with_label=False))
        flipped += int(d["img"][0, 0, 1] == 2)
    assert 60 < flipped < 140


# -- RandomDistort -------------------------------------------------------------------------------

def test_random_distort_keeps_shape_dtype_and_label_changes_pixels():
    rng = np.random.RandomState(1)
    img = rng.randint(30, 220, (16, 16, 3)).astype(np.uint8)
    label = rng.randint(0, 2, (16, 16)).astype(np.uint8)
    data = {"img": img.copy(), "label": label.copy(), "gt_fields": ["label"], "trans_info": []}
    t = T.RandomDistort(brightness_prob=1, contrast_prob=1, saturation_prob=1, hue_prob=1,
                        sharpness_prob=1)
    out = t(data)
    assert out["img"].shape == img.shape and out["img"].dtype == np.uint8
    assert not np.array_equal(out["img"], img)
    assert np.abs(out["img"].astype(int) - img).mean() > 1
    assert np.array_equal(out["label"], label)


def test_random_distort_with_zero_probabilities_is_identity():
    img = np.random.RandomState(2).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    t = T.RandomDistort(brightness_prob=0, contrast_prob=0, saturation_prob=0, hue_prob=0,
                        sharpness_prob=0)
    out = t({"img": img.copy(), "gt_fields": [], "trans_info": []})
    assert np.array_equal(out["img"], img)


def test_brightness_alone_scales_pixels():
    img = np.full((4, 4, 3), 100, np.uint8)
    t = T.RandomDistort(brightness_range=0.5, brightness_prob=1, contrast_prob=0,
                        saturation_prob=0, hue_prob=0, sharpness_prob=0)
    out = t({"img": img.copy(), "gt_fields": [], "trans_info": []})["img"]
    assert len(np.unique(out)) == 1  # a uniform scale
    assert 50 <= int(out[0, 0, 0]) <= 150 and int(out[0, 0, 0]) != 100


# -- Normalize / Compose / Padding ----------------------------------------------------------------

def test_normalize_math():
    img = np.array([[[0, 51, 255], [255, 102, 0]]], np.uint8)  # 1 x 2 x 3
    out = T.Normalize(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])(
        {"img": img, "gt_fields": [], "trans_info": []})["img"]
    expected = np.array([[[(0.0 - 0.5) / 0.2, (0.2 - 0.4) / 0.25, (1.0 - 0.3) / 0.5],
                          [(1.0 - 0.5) / 0.2, (0.4 - 0.4) / 0.25, (0.0 - 0.3) / 0.5]]])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    default = T.Normalize()({"img": np.array([[[0, 255, 127.5]]]), "gt_fields": [],
                             "trans_info": []})["img"]
    np.testing.assert_allclose(default, [[[-1.0, 1.0, 0.0]]], atol=1e-6)
    with pytest.raises(UserError):
        T.Normalize(std=[0.5, 0, 0.5])


def test_compose_reads_bgr_file_as_rgb_and_returns_chw_float32(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    path = str(tmp_path / "x.png")
    cv2.imwrite(path, bgr)
    out = T.Compose([T.Resize(target_size=[3, 2])])({"img": path})
    assert out["img"].shape == (3, 2, 3) and out["img"].dtype == np.float32
    assert np.all(out["img"][0] == 200) and np.all(out["img"][2] == 10)  # RGB order
    assert out["trans_info"] == [("resize", (4, 6))]
    with pytest.raises(UserError, match="cannot read image"):
        T.Compose([])({"img": str(tmp_path / "missing.png")})
    with pytest.raises(UserError):
        T.Compose(T.Resize())


def test_padding_pads_bottom_right_and_records_size():
    data = T.Padding(target_size=[16, 10])(sample(8, 12, classes=(0, 1)))
    assert data["img"].shape == (10, 16, 3)
    assert np.all(data["label"][8:] == 255) and np.all(data["label"][:, 12:] == 255)
    assert np.all(data["label"][:8, :12] != 255)
    assert data["trans_info"] == [("padding", (8, 12))]
    with pytest.raises(UserError):
        T.Padding(target_size=[4, 4])(sample(8, 12))
