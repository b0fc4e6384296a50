"""The evaluators ``--sen_evaluator`` names, and how ``auto`` picks among them.

- ``dygraph``: :class:`.reuse.SensitivityEvaluator`, Paddle's dygraph with the eval images kept
  and unchanged layer outputs reused; its metric is the plain evaluation's to the bit.
- ``predictor``: :class:`.predictor.PredictorEvaluator`, a Paddle Inference predictor (oneDNN)
  per point; metrics may differ from dygraph's in the last digits.
- ``auto``: the split of groups between the two that is expected fastest. Both are timed on
  four pruned probes; reuse costs most on the first groups (it reruns everything after the
  pruned layer) and a predictor about the same on any, so the first K groups (analysis order
  follows the forward pass) go to predictors and the rest to dygraph, K the split of least
  expected total time (K = 0: dygraph alone; K = all: predictors alone). The split is data:
  :class:`SplitEvaluator` routes each point by its group, and the split is recorded in the
  sensitivity file's fingerprint (``{"name": "mixed", "predictor_groups": K}``), so a resumed
  file is evaluated the way it was begun. Off the CPU, or on a Paddle without oneDNN, auto is
  dygraph; so is any model whose predictor fails its check against dygraph (with a warning).
"""
import contextlib

import paddle

from ...utils import distributed, logger
from .predictor import PredictorEvaluator, predictor_prefix
from .protocol import Evaluator
from .reuse import SensitivityEvaluator

EVALUATORS = ("auto", "predictor", "dygraph")


class SplitEvaluator(Evaluator):
    """Predictors for the analysis's first ``predictor_groups`` groups, dygraph with reuse for
    the others; the unpruned model's metric, the loss's base, is dygraph's. Both evaluators
    entered and the predictor prepared, on the same unpruned model."""

    def __init__(self, predictor, reuse, predictor_groups):
        self.predictor, self.reuse = predictor, reuse
        self.in_predictor = {g.id for g in predictor.groups[:predictor_groups]}
        self.facts = {"name": "mixed", "predictor_groups": int(predictor_groups)}

    def prepare(self):
        return self.reuse.prepare()

    def evaluate(self, group_id=None):
        chosen = self.predictor if group_id in self.in_predictor else self.reuse
        return chosen.evaluate(group_id)


def settled_choice(choice, recorded=None):
    """``predictor`` or ``dygraph`` where that is settled, ``mixed`` where a file begun with
    both is resumed, else ``auto`` (time both). ``recorded``: the evaluator facts of the file
    being resumed (None for a new analysis); ``auto`` resumes with them, and takes dygraph off
    the CPU or on a Paddle without oneDNN."""
    if choice not in EVALUATORS:
        raise ValueError(f"sensitivity evaluator must be one of {', '.join(EVALUATORS)}, "
                         f"got {choice!r}")
    if choice != "auto":
        return choice
    if recorded:
        return recorded.get("name", "dygraph")
    if paddle.get_device() != "cpu" or not onednn_available():
        return "dygraph"
    return "auto"


def onednn_available():
    return paddle.base.core.is_compiled_with_mkldnn()


def kind_of_split(predictor_groups, num_groups):
    """The evaluator a split amounts to: dygraph (no group in predictors), predictor (all of
    them) or mixed."""
    if predictor_groups <= 0:
        return "dygraph"
    return "predictor" if predictor_groups >= num_groups else "mixed"


def timed_split(predictor, reuse):
    """(predictor groups, this rank's seconds per evaluation by evaluator): how many of the
    first groups rank 0 expects to be faster in predictors (every rank of a job must evaluate
    alike), from both evaluators timed on pruned probes."""
    seconds = predictor.time_engines(reuse)
    split = predictor_prefix(len(predictor.groups), predictor.probe_seconds)
    return distributed.all_gather(split)[0], seconds


def describe(facts, num_groups):
    if facts["name"] == "mixed":
        return (f"the first {facts['predictor_groups']} of {num_groups} groups in predictors and "
                "the rest in dygraph")
    return f"in {facts['name']}"


@contextlib.contextmanager
def open_evaluator(choice, model, dataset, groups, eval_num, recorded=None):
    """The :class:`~.protocol.Evaluator` that ``choice`` (one of :data:`EVALUATORS`) amounts to
    for this model, entered on the unpruned ``model``; ``recorded``: the evaluator facts of
    the sensitivity file being resumed, or None."""
    settled = settled_choice(choice, recorded)
    if settled != "dygraph":
        with PredictorEvaluator(model, dataset, groups, eval_num) as predictor:
            problem = predictor.prepare()
            if problem:
                logger.warning(f"sensitivity: {problem}; evaluating in dygraph")
            elif settled == "predictor":
                yield predictor
                return
            else:
                with SensitivityEvaluator(model, dataset, eval_num) as reuse:
                    split = recorded["predictor_groups"] if settled == "mixed" else \
                        announced(*timed_split(predictor, reuse), len(groups))
                    kind = kind_of_split(split, len(groups))
                    if kind == "mixed":
                        yield SplitEvaluator(predictor, reuse, split)
                        return
                    if kind == "dygraph":   # prepared and checked already: used as it is
                        yield reuse
                        return
                # predictors alone: reuse's recorded outputs are freed first
                yield predictor
                return
    with SensitivityEvaluator(model, dataset, eval_num) as reuse:
        yield reuse


def announced(split, seconds, num_groups):
    """``split``, after logging what auto chose and why."""
    kind = kind_of_split(split, num_groups)
    facts = {"name": kind, "predictor_groups": split} if kind == "mixed" else {"name": kind}
    logger.info(f"sensitivity: evaluating {describe(facts, num_groups)} (measured per "
                f"evaluation on pruned probes: predictor {seconds['predictor']:.2f} s, dygraph "
                f"with reuse {seconds['dygraph']:.2f} s)")
    return split
