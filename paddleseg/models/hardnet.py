"""FC-HarDNet-70: a real-time encoder-decoder built from harmonic dense blocks.

Chao et al., "HarDNet: A Low Memory Traffic Network", ICCV 2019
(https://arxiv.org/abs/1909.00948).

Layout (defaults):
  stem     3x3 ConvBNReLU 3->16->24 -(stride 2)->32->48
  encoder  five HarDBlocks; after each a 1x1 ConvBNReLU to ch_list[i]; the first
           four are followed by a 2x2 average pool and their block output (before
           the 1x1 conv) is kept as a skip connection
  decoder  four stages, deepest skip first: bilinear upsample to the skip's size,
           concat [x, skip], 1x1 ConvBNReLU halving the channels, HarDBlock
  head     1x1 conv to num_classes, bilinear resize to the input size

Parameter names follow PaddleSeg's (stem.*, encoder.blks.*, decoder.conv1x1_up.*,
decoder.dense_blocks_up.*, cls_head.*), so its checkpoints load directly.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg import utils
from paddleseg.cvlibs import manager
from paddleseg.models.layers.layer_libs import ConvBNReLU


def harmonic_links(layer_idx, base_channels, growth_rate, grmul):
    """Wiring of layer ``layer_idx`` (1-based; 0 is the block input) in a HarDBlock.

    Layer ``L`` reads from every earlier layer ``L - 2**k`` with ``2**k`` dividing
    ``L``.  Its width is ``growth_rate * grmul**(m - 1)`` where ``m`` is the number
    of such links, rounded to an even integer.

    Returns ``(out_channels, in_channels, sources)`` with ``sources`` in ascending
    order.
    """
    if layer_idx == 0:
        return base_channels, 0, []
    width = growth_rate
    sources = []
    k = 0
    while 2 ** k <= layer_idx:
        step = 2 ** k
        if layer_idx % step == 0:
            sources.append(layer_idx - step)
            if k > 0:
                width *= grmul
        k += 1
    sources.sort()
    out_channels = int(int(width + 1) / 2) * 2
    in_channels = sum(
        harmonic_links(s, base_channels, growth_rate, grmul)[0] for s in sources)
    return out_channels, in_channels, sources


class HarDBlock(nn.Layer):
    """Harmonic dense block of ``n_layers`` 3x3 ConvBNReLU layers.

    The output concatenates the odd-numbered layers plus the last one (and the
    block input when ``keep_base`` is set).
    """

    def __init__(self, base_channels, growth_rate, grmul, n_layers, keep_base=False):
        super().__init__()
        self.links = []
        convs = []
        for idx in range(1, n_layers + 1):
            out_ch, in_ch, sources = harmonic_links(idx, base_channels, growth_rate, grmul)
            self.links.append(sources)
            convs.append(ConvBNReLU(in_ch, out_ch, kernel_size=3, bias_attr=False))
        self.layers = nn.LayerList(convs)

        # indices into [input, layer1, ..., layerN] that make up the output
        self.out_indices = [
            i for i in range(n_layers + 1)
            if (i == 0 and keep_base) or i % 2 == 1 or i == n_layers
        ]
        widths = [base_channels] + [
            harmonic_links(i, base_channels, growth_rate, grmul)[0]
            for i in range(1, n_layers + 1)
        ]
        self.out_channels = sum(widths[i] for i in self.out_indices)

    def get_out_ch(self):
        return self.out_channels

    def forward(self, x):
        feats = [x]
        for conv, sources in zip(self.layers, self.links):
            if len(sources) == 1:
                inp = feats[sources[0]]
            else:
                inp = paddle.concat([feats[s] for s in sources], axis=1)
            feats.append(conv(inp))
        return paddle.concat([feats[i] for i in self.out_indices], axis=1)


class Encoder(nn.Layer):
    """HarDBlock -> 1x1 transition (-> avgpool) repeated ``len(n_layers)`` times.

    All stages live in one LayerList ``blks`` (block, transition, pool, block, ...),
    matching PaddleSeg's parameter paths.
    """

    def __init__(self, in_channels, ch_list, gr, grmul, n_layers):
        super().__init__()
        n_blocks = len(n_layers)
        stages = []
        self.skip_indices = []  # positions in ``blks`` whose output is a skip
        self.skip_channels = []
        ch = in_channels
        for i in range(n_blocks):
            block = HarDBlock(ch, gr[i], grmul, n_layers[i])
            ch = block.get_out_ch()
            stages.append(block)
            last = i == n_blocks - 1
            if not last:
                self.skip_indices.append(len(stages) - 1)
                self.skip_channels.append(ch)
            stages.append(ConvBNReLU(ch, ch_list[i], kernel_size=1, bias_attr=False))
            ch = ch_list[i]
            if not last:
                stages.append(nn.AvgPool2D(kernel_size=2, stride=2))
        self.blks = nn.LayerList(stages)
        self.out_channels = ch

    def forward(self, x):
        skips = []
        for idx, stage in enumerate(self.blks):
            x = stage(x)
            if idx in self.skip_indices:  # static Python ints, fixed per model
                skips.append(x)
        return x, skips


class Decoder(nn.Layer):
    """Upsample, concat the skip, halve channels with a 1x1 conv, HarDBlock."""

    def __init__(self, in_channels, skip_channels, gr, grmul, n_layers, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        convs, blocks = [], []
        ch = in_channels
        for i in reversed(range(len(skip_channels))):
            cat_ch = ch + skip_channels[i]
            convs.append(ConvBNReLU(cat_ch, cat_ch // 2, kernel_size=1, bias_attr=False))
            block = HarDBlock(cat_ch // 2, gr[i], grmul, n_layers[i])
            blocks.append(block)
            ch = block.get_out_ch()
        self.conv1x1_up = nn.LayerList(convs)
        self.dense_blocks_up = nn.LayerList(blocks)
        self.out_channels = ch

    def forward(self, x, skips):
        for conv, block, skip in zip(self.conv1x1_up, self.dense_blocks_up, skips[::-1]):
            # TransitionUp: resize to the exact skip shape (inputs need not be /32)
            x = F.interpolate(x, size=paddle.shape(skip)[2:], mode="bilinear",
                              align_corners=self.align_corners)
            x = paddle.concat([x, skip], axis=1)
            x = block(conv(x))
        return x


@manager.MODELS.add_component
class HarDNet(nn.Layer):
    """FC-HarDNet-70 semantic segmentation network.

    Args:
        num_classes (int): Number of target classes.
        stem_channels (tuple): Channels of the four stem convs. Default (16, 24, 32, 48).
        ch_list (tuple): Channels of the 1x1 transition after each encoder block.
        grmul (float): Channel multiplier ``m`` of the harmonic links. Default 1.7.
        gr (tuple): Growth rate ``k`` of each encoder block (reused by the decoder).
        n_layers (tuple): Layers per encoder block (reused by the decoder).
        align_corners (bool): Passed to every bilinear interpolation. Default False.
        pretrained (str, optional): Path or URL of weights to load. Default None.
    """

    def __init__(self,
                 num_classes,
                 stem_channels=(16, 24, 32, 48),
                 ch_list=(64, 96, 160, 224, 320),
                 grmul=1.7,
                 gr=(10, 16, 18, 24, 32),
                 n_layers=(4, 4, 8, 8, 8),
                 align_corners=False,
                 pretrained=None):
        super().__init__()
        self.align_corners = align_corners
        self.pretrained = pretrained

        c0, c1, c2, c3 = stem_channels
        self.stem = nn.Sequential(
            ConvBNReLU(3, c0, kernel_size=3, bias_attr=False),
            ConvBNReLU(c0, c1, kernel_size=3, bias_attr=False),
            ConvBNReLU(c1, c2, kernel_size=3, stride=2, bias_attr=False),
            ConvBNReLU(c2, c3, kernel_size=3, bias_attr=False))
        self.encoder = Encoder(c3, ch_list, gr, grmul, n_layers)
        self.decoder = Decoder(self.encoder.out_channels, self.encoder.skip_channels,
                               gr, grmul, n_layers, align_corners)
        self.cls_head = nn.Conv2D(self.decoder.out_channels, num_classes, kernel_size=1)

        if pretrained is not None:
            utils.load_pretrained_model(self, pretrained)

    def forward(self, x):
        in_size = paddle.shape(x)[2:]
        feat, skips = self.encoder(self.stem(x))
        feat = self.decoder(feat, skips)
        logit = self.cls_head(feat)
        logit = F.interpolate(logit, size=in_size, mode="bilinear",
                              align_corners=self.align_corners)
        return [logit]
