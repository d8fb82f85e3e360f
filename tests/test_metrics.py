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

