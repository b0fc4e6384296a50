"""Segmentation models, one per file; each registers itself in ``manager.MODELS``."""
from . import backbones, layers, losses
from .losses import *  # noqa: F401,F403  (PaddleSeg exposes losses here too)
from .hardnet import HarDNet
from .bisenet import BiSeNetV2
from .fast_scnn import FastSCNN
from .unet import UNet
from .fcn import FCN
