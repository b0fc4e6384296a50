import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager


@manager.LOSSES.add_component
class DiceLoss(nn.Layer):
    """1 - soft Dice coefficient, computed per image and class as PaddleSeg does (mean over
    images, then over classes, optionally class-weighted); ignored pixels do not count."""

    def __init__(self, weight=None, ignore_index=255, smooth=1.0):
        super().__init__()
        self.weight = None if weight is None else [float(w) for w in weight]
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.eps = 1e-8

    def forward(self, logit, label):
        if label.ndim == 4:
            label = label.squeeze(1)
        num_classes = logit.shape[1]
        if self.weight is not None and len(self.weight) != num_classes:
            raise ValueError(f"DiceLoss has {len(self.weight)} weights for {num_classes} classes")
        mask = (label != self.ignore_index).astype("float32").unsqueeze(1)
        safe_label = paddle.where(label == self.ignore_index, paddle.zeros_like(label), label)
        onehot = F.one_hot(safe_label.astype("int64"), num_classes).transpose([0, 3, 1, 2]) * mask
        prob = F.softmax(logit, axis=1) * mask
        inter = (prob * onehot).sum([2, 3])          # [N, C]
        cardinality = (prob + onehot).sum([2, 3])    # [N, C]
        per_class = (1 - (2 * inter + self.smooth) / (cardinality + self.smooth + self.eps)).mean(0)
        if self.weight is not None:
            per_class = per_class * paddle.to_tensor(self.weight, dtype="float32")
        return per_class.sum() / num_classes
