"""Evaluation of a tile classifier: binary score metrics, the F1-optimal threshold, ROC points.

The *score* of a tile is the summed probability of the positive classes (the model card's
``positive_classes``); AUC, F1, accuracy, precision and recall are computed on ``score >= threshold``
against "is a positive class". With more than two classes the multi-class accuracy and the
confusion matrix of the arg-max class are reported as well. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np


def f1_optimal_threshold(y_bin: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising F1 of ``score >= t`` (REFERENCE.md §4: tuned on validation).

    Among thresholds with the best F1, the highest; it is then moved half-way to the next lower
    score, which keeps the same decisions on these data with more margin.
    """
    from sklearn.metrics import precision_recall_curve

    y_bin, score = np.asarray(y_bin).astype(int), np.asarray(score, dtype=float)
    if y_bin.min(initial=0) == y_bin.max(initial=0):
        return 0.5  # one class only: F1 is undefined; keep the neutral threshold
    precision, recall, thresholds = precision_recall_curve(y_bin, score)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    t = float(thresholds[best])
    lower = score[score < t]
    if lower.size:
        t = float((t + lower.max()) / 2)
    return float(min(max(t, 0.0), 1.0))


def roc_points(y_bin: np.ndarray, score: np.ndarray, max_points: int = 200) -> dict:
    """ROC curve as ``{"fpr": [...], "tpr": [...]}`` (at most ``max_points`` points, ends kept)."""
    from sklearn.metrics import roc_curve

    if len(set(np.asarray(y_bin).tolist())) < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y_bin, score)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def evaluate(probs: np.ndarray, y: np.ndarray, positive: list[int] | tuple[int, ...], threshold: float, *, n_classes: int | None = None) -> dict:
    """Metrics of ``probs`` (N × classes) against integer labels ``y`` at ``threshold`` on the positive score.

    Returns plain floats/ints/lists: ``n, n_positive, auc, f1, accuracy, precision, recall,
    threshold, confusion_binary`` (rows true negative/positive, columns predicted), and for more than
    two classes ``accuracy_multiclass`` and ``confusion`` (rows true, columns arg-max class).
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y).astype(int)
    n_classes = n_classes or probs.shape[1]
    score = probs[:, list(positive)].sum(axis=1)
    y_bin = np.isin(y, list(positive)).astype(int)
    pred = (score >= threshold).astype(int)
    both = len(set(y_bin.tolist())) == 2
    out = {
        "n": int(len(y)),
        "n_positive": int(y_bin.sum()),
        "auc": round(float(roc_auc_score(y_bin, score)), 4) if both else None,
        "f1": round(float(f1_score(y_bin, pred, zero_division=0)), 4),
        "accuracy": round(float((pred == y_bin).mean()), 4),
        "precision": round(float(precision_score(y_bin, pred, zero_division=0)), 4),
        "recall": round(float(recall_score(y_bin, pred, zero_division=0)), 4),
        "threshold": round(float(threshold), 4),
        "confusion_binary": confusion_matrix(y_bin, pred, labels=[0, 1]).tolist(),
    }
    arg = probs.argmax(1)
    if n_classes > 2:
        out["accuracy_multiclass"] = round(float((arg == y).mean()), 4)
    present = [c for c in range(n_classes) if (y == c).any()]
    out["balanced_accuracy"] = round(float(np.mean([(arg[y == c] == c).mean() for c in present])), 4) if present else None
    out["predicted_fraction_max"] = round(float(np.bincount(arg, minlength=n_classes).max() / max(len(arg), 1)), 4)
    out["confusion"] = confusion_matrix(y, arg, labels=list(range(n_classes))).tolist()
    return out


SUMMARY_KEYS = ("auc", "f1", "accuracy", "precision", "recall", "accuracy_multiclass", "balanced_accuracy", "predicted_fraction_max",
                "ece", "ece_uncalibrated")

# ----------------------------------------------------------------------------- quality gate

#: a model whose score separates the classes less than this (AUC) is at chance level
QUALITY_MIN_AUC = 0.65
#: balanced accuracy of the arg-max class must beat chance (1 / classes) by this much
QUALITY_MIN_BALANCED_ACCURACY_MARGIN = 0.10
#: a model giving one class to at least this share of the tiles "predicts one class" ...
QUALITY_MAX_PREDICTED_FRACTION = 0.95
#: ... unless that class really is at least this share of them
QUALITY_MAJORITY_EXEMPT = 0.80

QUALITY_RULE = (f"A training job's model fails the quality check when, on its test split (k-fold: the mean over the folds; no test split: "
                f"validation), the AUC of its score is below {QUALITY_MIN_AUC}, or the balanced accuracy of its predicted class is below "
                f"chance (1 / number of classes) + {QUALITY_MIN_BALANCED_ACCURACY_MARGIN:.2f}, or it gives one class to at least "
                f"{QUALITY_MAX_PREDICTED_FRACTION:.0%} of the tiles while that class is less than {QUALITY_MAJORITY_EXEMPT:.0%} of them.")


def quality_check(row: dict, n_classes: int) -> dict:
    """``{"status": "passed" | "failed", "reasons": [...], "split": ..., "rule": QUALITY_RULE}`` for one metrics row."""
    reasons = []
    auc = row.get("auc")
    if auc is not None and auc < QUALITY_MIN_AUC:
        reasons.append(f"AUC {auc:.3f} on {row.get('split')} is at chance level (below {QUALITY_MIN_AUC})")
    ba = row.get("balanced_accuracy")
    floor = 1.0 / n_classes + QUALITY_MIN_BALANCED_ACCURACY_MARGIN
    if ba is not None and ba < floor:
        reasons.append(f"balanced accuracy {ba:.3f} on {row.get('split')} is not above chance ({1.0 / n_classes:.2f}) by {QUALITY_MIN_BALANCED_ACCURACY_MARGIN:.2f}")
    frac = row.get("predicted_fraction_max")
    confusion = row.get("confusion")
    if frac is not None and frac >= QUALITY_MAX_PREDICTED_FRACTION:
        true_share = None
        if confusion:
            cm = np.asarray(confusion)
            top = int(cm.sum(0).argmax())
            true_share = float(cm[top].sum() / max(cm.sum(), 1))
        if true_share is None or true_share < QUALITY_MAJORITY_EXEMPT:
            reasons.append(f"it predicts one class for {frac:.0%} of the {row.get('split')} tiles")
    return {"status": "failed" if reasons else "passed", "reasons": reasons, "split": row.get("split"), "rule": QUALITY_RULE}


def mean_sd(rows: list[dict], keys=SUMMARY_KEYS) -> dict:
    """``{key: {"mean": m, "sd": s}}`` over fold metrics (sample s.d., ddof=1)."""
    out = {}
    for k in keys:
        values = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        if values:
            out[k] = {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4)}
    return out
