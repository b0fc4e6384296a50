"""Distillation from the unpruned model while retraining the pruned one (issue 22).

The teacher is the model as loaded from --model_path, copied before pruning: eval mode, no
gradients, one forward per batch under ``paddle.no_grad`` (nothing of it kept for backward). Its
main logits (``logits[0]``) teach the student's through one of two losses, hand-written here in
a few lines: PaddleSlim 2.6's ``paddleslim.dygraph.dist`` has a ``KLLoss`` but no temperature
and no channel-wise loss, and using it means its ``Distill`` wrapper and hooks, which the
training loop does not need (it hands the logits to :func:`paddleseg.core.train.train`'s
``extra_loss``).

- ``pixel``: KL(teacher || student) of the class distributions softened by the temperature T,
  summed over classes, averaged over pixels (and images), times T^2 (Hinton et al. 2015).
- ``channel``: the channel-wise distillation of Shu et al. 2021 (as PaddleSeg release/2.6's
  slim/distill uses): each channel's logits over the H*W positions softened by T into a
  distribution, KL(teacher || student) summed over positions, averaged over channels (and
  images), times T^2.
"""
import copy

import paddle

DISTILL_KINDS = ("none", "pixel", "channel")


def _log_softmax(x, axis):
    # x - logsumexp(x): Paddle 2.6's CPU log_softmax (its backward) takes ~30 s on a long axis
    # (the channel loss's 8 x 11 x 49152 CamVid logits), this ~0.1 s; the same values
    return x - paddle.logsumexp(x, axis=axis, keepdim=True)


def _kl(student, teacher, axis, temperature):
    """KL(softmax(teacher / T) || softmax(student / T)) summed along ``axis``, times T^2."""
    log_s = _log_softmax(student / temperature, axis)
    log_t = _log_softmax(teacher / temperature, axis)
    return (paddle.exp(log_t) * (log_t - log_s)).sum(axis=axis) * temperature ** 2


def pixel_kd_loss(student, teacher, temperature=1.0):
    """Pixel-wise KD loss of N C H W logits: mean over N H W of the class-wise KL, times T^2."""
    return _kl(student, teacher, 1, temperature).mean()


def channel_kd_loss(student, teacher, temperature=1.0):
    """Channel-wise KD loss (Shu et al. 2021) of N C H W logits: each channel's softmax over
    the H*W positions, KL summed over positions, mean over N C, times T^2."""
    n, c = student.shape[:2]
    return _kl(student.reshape([n, c, -1]), teacher.reshape([n, c, -1]), 2, temperature).mean()


LOSSES = {"pixel": pixel_kd_loss, "channel": channel_kd_loss}


def make_teacher(model):
    """A frozen copy of ``model`` as it is now (call it before pruning): eval mode, every
    parameter ``stop_gradient``; the copy shares no tensor with ``model``."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    return teacher


def teacher_of(o, model):
    """With --distill (and retraining) or --reconstruct, the frozen copy of the unpruned
    ``model`` that teaches the pruned one or that its convs are refitted to; else None."""
    distills = o.distill != "none" and o.retraining_iters > 0
    return make_teacher(model) if distills or o.reconstruct else None


def retraining_teacher(o, teacher):
    """What of :func:`teacher_of`'s copy the retraining needs after the refit: the teacher with
    --distill, else nothing (drop it, so that the copy is freed)."""
    return teacher if o.distill != "none" else None


class Distillation:
    """``extra_loss`` for :func:`paddleseg.core.train.train`: ``weight`` times the ``kind``
    loss between the student's main logits and the teacher's on the same images."""

    def __init__(self, teacher, kind="pixel", weight=1.0, temperature=1.0):
        if kind not in LOSSES:
            raise ValueError(f"distillation kind must be one of {', '.join(LOSSES)}, got {kind!r}")
        self.teacher, self.kind = teacher, kind
        self.weight, self.temperature = float(weight), float(temperature)
        self.loss_fn = LOSSES[kind]

    def __call__(self, images, logits):
        self.teacher.eval()  # stays so even if someone called .train() on it
        with paddle.no_grad():
            target = self.teacher(images)[0]
        target.stop_gradient = True
        student = logits[0]
        if list(student.shape) != list(target.shape):
            raise ValueError(f"the student's logits {list(student.shape)} and the teacher's "
                             f"{list(target.shape)} differ in shape; distillation needs the same")
        return self.weight * self.loss_fn(student, target, self.temperature)
