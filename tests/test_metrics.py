"""Our metrics are scikit-learn's, over all six labels."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from ewect.config import LABELS
from ewect.metrics import classification_scores

label_ids = st.integers(0, len(LABELS) - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(label_ids, label_ids), min_size=1, max_size=60))
def test_metrics_equal_scikit_learn(pairs):
    golds, preds = map(list, zip(*pairs))
    ours = classification_scores(golds, preds)
    labels = list(range(len(LABELS)))
    assert np.isclose(ours["acc"], accuracy_score(golds, preds))
    assert np.isclose(ours["macro_f1"],
                      f1_score(golds, preds, average="macro", labels=labels, zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(
        golds, preds, labels=labels, zero_division=0)
    assert np.allclose(ours["precision"], precision) and np.allclose(ours["recall"], recall)
    assert np.allclose(ours["f1"], f1) and (ours["support"] == support).all()


def test_official_macro_f1_is_the_f1_of_macro_precision_and_recall():
    # gold 0,0,0,1 predicted 0,0,1,1: precision happy 1, angry 1/2; recall happy 2/3, angry 1;
    # the other four labels are absent and score 0. P = 1.5/6 = 1/4, R = (5/3)/6 = 5/18,
    # official = 2PR/(P+R) = (5/36)/(19/36) = 5/19; scikit-learn's mean F1 = (0.8 + 2/3)/6 = 11/45.
    result = classification_scores([0, 0, 0, 1], [0, 0, 1, 1])
    assert np.isclose(result["official_macro_f1"], 5 / 19)
    assert np.isclose(result["macro_f1"], 11 / 45)


def test_decision_offsets_raise_macro_f1_and_zero_offsets_are_argmax(tmp_path):
    """A model that under-predicts a rare class: tuned offsets recover it; offsets of zero (and
    none) decide by argmax; what is saved is what is loaded."""
    from ewect.decision import decide, load_offsets, save_offsets, tune_offsets

    rng = np.random.default_rng(0)
    golds = rng.choice(len(LABELS), 3000, p=[0.3, 0.3, 0.2, 0.05, 0.05, 0.1])
    logits = rng.normal(size=(3000, len(LABELS)))
    logits[np.arange(3000), golds] += 1.5
    logits[:, 3] -= 1.0  # fear is hardly ever predicted
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    before = classification_scores(golds, decide(probs))["macro_f1"]
    offsets, after = tune_offsets(probs, golds)
    assert after == classification_scores(golds, decide(probs, offsets))["macro_f1"]
    assert after > before + 0.02 and offsets[3] > 0.5
    assert (decide(probs, np.zeros(len(LABELS))) == probs.argmax(-1)).all()
    save_offsets(tmp_path, offsets, "eval.txt")
    assert np.allclose(load_offsets(tmp_path / "decision.json"), offsets)


def test_a_malformed_decision_file_is_one_clear_error(tmp_path):
    import pytest

    from ewect.decision import load_offsets
    from ewect.errors import UserError

    path = tmp_path / "decision.json"
    path.write_text('{"offsets": {"happy": 0.1}}')
    with pytest.raises(UserError, match="decision.json: not a decision file"):
        load_offsets(path)
