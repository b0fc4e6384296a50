from .cross_entropy_loss import CrossEntropyLoss
from .ohem_cross_entropy_loss import OhemCrossEntropyLoss
from .dice_loss import DiceLoss
from .bootstrapped_cross_entropy_loss import BootstrappedCrossEntropyLoss
from .mixed_loss import MixedLoss
