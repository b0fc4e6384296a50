"""Retraining a pruned model: the fine-tuning recipe of a pruning run, and its final metrics.

The recipe (issue 22's accuracy recovery), all off by default until the benchmark shows a
winner: ``--retrain_schedule`` (``config``: the config's lr_scheduler over --retraining_iters;
``finetune``: linear warm-up then cosine decay, see :func:`build_schedule`) and ``--distill``
(from the unpruned model, :mod:`paddleseg.slim.distill`)."""
import os
import shutil

import paddle

from ..core.train import train
from ..core.val import evaluate_metrics
from ..utils import logger
from ..utils.progress import Phase
from .distill import Distillation
from .options import DEFAULT_FINETUNE_LR_SCALE

SCHEDULES = ("config", "finetune")
WARMUP_SHARE = 0.05  # of the retraining iterations, the finetune schedule's warm-up


def warmup_iters(iters):
    """The finetune schedule's warm-up: the first 5% of ``iters`` (at least 1)."""
    return max(1, int(iters * WARMUP_SHARE))


def finetune_lr(o, cfg):
    """The finetune schedule's peak rate: --learning_rate if given, else the config's
    lr_scheduler.learning_rate times --finetune_lr_scale."""
    if o.learning_rate is not None:
        return float(o.learning_rate)
    return float(cfg.dic["lr_scheduler"]["learning_rate"]) * finetune_lr_scale(o)


def finetune_lr_scale(o):
    return DEFAULT_FINETUNE_LR_SCALE if o.finetune_lr_scale is None else o.finetune_lr_scale


def build_schedule(o, cfg):
    """The retraining's learning-rate schedule. ``finetune``: from 0 up to the peak rate over
    the warm-up W (linear), then cosine decay towards 0 over the remaining iterations; the
    rate of (1-based) iteration i is ``peak * (i-1) / W`` while i-1 < W, else
    ``peak * (1 + cos(pi * (i-1-W) / (iters-W))) / 2``. ``config``: the config's own."""
    if o.retrain_schedule == "config":
        return cfg.build_lr_scheduler()
    iters, peak = o.retraining_iters, finetune_lr(o, cfg)
    warm = warmup_iters(iters)
    cosine = paddle.optimizer.lr.CosineAnnealingDecay(peak, T_max=max(1, iters - warm), eta_min=0.0)
    return paddle.optimizer.lr.LinearWarmup(cosine, warm, 0.0, peak)


def recipe(o, cfg):
    """What report.json records of how the pruned model was retrained."""
    r = {"schedule": o.retrain_schedule, "distill": o.distill, "prune_steps": o.prune_steps}
    if o.reconstruct:
        r["reconstruct_batches"] = o.reconstruct
    if o.retrain_schedule == "finetune":
        r.update(learning_rate=finetune_lr(o, cfg), warmup_iters=warmup_iters(o.retraining_iters),
                 finetune_lr_scale=None if o.learning_rate is not None else finetune_lr_scale(o))
    if o.distill != "none":
        r.update(distill_weight=o.distill_weight, distill_temperature=o.distill_temperature)
    return r


def retrain(o, cfg, model, work_dir, teacher=None, resume_model=None, save_interval=None):
    """Fine-tune with the config's optimizer and loss (``cfg`` from
    :meth:`~paddleseg.slim.options.PruneOptions.build_config`, which has put
    --retraining_iters, --batch_size and --learning_rate into it), the --retrain_schedule and,
    with --distill, the ``teacher`` (:func:`paddleseg.slim.distill.make_teacher` of the
    unpruned model). Checkpoints go to ``work_dir`` every ``save_interval`` iterations (default:
    at the end only); ``resume_model``: one of them, to continue from."""
    if o.retraining_iters == 0:
        return
    extra_loss = None
    if (o.retrain_schedule, o.distill, o.prune_steps, o.reconstruct) != ("config", "none", 1, 0):  # every rank says
        logger.info("retraining recipe: " + ", ".join(
            f"{k} {v}" for k, v in recipe(o, cfg).items() if v is not None), every_rank=True)
    if o.distill != "none":
        if teacher is None:
            raise ValueError("--distill needs the teacher (the unpruned model)")
        extra_loss = Distillation(teacher, o.distill, o.distill_weight, o.distill_temperature)
    optimizer = cfg.build_optimizer(model, build_schedule(o, cfg))
    train(model, cfg.train_dataset, optimizer=optimizer, save_dir=work_dir,
          iters=o.retraining_iters, batch_size=cfg.batch_size, resume_model=resume_model,
          save_interval=save_interval or o.retraining_iters,
          log_iters=max(1, min(10, o.retraining_iters)), num_workers=o.num_workers,
          losses=cfg.loss, keep_checkpoint_max=1, seed=o.seed, extra_loss=extra_loss)


def retrain_and_evaluate(o, cfg, model, stage, val_dataset, timings, teacher=None):
    """Retrain the pruned ``model`` (checkpoints in a scratch folder of the stage, removed
    after), then its final metrics on the whole val split; both phases timed."""
    with Phase(timings, "retraining"):
        retrain(o, cfg, model, os.path.join(stage, "retrain"), teacher)
        shutil.rmtree(os.path.join(stage, "retrain"), ignore_errors=True)
    with Phase(timings, "final evaluation"):
        return evaluate_metrics(model, val_dataset, print_detail=True)


def miou(model, dataset, max_images=None):
    return evaluate_metrics(model, dataset, max_images, print_detail=False)["mIoU"]
