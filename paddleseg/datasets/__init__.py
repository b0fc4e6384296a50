from .dataset import Dataset, DatasetError
from .optic_disc_seg import OpticDiscSeg
from .cityscapes import Cityscapes
