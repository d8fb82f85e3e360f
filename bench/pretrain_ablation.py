"""Does self-pretraining on the task's own text help a small BERT? The ablation:

(a) fine-tuned from a random init;
(b) masked-LM pretrained by pretrain.py on the default corpus (the train and eval text of both
    tracks, never the test files), then fine-tuned;
(c) as (b), with --whole_word_mask.

Every arm gets the same fine-tuning recipe (train.py on usual_train, best epoch by usual_eval
macro-F1); its learning rate is chosen per arm on usual_eval macro-F1 from --lrs (with the first
seed), never on test; then --seeds fine-tunings at that rate. usual_test and virus_test accuracy and
macro-F1, mean ± sample std over the seeds, beside the char TF-IDF baseline. The printed commands
are the recipe: the runs are the repo's scripts, nothing else.

    python -m bench.pretrain_ablation                               # 2-core CPU: ~90 min
    python -m bench.pretrain_ablation --data_dir tests/fixtures/raw --hidden_size 32 \\
        --pretrain_epochs 2 --finetune_epochs 1 --lrs 1e-3 --seeds 1 --arms a b \\
        --work_dir /tmp/abl   # smoke (the fixture's held-out post is too short for (c))

A finished training or test in --work_dir is not run again, and a stopped pretraining resumes:
an interrupted ablation continues where it stopped (a new --work_dir starts over). Tests run in
fp32 on every CPU (bench/common.TEST_PRECISION). Per-run logs are in WORK_DIR/logs/.
"""
import argparse
import json
import os
import re

import torch

from bench.common import (DEFAULT_DATA_DIR, DEFAULT_VOCAB, VOCAB_HELP, REPO_ROOT,
                          TEST_PRECISION, describe_machine, mean_std, read_json, require_vocab,
                          run_repo_script, tested_in_fp32, training_finished)
from bench.tfidf_baseline import tfidf_scores
from ewect.config import PRECISIONS, PRETRAIN_CORPUS
from ewect.errors import HelpFormatter, UserError, run_cli

TEST_FILES = ("usual_test_labeled.txt", "virus_test_labeled.txt")
ARMS = {"a": "random init", "b": "self-pretrained, token masking",
        "c": "self-pretrained, whole-word masking"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the six raw files")
    p.add_argument("--vocab", default=DEFAULT_VOCAB, help=VOCAB_HELP)
    p.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "workspace", "ablation"),
                   help="where the cleaned data, checkpoints, logs and results.json go")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                   help="which arms to run")
    p.add_argument("--num_layers", type=int, default=2, help="BERT layers")
    p.add_argument("--hidden_size", type=int, default=128, help="BERT hidden size")
    p.add_argument("--pretrain_epochs", type=int, default=10, help="pretrain.py --epochs")
    p.add_argument("--pretrain_lr", type=float, default=5e-4, help="pretrain.py --lr")
    p.add_argument("--pretrain_precision", default="auto", choices=PRECISIONS,
                   help="pretrain.py --precision (bf16 also speeds up CPUs with AVX512-BF16)")
    p.add_argument("--finetune_epochs", type=int, default=5, help="train.py --epochs")
    p.add_argument("--lrs", nargs="+", type=float, default=[2e-4, 5e-4, 1e-3],
                   help="fine-tuning learning rates to choose from on usual_eval")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (42, 43, ...)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of every run")
    args = p.parse_args()
    # The runs start in the repo root; paths given here are relative to the caller's folder
    # (--vocab too, once require_vocab has it: it may name the hub's).
    args.data_dir, args.work_dir = map(os.path.abspath, (args.data_dir, args.work_dir))
    return args


def pretrain(arm, args, clean_dir):
    """best/ of arm (b) or (c)'s pretraining run."""
    out = os.path.join(args.work_dir, f"mlm_{arm}")
    best = os.path.join(out, "best")
    state_path = os.path.join(out, "last", "training_state.pt")
    epochs_done = torch.load(state_path, weights_only=True)["progress"]["epoch"] if (
        os.path.isfile(state_path)) else None
    if epochs_done is None or epochs_done < args.pretrain_epochs:
        corpus = [os.path.join(clean_dir, os.path.basename(path)) for path in PRETRAIN_CORPUS]
        run_repo_script(f"pretrain_{arm}", [
            "pretrain.py", "--from_scratch", "--vocab", args.vocab,
            "--num_layers", str(args.num_layers), "--hidden_size", str(args.hidden_size),
            "--epochs", str(args.pretrain_epochs), "--lr", str(args.pretrain_lr),
            "--corpus", *corpus, "--device", args.device, "--precision", args.pretrain_precision,
            "--output_dir", out,
            "--resume" if epochs_done is not None else "--overwrite_output_dir",
            *(["--whole_word_mask"] if arm == "c" else [])], args.work_dir)
    result = read_json(os.path.join(best, "eval_results.json"))
    print(f"  ({arm}) held-out loss {result['held_out_loss']:.4f}, perplexity "
          f"{result['held_out_perplexity']:.1f}, masked-token accuracy "
          f"{result['held_out_accuracy']:.4f} (epoch {result['epoch']})")
    return best


