"""BiSeNetV2 (Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic Segmentation", IJCV 2021, arXiv:2004.02147)."""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager
from paddleseg.models.layers.layer_libs import ConvBN, ConvBNReLU, DepthwiseConvBN
from paddleseg.utils import load_pretrained_model


def _resize(x, size, align_corners):
    return F.interpolate(x, size, mode="bilinear", align_corners=align_corners)


class DetailBranch(nn.Layer):
    """Wide and shallow: three stages of 3x3 ConvBNReLU, each starting with stride 2 (1/8 output)."""

    def __init__(self, in_channels, channels):
        super().__init__()
        c1, c2, c3 = channels
        # stage 1 (1/2)
        self.conv1 = ConvBNReLU(in_channels, c1, 3, stride=2)
        self.conv2 = ConvBNReLU(c1, c1, 3)
        # stage 2 (1/4)
        self.conv3 = ConvBNReLU(c1, c2, 3, stride=2)
        self.conv4 = ConvBNReLU(c2, c2, 3)
        self.conv5 = ConvBNReLU(c2, c2, 3)
        # stage 3 (1/8)
        self.conv6 = ConvBNReLU(c2, c3, 3, stride=2)
        self.conv7 = ConvBNReLU(c3, c3, 3)
        self.conv8 = ConvBNReLU(c3, c3, 3)

    def forward(self, x):
        for i in range(1, 9):
            x = getattr(self, f"conv{i}")(x)
        return x


class StemBlock(nn.Layer):
    """Fast 4x downsampling: a strided conv, then a conv path and a max-pool path, concatenated and fused."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3, stride=2)
        self.left_reduce = ConvBNReLU(out_channels, out_channels // 2, 1)
        self.left_down = ConvBNReLU(out_channels // 2, out_channels, 3, stride=2)
        self.right_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        self.fuse = ConvBNReLU(out_channels * 2, out_channels, 3)

    def forward(self, x):
        x = self.conv(x)
        left = self.left_down(self.left_reduce(x))
        right = self.right_pool(x)
        return self.fuse(paddle.concat([left, right], axis=1))


class GatherExpansion(nn.Layer):
    """Gather-and-expansion layer, stride 1: 3x3 conv, depthwise 3x3 with channel multiplier
    ``expand``, 1x1 projection, identity shortcut."""

    def __init__(self, in_channels, out_channels, expand=6):
        super().__init__()
        mid = in_channels * expand
        self.conv = ConvBNReLU(in_channels, in_channels, 3)
        self.dwconv = DepthwiseConvBN(in_channels, mid, 3)
        self.project = ConvBN(mid, out_channels, 1)

    def forward(self, x):
        y = self.project(self.dwconv(self.conv(x)))
        return F.relu(y + x)


class GatherExpansionDown(nn.Layer):
    """Gather-and-expansion layer, stride 2: the expanding depthwise conv is strided and followed by
    a second depthwise conv; the shortcut is a strided depthwise conv plus a 1x1 projection."""

    def __init__(self, in_channels, out_channels, expand=6):
        super().__init__()
        mid = in_channels * expand
        self.conv = ConvBNReLU(in_channels, in_channels, 3)
        self.dwconv_down = DepthwiseConvBN(in_channels, mid, 3, stride=2)
        self.dwconv = DepthwiseConvBN(mid, mid, 3)
        self.project = ConvBN(mid, out_channels, 1)
        self.shortcut_dw = DepthwiseConvBN(in_channels, in_channels, 3, stride=2)
        self.shortcut_proj = ConvBN(in_channels, out_channels, 1)

    def forward(self, x):
        y = self.project(self.dwconv(self.dwconv_down(self.conv(x))))
        shortcut = self.shortcut_proj(self.shortcut_dw(x))
        return F.relu(y + shortcut)


class ContextEmbeddingBlock(nn.Layer):
    """Global average pooling + BN + 1x1 ConvBNReLU added back to the input, then a 3x3 conv."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2D(1)
        self.bn = nn.BatchNorm2D(in_channels)
        self.conv_gap = ConvBNReLU(in_channels, out_channels, 1)
        self.conv_out = nn.Conv2D(out_channels, out_channels, 3, stride=1, padding=1)

    def forward(self, x):
        context = self.conv_gap(self.bn(self.gap(x)))
        return self.conv_out(context + x)


