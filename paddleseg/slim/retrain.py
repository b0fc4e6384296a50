"""Retraining a pruned model: the fine-tuning recipe of a pruning run, and its final metrics."""
import os
import shutil

from ..core.train import train
from ..core.val import evaluate_metrics
from ..utils.progress import Phase


def retrain(o, cfg, model, work_dir):
    """Fine-tune with the config's optimizer, loss and schedule (``cfg`` from
    :meth:`~paddleseg.slim.options.PruneOptions.build_config`, which has put
    --retraining_iters, --batch_size and --learning_rate into it)."""
    if o.retraining_iters == 0:
        return
    train(model, cfg.train_dataset, optimizer=cfg.build_optimizer(model), save_dir=work_dir,
          iters=o.retraining_iters, batch_size=cfg.batch_size, save_interval=o.retraining_iters,
          log_iters=max(1, min(10, o.retraining_iters)), num_workers=o.num_workers,
          losses=cfg.loss, keep_checkpoint_max=1, seed=o.seed)


def retrain_and_evaluate(o, cfg, model, stage, val_dataset, timings):
    """Retrain the pruned ``model`` (checkpoints in a scratch folder of the stage, removed
    after), then its final metrics on the whole val split; both phases timed."""
    with Phase(timings, "retraining"):
        retrain(o, cfg, model, os.path.join(stage, "retrain"))
        shutil.rmtree(os.path.join(stage, "retrain"), ignore_errors=True)
    with Phase(timings, "final evaluation"):
        return evaluate_metrics(model, val_dataset, print_detail=True)


def miou(model, dataset, max_images=None):
    return evaluate_metrics(model, dataset, max_images, print_detail=False)["mIoU"]
