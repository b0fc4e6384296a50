"""Sensitivity analysis: the metric lost when one group alone is pruned at each ratio.

- :mod:`.analysis`: the loop (resume, sharing the points among the ranks of a job, the merge);
- :mod:`.store`: the sensitivity file, its fingerprint and the ranks' part files;
- :mod:`.protocol`: what the loop asks of an evaluator (prepare, evaluate);
- :mod:`.evaluators`: the evaluators ``--sen_evaluator`` names (:mod:`.reuse`: dygraph with
  reused layer outputs; :mod:`.predictor`: Paddle Inference predictors) and ``auto``'s split;
- :mod:`.calibrated`: ``--sen_bn_batches``, any of them with batch norms recalibrated per point.
"""
from .analysis import analyze, relative_loss  # noqa: F401
from .calibrated import (Calibration, CalibratedEvaluator, calibrated,  # noqa: F401
                         calibrated_model)
from .evaluators import EVALUATORS, open_evaluator  # noqa: F401
from .protocol import Evaluator, FunctionEvaluator  # noqa: F401
from .store import (FORMAT, SensitivityMismatch, describe_difference, fingerprint, load,  # noqa: F401
                    part_file,
                    part_file_names, part_files, ratio_key, recorded_evaluator, save)
