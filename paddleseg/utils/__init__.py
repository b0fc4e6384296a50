from .errors import UserError
from . import logger
from .checkpoint import load_pretrained_model
