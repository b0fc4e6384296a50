import paddle
import paddle.nn as nn

from paddleseg.cvlibs import manager
from .cross_entropy_loss import pixel_cross_entropy


@manager.LOSSES.add_component
class BootstrappedCrossEntropyLoss(nn.Layer):
    """Cross entropy over each image's hard pixels (PaddleSeg's HarDNet loss): the pixels whose
    loss exceeds ``loss_th``, or the ``min_K`` hardest when fewer than that exceed it. Averaged
    per image, then over the batch. Ignored pixels count as zero-loss pixels, as in PaddleSeg."""

    def __init__(self, min_K, loss_th, weight=None, ignore_index=255):
        super().__init__()
        self.min_k = int(min_K)
        self.threshold = float(loss_th)
        self.ignore_index = ignore_index
        self.weight = None if weight is None else paddle.to_tensor(weight, dtype="float32")

    def _image_loss(self, pixel_loss):
        ranked = paddle.sort(pixel_loss.reshape([-1]), descending=True)
        k = min(self.min_k, ranked.shape[0] - 1)
        if float(ranked[k]) > self.threshold:
            hard = ranked > self.threshold
            return (ranked * hard.astype(ranked.dtype)).sum() / hard.astype(ranked.dtype).sum()
        return ranked[:k].mean()

    def forward(self, logit, label):
        pixel_loss, _ = pixel_cross_entropy(logit, label, self.ignore_index, self.weight)
        return paddle.stack([self._image_loss(img) for img in pixel_loss]).mean()
