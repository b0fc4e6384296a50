"""Fast-SCNN (Poudel et al., 2019, https://arxiv.org/abs/1902.04502), laid out as PaddleSeg builds it.

Two branches share a cheap 1/8-resolution stem ("learning to downsample"): a deep
low-resolution branch (MobileNetV2-style bottlenecks + pyramid pooling, 1/32) and the
stem output itself; they are fused at 1/8 and classified there.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg import utils
from paddleseg.cvlibs import manager
from paddleseg.models.layers import AuxLayer, ConvBN, ConvBNReLU, SeparableConvBNReLU

__all__ = ["FastSCNN"]


@manager.MODELS.add_component
class FastSCNN(nn.Layer):
    """Fast-SCNN.

    Args:
        num_classes (int): number of target classes.
        enable_auxiliary_loss (bool): add an auxiliary head on the 1/8 stem features; its
            logit is returned second. Default: True.
        align_corners (bool): passed to F.interpolate for the fusion and output resizes.
        pretrained (str, optional): path of weights to load leniently.
    """

    def __init__(self, num_classes, enable_auxiliary_loss=True, align_corners=False,
                 pretrained=None):
        super().__init__()
        self.learning_to_downsample = LearningToDownsample(32, 48, 64)
        # PaddleSeg fixes align_corners=True inside the pyramid pooling module.
        self.global_feature_extractor = GlobalFeatureExtractor(
            in_channels=64, block_channels=(64, 96, 128), out_channels=128, expansion=6,
            num_blocks=(3, 3, 3), align_corners=True)
        self.feature_fusion = FeatureFusionModule(64, 128, 128, align_corners)
        self.classifier = Classifier(128, num_classes)
        if enable_auxiliary_loss:
            self.auxlayer = AuxLayer(64, 32, num_classes)

        self.enable_auxiliary_loss = enable_auxiliary_loss
        self.align_corners = align_corners
        self.pretrained = pretrained
        if pretrained is not None:
            utils.load_pretrained_model(self, pretrained)

    def _to_input_size(self, logit, size):
        return F.interpolate(logit, size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x):
        size = paddle.shape(x)[2:]
        high_res = self.learning_to_downsample(x)
        low_res = self.global_feature_extractor(high_res)
        fused = self.feature_fusion(high_res, low_res)
        logits = [self._to_input_size(self.classifier(fused), size)]
        # PaddleSeg returns the auxiliary logit in eval mode too (inference reads logits[0]).
        if self.enable_auxiliary_loss:
            logits.append(self._to_input_size(self.auxlayer(high_res), size))
        return logits


class LearningToDownsample(nn.Layer):
    """Stride-2 3x3 conv then two stride-2 separable convs: 3 -> c1 -> c2 -> out at 1/8."""

    def __init__(self, dw_channels1=32, dw_channels2=48, out_channels=64, in_channels=3):
        super().__init__()
        self.conv_bn_relu = ConvBNReLU(in_channels, dw_channels1, 3, stride=2)
        self.dsconv_bn_relu1 = SeparableConvBNReLU(dw_channels1, dw_channels2, 3, stride=2,
                                                   padding=1)
        self.dsconv_bn_relu2 = SeparableConvBNReLU(dw_channels2, out_channels, 3, stride=2,
                                                   padding=1)

    def forward(self, x):
        return self.dsconv_bn_relu2(self.dsconv_bn_relu1(self.conv_bn_relu(x)))


class InvertedBottleneck(nn.Layer):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise (strided), 1x1 linear project.

    The identity shortcut is used only when the block keeps both resolution and width.
    """

    def __init__(self, in_channels, out_channels, expansion=6, stride=2):
        super().__init__()
        hidden = in_channels * expansion
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            ConvBNReLU(in_channels, hidden, 1, bias_attr=False),
            ConvBNReLU(hidden, hidden, 3, stride=stride, padding=1, groups=hidden,
                       bias_attr=False),
            ConvBN(hidden, out_channels, 1, bias_attr=False))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_shortcut else y


