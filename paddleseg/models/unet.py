"""U-Net (Ronneberger et al., 2015, https://arxiv.org/abs/1505.04597), laid out as PaddleSeg
builds it: BN after every conv, 'same' padding, so the output keeps the input size."""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddleseg import utils
from paddleseg.cvlibs import manager
from paddleseg.models.layers import ConvBNReLU

__all__ = ["UNet"]


def _double_conv(in_channels, out_channels):
    return nn.Sequential(ConvBNReLU(in_channels, out_channels, 3),
                         ConvBNReLU(out_channels, out_channels, 3))


@manager.MODELS.add_component
class UNet(nn.Layer):
    """U-Net.

    Args:
        num_classes (int): number of target classes.
        align_corners (bool): passed to F.interpolate in the bilinear decoder. Default: False.
        use_deconv (bool): upsample with a stride-2 Conv2DTranspose instead of bilinear
            resizing. Default: False.
        in_channels (int): image channels. Default: 3.
        pretrained (str, optional): path of weights to load leniently.
    """

    def __init__(self, num_classes, align_corners=False, use_deconv=False, in_channels=3,
                 pretrained=None):
        super().__init__()
        self.encode = Encoder(in_channels)
        self.decode = Decoder(align_corners, use_deconv=use_deconv)
        # One classifier under two names, as PaddleSeg registers it: its checkpoints hold both
        # ``cls.*`` and ``conv.*`` (the same tensors), so ours load them by name unchanged.
        self.cls = self.conv = nn.Conv2D(64, num_classes, 3, stride=1, padding=1)
        self.pretrained = pretrained
        if pretrained is not None:
            utils.load_pretrained_model(self, pretrained)

    def forward(self, x):
        x, skips = self.encode(x)
        return [self.cls(self.decode(x, skips))]


class Encoder(nn.Layer):
    """Double conv to 64 channels, then four (2x2 max-pool, double conv) stages:
    64 -> 128 -> 256 -> 512 -> 512. Returns the bottom features and the four skips
    (finest first)."""

    def __init__(self, in_channels=3):
        super().__init__()
        self.double_conv = _double_conv(in_channels, 64)
        widths = [(64, 128), (128, 256), (256, 512), (512, 512)]
        self.down_sample_list = nn.LayerList([
            nn.Sequential(nn.MaxPool2D(kernel_size=2, stride=2), ConvBNReLU(cin, cout, 3),
                          ConvBNReLU(cout, cout, 3))
            for cin, cout in widths])

    def forward(self, x):
        skips = []
        x = self.double_conv(x)
        for down in self.down_sample_list:
            skips.append(x)
            x = down(x)
        return x, skips


class Decoder(nn.Layer):
    """Four up stages 512 -> 256 -> 128 -> 64 -> 64, each consuming the matching skip
    (coarsest first)."""

    def __init__(self, align_corners, use_deconv=False):
        super().__init__()
        widths = [(512, 256), (256, 128), (128, 64), (64, 64)]
        self.up_sample_list = nn.LayerList([
            UpSampling(cin, cout, align_corners, use_deconv) for cin, cout in widths])

    def forward(self, x, skips):
        for up, skip in zip(self.up_sample_list, skips[::-1]):
            x = up(x, skip)
        return x


class UpSampling(nn.Layer):
    """Bring x to the skip's resolution, concatenate [x, skip], double conv.

    Bilinear mode resizes to the skip's exact shape (any input size works). Deconv mode uses a
    2x2 stride-2 transpose conv to out/2 channels and no resize, as PaddleSeg does: it needs
    input sides divisible by 16, like PaddleSeg's."""

    def __init__(self, in_channels, out_channels, align_corners, use_deconv=False):
        super().__init__()
        self.align_corners = align_corners
        self.use_deconv = use_deconv
        if use_deconv:
            self.deconv = nn.Conv2DTranspose(in_channels, out_channels // 2, kernel_size=2,
                                             stride=2, padding=0)
            cat_channels = in_channels + out_channels // 2
        else:
            cat_channels = in_channels * 2
        self.double_conv = _double_conv(cat_channels, out_channels)

    def forward(self, x, short_cut):
        if self.use_deconv:
            x = self.deconv(x)
        else:
            x = F.interpolate(x, paddle.shape(short_cut)[2:], mode="bilinear",
                              align_corners=self.align_corners)
        return self.double_conv(paddle.concat([x, short_cut], axis=1))
