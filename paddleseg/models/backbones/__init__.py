"""Backbones, registered in ``manager.BACKBONES``."""
from .hrnet import HRNet_W18, HRNet_W18_Small_V1, HRNet_W18_Small_V2, HRNet_W30, HRNet_W32, HRNet_W40, HRNet_W44, HRNet_W48, HRNet_W60, HRNet_W64
