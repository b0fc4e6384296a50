import cv2
import numpy as np
import paddle
import paddle.nn as nn

from paddleseg.cvlibs import manager


@manager.LOSSES.add_component
class SemanticConnectivityLoss(nn.Layer):
    """PaddleSeg 2.6's SC loss (Chu et al., "PP-HumanSeg", WACV 2022 workshop): per image and
    label class, the connected components of the prediction (argmax) are matched with the
    label's by IoU; the loss is 1 minus the mean matched IoU over the label components and the
    unmatched predicted ones (a class the label has but no component of the prediction: the
    missed share + 1), averaged over classes and images.

    As PaddleSeg computes it: the loss is of the argmax, so no gradient reaches the logits (its
    value is logged and added to the total, the training is that of the other losses); a
    component's "IoU" weighs the predicted pixels by their class id, so class 0's components
    never match; above twice the label's count, at most ``max_pred_num_conn`` predicted
    components are compared. Computed here in numpy, to the same value.
    """

    def __init__(self, ignore_index=255, max_pred_num_conn=10, use_argmax=True):
        super().__init__()
        self.ignore_index = ignore_index
        self.max_pred_num_conn = max_pred_num_conn
        self.use_argmax = use_argmax

    def forward(self, logits, labels):
        preds = paddle.argmax(logits, axis=1) if self.use_argmax else logits
        preds = preds.astype("uint8").numpy()
        labels = labels.astype("uint8").numpy()
        losses = [image_loss(p, l, self.ignore_index, self.max_pred_num_conn)
                  for p, l in zip(preds, labels)]
        return paddle.to_tensor(np.float32(np.mean(losses)))


def image_loss(pred, label, ignore_index, max_pred_num_conn):
    """One image's SC loss: the mean over the label's classes (``ignore_index`` left out)."""
    total, classes = 0.0, 0
    for cls in np.unique(label):
        if cls == ignore_index:
            continue
        classes += 1
        pred_count, pred_comps = cv2.connectedComponents((pred == cls).astype(np.uint8))
        label_count, label_comps = cv2.connectedComponents((label == cls).astype(np.uint8))
        compared = pred_count
        if pred_count > 2 * label_count:   # early in training: too many to compare them all
            compared = min(pred_count, max_pred_num_conn)
        if label_count > 1 and compared > 1:
            total += 1 - connectivity(pred_comps, label_comps, compared, label_count,
                                      pred.astype(np.float64))
        elif label_count > 1 or compared > 1:
            missed = (label == cls) & (pred != cls)
            total += missed.sum() / missed.size + 1
    return total / classes if classes else 0.0


def connectivity(pred_comps, label_comps, compared, label_count, pred_values):
    """The mean IoU of each label component with the predicted components it overlaps, summed
    and divided by the label components plus the predicted ones that overlap none. Components
    are numbered from 1 (0 is the rest); the first ``compared - 1`` predicted ones count."""
    ious = np.zeros((label_count - 1, compared - 1))
    matched_sum = 0.0
    for i in range(1, label_count):
        label_mask = label_comps == i
        label_area = label_mask.sum()
        for j in range(1, compared):
            weighted = (pred_comps == j) * pred_values   # PaddleSeg's mask times the class id
            ious[i - 1, j - 1] = component_iou(weighted, label_mask, label_area)
        overlapping = ious[i - 1][ious[i - 1] != 0]
        if overlapping.size:
            matched_sum += overlapping.mean()
    lone = int((ious.sum(axis=0) == 0).sum())
    return matched_sum / (label_count - 1 + lone)


def component_iou(weighted, label_mask, label_area):
    intersect = weighted[label_mask].sum()
    if intersect == 0:
        return 0.0
    union = weighted.sum() + label_area - intersect
    return 1.0 if union == 0 else intersect / union
