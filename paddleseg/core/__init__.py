from .train import train
from .val import evaluate
from .predict import predict
from . import metrics
