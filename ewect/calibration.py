"""Calibrated probabilities: one temperature T (Guo et al. 2017) fitted on the eval posts by
negative log-likelihood, so that "angry 0.93" is right about 93% of the time.

    python calibrate.py --model_dir workspace/wb/best     # an existing checkpoint; train.py
                                                          # calibrates best/ when it finishes

A model's probabilities p become softmax(log p / T). Every path that prints probabilities
applies it (torch, --int8, ONNX, ensembles, the demo); labels do not change, since dividing the
log-probabilities by T > 0 keeps their order (decision offsets are divided by T as well).
MODEL_DIR/calibration.json holds T, the scores before and after, and what the corrections of
emotion shares need (ewect/shares.py): the eval posts' gold labels and uncalibrated
probabilities, and the shares of the labels in the training posts.
"""
import json
import os
from pathlib import Path

import numpy as np

from .config import LABELS
from .errors import UserError, first_line

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15  # equal-width bins of the top label's probability, as in Guo et al.
# Not below 0.25: decision offsets (at most 2 in size) are divided by T, and at a smaller T
# they could lift a class whose calibrated probability fell under decide()'s floor of 1e-12.
TEMPERATURE_RANGE = (0.25, 20.0)


def with_temperature(probabilities, temperature):
    """softmax(log p / T) of each row, in float32; T = 1 gives p back."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-30, None))
    logits = logits / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(probabilities, golds):
    rows = np.asarray(probabilities, dtype=np.float64)[np.arange(len(golds)), golds]
    return float(-np.log(np.clip(rows, 1e-30, None)).mean())


def brier_score(probabilities, golds):
    """Mean over posts of the squared distance between the probabilities and the one-hot gold."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return float(((probabilities - np.eye(probabilities.shape[1])[golds]) ** 2).sum(1).mean())


def reliability(probabilities, golds, bins=ECE_BINS):
    """(mean top probability, accuracy, posts) of each equal-width bin of the top probability."""
    confidence = np.asarray(probabilities).max(1)
    correct = np.asarray(probabilities).argmax(1) == np.asarray(golds)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean = np.bincount(which, confidence, bins) / np.maximum(counts, 1)
    accuracy = np.bincount(which, correct, bins) / np.maximum(counts, 1)
    return mean, accuracy, counts


def expected_calibration_error(probabilities, golds, bins=ECE_BINS):
    """Σ over bins of (posts in the bin / posts) x |accuracy - mean top probability|."""
    mean, accuracy, counts = reliability(probabilities, golds, bins)
    return float((counts * np.abs(accuracy - mean)).sum() / max(counts.sum(), 1))


def calibration_scores(probabilities, golds):
    return {"ece": expected_calibration_error(probabilities, golds),
            "nll": negative_log_likelihood(probabilities, golds),
            "brier": brier_score(probabilities, golds)}


def fit_temperature(probabilities, golds):
    """The T in TEMPERATURE_RANGE of least negative log-likelihood (a bounded 1-d search on
    log T: the likelihood is smooth and has one minimum in T)."""
    from scipy.optimize import minimize_scalar

    golds = np.asarray(golds)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(with_temperature(probabilities, np.exp(log_t)),
                                              golds),
        bounds=np.log(TEMPERATURE_RANGE), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def calibrate(folder, probabilities, golds, training_labels, fitted_on):
    """Fit T on the eval posts' uncalibrated probabilities and gold label ids, and write
    FOLDER/calibration.json (aside, then renamed). Returns what was written."""
    golds = np.asarray(golds, dtype=np.int64)
    if len(golds) == 0:
        raise UserError(f"{fitted_on}: no posts to calibrate on")
    temperature = fit_temperature(probabilities, golds)
    training = np.bincount(training_labels, minlength=len(LABELS)) / max(len(training_labels), 1)
    record = {
        "temperature": round(temperature, 4), "fitted_on": fitted_on, "posts": len(golds),
        "before": calibration_scores(probabilities, golds),
        "after": calibration_scores(with_temperature(probabilities, temperature), golds),
        "training_shares": dict(zip(LABELS, training.round(6).tolist())),
        "eval_labels": golds.tolist(),
        "eval_probabilities": np.round(np.asarray(probabilities, dtype=np.float64), 6).tolist(),
    }
    path = Path(folder) / CALIBRATION_FILE
    path.with_suffix(".tmp").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)
    return record


def load_calibration(folder):
    """FOLDER/calibration.json with its arrays as numpy, or None when the folder has none."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["temperature"] = float(record["temperature"])
        record["eval_labels"] = np.asarray(record["eval_labels"], dtype=np.int64)
        record["eval_probabilities"] = np.asarray(record["eval_probabilities"],
                                                  dtype=np.float32).reshape(-1, len(LABELS))
        record["training_shares"] = np.array([float(record["training_shares"][label])
                                              for label in LABELS])
        if not (record["temperature"] > 0 and len(record["eval_labels"])
                == len(record["eval_probabilities"])):
            raise ValueError("temperature or eval posts out of shape")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a calibration file ({first_line(err)}); write it again "
                        f"with `python calibrate.py --model_dir {folder}`") from None
    return record


def plot_reliability(probabilities, calibrated, golds, path, title):
    """A reliability diagram: accuracy against mean top probability per bin, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for rows, name in ((probabilities, "model"), (calibrated, "calibrated")):
        mean, accuracy, counts = reliability(rows, golds)
        kept = counts > 0
        ece = expected_calibration_error(rows, golds)
        ax.plot(mean[kept], accuracy[kept], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top label's probability (mean per bin)",
           ylabel="accuracy", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe_calibration(record):
    """One line: the temperature and the scores it changed, for train.py's log and calibrate.py."""
    return (f"temperature {record['temperature']:.3f} fitted on {record['posts']} posts of "
            f"{record['fitted_on']}: " + ", ".join(
                f"{name} {record['before'][key]:.4f} -> {record['after'][key]:.4f}"
                for name, key in (("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier"))))
