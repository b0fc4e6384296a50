import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager


def pixel_cross_entropy(logit, label, ignore_index, weight=None):
    """Per-pixel cross entropy [N, H, W] and the mask of pixels that count."""
    if label.ndim == 4:  # [N, 1, H, W] -> [N, H, W]
        label = label.squeeze(1)
    label = label.astype("int64")
    loss = F.cross_entropy(logit, label, weight=weight, ignore_index=ignore_index,
                           reduction="none", axis=1)
    loss = loss.squeeze(1) if loss.ndim == 4 else loss
    mask = (label != ignore_index).astype("float32")
    return loss * mask, mask


@manager.LOSSES.add_component
class CrossEntropyLoss(nn.Layer):
    """Softmax cross entropy averaged over the pixels whose label is not ``ignore_index``."""

    def __init__(self, weight=None, ignore_index=255, top_k_percent_pixels=1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.top_k_percent_pixels = top_k_percent_pixels
        self.weight = None if weight is None else paddle.to_tensor(weight, dtype="float32")

    def forward(self, logit, label):
        loss, mask = pixel_cross_entropy(logit, label, self.ignore_index, self.weight)
        if self.top_k_percent_pixels < 1.0:
            flat = loss.reshape([-1])
            k = max(int(self.top_k_percent_pixels * flat.shape[0]), 1)
            return paddle.topk(flat, k)[0].mean()
        return loss.sum() / (mask.sum() + 1e-8)