class SemanticBranch(nn.Layer):
    """Narrow and deep: stem (1/4), GE stages at 1/8, 1/16, 1/32, then context embedding.
    Returns the four stage outputs (for the auxiliary heads) and the final feature map."""

    def __init__(self, in_channels, channels, expand=6):
        super().__init__()
        c1, c3, c4, c5 = channels
        self.stem = StemBlock(in_channels, c1)
        self.stage3_1 = GatherExpansionDown(c1, c3, expand)
        self.stage3_2 = GatherExpansion(c3, c3, expand)
        self.stage4_1 = GatherExpansionDown(c3, c4, expand)
        self.stage4_2 = GatherExpansion(c4, c4, expand)
        self.stage5_1 = GatherExpansionDown(c4, c5, expand)
        self.stage5_2 = GatherExpansion(c5, c5, expand)
        self.stage5_3 = GatherExpansion(c5, c5, expand)
        self.stage5_4 = GatherExpansion(c5, c5, expand)
        self.ce = ContextEmbeddingBlock(c5, c5)

    def forward(self, x):
        s2 = self.stem(x)
        s3 = self.stage3_2(self.stage3_1(s2))
        s4 = self.stage4_2(self.stage4_1(s3))
        s5 = self.stage5_1(s4)
        s5 = self.stage5_4(self.stage5_3(self.stage5_2(s5)))
        return s2, s3, s4, s5, self.ce(s5)


class BGA(nn.Layer):
    """Bilateral guided aggregation: each branch gates the other at its own resolution, the
    low-resolution result is upsampled, the two are summed and fused by a 3x3 ConvBN."""

    def __init__(self, channels, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        # detail branch, kept at 1/8
        self.detail_dw = DepthwiseConvBN(channels, channels, 3)
        self.detail_pw = nn.Conv2D(channels, channels, 1)
        # detail branch, brought down to 1/32
        self.detail_down = ConvBN(channels, channels, 3, stride=2)
        self.detail_pool = nn.AvgPool2D(kernel_size=3, stride=2, padding=1)
        # semantic branch, kept at 1/32 (sigmoid gate)
        self.semantic_dw = DepthwiseConvBN(channels, channels, 3)
        self.semantic_pw = nn.Conv2D(channels, channels, 1)
        # semantic branch, brought up to 1/8 (sigmoid gate)
        self.semantic_up = ConvBN(channels, channels, 3)
        self.fuse = ConvBN(channels, channels, 3)

    def forward(self, dfm, sfm):
        detail_keep = self.detail_pw(self.detail_dw(dfm))
        detail_down = self.detail_pool(self.detail_down(dfm))
        semantic_keep = F.sigmoid(self.semantic_pw(self.semantic_dw(sfm)))
        semantic_up = self.semantic_up(sfm)
        semantic_up = F.sigmoid(
            _resize(semantic_up, paddle.shape(detail_keep)[2:], self.align_corners))

        high = detail_keep * semantic_up
        low = detail_down * semantic_keep
        low = _resize(low, paddle.shape(high)[2:], self.align_corners)
        return self.fuse(high + low)


class SegHead(nn.Layer):
    """3x3 ConvBNReLU, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels, mid_channels, num_classes):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3)
        self.dropout = nn.Dropout(0.1)
        self.cls = nn.Conv2D(mid_channels, num_classes, 1)

    def forward(self, x):
        return self.cls(self.dropout(self.conv(x)))


@manager.MODELS.add_component
class BiSeNetV2(nn.Layer):
    """BiSeNet V2: a detail branch and a semantic branch merged by guided aggregation.

    Args:
        num_classes (int): number of classes.
        lambd (float): width ratio of the semantic branch's first stages to the detail branch.
        align_corners (bool): passed to every bilinear resize.
        in_channels (int): channels of the input image.
        pretrained (str|None): weights to load leniently after building.
    """

    def __init__(self, num_classes, lambd=0.25, align_corners=False, in_channels=3,
                 pretrained=None):
        super().__init__()
        db_channels = (64, 64, 128)
        sb_channels = (int(64 * lambd), int(128 * lambd), 64, 128)
        mid_channels = 128

        self.db = DetailBranch(in_channels, db_channels)
        self.sb = SemanticBranch(in_channels, sb_channels)
        self.bga = BGA(mid_channels, align_corners)
        self.head = SegHead(mid_channels, mid_channels, num_classes)
        self.aux_head1 = SegHead(sb_channels[0], sb_channels[0], num_classes)
        self.aux_head2 = SegHead(sb_channels[1], sb_channels[1], num_classes)
        self.aux_head3 = SegHead(sb_channels[2], sb_channels[2], num_classes)
        self.aux_head4 = SegHead(sb_channels[3], sb_channels[3], num_classes)
        self.align_corners = align_corners

        self._init_weights()
        if pretrained:
            load_pretrained_model(self, pretrained)

    def _init_weights(self):
        kaiming = nn.initializer.KaimingNormal()
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                kaiming(layer.weight)

    def forward(self, x):
        size = paddle.shape(x)[2:]
        dfm = self.db(x)
        feat2, feat3, feat4, feat5, sfm = self.sb(x)
        logits = [self.head(self.bga(dfm, sfm))]
        if self.training:
            logits += [self.aux_head1(feat2), self.aux_head2(feat3),
                       self.aux_head3(feat4), self.aux_head4(feat5)]
        return [_resize(logit, size, self.align_corners) for logit in logits]
