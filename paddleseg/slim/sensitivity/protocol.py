"""What the analysis loop asks of an evaluator, and nothing more.

An evaluator gives the metric (higher is better; mIoU here) of the model *as it is now*. The
loop (:func:`.analysis.analyze`) calls, in this order:

- ``evaluate(None)`` for the unpruned model's metric, the loss's base (skipped on resume);
- ``prepare()`` once, with the model unpruned, before it prunes anything;
- ``evaluate(group_id)`` for each point, with that group alone pruned;

and reads ``facts``, the plain-JSON description of how points are evaluated that goes into the
sensitivity file's fingerprint (a file is resumed only with an evaluator of the same facts).
Opening and closing (``with``) belongs to whoever made the evaluator, not to the loop.
"""


class Evaluator:
    """The protocol, with the defaults most evaluators want."""

    facts = {}

    def prepare(self):
        """Once, on the unpruned model, before the first pruned point."""

    def evaluate(self, group_id=None):
        raise NotImplementedError


class FunctionEvaluator(Evaluator):
    """A plain callable ``metric_fn()`` as an evaluator (the library's simple use, and tests)."""

    def __init__(self, metric_fn, facts=None):
        self.metric_fn = metric_fn
        self.facts = dict(facts or {})

    def evaluate(self, group_id=None):
        return self.metric_fn()


def as_evaluator(evaluator_or_fn):
    """``evaluator_or_fn`` when it follows the protocol, else the callable wrapped."""
    if isinstance(evaluator_or_fn, Evaluator):
        return evaluator_or_fn
    return FunctionEvaluator(evaluator_or_fn)
