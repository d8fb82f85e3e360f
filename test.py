"""Evaluate a trained checkpoint (or an ensemble) on labelled files: accuracy, macro-F1,
per-class table, confusion matrix (printed and as PNG) and a predictions file.

    python test.py                                               # workspace/wb/best on usual_test
    python test.py --dataset virus                               # wb_virus/best on virus_test
    python test.py --dataset both                                # usual_test and virus_test
    python test.py --data_file data/clean/virus_test_labeled.txt
    python test.py --model_dir runA/best runB/best               # ensemble: mean probabilities
    python test.py --decision none                               # ignore best/decision.json
    python test.py --device cpu --int8                           # faster on CPU: bench/RESULTS.md
    python test.py --backend onnx --int8                         # after `python export.py`
    python test.py --precision fp32            # exact fp32 where auto picks bf16 (see --help)
    python test.py --errors 5          # + the 5 surest mistakes of each confusion, explained

Texts go through the same cleaning as in training (it is idempotent), so raw files work too.
Two macro-F1s are printed: scikit-learn's (mean of per-class F1, what the published repo
reported) and the official SMP2020-EWECT one (F1 of macro-precision and macro-recall).
Labels are the argmax of the probabilities, or with decision offsets (ewect/decision.py) the
argmax of log p + offset: a single --model_dir's decision.json (train.py --tune_bias) is used
unless --decision none; --decision FILE gives offsets explicitly (an ensemble's, say). With
offsets, the plain-argmax scores are printed too, and both go into metrics.json.
Probabilities are calibrated by the model's temperature (calibration.json, written by train.py
or calibrate.py; labels do not change): the expected calibration error (15 bins, top label),
negative log-likelihood and Brier score are printed before and after it.
Outputs go to --output_dir (test/ beside a run's best/: workspace/wb/test by default; another
run's model, another test/): NAME.predictions.csv (id, text, gold, predicted, one probability
per label), NAME.confusion.png, NAME.reliability.png (the reliability diagram) and
NAME.metrics.json, NAME being each data file's name. --errors N adds NAME.errors.md and its
HTML twin NAME.errors.html: for each confused pair of labels the N mistakes the model was surest
of, each with its explanation (ewect/explain.py), and per label the characters and words that
most often carry it in correct predictions (ewect/error_report.py).
"""
import argparse
import json
import os

from ewect.config import DATASETS, LABELS, MAX_LENGTH, dataset_files, dataset_output_dir
from ewect.data import add_label_names_arg
from ewect.decision import add_decision_arg
from ewect.errors import UserError, positive_int, run_cli, script_help
from ewect.prediction import BACKENDS, add_precision_arg


def parse_args(argv=None):
    p = argparse.ArgumentParser(**script_help(__doc__))
    p.add_argument("--dataset", default="usual", choices=DATASETS,
                   help="track whose test files and trained model (its output folder's best/) "
                        "are the defaults of --data_file and --model_dir")
    p.add_argument("--model_dir", nargs="+",
                   help="checkpoint folder written by train.py; several: their ensemble "
                        "(default: --dataset's best/)")
    p.add_argument("--data_file", nargs="+",
                   help="labelled files (SMP2020-EWECT JSON, or .csv, .tsv or .xlsx with content "
                        "and label columns), each reported on its own "
                        "(default: --dataset's cleaned test files)")
    p.add_argument("--output_dir",
                   help="where predictions, metrics and the confusion-matrix PNG go (default: "
                        "test/ beside one --model_dir that is a run's best/ or last/, else "
                        "--dataset's output folder's test/)")
    add_decision_arg(p)
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
    add_precision_arg(p)
    p.add_argument("--errors", type=positive_int, metavar="N",
                   help="also write NAME.errors.md and NAME.errors.html: the N surest mistakes "
                        "of each confused pair of labels, explained, and what carries each label")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="skip and count unusable records instead of stopping")
    add_label_names_arg(p)
    args = p.parse_args(argv)
    run_dir = dataset_output_dir(args.dataset)
    args.model_dir = args.model_dir or [os.path.join(run_dir, "best")]
    args.data_file = args.data_file or dataset_files(args.dataset, "test")
    args.output_dir = args.output_dir or default_output_dir(args.model_dir, run_dir)
    return args


