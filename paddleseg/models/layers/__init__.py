from .layer_libs import SyncBatchNorm, ConvBN, ConvBNReLU, SeparableConvBNReLU, DepthwiseConvBN, AuxLayer
