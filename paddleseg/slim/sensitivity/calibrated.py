"""``--sen_bn_batches K``: sensitivity points scored with every batch norm's statistics
re-estimated on K training batches (:mod:`paddleseg.slim.bn_calibration`).

A group pruned alone changes what every batch norm after it receives, while their running
statistics stay the unpruned model's. Scored as it is, the point is judged partly on how stale
those statistics are, which retraining repairs within a few iterations; recalibrated, it is
judged on what retraining cannot repair. The analysis then measures the loss against the
unpruned model recalibrated the same way, so both sides of the loss are scored alike.

How it rides on the evaluators: :func:`calibrated_model` recalibrates the unpruned model before
any evaluator is opened, so that every evaluator takes that state as the model's own (the
dygraph evaluator records its reference pass on it). :class:`CalibratedEvaluator` then wraps
the evaluator: each point is recalibrated again before it is evaluated; the batch norms before
the pruned group get bit-identical statistics and keep their parameter objects (their recorded
outputs are reused as usual), the ones after it get new ones for that evaluation only. The
setting is part of the evaluator's facts, hence of the sensitivity file's fingerprint: a file
measured with other batches, or without, is not resumed.
"""
import contextlib

from ..bn_calibration import calibration_batches, recalibrated_batchnorm
from .protocol import Evaluator


class Calibration:
    """The batches statistics are estimated on, and the facts that name them (``seed``: an
    int, so that the same facts always mean the same images)."""

    def __init__(self, dataset, num_batches, batch_size, seed):
        self.batches = calibration_batches(dataset, num_batches, batch_size, seed)
        self.facts = {"batches": int(num_batches), "batch_size": int(batch_size),
                      "seed": int(seed)}


class CalibratedEvaluator(Evaluator):
    """``inner`` with every evaluation on ``model`` recalibrated on ``calibration.batches``."""

    def __init__(self, inner, model, calibration):
        self.inner, self.model, self.calibration = inner, model, calibration
        self.facts = {**inner.facts, "bn_calibration": calibration.facts}

    def prepare(self):
        with recalibrated_batchnorm(self.model, self.calibration.batches):
            return self.inner.prepare()

    def evaluate(self, group_id=None):
        with recalibrated_batchnorm(self.model, self.calibration.batches):
            return self.inner.evaluate(group_id)


@contextlib.contextmanager
def calibrated_model(model, calibration):
    """Inside: ``model`` recalibrated on ``calibration`` (None: as it is); its own statistics
    are back on leaving."""
    if calibration is None:
        yield model
        return
    with recalibrated_batchnorm(model, calibration.batches):
        yield model


def calibrated(evaluator, model, calibration):
    """``evaluator`` wrapped by :class:`CalibratedEvaluator`, or as it is without
    ``calibration``."""
    return evaluator if calibration is None else CalibratedEvaluator(evaluator, model, calibration)
