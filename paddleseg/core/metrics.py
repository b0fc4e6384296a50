"""Segmentation metrics from per-class intersection and areas (a confusion-matrix summary)."""
import numpy as np


def calculate_area(pred, label, num_classes, ignore_index=255):
    """Per-class intersection, predicted area and label area over the non-ignored pixels."""
    pred = np.asarray(pred).reshape(-1)
    label = np.asarray(label).reshape(-1)
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels, label {label.size}")
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    pred_area = np.bincount(pred, minlength=num_classes)[:num_classes]
    label_area = np.bincount(label, minlength=num_classes)[:num_classes]
    intersect = np.bincount(label[pred == label], minlength=num_classes)[:num_classes]
    return intersect, pred_area, label_area


def _safe_div(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.where(b > 0, a / np.maximum(b, 1), 0.0)


def class_iou(intersect, pred_area, label_area):
    return _safe_div(intersect, pred_area + label_area - intersect)


def mean_iou(intersect, pred_area, label_area):
    """Mean over classes present in the label or the prediction (PaddleSeg averages all)."""
    return float(np.mean(class_iou(intersect, pred_area, label_area)))


def class_precision(intersect, pred_area):
    return _safe_div(intersect, pred_area)


def class_recall(intersect, label_area):
    return _safe_div(intersect, label_area)


def accuracy(intersect, pred_area):
    return float(np.sum(intersect) / max(np.sum(pred_area), 1))


def class_dice(intersect, pred_area, label_area):
    return _safe_div(2 * intersect, pred_area + label_area)


def kappa(intersect, pred_area, label_area):
    """Cohen's kappa: agreement beyond what the class frequencies give by chance."""
    total = float(np.sum(label_area))
    if total == 0:
        return 0.0
    po = np.sum(intersect) / total
    pe = float(np.sum(pred_area.astype(np.float64) * label_area)) / (total * total)
    return float((po - pe) / (1 - pe)) if pe != 1 else 0.0


def summarize(intersect, pred_area, label_area):
    """All metrics as a dict (lists per class)."""
    iou = class_iou(intersect, pred_area, label_area)
    dice = class_dice(intersect, pred_area, label_area)
    return {"mIoU": float(iou.mean()), "Acc": accuracy(intersect, pred_area),
            "Kappa": kappa(intersect, pred_area, label_area), "Dice": float(dice.mean()),
            "class_IoU": iou.tolist(), "class_precision": class_precision(intersect, pred_area).tolist(),
            "class_recall": class_recall(intersect, label_area).tolist(), "class_Dice": dice.tolist()}


def binary_auc(scores, positive):
    """Area under the ROC curve of ``scores`` for the pixels where ``positive``: the chance that
    a positive outscores a negative, ties counting half (the Mann-Whitney statistic, which is
    the trapezoidal ROC area scikit-learn's roc_auc_score gives). None when either side is
    empty."""
    from scipy.stats import rankdata
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)   # ties share their average rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_roc(probs, labels, num_classes):
    """PaddleSeg's AUC-ROC of softmax ``probs`` [P, C] for the ``labels`` [P] of P pixels: two
    classes, class 1's probability; more, the mean over classes of one-vs-rest AUCs (as
    roc_auc_score(multi_class="ovr")), over the classes the labels hold. None when the labels
    hold a single class (no curve)."""
    labels = np.asarray(labels)
    if num_classes == 2:
        return binary_auc(probs[:, 1], labels == 1)
    aucs = [binary_auc(probs[:, c], labels == c) for c in range(num_classes)]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def format_table(metrics):
    """A plain-text table of the headline numbers and per-class IoU."""
    head = (f"mIoU {metrics['mIoU']:.4f}  Acc {metrics['Acc']:.4f}  "
            f"Kappa {metrics['Kappa']:.4f}  Dice {metrics['Dice']:.4f}")
    if "AUC_ROC" in metrics:
        auc = metrics["AUC_ROC"]
        head += f"  AUC-ROC {'undefined (one class in the labels)' if auc is None else f'{auc:.4f}'}"
    rows = ["class  IoU     precision  recall  Dice"]
    for c, (iou, p, r, d) in enumerate(zip(metrics["class_IoU"], metrics["class_precision"],
                                           metrics["class_recall"], metrics["class_Dice"])):
        rows.append(f"{c:<6} {iou:.4f}  {p:.4f}     {r:.4f}  {d:.4f}")
    return head + "\n" + "\n".join(rows)
