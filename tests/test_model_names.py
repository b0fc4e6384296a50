"""BiSeNetV2's state_dict uses PaddleSeg's names and shapes, so PaddleSeg checkpoints load by name.

The expected keys below were derived by hand from PaddleSeg release/2.6,
paddleseg/models/bisenet.py (and paddleseg/models/layers/layer_libs.py for the blocks), at
num_classes=19 and the default lambd=0.25 (detail channels 64/64/128, semantic 16/32/64/128):

* ``layers.ConvBN`` / ``layers.ConvBNReLU``: ``_conv`` (Conv2D with bias) + ``_batch_norm``
  (weight, bias, _mean, _variance); the ReLU is parameter-free.
* ``layers.DepthwiseConvBN`` wraps a ConvBN in ``depthwise_conv`` (groups=in_channels).
* ``nn.Sequential`` children are numbered from 0; parameter-free entries (MaxPool, AvgPool,
  Dropout, Activation) still take an index.
"""
import paddle

import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg.cvlibs import manager

# key -> shape, at least one per kind of submodule
EXPECTED = {
    # DetailBranch: self.convs = nn.Sequential(8 x ConvBNReLU); convs.0 is 3 -> 64, stride 2
    "db.convs.0._conv.weight": [64, 3, 3, 3],
    "db.convs.0._conv.bias": [64],
    "db.convs.0._batch_norm.weight": [64],
    "db.convs.0._batch_norm._mean": [64],
    "db.convs.0._batch_norm._variance": [64],
    "db.convs.5._conv.weight": [128, 64, 3, 3],  # first conv of stage 3
    "db.convs.7._batch_norm.bias": [128],
    # StemBlock(3, 16): conv, left = Sequential(ConvBNReLU 1x1 16->8, ConvBNReLU 3x3 8->16),
    # right = MaxPool2D (no params), fuse = ConvBNReLU(32, 16, 3)
    "sb.stem.conv._conv.weight": [16, 3, 3, 3],
    "sb.stem.left.0._conv.weight": [8, 16, 1, 1],
    "sb.stem.left.1._conv.weight": [16, 8, 3, 3],
    "sb.stem.fuse._conv.weight": [16, 32, 3, 3],
    "sb.stem.fuse._batch_norm._variance": [16],
    # GatherAndExpansionLayer2 (stride 2), sb.stage3.0 = GE2(16, 32, expand 6):
    # branch_1 = Sequential(ConvBNReLU, DepthwiseConvBN 16->96 s2, DepthwiseConvBN 96->96, ConvBN 96->32)
    # branch_2 = Sequential(DepthwiseConvBN 16->16 s2, ConvBN 16->32)
    "sb.stage3.0.branch_1.0._conv.weight": [16, 16, 3, 3],
    "sb.stage3.0.branch_1.1.depthwise_conv._conv.weight": [96, 1, 3, 3],
    "sb.stage3.0.branch_1.2.depthwise_conv._conv.weight": [96, 1, 3, 3],
    "sb.stage3.0.branch_1.2.depthwise_conv._batch_norm._mean": [96],
    "sb.stage3.0.branch_1.3._conv.weight": [32, 96, 1, 1],
    "sb.stage3.0.branch_2.0.depthwise_conv._conv.weight": [16, 1, 3, 3],
    "sb.stage3.0.branch_2.1._conv.weight": [32, 16, 1, 1],
    "sb.stage4.0.branch_1.3._conv.weight": [64, 192, 1, 1],
    "sb.stage5_4.0.branch_2.1._conv.weight": [128, 64, 1, 1],
    # GatherAndExpansionLayer1 (stride 1): conv = Sequential(ConvBNReLU, DepthwiseConvBN x6, ConvBN)
    "sb.stage3.1.conv.0._conv.weight": [32, 32, 3, 3],
    "sb.stage3.1.conv.1.depthwise_conv._conv.weight": [192, 1, 3, 3],
    "sb.stage3.1.conv.2._conv.weight": [32, 192, 1, 1],
    "sb.stage4.1.conv.1.depthwise_conv._batch_norm.weight": [384],
    "sb.stage5_4.3.conv.1.depthwise_conv._conv.weight": [768, 1, 3, 3],
    "sb.stage5_4.3.conv.2._conv.weight": [128, 768, 1, 1],
    # ContextEmbeddingBlock(128, 128): gap (no params), bn = SyncBatchNorm (BatchNorm2D on CPU),
    # conv_1x1 = ConvBNReLU, conv_3x3 = plain Conv2D
    "sb.ce.bn.weight": [128],
    "sb.ce.bn._variance": [128],
    "sb.ce.conv_1x1._conv.weight": [128, 128, 1, 1],
    "sb.ce.conv_3x3.weight": [128, 128, 3, 3],
    "sb.ce.conv_3x3.bias": [128],
    # BGA(128): db_branch_keep = Sequential(DepthwiseConvBN, Conv2D 1x1),
    # db_branch_down = Sequential(ConvBN s2, AvgPool2D), sb_branch_keep = Sequential(DepthwiseConvBN,
    # Conv2D 1x1, Activation sigmoid), sb_branch_up = ConvBN, conv = ConvBN
    "bga.db_branch_keep.0.depthwise_conv._conv.weight": [128, 1, 3, 3],
    "bga.db_branch_keep.1.weight": [128, 128, 1, 1],
    "bga.db_branch_down.0._conv.weight": [128, 128, 3, 3],
    "bga.sb_branch_keep.0.depthwise_conv._batch_norm.bias": [128],
    "bga.sb_branch_keep.1.bias": [128],
    "bga.sb_branch_up._conv.weight": [128, 128, 3, 3],
    "bga.conv._conv.weight": [128, 128, 3, 3],
    "bga.conv._batch_norm._mean": [128],
    # SegHead(in, mid, 19): conv_3x3 = Sequential(ConvBNReLU, Dropout), conv_1x1 = Conv2D(mid, 19, 1)
    "head.conv_3x3.0._conv.weight": [128, 128, 3, 3],
    "head.conv_3x3.0._batch_norm.weight": [128],
    "head.conv_1x1.weight": [19, 128, 1, 1],
    "head.conv_1x1.bias": [19],
    # aux heads on the stem (16), stage3 (32), stage4 (64) and stage5_4 (128) outputs
    "aux_head1.conv_3x3.0._conv.weight": [16, 16, 3, 3],
    "aux_head1.conv_1x1.weight": [19, 16, 1, 1],
    "aux_head2.conv_3x3.0._conv.weight": [32, 32, 3, 3],
    "aux_head3.conv_1x1.weight": [19, 64, 1, 1],
    "aux_head4.conv_3x3.0._batch_norm._variance": [128],
    "aux_head4.conv_1x1.bias": [19],
}