def default_output_dir(model_dirs, run_dir):
    """test/ beside a run's best/ or last/ (so two models' scores never share a folder), else
    the --dataset run's test/."""
    model = os.path.normpath(model_dirs[0])
    if len(model_dirs) == 1 and os.path.basename(model) in ("best", "last"):
        return os.path.join(os.path.dirname(model), "test")
    return os.path.join(run_dir, "test")


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


def output_names(data_files):
    """NAME of each data file's outputs; two files of one name would overwrite each other."""
    names = [os.path.splitext(os.path.basename(path))[0] for path in data_files]
    if len(set(names)) < len(names):
        raise UserError(f"--data_file {' '.join(data_files)}: two files share a name, so their "
                        "outputs would overwrite each other; evaluate them one at a time")
    return names


def summary(result):
    """The headline scores, as metrics.json names them."""
    return {name: result[key] for name, key in
            (("accuracy", "acc"), ("macro_f1", "macro_f1"),
             ("official_macro_f1", "official_macro_f1"))}


def evaluate(args, data_file, name, records, skipped, predictor, offsets, source,
             explainer=None):
    """Print and write one data file's report (skipped: the file's unusable records; explainer:
    for --errors)."""
    import pandas as pd

    from ewect.calibration import plot_reliability, with_temperature
    from ewect.config import LABEL2ID
    from ewect.decision import decide
    from ewect.metrics import confusion_matrix, format_report, scores
    from ewect.model_card import add_test_scores

    texts = [r.content for r in records]
    probs = predictor.predict(texts, args.batch_size, args.max_length)
    golds, preds = [LABEL2ID[r.label] for r in records], decide(probs, offsets,
                                                                 predictor.temperature)
    confusion = confusion_matrix(golds, preds)
    result = scores(confusion)

    models = " + ".join(args.model_dir)
    precision = "int8" if args.int8 else predictor.precision
    print(f"{data_file}: {len(records)} posts" +
          (f" ({skipped} unusable record(s) skipped)" if skipped else "") +
          f", model {models} ({args.backend}, {precision})")
    print(f"accuracy {result['acc']:.4f}  macro-F1 {result['macro_f1']:.4f} (scikit-learn: mean "
          f"of per-class F1)  official macro-F1 {result['official_macro_f1']:.4f} (F1 of "
          "macro-P and macro-R)")
    argmax = None
    if offsets is not None:
        argmax = summary(scores(confusion_matrix(golds, probs.argmax(-1))))
        print(f"labels decided with the offsets in {source}; plain argmax: accuracy "
              f"{argmax['accuracy']:.4f}  macro-F1 {argmax['macro_f1']:.4f}  official macro-F1 "
              f"{argmax['official_macro_f1']:.4f}")
    print("\n" + format_report(result, confusion))
    calibration = report_calibration(probs, golds, predictor, args.model_dir)

    out = os.path.join(args.output_dir, name)
    table = pd.DataFrame({"id": [r.id for r in records], "text": texts,
                          "gold": [r.label for r in records],
                          "predicted": [LABELS[i] for i in preds]})
    for i, label in enumerate(LABELS):
        table[f"p_{label}"] = probs[:, i].round(6)
    table.to_csv(out + ".predictions.csv", index=False)
    decision = None if offsets is None else {
        "file": source, "offsets": dict(zip(LABELS, map(float, offsets))), "argmax": argmax}
    with open(out + ".metrics.json", "w", encoding="utf-8") as f:
        json.dump({"data_file": data_file, "model_dir": models, "backend": args.backend,
                   "int8": args.int8, "precision": precision, "posts": len(records),
                   "skipped_records": skipped,
                   **summary(result),
                   "decision": decision, "calibration": calibration,
                   "confusion": confusion.tolist()}, f, indent=2)
    if len(args.model_dir) == 1 and args.backend == "torch" and not args.int8:
        # the checkpoint as saved: its model card gains these scores
        add_test_scores(args.model_dir[0], name, summary(result))
    plot_confusion(confusion, out + ".confusion.png",
                   f"{name}: acc {result['acc']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    plot_reliability(with_temperature(probs, 1 / predictor.temperature), probs, golds,
                     out + ".reliability.png", f"{name}: temperature {predictor.temperature:.2f}")
    written = [f"{out}.{suffix}" for suffix in
               ("predictions.csv", "metrics.json", "confusion.png", "reliability.png")]
    if explainer is not None:
        written += write_error_report(args, out, name, records, golds, preds, probs, explainer)
    print(f"\nwrote {', '.join(written)}")


