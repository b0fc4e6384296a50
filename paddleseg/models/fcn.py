"""FCN (Shelhamer et al., "Fully Convolutional Networks for Semantic Segmentation",
https://arxiv.org/abs/1411.4038) as PaddleSeg builds it: a backbone feature map
-> 1x1 ConvBNReLU -> 1x1 classifier, bilinearly resized to the input size."""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager
from paddleseg.models.layers.layer_libs import BATCH_NORMS, ConvBNReLU
from paddleseg.utils import load_pretrained_model


@manager.MODELS.add_component
class FCN(nn.Layer):
    """
    Args:
        num_classes (int): number of classes.
        backbone (nn.Layer): returns a list of feature maps and exposes ``feat_channels``.
        backbone_indices (tuple): which backbone output feeds the head (the first is used).
        channels (int, optional): width of the head's hidden 1x1 conv; default is
            the chosen feature map's width (270 for HRNet-W18).
        align_corners (bool): passed to the final bilinear resize.
        pretrained (str, optional): path of a parameter file for the whole model.
    """

    def __init__(self, num_classes, backbone, backbone_indices=(-1, ), channels=None,
                 align_corners=False, pretrained=None, bias=True):
        super().__init__()
        self.backbone = backbone
        self.backbone_indices = list(backbone_indices)
        backbone_channels = [backbone.feat_channels[i] for i in self.backbone_indices]
        self.head = FCNHead(num_classes, self.backbone_indices, backbone_channels, channels,
                            bias=bias)
        self.align_corners = align_corners
        self.pretrained = pretrained
        if pretrained:
            load_pretrained_model(self, pretrained)

    def forward(self, x):
        feats = self.backbone(x)
        size = paddle.shape(x)[2:]
        return [F.interpolate(logit, size=size, mode="bilinear", align_corners=self.align_corners)
                for logit in self.head(feats)]


class FCNHead(nn.Layer):
    """1x1 ConvBNReLU to ``channels`` then a 1x1 conv to ``num_classes``."""

    def __init__(self, num_classes, backbone_indices=(-1, ), backbone_channels=(270, ),
                 channels=None, bias=True):
        super().__init__()
        self.num_classes = num_classes
        self.backbone_indices = list(backbone_indices)
        in_channels = backbone_channels[0]
        if channels is None:
            channels = in_channels
        self.conv_1 = ConvBNReLU(in_channels, channels, 1, bias_attr=bias)
        self.cls = nn.Conv2D(channels, num_classes, 1, bias_attr=bias)
        self.init_weight()

    def forward(self, feat_list):
        x = feat_list[self.backbone_indices[0]]
        return [self.cls(self.conv_1(x))]

    def init_weight(self):
        normal = nn.initializer.Normal(mean=0.0, std=0.001)
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                normal(layer.weight)
            elif isinstance(layer, BATCH_NORMS):
                nn.initializer.Constant(1.0)(layer.weight)
                nn.initializer.Constant(0.0)(layer.bias)
