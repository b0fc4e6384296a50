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


def format_table(metrics):
    """A plain-text table of the headline numbers and per-class IoU."""
    head = (f"mIoU {metrics['mIoU']:.4f}  Acc {metrics['Acc']:.4f}  "
            f"Kappa {metrics['Kappa']:.4f}  Dice {metrics['Dice']:.4f}")
    rows = ["class  IoU     precision  recall  Dice"]
    for c, (iou, p, r, d) in enumerate(zip(metrics["class_IoU"], metrics["class_precision"],
                                           metrics["class_recall"], metrics["class_Dice"])):
        rows.append(f"{c:<6} {iou:.4f}  {p:.4f}     {r:.4f}  {d:.4f}")
    return head + "\n" + "\n".join(rows)