def write_error_report(args, out, name, records, golds, preds, probs, explainer):
    """--errors: OUT.errors.md and OUT.errors.html; their paths."""
    from ewect.error_report import error_report

    markdown, page = error_report(
        [r.id for r in records], [r.content for r in records], golds, preds, probs, explainer,
        args.errors, f"Errors of {' + '.join(args.model_dir)} on {name}", args.max_length)
    paths = [f"{out}.errors.md", f"{out}.errors.html"]
    for path, text in zip(paths, (markdown, page)):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return paths


def report_calibration(probs, golds, predictor, model_dirs):
    """Print, and return for metrics.json, the calibration scores of the model's own
    probabilities and of the calibrated ones (probs: calibrated by predictor.temperature)."""
    from ewect.calibration import calibration_scores, with_temperature

    temperature = predictor.temperature
    before = calibration_scores(with_temperature(probs, 1 / temperature), golds)
    after = calibration_scores(probs, golds)
    line = "  ".join(f"{name} {before[key]:.4f}" for name, key in
                     (("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier")))
    if temperature == 1.0:
        why = getattr(predictor, "calibration_note", None) or (
            f"no calibration.json: python calibrate.py --model_dir {model_dirs[0]}")
        print(f"\ncalibration: {line} (probabilities not calibrated: {why})")
    else:
        print(f"\ncalibration (temperature {temperature:.3f}; labels unchanged): " + "  ".join(
            f"{name} {before[key]:.4f} -> {after[key]:.4f}" for name, key in
            (("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier"))))
    return {"temperature": temperature, "before": before, "after": after}


def main(argv=None):
    args = parse_args(argv)
    from ewect.data import clean_records, load_items, read_records
    from ewect.decision import choose_offsets
    from ewect.explain import make_explainer
    from ewect.prediction import load_predictor

    names = output_names(args.data_file)
    # Cleaned as in training; cleaning is idempotent, so cleaned files stay as they are. All
    # files are read before the model loads, so a bad one stops the run at once.
    records = [clean_records(read_records(path, skip_bad_records=args.skip_bad_records,
                                          label_names=args.label_names),
                             drop_empty=False) for path in args.data_file]
    # --skip_bad_records: the scores cover fewer records than the file has, and must say so
    skipped = [len(load_items(path, require_label=True)) - len(file_records)
               if args.skip_bad_records else 0
               for path, file_records in zip(args.data_file, records)]
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise UserError(f"--output_dir {args.output_dir}: a file, not a folder")
    try:  # before the model loads: a bad folder costs nothing
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output_dir {args.output_dir}: cannot create it ({err.strerror})"
                        ) from None
    offsets, source = choose_offsets(args.model_dir, args.decision)
    predictor = load_predictor(args.model_dir, args.backend, args.device, args.int8,
                               precision=args.precision)
    explainer = make_explainer(predictor) if args.errors else None
    for index, (data_file, name, file_records, file_skipped) in enumerate(
            zip(args.data_file, names, records, skipped)):
        if index:
            print()
        evaluate(args, data_file, name, file_records, file_skipped, predictor, offsets, source,
                 explainer)


if __name__ == "__main__":
    run_cli(main)
