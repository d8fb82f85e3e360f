"""A character TF-IDF + logistic regression baseline: the floor a neural model should clear.

    python -m bench.tfidf_baseline                       # usual_train -> usual_test, ~1 min on CPU
    python -m bench.tfidf_baseline --test_file virus_test_labeled.txt
    python -m bench.tfidf_baseline --save workspace/tfidf.pkl      # keep the fitted model, then
    python -m bench.tfidf_baseline --load workspace/tfidf.pkl --input_file posts.txt \
        --output labels.tsv                                        # label posts as inference.py

Same cleaning and the same metrics as the project (ewect.cleaning, ewect.metrics). --load labels
any posts file inference.py reads, one `id<TAB>label` line a post, in order: the command that
bench/frontier.py times whole against inference.py's (it imports neither torch nor transformers).
"""
import argparse
import pickle

from ewect.errors import HelpFormatter, UserError, run_cli


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data_dir", default=None,
                   help="folder with the raw files (default: bench/common.DEFAULT_DATA_DIR)")
    p.add_argument("--train_file", default="usual_train.txt", help="file name in --data_dir")
    p.add_argument("--test_file", default="usual_test_labeled.txt", help="file name in --data_dir")
    p.add_argument("--C", type=float, default=4.0, help="inverse regularisation strength")
    p.add_argument("--save", metavar="FILE", help="also save the fitted model (a pickle)")
    p.add_argument("--load", metavar="FILE",
                   help="label --input_file with a model saved by --save instead of fitting one")
    p.add_argument("--input_file", help="with --load: the posts to label")
    p.add_argument("--output", help="with --load: where the `id<TAB>label` lines go")
    args = p.parse_args()
    if args.load and not (args.input_file and args.output):
        p.error("--load needs --input_file and --output")
    return args


def fit(train_texts, train_labels, C=4.0):
    """The fitted {"vectorizer", "classifier"} of the baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    # Characters and their bigrams/trigrams: Chinese needs no word segmentation for this.
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    classifier = LogisticRegression(C=C, max_iter=2000)
    classifier.fit(vectorizer.fit_transform(train_texts), train_labels)
    return {"vectorizer": vectorizer, "classifier": classifier}


def predict(model, texts):
    """Label ids of cleaned texts."""
    return model["classifier"].predict(model["vectorizer"].transform(texts))


def tfidf_scores(data_dir, train_file, test_files, C=4.0, save=None):
    """{test file: accuracy, macro-F1, ...} of the baseline fitted once on train_file."""
    from bench.common import load_posts
    from ewect.metrics import classification_scores

    model = fit(*load_posts(data_dir, train_file, drop_empty=True), C)
    if save:
        with open(save, "wb") as f:
            pickle.dump(model, f)
    results = {}
    for name in test_files:
        test_texts, test_labels = load_posts(data_dir, name, drop_empty=False)
        results[name] = classification_scores(test_labels, predict(model, test_texts))
    return results


def label_file(model_path, input_file, output):
    """--load: each post of input_file cleaned, labelled and written as `id<TAB>label`."""
    from ewect.cleaning import clean_text
    from ewect.config import LABELS
    from ewect.data import read_posts

    try:
        with open(model_path, "rb") as f:
            model = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise UserError(f"--load {model_path}: not a model saved by --save ({err})") from None
    ids, texts = zip(*((post_id, clean_text(text)) for post_id, text in read_posts(input_file)))
    with open(output, "w", encoding="utf-8") as f:
        f.writelines(f"{post_id}\t{LABELS[label]}\n"
                     for post_id, label in zip(ids, predict(model, list(texts))))


def main():
    args = parse_args()
    if args.load:
        label_file(args.load, args.input_file, args.output)
        return
    import torch

    from bench.common import DEFAULT_DATA_DIR, describe_machine

    print(describe_machine(torch.device("cpu")))
    result = tfidf_scores(args.data_dir or DEFAULT_DATA_DIR, args.train_file, [args.test_file],
                          args.C, args.save)[args.test_file]
    print(f"char TF-IDF + logistic regression, {args.train_file} -> {args.test_file}: "
          f"accuracy {result['acc']:.4f}, macro-F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    run_cli(main)