def fine_tune(arm, start, lr, seed, args, clean_dir):
    """{'eval': usual_eval macro-F1, test file: test.py's metrics} of one fine-tuning run."""
    out = os.path.join(args.work_dir, f"ft_{arm}_lr{lr:g}_seed{seed}")
    name = f"ft_{arm}_lr{lr:g}_seed{seed}"
    if not training_finished(out):
        model = (["--from_scratch", "--vocab", args.vocab, "--num_layers", str(args.num_layers),
                  "--hidden_size", str(args.hidden_size)] if start is None
                 else ["--model_name", start])
        run_repo_script(name, [
            "train.py", *model, "--lr", str(lr), "--seed", str(seed),
            "--epochs", str(args.finetune_epochs), "--device", args.device,
            "--train_file", os.path.join(clean_dir, "usual_train.txt"),
            "--eval_file", os.path.join(clean_dir, "usual_eval_labeled.txt"),
            "--output_dir", out, "--overwrite_output_dir"], args.work_dir)
    for test_file in TEST_FILES:
        if not tested_in_fp32(metrics_path(out, test_file)):
            run_repo_script(f"{name}_{test_file[:5]}", [
                "test.py", "--model_dir", os.path.join(out, "best"), "--device", args.device,
                *TEST_PRECISION, "--data_file", os.path.join(clean_dir, test_file),
                "--output_dir", os.path.join(out, "test")], args.work_dir)
    result = {"eval": read_json(os.path.join(out, "best", "eval_results.json"))["eval_macro_f1"],
              "eval_by_epoch": eval_by_epoch(os.path.join(out, "train.log"))}
    for test_file in TEST_FILES:
        result[test_file] = read_json(metrics_path(out, test_file))
    print(f"  ({arm}) lr {lr:g} seed {seed}: usual_eval macro-F1 {result['eval']:.4f}")
    return result


def metrics_path(out, test_file):
    return os.path.join(out, "test", test_file.replace(".txt", "") + ".metrics.json")


def eval_by_epoch(log_path):
    """usual_eval macro-F1 after each epoch, from train.py's log: how far pretraining helps
    early in fine-tuning, not only at its end."""
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    return [float(f1) for f1 in re.findall(r"INFO epoch \d+: eval .*macro-F1 ([\d.]+)", text)]


def main():
    args = parse_args()
    args.vocab = os.path.abspath(require_vocab(args.vocab))
    if not os.path.isdir(args.data_dir):
        raise UserError(f"--data_dir {args.data_dir}: no such folder")
    print(describe_machine(torch.device(args.device)))
    clean_dir = os.path.join(args.work_dir, "clean")
    if not os.path.isfile(os.path.join(clean_dir, TEST_FILES[-1])):
        run_repo_script("clean_data", ["clean_data.py", "--raw_dir", args.data_dir,
                                       "--out_dir", clean_dir], args.work_dir)
    seeds = [42 + i for i in range(args.seeds)]
    rows, results = [], {}
    for arm in args.arms:
        start = None if arm == "a" else pretrain(arm, args, clean_dir)
        # The learning rate: the best usual_eval macro-F1 with the first seed; test unseen.
        by_lr = {lr: fine_tune(arm, start, lr, seeds[0], args, clean_dir) for lr in args.lrs}
        lr = max(by_lr, key=lambda rate: by_lr[rate]["eval"])
        runs = [by_lr[lr]] + [fine_tune(arm, start, lr, seed, args, clean_dir)
                              for seed in seeds[1:]]
        results[arm] = {"lr": lr, "runs": runs}
        rows.append([f"({arm}) {ARMS[arm]}", f"{lr:g}",
                     mean_std([r["eval_by_epoch"][0] for r in runs])] + [
            mean_std([r[test_file][metric] for r in runs])
            for test_file in TEST_FILES for metric in ("accuracy", "macro_f1")])
    baseline = tfidf_scores(args.data_dir, "usual_train.txt", TEST_FILES)
    rows.append(["char TF-IDF + logistic regression", "-", "-"] + [
        f"{baseline[test_file][metric]:.4f}" for test_file in TEST_FILES
        for metric in ("acc", "macro_f1")])
    with open(os.path.join(args.work_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "arms": results}, f, indent=2)
    print(f"\n{args.num_layers} layers, hidden {args.hidden_size}; pretraining "
          f"{args.pretrain_epochs} epochs at lr {args.pretrain_lr:g}; fine-tuning "
          f"{args.finetune_epochs} epochs, lr chosen on usual_eval from {args.lrs}; "
          f"{len(seeds)} seed(s) {seeds}, mean ± sample std\n")
    print("| model | fine-tuning lr | usual_eval macro-F1 after epoch 1 | usual_test acc | "
          "usual_test macro-F1 | virus_test acc | virus_test macro-F1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    run_cli(main)
