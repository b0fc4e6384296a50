"""Building blocks shared by the models: conv + BatchNorm (+ ReLU) and friends.

Padding defaults to Paddle's ``'same'`` exactly as PaddleSeg passes it: for a stride-2 conv
with an odd input size Paddle pads asymmetrically (more at the bottom/right), and weights
trained in PaddleSeg only give PaddleSeg's logits with that same padding."""
import paddle
import paddle.nn as nn


BATCH_NORMS = (nn.BatchNorm2D, nn.SyncBatchNorm)  # what the factory below builds


def SyncBatchNorm(num_features, **kwargs):  # noqa: N802  (PaddleSeg's name for this factory)
    """BatchNorm2D on one process, SyncBatchNorm when several ranks train together on GPUs
    (data parallel: the batch statistics are those of the global batch). Paddle has no CPU
    kernel for SyncBatchNorm, so ranks on CPUs normalise with their own batch. Both keep the same
    parameter names, so checkpoints move between the two; every model builds its batch norms
    here."""
    if paddle.distributed.get_world_size() > 1 and paddle.get_device() != "cpu":
        return nn.SyncBatchNorm(num_features, **kwargs)
    return nn.BatchNorm2D(num_features, **kwargs)


def plain_batchnorm(model):
    """Swap every nn.SyncBatchNorm of ``model`` for a BatchNorm2D holding the same parameters
    and statistics (in eval mode both compute the same), so that an exported model runs where
    there is no SyncBatchNorm kernel (CPU, Paddle Inference). Returns how many were swapped."""
    swapped = 0
    for parent in model.sublayers(include_self=True):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.SyncBatchNorm):
                continue
            bn = nn.BatchNorm2D(child._num_features, momentum=child._momentum,
                                epsilon=child._epsilon, data_format=child._data_format)
            bn.weight, bn.bias = child.weight, child.bias
            bn._mean, bn._variance = child._mean, child._variance
            bn.training = child.training
            setattr(parent, name, bn)
            swapped += 1
    return swapped


class ConvBN(nn.Layer):
    """Conv2D followed by BatchNorm."""

    def __init__(self, in_channels, out_channels, kernel_size, padding="same", **kwargs):
        super().__init__()
        self._conv = nn.Conv2D(in_channels, out_channels, kernel_size, padding=padding,
                               **kwargs)
        self._batch_norm = SyncBatchNorm(out_channels)

    def forward(self, x):
        return self._batch_norm(self._conv(x))


class ConvBNReLU(ConvBN):
    # no super().forward(): paddle.jit.to_static cannot trace super() calls
    def forward(self, x):
        return nn.functional.relu(self._batch_norm(self._conv(x)))


class DepthwiseConvBN(nn.Layer):
    """Depthwise conv + BN, the ConvBN held in ``depthwise_conv`` as PaddleSeg names it."""

    def __init__(self, in_channels, out_channels, kernel_size, padding="same", **kwargs):
        super().__init__()
        self.depthwise_conv = ConvBN(in_channels, out_channels, kernel_size, padding=padding,
                                     groups=in_channels, **kwargs)

    def forward(self, x):
        return self.depthwise_conv(x)


class SeparableConvBNReLU(nn.Layer):
    """Depthwise conv + BN, then pointwise conv + BN + ReLU (``piontwise`` is PaddleSeg's
    spelling, kept so its checkpoints load by name)."""

    def __init__(self, in_channels, out_channels, kernel_size, padding="same", pointwise_bias=None,
                 **kwargs):
        super().__init__()
        self.depthwise_conv = ConvBN(in_channels, in_channels, kernel_size, padding=padding,
                                     groups=in_channels, **kwargs)
        self.piontwise_conv = ConvBNReLU(in_channels, out_channels, kernel_size=1, groups=1,
                                         bias_attr=pointwise_bias)

    def forward(self, x):
        return self.piontwise_conv(self.depthwise_conv(x))


class AuxLayer(nn.Layer):
    """Auxiliary segmentation head: 3x3 ConvBNReLU, dropout, 1x1 classifier."""

    def __init__(self, in_channels, inter_channels, out_channels, dropout_prob=0.1, **kwargs):
        super().__init__()
        self.conv_bn_relu = ConvBNReLU(in_channels, inter_channels, 3, padding=1, **kwargs)
        self.dropout = nn.Dropout(p=dropout_prob)
        self.conv = nn.Conv2D(inter_channels, out_channels, 1)

    def forward(self, x):
        return self.conv(self.dropout(self.conv_bn_relu(x)))
