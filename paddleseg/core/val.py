"""Evaluation over a dataset: mIoU, accuracy, Kappa, Dice and per-class figures."""
import time

import numpy as np
import paddle

from paddleseg.utils import logger
from paddleseg.utils.progress import Progress
from . import metrics as M
from .infer import inference


def accumulate_areas(model, dataset, max_images=None, progress=False):
    """Per-class intersection / predicted / label areas over the first ``max_images`` images."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    num_classes = dataset.num_classes
    totals = [np.zeros(num_classes, np.int64) for _ in range(3)]
    bar = Progress(n, "eval") if progress else None
    was_training = model.training
    model.eval()
    with paddle.no_grad():
        for i in range(n):
            data = dataset[i]
            img = paddle.to_tensor(data["img"][None])
            logit = inference(model, img, data["trans_info"])
            pred = logit.argmax(axis=1).numpy()[0]
            for t, a in zip(totals, M.calculate_area(pred, data["label"], num_classes,
                                                     dataset.ignore_index)):
                t += a
            if bar:
                bar.step(i + 1)
    if was_training:
        model.train()
    return totals


def evaluate_metrics(model, eval_dataset, max_images=None, print_detail=True):
    """All metrics as a dict (see ``metrics.summarize``)."""
    if print_detail:
        logger.info(f"evaluating {min(max_images or len(eval_dataset), len(eval_dataset))} images")
    start = time.time()
    result = M.summarize(*accumulate_areas(model, eval_dataset, max_images, progress=print_detail))
    result["seconds"] = time.time() - start
    if print_detail:
        logger.info("metrics:\n" + M.format_table(result))
    return result


def evaluate(model, eval_dataset, aug_eval=False, num_workers=0, print_detail=True, max_images=None,
             **_ignored):
    """PaddleSeg's signature: returns (mIoU, Acc, class_IoU, class_precision, Kappa)."""
    r = evaluate_metrics(model, eval_dataset, max_images, print_detail)
    return (r["mIoU"], r["Acc"], np.array(r["class_IoU"]), np.array(r["class_precision"]),
            r["Kappa"])
