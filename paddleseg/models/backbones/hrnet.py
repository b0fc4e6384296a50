"""HRNetV2 backbone (Wang et al., "Deep High-Resolution Representation Learning
for Visual Recognition", TPAMI 2020, https://arxiv.org/abs/1908.07919).

Layout follows PaddleSeg's HRNet: a stride-4 stem of two 3x3 conv-BN-ReLU, one
bottleneck stage at 64 (x4) channels, then stages 2-4 made of
HighResolutionModules that keep 2, 3 and 4 parallel branches alive and exchange
information between them through fuse layers.  The single output is the
concatenation of all four branches resized to the highest resolution
(``feat_channels = [sum(stage4 channels)]``, 270 for W18).

Sub-layer names mirror PaddleSeg's (``la1.bb_layer2_1.conv1``,
``st3.stage_st3_2.fuse_func.residual_st3_2_layer_1_2`` ...), so PaddleSeg's
pretrained HRNet parameter files line up key for key.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg.cvlibs import manager
from paddleseg.models.layers.layer_libs import BATCH_NORMS, ConvBN, ConvBNReLU
from paddleseg.utils import load_pretrained_model

__all__ = ["HRNet", "HRNet_W18_Small_V1", "HRNet_W18_Small_V2", "HRNet_W18",
           "HRNet_W30", "HRNet_W32", "HRNet_W40", "HRNet_W44", "HRNet_W48",
           "HRNet_W60", "HRNet_W64"]


def _resize_to(x, ref, align_corners):
    """Bilinearly resize ``x`` to the exact spatial size of ``ref``."""
    return F.interpolate(x, size=paddle.shape(ref)[2:], mode="bilinear",
                         align_corners=align_corners)


class BottleneckBlock(nn.Layer):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), identity or 1x1 projected shortcut."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, downsample=False):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = ConvBNReLU(in_channels, planes, 1, bias_attr=False)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride=stride, bias_attr=False)
        self.conv3 = ConvBN(planes, out_channels, 1, bias_attr=False)
        self.downsample = downsample
        if downsample:
            self.conv_down = ConvBN(in_channels, out_channels, 1, bias_attr=False)

    def forward(self, x):
        shortcut = self.conv_down(x) if self.downsample else x
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class BasicBlock(nn.Layer):
    """Two 3x3 convs with an identity shortcut (ReLU after the sum)."""

    def __init__(self, in_channels, channels, stride=1, downsample=False):
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, channels, 3, stride=stride, bias_attr=False)
        self.conv2 = ConvBN(channels, channels, 3, bias_attr=False)
        self.downsample = downsample
        if downsample:
            self.conv_down = ConvBNReLU(in_channels, channels, 1, bias_attr=False)

    def forward(self, x):
        shortcut = self.conv_down(x) if self.downsample else x
        return F.relu(self.conv2(self.conv1(x)) + shortcut)


class Layer1(nn.Layer):
    """Stage 1: a chain of bottlenecks; the first one projects the shortcut."""

    def __init__(self, in_channels, planes, num_blocks, name="layer2"):
        super().__init__()
        self.blocks = []
        for idx in range(num_blocks):
            block = BottleneckBlock(
                in_channels if idx == 0 else planes * BottleneckBlock.expansion,
                planes, downsample=(idx == 0))
            self.blocks.append(self.add_sublayer(f"bb_{name}_{idx + 1}", block))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class TransitionLayer(nn.Layer):
    """Adapts the branch list of one stage to the next.

    Existing branches get a 3x3 conv only when their width changes; each new
    (lower-resolution) branch is a stride-2 3x3 conv of the last old branch.
    """

    def __init__(self, in_channels, out_channels, name):
        super().__init__()
        self.num_in = len(in_channels)
        self.convs = []
        for idx, out_ch in enumerate(out_channels):
            layer_name = f"transition_{name}_layer_{idx + 1}"
            if idx < self.num_in:
                if in_channels[idx] == out_ch:
                    self.convs.append(None)
                    continue
                conv = ConvBNReLU(in_channels[idx], out_ch, 3, bias_attr=False)
            else:
                conv = ConvBNReLU(in_channels[-1], out_ch, 3, stride=2, bias_attr=False)
            self.convs.append(self.add_sublayer(layer_name, conv))

    def forward(self, xs):
        outs = []
        for idx, conv in enumerate(self.convs):
            src = xs[idx] if idx < self.num_in else xs[-1]
            outs.append(src if conv is None else conv(src))
        return outs


class Branches(nn.Layer):
    """One chain of BasicBlocks per resolution branch."""

    def __init__(self, num_blocks, in_channels, out_channels, name):
        super().__init__()
        self.chains = []
        for b, out_ch in enumerate(out_channels):
            chain = []
            for k in range(num_blocks[b]):
                in_ch = in_channels[b] if k == 0 else out_ch
                block = BasicBlock(in_ch, out_ch, downsample=(in_ch != out_ch))
                chain.append(self.add_sublayer(f"bb_{name}_branch_layer_{b + 1}_{k + 1}", block))
            self.chains.append(chain)

    def forward(self, xs):
        outs = []
        for chain, x in zip(self.chains, xs):
            for block in chain:
                x = block(x)
            outs.append(x)
        return outs


class FuseLayers(nn.Layer):
    """Exchange information across branches.

    Output branch ``i`` = ReLU(x_i + sum_j f_ij(x_j)) where, for a lower
    resolution source (j > i), f_ij is a 1x1 ConvBN followed by a bilinear
    resize to x_i's exact size; for a higher resolution source (j < i), f_ij is
    i-j stride-2 3x3 convs (ConvBNReLU keeping x_j's width, the last one a
    ConvBN to x_i's width).
    """

    def __init__(self, channels, multi_scale_output=True, name=None, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        num_out = len(channels) if multi_scale_output else 1
        # paths[i][j]: list of layers turning branch j into branch i's shape (None for j == i)
        self.paths = []
        for i in range(num_out):
            row = []
            for j in range(len(channels)):
                if j == i:
                    row.append(None)
                elif j > i:
                    conv = ConvBN(channels[j], channels[i], 1, bias_attr=False)
                    row.append([self.add_sublayer(f"residual_{name}_layer_{i + 1}_{j + 1}", conv)])
                else:
                    steps = []
                    ch = channels[j]
                    for k in range(i - j):
                        if k == i - j - 1:  # last step: no ReLU, switch to branch i's width
                            conv = ConvBN(ch, channels[i], 3, stride=2, bias_attr=False)
                        else:
                            conv = ConvBNReLU(ch, ch, 3, stride=2, bias_attr=False)
                        steps.append(self.add_sublayer(
                            f"residual_{name}_layer_{i + 1}_{j + 1}_{k + 1}", conv))
                    row.append(steps)
            self.paths.append(row)

    def forward(self, xs):
        outs = []
        for i, row in enumerate(self.paths):
            acc = xs[i]
            for j, steps in enumerate(row):
                if steps is None:
                    continue
                y = xs[j]
                for layer in steps:
                    y = layer(y)
                if j > i:
                    y = _resize_to(y, xs[i], self.align_corners)
                acc = acc + y
            outs.append(F.relu(acc))
        return outs


class HighResolutionModule(nn.Layer):
    def __init__(self, num_channels, num_blocks, num_filters, multi_scale_output=True,
                 name=None, align_corners=False):
        super().__init__()
        self.branches_func = Branches(num_blocks, num_channels, num_filters, name=name)
        self.fuse_func = FuseLayers(num_filters, multi_scale_output=multi_scale_output,
                                    name=name, align_corners=align_corners)

    def forward(self, xs):
        return self.fuse_func(self.branches_func(xs))


class Stage(nn.Layer):
    """``num_modules`` HighResolutionModules in sequence."""

    def __init__(self, num_channels, num_modules, num_blocks, num_filters,
                 multi_scale_output=True, name=None, align_corners=False):
        super().__init__()
        self.hr_modules = []
        for m in range(num_modules):
            module = HighResolutionModule(
                num_channels if m == 0 else num_filters, num_blocks, num_filters,
                multi_scale_output=multi_scale_output or m < num_modules - 1,
                name=f"{name}_{m + 1}", align_corners=align_corners)
            self.hr_modules.append(self.add_sublayer(f"stage_{name}_{m + 1}", module))

    def forward(self, xs):
        for module in self.hr_modules:
            xs = module(xs)
        return xs


class HRNet(nn.Layer):
    """HRNetV2 returning ``[concat(all branches at 1/4 resolution)]``.

    Args:
        stageN_num_modules / stageN_num_blocks / stageN_num_channels: the
            widths and depths of each stage (defaults: HRNet-W18).
        align_corners (bool): passed to every bilinear resize.
        pretrained (str): optional path of a parameter file, loaded leniently.
    """

    def __init__(self,
                 pretrained=None,
                 stage1_num_modules=1,
                 stage1_num_blocks=(4, ),
                 stage1_num_channels=(64, ),
                 stage2_num_modules=1,
                 stage2_num_blocks=(4, 4),
                 stage2_num_channels=(18, 36),
                 stage3_num_modules=4,
                 stage3_num_blocks=(4, 4, 4),
                 stage3_num_channels=(18, 36, 72),
                 stage4_num_modules=3,
                 stage4_num_blocks=(4, 4, 4, 4),
                 stage4_num_channels=(18, 36, 72, 144),
                 has_se=False,
                 align_corners=False):
        super().__init__()
        if has_se:
            raise NotImplementedError("HRNet with squeeze-and-excitation is not supported")
        if stage1_num_modules != 1:
            raise ValueError("stage1 of HRNet has exactly one module")
        self.align_corners = align_corners
        self.pretrained = pretrained
        stage2_num_channels = list(stage2_num_channels)
        stage3_num_channels = list(stage3_num_channels)
        stage4_num_channels = list(stage4_num_channels)
        self.feat_channels = [sum(stage4_num_channels)]

        # stem: two stride-2 3x3 convs -> 1/4 resolution, 64 channels
        self.conv_layer1_1 = ConvBNReLU(3, 64, 3, stride=2, bias_attr=False)
        self.conv_layer1_2 = ConvBNReLU(64, 64, 3, stride=2, bias_attr=False)

        planes = stage1_num_channels[0]
        self.la1 = Layer1(64, planes, stage1_num_blocks[0], name="layer2")

        self.tr1 = TransitionLayer([planes * BottleneckBlock.expansion], stage2_num_channels,
                                   name="tr1")
        self.st2 = Stage(stage2_num_channels, stage2_num_modules, stage2_num_blocks,
                         stage2_num_channels, name="st2", align_corners=align_corners)

        self.tr2 = TransitionLayer(stage2_num_channels, stage3_num_channels, name="tr2")
        self.st3 = Stage(stage3_num_channels, stage3_num_modules, stage3_num_blocks,
                         stage3_num_channels, name="st3", align_corners=align_corners)

        self.tr3 = TransitionLayer(stage3_num_channels, stage4_num_channels, name="tr3")
        self.st4 = Stage(stage4_num_channels, stage4_num_modules, stage4_num_blocks,
                         stage4_num_channels, name="st4", align_corners=align_corners)

        self.init_weight()

    def forward(self, x):
        x = self.conv_layer1_2(self.conv_layer1_1(x))
        x = self.la1(x)
        xs = self.st2(self.tr1([x]))
        xs = self.st3(self.tr2(xs))
        xs = self.st4(self.tr3(xs))
        high = xs[0]
        feats = [high] + [_resize_to(y, high, self.align_corners) for y in xs[1:]]
        return [paddle.concat(feats, axis=1)]

    def init_weight(self):
        normal = nn.initializer.Normal(mean=0.0, std=0.001)
        one, zero = nn.initializer.Constant(1.0), nn.initializer.Constant(0.0)
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                normal(layer.weight)
            elif isinstance(layer, BATCH_NORMS):
                one(layer.weight)
                zero(layer.bias)
        if self.pretrained:
            load_pretrained_model(self, self.pretrained)


def _variant(stage1_blocks, stage1_ch, modules, blocks, width):
    """Keyword arguments of an HRNet whose branch widths are width * (1, 2, 4, 8)."""
    w = [width, width * 2, width * 4, width * 8]
    return dict(
        stage1_num_modules=1, stage1_num_blocks=[stage1_blocks], stage1_num_channels=[stage1_ch],
        stage2_num_modules=modules[0], stage2_num_blocks=[blocks] * 2, stage2_num_channels=w[:2],
        stage3_num_modules=modules[1], stage3_num_blocks=[blocks] * 3, stage3_num_channels=w[:3],
        stage4_num_modules=modules[2], stage4_num_blocks=[blocks] * 4, stage4_num_channels=w)


def _build(cfg, pretrained, kwargs):
    return HRNet(pretrained=pretrained, **{**cfg, **kwargs})


@manager.BACKBONES.add_component
def HRNet_W18_Small_V1(pretrained=None, **kwargs):
    return _build(_variant(1, 32, (1, 1, 1), 2, 16), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W18_Small_V2(pretrained=None, **kwargs):
    return _build(_variant(2, 64, (1, 3, 2), 2, 18), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W18(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 18), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W30(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 30), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W32(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 32), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W40(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 40), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W44(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 44), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W48(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 48), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W60(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 60), pretrained, kwargs)


@manager.BACKBONES.add_component
def HRNet_W64(pretrained=None, **kwargs):
    return _build(_variant(4, 64, (1, 4, 3), 4, 64), pretrained, kwargs)
