"""Evaluate a trained checkpoint on a labelled file: accuracy, macro-F1, per-class table,
confusion matrix (printed and as PNG) and a predictions file.

    python test.py                                               # workspace/wb/best on usual_test
    python test.py --data_file data/clean/virus_test_labeled.txt
    python test.py --device cpu --int8                           # faster on CPU: bench/RESULTS.md
    python test.py --backend onnx --int8                         # after `python export.py`

Texts go through the same cleaning as in training (it is idempotent), so raw files work too.
Two macro-F1s are printed: scikit-learn's (mean of per-class F1, what the published repo
reported) and the official SMP2020-EWECT one (F1 of macro-precision and macro-recall).
Outputs go to --output_dir: NAME.predictions.csv (id, text, gold, predicted, one probability
per label), NAME.confusion.png and NAME.metrics.json, NAME being the data file's name.
"""
import argparse
import json
import os

from ewect.config import BEST_DIR, LABELS, MAX_LENGTH, TEST_FILE, WORKSPACE
from ewect.errors import positive_int, run_cli
from ewect.prediction import BACKENDS


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_dir", default=BEST_DIR, help="checkpoint folder written by train.py")
    p.add_argument("--data_file", default=TEST_FILE, help="labelled SMP2020-EWECT JSON file")
    p.add_argument("--output_dir", default=os.path.join(WORKSPACE, "test"),
                   help="where predictions, metrics and the confusion-matrix PNG go")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="posts per forward pass; None: the measured best for the device")
    p.add_argument("--max_length", type=positive_int, default=MAX_LENGTH,
                   help="tokens kept per post")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="torch: the checkpoint; onnx: its export by export.py (CPU)")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantization of the Linear layers (CPU only)")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="skip and count unusable records instead of stopping")
    return p.parse_args()


def plot_confusion(confusion, path, title):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xticklabels=LABELS,
           yticklabels=LABELS, xlabel="predicted", ylabel="gold", title=title)
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, int(count), ha="center", va="center",
                color="white" if count > confusion.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    args = parse_args()
    from ewect.config import LABEL2ID
    from ewect.data import clean_records, read_records
    from ewect.metrics import confusion_matrix, format_report, scores
    from ewect.prediction import load_predictor

    # Cleaned as in training; cleaning is idempotent, so cleaned files stay as they are.
    records = clean_records(read_records(args.data_file, skip_bad_records=args.skip_bad_records),
                            drop_empty=False)
    predictor = load_predictor(args.model_dir, args.backend, args.device, args.int8)
    texts = [r.content for r in records]
    probs = predictor.predict(texts, args.batch_size, args.max_length)
    golds, preds = [LABEL2ID[r.label] for r in records], probs.argmax(-1)
    confusion = confusion_matrix(golds, preds)
    result = scores(confusion)

    name = os.path.splitext(os.path.basename(args.data_file))[0]
    print(f"{args.data_file}: {len(records)} posts, model {args.model_dir} ({args.backend}"
          f"{', int8' if args.int8 else ''})")
    print(f"accuracy {result['acc']:.4f}  macro-F1 {result['macro_f1']:.4f} (scikit-learn: mean "
          f"of per-class F1)  official macro-F1 {result['official_macro_f1']:.4f} (F1 of "
          "macro-P and macro-R)\n")
    print(format_report(result, confusion))

    import pandas as pd

    os.makedirs(args.output_dir, exist_ok=True)
    out = os.path.join(args.output_dir, name)
    table = pd.DataFrame({"id": [r.id for r in records], "text": texts,
                          "gold": [r.label for r in records],
                          "predicted": [LABELS[i] for i in preds]})
    for i, label in enumerate(LABELS):
        table[f"p_{label}"] = probs[:, i].round(6)
    table.to_csv(out + ".predictions.csv", index=False)
    with open(out + ".metrics.json", "w", encoding="utf-8") as f:
        json.dump({"data_file": args.data_file, "model_dir": args.model_dir, "backend": args.backend,
                   "int8": args.int8, "posts": len(records), "accuracy": result["acc"],
                   "macro_f1": result["macro_f1"],
                   "official_macro_f1": result["official_macro_f1"], "confusion": confusion.tolist()}, f, indent=2)
    plot_confusion(confusion, out + ".confusion.png",
                   f"{name}: acc {result['acc']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    print(f"\nwrote {out}.predictions.csv, {out}.metrics.json, {out}.confusion.png")


if __name__ == "__main__":
    run_cli(main)
