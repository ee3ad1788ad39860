"""Multi-label training and evaluation: the masked loss, AUROC / AP, and per-class operating points.

Targets are (N, C) floats: 1, 0, or NaN where the label is unknown. Unknown cells take no
part in the loss or in any metric. The metrics are scikit-learn's (``roc_auc_score``,
``average_precision_score``, ``roc_curve``, ``precision_recall_curve``); a class whose known
labels in a split are all one value has no AUROC there (NaN, left out of the macro mean).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

THRESHOLD_RULES = ("f1", "youden")
POS_WEIGHTS = ("none", "balanced")
DEFAULT_THRESHOLD = 0.5  # without a validation split


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the known cells of ``targets`` (N, C); NaN: unknown.

    A batch with no known cell gives 0 (with a gradient path, so DDP and accumulation still work).
    """
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(
        logits, torch.where(known, targets, torch.zeros_like(targets)), pos_weight=pos_weight, reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def balanced_pos_weight(targets: torch.Tensor) -> torch.Tensor:
    """``--pos-weight balanced``: negatives / positives per class over the known training labels (C,);
    1 for a class without negatives or positives (never 0: its positives would teach nothing)."""
    positives = (targets == 1).sum(0).float()
    negatives = (targets == 0).sum(0).float()
    one_sided = (positives == 0) | (negatives == 0)
    return torch.where(one_sided, torch.ones_like(positives), negatives / positives.clamp(min=1))


def one_sided_classes(targets: torch.Tensor, class_names: list[str]) -> str | None:
    """A warning line naming the classes whose known training labels are all one value, or None."""
    positives, negatives = (targets == 1).sum(0).tolist(), (targets == 0).sum(0).tolist()
    counts = zip(class_names, positives, negatives, strict=True)
    lacking = [f"{n} (no {'negative' if not neg else 'positive'})" for n, pos, neg in counts if not pos or not neg]
    if not lacking:
        return None
    return (f"warning: class(es) {', '.join(lacking)} have one label value in the training split: the model "
            "cannot learn to tell them apart (their pos_weight is 1, not 0)")  # fmt: skip


def one_vs_rest_auroc(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Single-label classes scored as findings: each class's AUROC of its softmax probability
    against all other classes (N, C probs; N class indices), and their macro mean over the
    classes that have both positives and negatives in ``targets``."""
    from sklearn.metrics import roc_auc_score

    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    auroc = []
    for c in range(probs.shape[1]):
        y = (targets == c).astype(int)
        auroc.append(float(roc_auc_score(y, probs[:, c])) if _has_both(y) else math.nan)
    return {"auroc_macro": _nanmean(auroc), "auroc_classes": sum(not math.isnan(v) for v in auroc), "auroc": auroc}


def _known(probs: np.ndarray, targets: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(targets[:, c])
    return targets[keep, c].astype(int), probs[keep, c]


def _has_both(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < y.sum() < y.size


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Per-class AUROC and average precision, their macro means, micro AUROC, prevalence (N, C) -> dict.

    ``auroc_macro`` (the headline) averages the classes that have both labels among their known
    cells; ``auroc_micro`` pools every known cell of every class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    auroc, ap, prevalence, known = [], [], [], []
    for c in range(targets.shape[1]):
        y, p = _known(probs, targets, c)
        both = _has_both(y)
        auroc.append(float(roc_auc_score(y, p)) if both else math.nan)
        ap.append(float(average_precision_score(y, p)) if both else math.nan)
        prevalence.append(float(y.mean()) if y.size else math.nan)
        known.append(int(y.size))
    mask = ~np.isnan(targets)
    y_all, p_all = targets[mask].astype(int), probs[mask]
    return {
        "auroc_macro": _nanmean(auroc),
        "auroc_classes": sum(not math.isnan(v) for v in auroc),  # how many classes the macro mean is over
        "auroc_micro": float(roc_auc_score(y_all, p_all)) if _has_both(y_all) else math.nan,
        "ap_macro": _nanmean(ap),
        "auroc": auroc,
        "average_precision": ap,
        "prevalence": prevalence,
        "known": known,
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def choose_thresholds(probs: np.ndarray, targets: np.ndarray, rule: str = "f1") -> list[float]:
    """One threshold per class (predict positive when probability >= threshold), chosen on these labels.

    ``f1``: the threshold of the highest F1 (precision-recall curve); ``youden``: of the highest
    sensitivity + specificity - 1 (ROC curve). A class without both labels gets 0.5.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}; got {rule!r}")
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    out = []
    for c in range(targets.shape[1]):
        y, p = _known(probs, targets, c)
        if not _has_both(y):
            out.append(DEFAULT_THRESHOLD)
            continue
        if rule == "f1":
            precision, recall, thresholds = precision_recall_curve(y, p)
            # the last (precision, recall) pair has no threshold: it is the "predict nothing" end
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            out.append(float(thresholds[int(np.argmax(f1))]))
        else:
            fpr, tpr, thresholds = roc_curve(y, p)
            finite = np.isfinite(thresholds)  # the first threshold is +inf (nothing positive)
            j = np.flatnonzero(finite)[int(np.argmax((tpr - fpr)[finite]))]
            out.append(float(thresholds[j]))
    return out


def threshold_sources(targets: np.ndarray, rule: str, class_names: list[str]) -> dict[str, str]:
    """How :func:`choose_thresholds` chose each class's threshold on these (validation) labels."""
    targets = np.asarray(targets, dtype=np.float64)
    words = {"f1": "max F1 on validation", "youden": "max Youden's J on validation"}[rule]
    out = {}
    for c, name in enumerate(class_names):
        y = targets[~np.isnan(targets[:, c]), c]
        if _has_both(y):
            out[name] = words
        else:
            lacking = "known labels" if not y.size else ("positives" if not y.sum() else "negatives")
            out[name] = f"{DEFAULT_THRESHOLD}: class {name} has no {lacking} in validation"
    return out


def operating_points(probs: np.ndarray, targets: np.ndarray, thresholds: list[float]) -> dict:
    """Sensitivity, specificity, precision and F1 per class at ``thresholds`` (NaN where undefined),
    from scikit-learn's confusion matrix of each class's known labels."""
    from sklearn.metrics import confusion_matrix

    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    out: dict[str, list[float]] = {"sensitivity": [], "specificity": [], "precision": [], "f1": []}
    for c, threshold in enumerate(thresholds):
        y, p = _known(probs, targets, c)
        tn, fp, fn, tp = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel().tolist()
        out["sensitivity"].append(tp / (tp + fn) if tp + fn else math.nan)
        out["specificity"].append(tn / (tn + fp) if tn + fp else math.nan)
        out["precision"].append(tp / (tp + fp) if tp + fp else math.nan)
        out["f1"].append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan)
    return out


def roc_curves(probs: np.ndarray, targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(false positive rate, true positive rate) per class from scikit-learn's ``roc_curve``."""
    from sklearn.metrics import roc_curve

    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    curves = []
    for c in range(targets.shape[1]):
        y, p = _known(probs, targets, c)
        curves.append(roc_curve(y, p)[:2] if _has_both(y) else None)
    return curves
