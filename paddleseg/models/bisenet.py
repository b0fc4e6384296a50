"""BiSeNetV2 (Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic Segmentation", IJCV 2021, arXiv:2004.02147).

Sub-layer names and container layout follow PaddleSeg (release/2.6,
paddleseg/models/bisenet.py), so ``model.state_dict()`` has exactly PaddleSeg's keys and
shapes and its checkpoints load by name. Containers are ``nn.Sequential`` wherever PaddleSeg
uses one; parameter-free entries (pools, dropout, sigmoid) keep their slots so the indices of
the following entries match.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager
from paddleseg.models.layers.layer_libs import ConvBN, ConvBNReLU, DepthwiseConvBN, SyncBatchNorm
from paddleseg.utils import load_pretrained_model


def _resize(x, size, align_corners):
    return F.interpolate(x, size, mode="bilinear", align_corners=align_corners)


class DetailBranch(nn.Layer):
    """Wide and shallow: three stages of 3x3 ConvBNReLU, each starting with stride 2 (1/8 output).

    Keys: ``convs.{0..7}._conv`` / ``convs.{0..7}._batch_norm``.
    """

    def __init__(self, in_channels, channels):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            # stage 1 (1/2)
            ConvBNReLU(in_channels, c1, 3, stride=2),
            ConvBNReLU(c1, c1, 3),
            # stage 2 (1/4)
            ConvBNReLU(c1, c2, 3, stride=2),
            ConvBNReLU(c2, c2, 3),
            ConvBNReLU(c2, c2, 3),
            # stage 3 (1/8)
            ConvBNReLU(c2, c3, 3, stride=2),
            ConvBNReLU(c3, c3, 3),
            ConvBNReLU(c3, c3, 3),
        )

    def forward(self, x):
        return self.convs(x)


class StemBlock(nn.Layer):
    """Fast 4x downsampling: a strided conv, then a conv path (``left``) and a max-pool path
    (``right``), concatenated and fused."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3, stride=2)
        self.left = nn.Sequential(
            ConvBNReLU(out_channels, out_channels // 2, 1),
            ConvBNReLU(out_channels // 2, out_channels, 3, stride=2))
        self.right = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        self.fuse = ConvBNReLU(out_channels * 2, out_channels, 3)

    def forward(self, x):
        x = self.conv(x)
        return self.fuse(paddle.concat([self.left(x), self.right(x)], axis=1))


class GatherAndExpansionLayer1(nn.Layer):
    """Gather-and-expansion layer, stride 1: 3x3 conv, depthwise 3x3 with channel multiplier
    ``expand``, 1x1 projection (all in ``conv``), identity shortcut."""

    def __init__(self, in_channels, out_channels, expand=6):
        super().__init__()
        mid = in_channels * expand
        self.conv = nn.Sequential(
            ConvBNReLU(in_channels, in_channels, 3),
            DepthwiseConvBN(in_channels, mid, 3),
            ConvBN(mid, out_channels, 1))

    def forward(self, x):
        return F.relu(self.conv(x) + x)


class GatherAndExpansionLayer2(nn.Layer):
    """Gather-and-expansion layer, stride 2. ``branch_1``: 3x3 conv, strided expanding depthwise
    conv, second depthwise conv, 1x1 projection. ``branch_2`` (shortcut): strided depthwise conv,
    1x1 projection."""

    def __init__(self, in_channels, out_channels, expand=6):
        super().__init__()
        mid = in_channels * expand
        self.branch_1 = nn.Sequential(
            ConvBNReLU(in_channels, in_channels, 3),
            DepthwiseConvBN(in_channels, mid, 3, stride=2),
            DepthwiseConvBN(mid, mid, 3),
            ConvBN(mid, out_channels, 1))
        self.branch_2 = nn.Sequential(
            DepthwiseConvBN(in_channels, in_channels, 3, stride=2),
            ConvBN(in_channels, out_channels, 1))

    def forward(self, x):
        return F.relu(self.branch_1(x) + self.branch_2(x))


class ContextEmbeddingBlock(nn.Layer):
    """Global average pooling + BN + 1x1 ConvBNReLU added back to the input, then a 3x3 conv."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2D(1)
        self.bn = SyncBatchNorm(in_channels)
        self.conv_1x1 = ConvBNReLU(in_channels, out_channels, 1)
        self.conv_3x3 = nn.Conv2D(out_channels, out_channels, 3, stride=1, padding=1)

    def forward(self, x):
        context = self.conv_1x1(self.bn(self.gap(x)))
        return self.conv_3x3(context + x)


class SemanticBranch(nn.Layer):
    """Narrow and deep: stem (1/4), GE stages at 1/8, 1/16, 1/32, then context embedding.
    Returns the four stage outputs (for the auxiliary heads) and the final feature map."""

    def __init__(self, in_channels, channels, expand=6):
        super().__init__()
        c1, c3, c4, c5 = channels
        self.stem = StemBlock(in_channels, c1)
        self.stage3 = nn.Sequential(
            GatherAndExpansionLayer2(c1, c3, expand),
            GatherAndExpansionLayer1(c3, c3, expand))
        self.stage4 = nn.Sequential(
            GatherAndExpansionLayer2(c3, c4, expand),
            GatherAndExpansionLayer1(c4, c4, expand))
        self.stage5_4 = nn.Sequential(
            GatherAndExpansionLayer2(c4, c5, expand),
            GatherAndExpansionLayer1(c5, c5, expand),
            GatherAndExpansionLayer1(c5, c5, expand),
            GatherAndExpansionLayer1(c5, c5, expand))
        self.ce = ContextEmbeddingBlock(c5, c5)

    def forward(self, x):
        s2 = self.stem(x)
        s3 = self.stage3(s2)
        s4 = self.stage4(s3)
        s5 = self.stage5_4(s4)
        return s2, s3, s4, s5, self.ce(s5)


class BGA(nn.Layer):
    """Bilateral guided aggregation: each branch gates the other at its own resolution, the
    low-resolution result is upsampled, the two are summed and fused by a 3x3 ConvBN."""

    def __init__(self, channels, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        # detail branch, kept at 1/8
        self.db_branch_keep = nn.Sequential(
            DepthwiseConvBN(channels, channels, 3),
            nn.Conv2D(channels, channels, 1))
        # detail branch, brought down to 1/32
        self.db_branch_down = nn.Sequential(
            ConvBN(channels, channels, 3, stride=2),
            nn.AvgPool2D(kernel_size=3, stride=2, padding=1))
        # semantic branch, kept at 1/32 (sigmoid gate)
        self.sb_branch_keep = nn.Sequential(
            DepthwiseConvBN(channels, channels, 3),
            nn.Conv2D(channels, channels, 1),
            nn.Sigmoid())
        # semantic branch, brought up to 1/8 (sigmoid gate, applied after the resize)
        self.sb_branch_up = ConvBN(channels, channels, 3)
        self.conv = ConvBN(channels, channels, 3)

    def forward(self, dfm, sfm):
        detail_keep = self.db_branch_keep(dfm)
        detail_down = self.db_branch_down(dfm)
        semantic_keep = self.sb_branch_keep(sfm)
        semantic_up = self.sb_branch_up(sfm)
        semantic_up = F.sigmoid(
            _resize(semantic_up, paddle.shape(detail_keep)[2:], self.align_corners))

        high = detail_keep * semantic_up
        low = detail_down * semantic_keep
        low = _resize(low, paddle.shape(high)[2:], self.align_corners)
        return self.conv(high + low)


class SegHead(nn.Layer):
    """3x3 ConvBNReLU + dropout 0.1 (``conv_3x3``), 1x1 classifier (``conv_1x1``)."""

    def __init__(self, in_channels, mid_channels, num_classes):
        super().__init__()
        self.conv_3x3 = nn.Sequential(
            ConvBNReLU(in_channels, mid_channels, 3),
            nn.Dropout(0.1))
        self.conv_1x1 = nn.Conv2D(mid_channels, num_classes, 1, 1)

    def forward(self, x):
        return self.conv_1x1(self.conv_3x3(x))


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

        # same creation order as PaddleSeg, so state_dict() lists the keys in the same order
        self.db = DetailBranch(in_channels, db_channels)
        self.sb = SemanticBranch(in_channels, sb_channels)
        self.bga = BGA(mid_channels, align_corners)
        self.aux_head1 = SegHead(sb_channels[0], sb_channels[0], num_classes)
        self.aux_head2 = SegHead(sb_channels[1], sb_channels[1], num_classes)
        self.aux_head3 = SegHead(sb_channels[2], sb_channels[2], num_classes)
        self.aux_head4 = SegHead(sb_channels[3], sb_channels[3], num_classes)
        self.head = SegHead(mid_channels, mid_channels, num_classes)
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
