"""Small nets with one channel-coupling pattern each, shared by the slim tests.

Every net returns a list of logits at input size, like the real models; in training mode
``WithAux`` returns an auxiliary logit too.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


class CBR(nn.Layer):
    """Conv + BN (+ ReLU)."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1, relu=True):
        super().__init__()
        self.conv = nn.Conv2D(cin, cout, k, stride=stride, padding=k // 2, groups=groups,
                              bias_attr=False)
        self.bn = nn.BatchNorm2D(cout)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


def _up(x, like):
    return F.interpolate(x, paddle.shape(like)[2:], mode="bilinear", align_corners=False)


class Residual(nn.Layer):
    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.b1 = nn.Sequential(CBR(16, 16), CBR(16, 16, relu=False))
        self.b2 = nn.Sequential(CBR(16, 16), CBR(16, 16, relu=False))
        self.down = CBR(16, 32, stride=2)
        self.head = CBR(32, 24)
        self.cls = nn.Conv2D(24, num_classes, 1)

    def forward(self, x):
        y = self.stem(x)
        y = F.relu(y + self.b1(y))
        y = F.relu(y + self.b2(y))
        y = self.cls(self.head(self.down(y)))
        return [_up(y, x)]


class Concat(nn.Layer):
    """UNet-like: encoder features concatenated with upsampled decoder features."""

    def __init__(self, num_classes=2, transpose=False):
        super().__init__()
        self.enc1 = CBR(3, 8)
        self.enc2 = CBR(8, 16)
        self.enc3 = CBR(16, 32)
        self.transpose = transpose
        if transpose:
            self.up = nn.Conv2DTranspose(32, 16, 2, stride=2)
        self.dec2 = CBR(16 + (16 if transpose else 32), 16)
        self.dec1 = CBR(16 + 8, 8)
        self.cls = nn.Conv2D(8, num_classes, 3, padding=1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        u = self.up(e3) if self.transpose else _up(e3, e2)
        d2 = self.dec2(paddle.concat([e2, u], axis=1))
        d1 = self.dec1(paddle.concat([_up(d2, e1), e1], axis=1))
        return [self.cls(d1)]


class Separable(nn.Layer):
    """Depthwise-separable blocks (Fast-SCNN-like)."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.dw1 = CBR(16, 16, groups=16)
        self.pw1 = CBR(16, 32, k=1)
        self.dw2 = CBR(32, 32, groups=32, stride=2)
        self.pw2 = CBR(32, 32, k=1)
        self.cls = nn.Conv2D(32, num_classes, 1)

    def forward(self, x):
        y = self.pw1(self.dw1(self.stem(x)))
        y = y + self.pw2(self.dw2(y)).mean(axis=[2, 3], keepdim=True)
        return [_up(self.cls(y), x)]


class GatherExpand(nn.Layer):
    """BiSeNetV2's GE layer: conv 16->16, depthwise 16->96 (groups 16), pointwise 96->16, add."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.conv = CBR(16, 16)
        self.dwconv = CBR(16, 96, groups=16, relu=False)
        self.dwconv2 = CBR(96, 96, groups=96, relu=False)
        self.pw = CBR(96, 16, k=1, relu=False)
        self.cls = nn.Conv2D(16, num_classes, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.pw(self.dwconv2(self.dwconv(self.conv(s))))
        y = F.relu(y + s)
        return [_up(self.cls(y), x)]


class Grouped(nn.Layer):
    """A grouped conv (groups=4 of 16 channels) between two dense convs."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.grouped = CBR(16, 16, groups=4)
        self.mid = CBR(16, 24)
        self.cls = nn.Conv2D(24, num_classes, 1)

    def forward(self, x):
        return [_up(self.cls(self.mid(self.grouped(self.stem(x)))), x)]


class WithAux(nn.Layer):
    """An auxiliary head that reads a pruned feature map only in training mode."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.body = CBR(16, 32)
        self.cls = nn.Conv2D(32, num_classes, 1)
        self.aux = nn.Sequential(CBR(16, 8), nn.Conv2D(8, num_classes, 1))

    def forward(self, x):
        s = self.stem(x)
        out = [_up(self.cls(self.body(s)), x)]
        if self.training:
            out.append(_up(self.aux(s), x))
        return out


class Shuffle(nn.Layer):
    """Channel shuffle (reshape + transpose) and a channel split: ops the analysis freezes."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.left = CBR(8, 8)
        self.mid = CBR(16, 24)
        self.cls = nn.Conv2D(24, num_classes, 1)

    def forward(self, x):
        s = self.stem(x)
        n, c, h, w = s.shape
        s = s.reshape([0, 4, 4, h, w]).transpose([0, 2, 1, 3, 4]).reshape([0, 16, h, w])
        a, b = paddle.split(s, 2, axis=1)
        y = paddle.concat([self.left(a), b], axis=1)
        return [_up(self.cls(self.mid(y)), x)]


class SamePadding(nn.Layer):
    """Convs with padding='same' as ConvBN builds them: Paddle pads a stride-2 one unevenly
    (more at the bottom and right); a residual add and a depthwise conv on top."""

    def __init__(self, num_classes=2):
        super().__init__()

        def conv_bn(cin, cout, stride=1, groups=1):
            return nn.Sequential(nn.Conv2D(cin, cout, 3, stride=stride, padding="same",
                                           groups=groups, bias_attr=False), nn.BatchNorm2D(cout))
        self.stem = conv_bn(3, 16, stride=2)
        self.dw = conv_bn(16, 16, stride=2, groups=16)
        self.body = conv_bn(16, 16)
        self.cls = nn.Conv2D(16, num_classes, 1)

    def forward(self, x):
        y = F.relu(self.dw(F.relu(self.stem(x))))
        y = F.relu(y + self.body(y))
        return [_up(self.cls(y), x)]


class IndexOutput(nn.Layer):
    """Ends in an op whose output indexes channels (argmax by default): the classifier's
    channels must stay, or class k would come out as another number."""

    def __init__(self, num_classes=4, op=None):
        super().__init__()
        self.stem = CBR(3, 16, stride=2)
        self.head = CBR(16, 8)
        self.cls = nn.Conv2D(8, num_classes, 1)
        self.op = op or (lambda y: paddle.argmax(y, axis=1, keepdim=True))

    def forward(self, x):
        return [self.op(_up(self.cls(self.head(self.stem(x))), x))]


TOYS = {"Residual": Residual, "Concat": Concat, "Separable": Separable,
        "GatherExpand": GatherExpand, "Grouped": Grouped, "WithAux": WithAux,
        "ConcatTranspose": lambda: Concat(transpose=True), "Shuffle": Shuffle,
        "SamePadding": SamePadding}


def build_toy(name, seed=0):
    paddle.seed(seed)
    return TOYS[name]()


def test_toys_run():
    for name in TOYS:
        model = build_toy(name)
        model.eval()
        out = model(paddle.rand([1, 3, 32, 32]))
        assert out[0].shape == [1, 2, 32, 32], name
