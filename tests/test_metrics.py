"""Metrics against a confusion matrix worked out by hand.

    label          pred
    0 0 1   1      0 1 1 1
    2 2 255 1      2 0 0 1      (the 255 pixel is ignored; its prediction is 0)

Counted pixels (label, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,1)

    confusion  pred0 pred1 pred2 | label area
    label0       1     1     0   |   2
    label1       0     3     0   |   3
    label2       1     0     1   |   2
    pred area    2     4     1       total 7

intersect [1, 3, 1]; IoU = I / (P + L - I) = [1/3, 3/4, 1/2], mIoU = 19/36
Acc = 5/7; precision = I / P = [1/2, 3/4, 1]; recall = I / L = [1/2, 1, 1/2]
Dice = 2I / (P + L) = [1/2, 6/7, 2/3], mean 85/126
Kappa: po = 5/7 = 35/49, pe = (2*2 + 4*3 + 1*2) / 49 = 18/49, (35 - 18) / (49 - 18) = 17/31
"""
import numpy as np
import paddle
import pytest

from paddleseg.core import metrics as M
from paddleseg.core.val import evaluate, evaluate_metrics

LABEL = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], np.int64)
PRED = np.array([[0, 1, 1, 1], [2, 0, 0, 1]], np.int64)

INTERSECT = [1, 3, 1]
PRED_AREA = [2, 4, 1]
LABEL_AREA = [2, 3, 2]
IOU = [1 / 3, 3 / 4, 1 / 2]
MIOU = 19 / 36
ACC = 5 / 7
PRECISION = [1 / 2, 3 / 4, 1.0]
RECALL = [1 / 2, 1.0, 1 / 2]
DICE = [1 / 2, 6 / 7, 2 / 3]
MDICE = 85 / 126
KAPPA = 17 / 31


def areas():
    return M.calculate_area(PRED, LABEL, 3, ignore_index=255)


def test_calculate_area_against_hand_counts():
    i, p, l = areas()
    assert i.tolist() == INTERSECT
    assert p.tolist() == PRED_AREA
    assert l.tolist() == LABEL_AREA


def test_ignored_pixels_are_excluded_whatever_their_prediction():
    for value in (0, 1, 2):
        pred = PRED.copy()
        pred[1, 2] = value
        i, p, l = M.calculate_area(pred, LABEL, 3, ignore_index=255)
        assert p.tolist() == PRED_AREA and i.tolist() == INTERSECT and l.tolist() == LABEL_AREA
    # another ignore index: 255 is then an ordinary (out-of-range) value, 0 is dropped
    label = LABEL.copy()
    label[label == 255] = 2
    i, p, l = M.calculate_area(PRED, label, 3, ignore_index=0)
    assert l.tolist() == [0, 3, 3]  # the two 0-pixels are gone, the old 255 counts as class 2


def test_miou_and_class_iou():
    i, p, l = areas()
    np.testing.assert_allclose(M.class_iou(i, p, l), IOU)
    assert M.mean_iou(i, p, l) == pytest.approx(MIOU)


def test_accuracy_precision_recall():
    i, p, l = areas()
    assert M.accuracy(i, p) == pytest.approx(ACC)
    np.testing.assert_allclose(M.class_precision(i, p), PRECISION)
    np.testing.assert_allclose(M.class_recall(i, l), RECALL)


def test_kappa():
    assert M.kappa(*areas()) == pytest.approx(KAPPA)


def test_dice():
    i, p, l = areas()
    np.testing.assert_allclose(M.class_dice(i, p, l), DICE)


def test_summarize_collects_all():
    s = M.summarize(*areas())
    assert s["mIoU"] == pytest.approx(MIOU)
    assert s["Acc"] == pytest.approx(ACC)
    assert s["Kappa"] == pytest.approx(KAPPA)
    assert s["Dice"] == pytest.approx(MDICE)
    np.testing.assert_allclose(s["class_IoU"], IOU)
    np.testing.assert_allclose(s["class_precision"], PRECISION)
    np.testing.assert_allclose(s["class_recall"], RECALL)
    table = M.format_table(s)
    assert f"mIoU {MIOU:.4f}" in table and f"Kappa {KAPPA:.4f}" in table


def test_absent_class_counts_as_zero_iou_like_paddleseg():
    i, p, l = M.calculate_area(PRED, LABEL, 4)
    assert i.tolist() == INTERSECT + [0] and l.tolist() == LABEL_AREA + [0]
    s = M.summarize(i, p, l)
    assert s["class_IoU"][3] == 0.0
    assert s["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 4)


def test_perfect_and_all_ignored():
    label = np.array([[0, 1], [1, 255]])
    s = M.summarize(*M.calculate_area(np.array([[0, 1], [1, 0]]), label, 2))
    assert s["mIoU"] == 1.0 and s["Acc"] == 1.0 and s["Kappa"] == 1.0 and s["Dice"] == 1.0
    i, p, l = M.calculate_area(np.zeros((2, 2)), np.full((2, 2), 255), 2)
    assert i.sum() == p.sum() == l.sum() == 0
    assert M.kappa(i, p, l) == 0.0 and M.accuracy(i, p) == 0.0


def test_shape_mismatch():
    with pytest.raises(ValueError):
        M.calculate_area(np.zeros(5), np.zeros(6), 2)


class FixedLogits(paddle.nn.Layer):
    """A 'model' whose argmax is the given prediction, whatever the image."""

    def __init__(self, pred, num_classes):
        super().__init__()
        onehot = np.eye(num_classes, dtype=np.float32)[pred].transpose(2, 0, 1)[None]
        self.logit = paddle.to_tensor(onehot * 5.0)

    def forward(self, x):
        return [self.logit]


class OneImageDataset:
    num_classes = 3
    ignore_index = 255

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return {"img": np.zeros((3, 2, 4), np.float32), "label": LABEL, "trans_info": []}


def test_evaluate_end_to_end_matches_hand_numbers():
    model = FixedLogits(PRED, 3)
    r = evaluate_metrics(model, OneImageDataset(), print_detail=False)
    assert r["mIoU"] == pytest.approx(MIOU) and r["Kappa"] == pytest.approx(KAPPA)
    miou, acc, class_iou, class_precision, kappa = evaluate(model, OneImageDataset(),
                                                            print_detail=False)
    assert miou == pytest.approx(MIOU) and acc == pytest.approx(ACC)
    np.testing.assert_allclose(class_iou, IOU)
    np.testing.assert_allclose(class_precision, PRECISION)
    assert kappa == pytest.approx(KAPPA)
