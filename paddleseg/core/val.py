"""Evaluation over a dataset: mIoU, accuracy, Kappa, Dice and per-class figures."""
import time

import numpy as np
import paddle

from paddleseg.utils import logger
from paddleseg.utils.progress import Progress
from . import metrics as M
from .infer import predicted_labels


def accumulate_areas(model, dataset, max_images=None, progress=False,
                     labels_of=predicted_labels):
    """Per-class intersection / predicted / label areas over the first ``max_images`` images;
    ``labels_of(logit, trans_info)`` makes the label map (``core.infer.predicted_labels``)."""
    was_training = model.training
    model.eval()
    not_finite = []

    def label_of(data):
        logit = model(paddle.to_tensor(data["img"][None]))[0]
        if not bool(paddle.isfinite(logit).all()):
            not_finite.append(data.get("img_path"))
        return labels_of(logit, data["trans_info"])

    with paddle.no_grad():
        totals = areas_of(label_of, dataset, max_images, progress)
    if was_training:
        model.train()
    if not_finite:  # argmax of NaN is class 0: the figures would look normal
        n = len(dataset) if max_images is None else min(max_images, len(dataset))
        logger.warning(f"the model gave NaN or infinite logits on {len(not_finite)} of {n} "
                       f"images (first: {not_finite[0]}): THESE METRICS ARE MEANINGLESS; "
                       "check the weights")
    return totals


def areas_of(label_of, dataset, max_images=None, progress=False):
    """:func:`accumulate_areas` for any predictor: ``label_of(sample)`` is the sample's
    predicted label map ``[H, W]`` at its original size (numpy)."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    num_classes = dataset.num_classes
    totals = [np.zeros(num_classes, np.int64) for _ in range(3)]
    bar = Progress(n, "eval") if progress else None
    for i in range(n):
        data = dataset[i]
        pred = label_of(data)
        for t, a in zip(totals, M.calculate_area(pred, data["label"], num_classes,
                                                 dataset.ignore_index)):
            t += a
        if bar:
            bar.step(i + 1)
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


def warn_unsupported(where, **given):
    """PaddleSeg keywords accepted for compatibility but not implemented here: a value other
    than the default (``name=(value, default)``) is reported rather than silently ignored."""
    for name, (value, default) in given.items():
        if value != default:
            logger.warning(f"{where}: {name}={value!r} is not supported here and is ignored")


def evaluate(model, eval_dataset, aug_eval=False, scales=1.0, flip_horizontal=False,
             flip_vertical=False, is_slide=False, stride=None, crop_size=None, precision="fp32",
             amp_level="O1", num_workers=0, print_detail=True, auc_roc=False, max_images=None):
    """PaddleSeg's signature: returns (mIoU, Acc, class_IoU, class_precision, Kappa).

    The keywords from ``aug_eval`` to ``auc_roc`` are PaddleSeg's; this evaluator implements none
    of them (whole-image, fp32, in-process reading, no AUC-ROC), so a value asking for one of
    them is reported. ``scales`` / flips only act with ``aug_eval``, ``stride`` / ``crop_size``
    only with ``is_slide``, ``amp_level`` only with fp16; ``num_workers`` only changes speed."""
    del scales, flip_horizontal, flip_vertical, stride, crop_size, amp_level, num_workers
    warn_unsupported("evaluate()", aug_eval=(aug_eval, False), is_slide=(is_slide, False),
                     precision=(precision, "fp32"), auc_roc=(auc_roc, False))
    r = evaluate_metrics(model, eval_dataset, max_images, print_detail)
    return (r["mIoU"], r["Acc"], np.array(r["class_IoU"]), np.array(r["class_precision"]),
            r["Kappa"])