class PPModule(nn.Layer):
    """PSPNet pyramid pooling: adaptive average pools to each bin size, 1x1 ConvBNReLU
    (reduced to in/len(bins) channels when dim_reduction), resize back, concatenate with the
    input (input first, then the bins from largest to smallest), and fuse with a 3x3
    ConvBNReLU. Adaptive pooling makes it work for any feature size, even 2x2."""

    def __init__(self, in_channels, out_channels, bin_sizes=(1, 2, 3, 6), dim_reduction=True,
                 align_corners=False):
        super().__init__()
        inter = in_channels // len(bin_sizes) if dim_reduction else in_channels
        self.bin_sizes = tuple(bin_sizes)
        self.stages = nn.LayerList([
            nn.Sequential(nn.AdaptiveAvgPool2D(output_size=(s, s)),
                          ConvBNReLU(in_channels, inter, 1))
            for s in self.bin_sizes])
        self.conv_bn_relu2 = ConvBNReLU(in_channels + inter * len(self.bin_sizes), out_channels,
                                        3, padding=1)
        self.align_corners = align_corners

    def forward(self, x):
        size = paddle.shape(x)[2:]
        pooled = [F.interpolate(stage(x), size, mode="bilinear", align_corners=self.align_corners)
                  for stage in self.stages]
        return self.conv_bn_relu2(paddle.concat([x] + pooled[::-1], axis=1))


class GlobalFeatureExtractor(nn.Layer):
    """Three groups of inverted bottlenecks (strides 2, 2, 1) followed by pyramid pooling."""

    def __init__(self, in_channels, block_channels, out_channels, expansion, num_blocks,
                 align_corners):
        super().__init__()
        c1, c2, c3 = block_channels
        n1, n2, n3 = num_blocks
        self.bottleneck1 = self._stack(in_channels, c1, n1, expansion, stride=2)
        self.bottleneck2 = self._stack(c1, c2, n2, expansion, stride=2)
        self.bottleneck3 = self._stack(c2, c3, n3, expansion, stride=1)
        self.ppm = PPModule(c3, out_channels, bin_sizes=(1, 2, 3, 6), dim_reduction=True,
                            align_corners=align_corners)

    @staticmethod
    def _stack(in_channels, out_channels, count, expansion, stride):
        # only the first block of a group changes width / resolution
        blocks = [InvertedBottleneck(in_channels, out_channels, expansion, stride)]
        blocks += [InvertedBottleneck(out_channels, out_channels, expansion, 1)
                   for _ in range(count - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        return self.ppm(self.bottleneck3(self.bottleneck2(self.bottleneck1(x))))


class FeatureFusionModule(nn.Layer):
    """Upsample the low-res branch to the stem's exact size, depthwise 3x3 + 1x1 on it,
    1x1 on the high-res branch, add, ReLU."""

    def __init__(self, high_in_channels, low_in_channels, out_channels, align_corners):
        super().__init__()
        # grouped conv with low_in_channels groups (depthwise when widths match)
        self.dwconv = ConvBNReLU(low_in_channels, out_channels, 3, padding=1,
                                 groups=low_in_channels, bias_attr=False)
        self.conv_low_res = ConvBN(out_channels, out_channels, 1)
        self.conv_high_res = ConvBN(high_in_channels, out_channels, 1)
        self.align_corners = align_corners

    def forward(self, high_res_input, low_res_input):
        low = F.interpolate(low_res_input, paddle.shape(high_res_input)[2:], mode="bilinear",
                            align_corners=self.align_corners)
        low = self.conv_low_res(self.dwconv(low))
        return F.relu(self.conv_high_res(high_res_input) + low)


class Classifier(nn.Layer):
    """Two separable 3x3 convs, dropout 0.1, then a 1x1 conv to the classes."""

    def __init__(self, input_channels, num_classes):
        super().__init__()
        self.dsconv1 = SeparableConvBNReLU(input_channels, input_channels, 3, padding=1)
        self.dsconv2 = SeparableConvBNReLU(input_channels, input_channels, 3, padding=1)
        self.dropout = nn.Dropout(p=0.1)
        self.conv = nn.Conv2D(input_channels, num_classes, 1)

    def forward(self, x):
        return self.conv(self.dropout(self.dsconv2(self.dsconv1(x))))
