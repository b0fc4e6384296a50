"""Evaluation over a dataset: mIoU, accuracy, Kappa, Dice and per-class figures."""
import time

import numpy as np
import paddle

from paddleseg.utils import logger
from paddleseg.utils.progress import Progress
from . import metrics as M
from .infer import EvalOptions, predicted_labels, scores

WHOLE_IMAGE = EvalOptions()


class AucScores:
    """The softmax scores and labels of every labelled pixel evaluated, for the AUC-ROC (it
    ranks all of them at once; two classes keep class 1's score alone)."""

    def __init__(self, num_classes, ignore_index):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.probs, self.labels = [], []

    def add(self, image_scores, label):
        """One image: its scores [1, C, H, W] at the label's size, softmaxed as PaddleSeg does
        (ignored pixels left out: PaddleSeg refuses labels that hold any)."""
        probs = paddle.nn.functional.softmax(image_scores, axis=1).numpy()[0]
        probs = probs.reshape(self.num_classes, -1).T
        label = np.asarray(label).reshape(-1)
        keep = label != self.ignore_index
        self.probs.append((probs[:, 1:] if self.num_classes == 2 else probs)[keep]
                          .astype(np.float32))
        self.labels.append(label[keep])

    def value(self):
        """The AUC-ROC over every pixel added (None: no curve, one class only)."""
        if not self.labels:
            return None
        probs, labels = np.concatenate(self.probs), np.concatenate(self.labels)
        if self.num_classes == 2:   # only class 1's score was kept
            return M.binary_auc(probs[:, 0], labels == 1)
        return M.auc_roc(probs, labels, self.num_classes)


def accumulate_areas(model, dataset, max_images=None, progress=False,
                     labels_of=predicted_labels, options=WHOLE_IMAGE, auc=None):
    """Per-class intersection / predicted / label areas over the first ``max_images`` images;
    ``labels_of(logit, trans_info)`` makes the label map (``core.infer.predicted_labels``) of
    whole-image logits; ``options`` (EvalOptions) asks for sliding windows or multi-scale and
    flips instead; ``auc`` (AucScores) collects the scores."""
    was_training = model.training
    model.eval()
    not_finite = []

    # plain evaluation keeps its own path: labels_of may be another argmax (sensitivity's)
    plain = options.whole_image and auc is None

    def label_of(data):
        img = paddle.to_tensor(data["img"][None])
        logit = model(img)[0] if plain else scores(model, img, data["trans_info"], options)
        if not bool(paddle.isfinite(logit).all()):
            not_finite.append(data.get("img_path"))
        if plain:
            return labels_of(logit, data["trans_info"])
        if auc is not None:
            auc.add(logit, data["label"])
        return logit.argmax(axis=1).numpy()[0]

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


def evaluate_metrics(model, eval_dataset, max_images=None, print_detail=True,
                     options=WHOLE_IMAGE):
    """All metrics as a dict (see ``metrics.summarize``; with ``options.auc_roc``, "AUC_ROC"
    too)."""
    if print_detail:
        logger.info(f"evaluating {min(max_images or len(eval_dataset), len(eval_dataset))} images"
                    + describe(options))
    start = time.time()
    auc = AucScores(eval_dataset.num_classes, eval_dataset.ignore_index) \
        if options.auc_roc else None
    result = M.summarize(*accumulate_areas(model, eval_dataset, max_images, progress=print_detail,
                                           options=options, auc=auc))
    if auc is not None:
        result["AUC_ROC"] = auc.value()
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


def describe(options):
    """How the images are predicted, for the log (nothing for plain whole-image evaluation)."""
    parts = []
    if options.aug_eval:
        flips_named = [n for n, on in (("horizontal", options.flip_horizontal),
                                       ("vertical", options.flip_vertical)) if on]
        parts.append(f"scales {', '.join(f'{s:g}' for s in options.scales)}"
                     + (f", {' and '.join(flips_named)} flips" if flips_named else ""))
    if options.is_slide:
        parts.append(f"sliding windows {options.crop_size[0]}x{options.crop_size[1]} every "
                     f"{options.stride[0]}x{options.stride[1]}")
    if options.auc_roc:
        parts.append("AUC-ROC")
    return f" ({'; '.join(parts)})" if parts else ""


def evaluate(model, eval_dataset, aug_eval=False, scales=1.0, flip_horizontal=False,
             flip_vertical=False, is_slide=False, stride=None, crop_size=None, precision="fp32",
             amp_level="O1", num_workers=0, print_detail=True, auc_roc=False, max_images=None):
    """PaddleSeg's signature: returns (mIoU, Acc, class_IoU, class_precision, Kappa).

    ``aug_eval`` (``scales``, flips), ``is_slide`` (``crop_size``, ``stride``: width, height)
    and ``auc_roc`` act as in PaddleSeg (see core.infer.EvalOptions); fp16 is not implemented
    here (fp32, reported), ``amp_level`` only matters with it and ``num_workers`` only
    changes speed."""
    del amp_level, num_workers
    warn_unsupported("evaluate()", precision=(precision, "fp32"))
    options = EvalOptions.from_config(
        dict(aug_eval=aug_eval, scales=scales, flip_horizontal=flip_horizontal,
             flip_vertical=flip_vertical, is_slide=is_slide, stride=stride, crop_size=crop_size,
             auc_roc=auc_roc), where="evaluate()")
    r = evaluate_metrics(model, eval_dataset, max_images, print_detail, options)
    return (r["mIoU"], r["Acc"], np.array(r["class_IoU"]), np.array(r["class_precision"]),
            r["Kappa"])
