from .dataset import Dataset, DatasetError
from .optic_disc_seg import OpticDiscSeg
from .cityscapes import Cityscapes
from .voc import PascalVOC
from .drive import DRIVE
from .stare import STARE
from .hrf import HRF
from .chase_db1 import CHASEDB1
from .pp_humanseg14k import PPHumanSeg14K