# Total keys in PaddleSeg's BiSeNetV2 state_dict. ConvBN / ConvBNReLU / DepthwiseConvBN blocks
# (6 keys each: conv weight+bias, BN weight, bias, _mean, _variance):
#   detail branch 8 + stem 4 + three GE2 x 6 + five GE1 x 3 + CE conv_1x1 1
#   + BGA 5 (db_branch_keep.0, db_branch_down.0, sb_branch_keep.0, sb_branch_up, conv)
#   + 5 seg heads' conv_3x3.0  = 56
# plain Conv2D (2 keys each): CE conv_3x3, BGA db_branch_keep.1 and sb_branch_keep.1,
#   5 seg heads' conv_1x1  = 8
# bare BatchNorm (4 keys): CE bn  = 1
PADDLESEG_KEY_COUNT = 56 * 6 + 8 * 2 + 1 * 4  # 356


def test_bisenetv2_state_dict_uses_paddleseg_names():
    paddle.seed(0)
    model = manager.MODELS["BiSeNetV2"](num_classes=19)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}

    missing = sorted(set(EXPECTED) - set(shapes))
    assert not missing, f"keys missing (PaddleSeg has them): {missing}"
    wrong = {k: (shapes[k], s) for k, s in EXPECTED.items() if shapes[k] != s}
    assert not wrong, f"shape mismatches (got, PaddleSeg): {wrong}"

    assert len(shapes) == PADDLESEG_KEY_COUNT == 356
    # PaddleSeg's creation order: db, sb, bga, aux_head1..4, head
    keys = list(shapes)
    assert keys[0] == "db.convs.0._conv.weight"
    assert keys[-1] == "head.conv_1x1.bias"
