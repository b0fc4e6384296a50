from .layer_libs import ConvBN, ConvBNReLU, SeparableConvBNReLU, DepthwiseConvBN, AuxLayer
