"""A character TF-IDF + logistic regression baseline: the floor a neural model should clear.

    python bench/tfidf_baseline.py                       # usual_train -> usual_test, ~1 min on CPU
    python bench/tfidf_baseline.py --test_file virus_test_labeled.txt

Same cleaning and the same metrics as the project (ewect.cleaning, ewect.metrics).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from bench.common import DEFAULT_DATA_DIR, describe_machine, load_posts  # noqa: E402
from ewect.errors import run_cli  # noqa: E402
from ewect.metrics import classification_scores  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the raw files")
    p.add_argument("--train_file", default="usual_train.txt", help="file name in --data_dir")
    p.add_argument("--test_file", default="usual_test_labeled.txt", help="file name in --data_dir")
    p.add_argument("--C", type=float, default=4.0, help="inverse regularisation strength")
    return p.parse_args()


def tfidf_scores(data_dir, train_file, test_files, C=4.0):
    """{test file: accuracy, macro-F1, ...} of the baseline fitted once on train_file."""
    train_texts, train_labels = load_posts(data_dir, train_file, drop_empty=True)
    # Characters and their bigrams/trigrams: Chinese needs no word segmentation for this.
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    classifier = LogisticRegression(C=C, max_iter=2000)
    classifier.fit(vectorizer.fit_transform(train_texts), train_labels)
    results = {}
    for name in test_files:
        test_texts, test_labels = load_posts(data_dir, name, drop_empty=False)
        results[name] = classification_scores(
            test_labels, classifier.predict(vectorizer.transform(test_texts)))
    return results


def main():
    args = parse_args()
    import torch

    print(describe_machine(torch.device("cpu")))
    result = tfidf_scores(args.data_dir, args.train_file, [args.test_file], args.C)[args.test_file]
    print(f"char TF-IDF + logistic regression, {args.train_file} -> {args.test_file}: "
          f"accuracy {result['acc']:.4f}, macro-F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    run_cli(main)
