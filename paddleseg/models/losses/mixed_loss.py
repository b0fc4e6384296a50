import paddle.nn as nn

from paddleseg.cvlibs import manager


@manager.LOSSES.add_component
class MixedLoss(nn.Layer):
    """Several losses on one logit, weighted: ``{type: MixedLoss, losses: [...], coef: [...]}``.
    Returns their weighted sum (PaddleSeg returns the list and sums it in its training loop;
    the total is the same)."""

    def __init__(self, losses, coef):
        super().__init__()
        if not isinstance(losses, list) or not isinstance(coef, list) or len(losses) != len(coef):
            raise ValueError(f"MixedLoss needs lists 'losses' and 'coef' of equal length, got "
                             f"{losses!r} and {coef!r}")
        self.losses = nn.LayerList(losses)
        self.coef = list(coef)

    def forward(self, logit, label):
        return sum(c * loss(logit, label) for loss, c in zip(self.losses, self.coef))
