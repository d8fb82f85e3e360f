"""Classification metrics from a confusion matrix; the same numbers scikit-learn gives, plus the
official SMP2020-EWECT score.

Two "macro-F1"s: scikit-learn's (macro_f1) is the mean of the six per-class F1s, which the
published repo reported; the evaluation's official one (official_macro_f1) is the F1 of the
macro-averaged precision and recall, 2PR/(P+R).

Training keeps a running confusion matrix on the device (no host sync per step) and calls
scores() on it at log intervals; test.py calls it once on all predictions.
"""
import numpy as np

from .config import LABELS


def confusion_matrix(golds, preds, num_labels=len(LABELS)):
    """Counts[gold, predicted] as an int64 numpy array."""
    golds, preds = np.asarray(golds, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    flat = np.bincount(golds * num_labels + preds, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def _safe_divide(numerator, denominator):
    # scikit-learn's zero_division default: a score with nothing to divide by is 0.
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def scores(confusion):
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_pos = np.diag(confusion)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    f1 = _safe_divide(2 * true_pos, predicted + support)
    total = confusion.sum()
    precision, recall = _safe_divide(true_pos, predicted), _safe_divide(true_pos, support)
    return {
        "acc": float(true_pos.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "official_macro_f1": official_macro_f1(precision, recall),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
    }


def official_macro_f1(precision, recall):
    """SMP2020-EWECT's score: the F1 of macro-precision and macro-recall, 2PR/(P+R)."""
    p, r = float(np.mean(precision)), float(np.mean(recall))
    return 2 * p * r / (p + r) if p + r else 0.0


def classification_scores(golds, preds):
    return scores(confusion_matrix(golds, preds))


def format_report(result, confusion):
    """A per-class table and the confusion matrix, as text for the terminal."""
    lines = [f"{'label':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for i, label in enumerate(LABELS):
        lines.append(f"{label:<10}{result['precision'][i]:>10.4f}{result['recall'][i]:>10.4f}"
                     f"{result['f1'][i]:>10.4f}{result['support'][i]:>10d}")
    lines += ["", "confusion matrix (rows: gold, columns: predicted)",
              " " * 10 + "".join(f"{label:>9}" for label in LABELS)]
    for i, label in enumerate(LABELS):
        lines.append(f"{label:<10}" + "".join(f"{int(n):>9d}" for n in confusion[i]))
    return "\n".join(lines)


def confusion_counts(labels, logits):
    """Flat confusion matrix (gold * labels + predicted) of the posts with a gold label (not
    -100), on the device without a host sync (torch.bincount would sync to size its output).
    For training; torch is imported here, so that test.py with ONNX needs none."""
    import torch

    flat = labels.clamp(min=0) * len(LABELS) + logits.argmax(-1)
    counts = torch.zeros(len(LABELS) ** 2, dtype=torch.long, device=flat.device)
    return counts.index_add_(0, flat, (labels >= 0).long())
