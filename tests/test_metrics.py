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
