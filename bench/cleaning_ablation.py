"""What the cleaning choices (bounded mentions, folded punctuation) cost or gain: the same small
model, trained from scratch with each cleaning variant, scored on usual_eval and usual_test over several seeds.

    python -m bench.cleaning_ablation --lock /tmp/ewect-cpu.lock   # 3 variants x 3 seeds, ~30 min, 2 cores
    python -m bench.cleaning_ablation --variants bounded --seeds 1 --epochs 1   # a quick look

Variants (ewect/cleaning.py is `bounded`):
  unbounded                 the old mention rule: @[\\w-]+ takes the whole run of word characters
  bounded                   a mention takes at most one nickname (30 bytes by Weibo's count)
  bounded_keep_punctuation  bounded, but full-width punctuation stays (，！？ are not folded to
                            ,!?); full-width letters, digits and the ideographic space still are

Each (variant, seed) run is one subprocess (under `flock --lock` when given, so that a shared
machine's lock is held one training at a time): it switches ewect.cleaning to the variant, runs
train.main on the raw files (train.py cleans them in-process with that variant) with
--from_scratch, 2 layers, hidden 128 and --epochs, scores best/ on the raw usual_eval and
usual_test cleaned the same way, and writes result.json in OUTPUT_DIR/VARIANT-seedSEED/. A run
whose result.json exists is not repeated, so an interrupted ablation continues where it stopped.
Then it prints, per variant, what cleaning leaves of usual_train and a Markdown table of accuracy
and macro-F1, mean ± std (sample std) over the seeds. usual_eval also picks the best epoch, so its
numbers favour every variant alike; usual_test is the held-out comparison.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys

from bench.common import (DEFAULT_DATA_DIR, DEFAULT_VOCAB, VOCAB_HELP, describe_machine,
                          require_vocab)
import ewect.cleaning as cleaning
from ewect.config import LABEL2ID, MAX_LENGTH
from ewect.data import clean_records, read_records
from ewect.errors import HelpFormatter, UserError, run_cli

VARIANTS = ("unbounded", "bounded", "bounded_keep_punctuation")
TRAIN, EVAL, TEST = "usual_train.txt", "usual_eval_labeled.txt", "usual_test_labeled.txt"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the raw files")
    p.add_argument("--vocab", default=DEFAULT_VOCAB, help=VOCAB_HELP)
    p.add_argument("--output_dir", default="workspace/cleaning_ablation",
                   help="one folder per run: checkpoints, train.log, result.json")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="cleaning variants to compare")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="one run per seed")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per run")
    p.add_argument("--max_length", type=int, default=MAX_LENGTH, help="tokens kept per post")
    p.add_argument("--lock", help="run each training under `flock LOCK` (a shared machine's lock)")
    p.add_argument("--one_run", action="store_true",
                   help="internal: train and score the first variant and seed in this process")
    return p.parse_args()


@contextlib.contextmanager
def cleaning_variant(name):
    """ewect.cleaning switched to the variant for the block; train.py and ewect.data call it."""
    saved = cleaning.NICKNAME_MAX_BYTES, cleaning._HALF_WIDTH
    if name == "unbounded":
        cleaning.NICKNAME_MAX_BYTES = sys.maxsize
    elif name == "bounded_keep_punctuation":
        cleaning._HALF_WIDTH = {cp: half for cp, half in saved[1].items()
                                if chr(half).isalnum() or chr(half) == " "}
    try:
        yield
    finally:
        cleaning.NICKNAME_MAX_BYTES, cleaning._HALF_WIDTH = saved


def run_dir(args, variant, seed):
    return os.path.join(args.output_dir, f"{variant}-seed{seed}")


def score(model_dir, path, max_length):
    """Accuracy and macro-F1 of a checkpoint on a labelled file, cleaned as in training."""
    import torch

    from ewect.metrics import confusion_matrix, scores
    from ewect.modeling import load_checkpoint
    from ewect.prediction import predict_probabilities

    model, tokenizer = load_checkpoint(model_dir)
    records = clean_records(read_records(path), drop_empty=False)
    probs = predict_probabilities(model, tokenizer, [r.content for r in records],
                                  torch.device("cpu"), max_length=max_length, precision="fp32")
    result = scores(confusion_matrix([LABEL2ID[r.label] for r in records], probs.argmax(-1)))
    return {"acc": result["acc"], "macro_f1": result["macro_f1"]}


def one_run(args):
    """Train and score one (variant, seed) in this process; writes result.json."""
    import train

    variant, seed = args.variants[0], args.seeds[0]
    out = run_dir(args, variant, seed)
    with cleaning_variant(variant):
        train.main(["--from_scratch", "--vocab", args.vocab, "--num_layers", "2",
                    "--hidden_size", "128", "--device", "cpu", "--epochs", str(args.epochs),
                    "--max_length", str(args.max_length), "--seed", str(seed),
                    "--train_file", os.path.join(args.data_dir, TRAIN),
                    "--eval_file", os.path.join(args.data_dir, EVAL),
                    "--output_dir", out, "--overwrite_output_dir"])
        result = {name: score(os.path.join(out, "best"), os.path.join(args.data_dir, file),
                              args.max_length)
                  for name, file in (("usual_eval", EVAL), ("usual_test", TEST))}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)


def launch(args, variant, seed):
    """Run one (variant, seed) in a subprocess unless its result.json is already there."""
    path = os.path.join(run_dir(args, variant, seed), "result.json")
    if not os.path.isfile(path):
        command = [sys.executable, "-m", "bench.cleaning_ablation", "--one_run",
                   "--variants", variant, "--seeds", str(seed), "--data_dir", args.data_dir,
                   "--vocab", args.vocab, "--output_dir", args.output_dir,
                   "--epochs", str(args.epochs), "--max_length", str(args.max_length)]
        if args.lock:
            command = ["flock", args.lock] + command
        print(f"--- {variant}, seed {seed}", flush=True)
        returncode = subprocess.run(command).returncode
        if returncode != 0:
            raise UserError(f"{variant}, seed {seed}: the run failed (exit status {returncode}); "
                            "its output is above")
    with open(path) as f:
        return json.load(f)


def describe_cleaning(args):
    """Per variant: characters left in usual_train and posts cleaned differently from bounded."""
    records = read_records(os.path.join(args.data_dir, TRAIN))
    cleaned = {}
    for variant in VARIANTS:
        with cleaning_variant(variant):
            cleaned[variant] = [r.content for r in clean_records(records, drop_empty=False)]
    print(f"usual_train, {len(records)} posts, after cleaning:")
    for variant in args.variants:
        texts = cleaned[variant]
        differ = sum(a != b for a, b in zip(texts, cleaned["bounded"]))
        print(f"  {variant}: {sum(map(len, texts))} characters; {differ} posts differ from bounded")


def mean_std(values):
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def main():
    args = parse_args()
    args.vocab = require_vocab(args.vocab)
    if args.one_run:
        return one_run(args)
    import torch

    print(describe_machine(torch.device("cpu")))
    describe_cleaning(args)
    results = {v: [launch(args, v, seed) for seed in args.seeds] for v in args.variants}
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.epochs} epochs, "
          "mean ± std\n")
    print("| cleaning | usual_eval accuracy | usual_eval macro-F1 | usual_test accuracy "
          "| usual_test macro-F1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant, runs in results.items():
        cells = [mean_std([r[split][metric] for r in runs])
                 for split in ("usual_eval", "usual_test") for metric in ("acc", "macro_f1")]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    run_cli(main)
