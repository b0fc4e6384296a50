import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager
from .cross_entropy_loss import pixel_cross_entropy


@manager.LOSSES.add_component
class OhemCrossEntropyLoss(nn.Layer):
    """Cross entropy over the hard pixels only: those whose true-class probability is below
    ``thresh``, but at least ``min_kept`` pixels (the hardest ones) so the loss never vanishes."""

    def __init__(self, thresh=0.7, min_kept=10000, ignore_index=255):
        super().__init__()
        self.thresh = thresh
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index

    def forward(self, logit, label):
        loss, mask = pixel_cross_entropy(logit, label, self.ignore_index)
        if label.ndim == 4:
            label = label.squeeze(1)
        with paddle.no_grad():
            prob = F.softmax(logit, axis=1)
            safe_label = paddle.where(mask > 0, label.astype("int64"), paddle.zeros_like(label, "int64"))
            true_prob = paddle.take_along_axis(prob, safe_label.unsqueeze(1), axis=1).squeeze(1)
            true_prob = paddle.where(mask > 0, true_prob, paddle.ones_like(true_prob))
            flat = true_prob.reshape([-1])
            n_valid = int(mask.sum())
            threshold = self.thresh
            if 0 < self.min_kept <= n_valid:
                kth = paddle.sort(flat)[min(self.min_kept, flat.shape[0]) - 1]
                threshold = max(threshold, float(kth))
            keep = (true_prob <= threshold).astype("float32") * mask
        return (loss * keep).sum() / (keep.sum() + 1e-8)
