"""Per-class decision offsets: a post gets argmax(log p + offset) instead of argmax(p). Fit for
macro-F1 on the eval file (train.py --tune_bias), saved as MODEL_DIR/decision.json beside the
weights, applied by test.py, inference.py and app.py (choose_offsets: --decision auto|FILE|none).
Macro-F1 rewards the rare classes (fear, surprise) more than argmax does; a few tenths of a point
in the competition's reports. Never fit on test."""
import json
import os
from pathlib import Path

import numpy as np

from .config import LABELS
from .errors import UserError, first_line
from .metrics import classification_scores

DECISION_FILE = "decision.json"
OFFSET_GRID = np.round(np.arange(-2.0, 2.0001, 0.1), 2)  # log-probability units


def decide(probabilities, offsets=None, temperature=1.0):
    """Label ids (numpy) of rows of probabilities, with offsets added to their logs if given.
    Offsets are in the units of the model's own log-probabilities; probabilities calibrated by
    a temperature T have logs divided by T, so the offsets are too: the labels stay the same."""
    if offsets is None:
        return probabilities.argmax(-1)
    return (np.log(np.clip(probabilities, 1e-12, None)) + offsets / temperature).argmax(-1)


def tune_offsets(probabilities, golds, rounds=3):
    """Offsets that maximise macro-F1 of decide() on these posts: coordinate ascent over
    OFFSET_GRID, one class at a time, a few rounds, starting from zero. A change is kept only when
    it is strictly better, so classes that gain nothing keep offset 0."""
    golds = np.asarray(golds)
    offsets = np.zeros(probabilities.shape[1])
    best = classification_scores(golds, decide(probabilities, offsets))["macro_f1"]
    for _ in range(rounds):
        improved = False
        for label in range(len(offsets)):
            for value in OFFSET_GRID:
                trial = offsets.copy()
                trial[label] = value
                f1 = classification_scores(golds, decide(probabilities, trial))["macro_f1"]
                if f1 > best + 1e-12:
                    best, offsets, improved = f1, trial, True
        if not improved:
            break
    return offsets, best


def save_offsets(folder, offsets, fitted_on):
    """FOLDER/decision.json, written aside and renamed: a kill never leaves half a file."""
    path = Path(folder) / DECISION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"offsets": dict(zip(LABELS, map(float, offsets))),
                               "fitted_on": fitted_on}, ensure_ascii=False, indent=2),
                   encoding="utf-8")
    os.replace(tmp, path)


def load_offsets(path):
    """The offsets (numpy, LABELS order) in a decision.json, or a one-line error."""
    try:
        offsets = json.loads(Path(path).read_text(encoding="utf-8"))["offsets"]
        return np.array([float(offsets[label]) for label in LABELS])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a decision file with offsets for {', '.join(LABELS)} "
                        f"({first_line(err)})") from None


def add_decision_arg(p):
    """--decision, the same flag in test.py, inference.py and app.py; see choose_offsets."""
    p.add_argument("--decision", default="auto",
                   help="decision offsets: auto (a single --model_dir's decision.json, if any), "
                        "a decision.json file, or none (plain argmax)")


def choose_offsets(model_dirs, decision="auto"):
    """(offsets or None, the file they came from) for --decision: 'none' is plain argmax, a path
    is that decision.json, and 'auto' is the decision.json of a single --model_dir if it has one.
    An ensemble gets offsets only from a file: its members' were fitted for each alone."""
    if decision == "none":
        return None, None
    if decision == "auto":
        path = Path(model_dirs[0]) / DECISION_FILE
        if len(model_dirs) > 1 or not path.is_file():
            return None, None
        decision = path
    return load_offsets(decision), str(decision)
