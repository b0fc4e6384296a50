import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager


@manager.LOSSES.add_component
class DiceLoss(nn.Layer):
    """1 - soft Dice coefficient, averaged over classes; ignored pixels do not count."""

    def __init__(self, smooth=1.0, ignore_index=255):
        super().__init__()
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logit, label):
        if label.ndim == 4:
            label = label.squeeze(1)
        num_classes = logit.shape[1]
        mask = (label != self.ignore_index).astype("float32").unsqueeze(1)
        safe_label = paddle.where(label == self.ignore_index, paddle.zeros_like(label), label)
        onehot = F.one_hot(safe_label.astype("int64"), num_classes).transpose([0, 3, 1, 2])
        prob = F.softmax(logit, axis=1) * mask
        onehot = onehot * mask
        dims = [0, 2, 3]
        inter = (prob * onehot).sum(dims)
        union = prob.sum(dims) + onehot.sum(dims)
        return 1 - ((2 * inter + self.smooth) / (union + self.smooth)).mean()
