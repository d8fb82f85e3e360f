"""Which of the competition's tricks help here? The measurement: each train.py option against
the same model and recipe without it, 3 fine-tuning seeds each; usual_test and virus_test accuracy
and macro-F1, mean ± sample std, and the change in macro-F1 from the row it is compared with.

    python -m bench.recipes --model_name workspace/ablation/mlm_b/best --lr 5e-4   # all rows
    python -m bench.recipes --rows plain fgm --seeds 1 --model_name DIR --lr 5e-4  # part of it

All rows with 3 seeds are 32 train.py runs, FGM and R-Drop about twice the others' compute.

Rows (--rows): plain (the recipe: train on usual_train, best epoch by usual_eval macro-F1);
offsets (plain's runs, deciding with the decision offsets --tune_bias fitted on usual_eval);
weights_auto, weights_teams (--class_weights auto, and a prize-winning team's 1,1,1,2,1.5,1.5);
fgm; rdrop (--rdrop 1); both (--dataset both: usual+virus train, both evals pick the epoch);
virus (--dataset virus) and virus_from_usual (the same, --init_from plain's run of the same
seed); folds (a 5-fold ensemble over usual_train, one seed: train_folds.sh's runs, compared with
its members' mean) and virus_folds (the same over virus_train, every fold --init_from plain's
run of that seed). The printed commands are the recipe: the runs are the repo's scripts.

A finished training or test in --work_dir is not run again: an interrupted study continues where
it stopped. Tests run in fp32 on every CPU (bench/common.TEST_PRECISION). Per-run logs are in
WORK_DIR/logs/, the numbers in WORK_DIR/results.json.
"""
import argparse
import json
import os

import numpy as np
import pandas as pd
import torch

from bench.common import (DEFAULT_DATA_DIR, TEST_PRECISION, describe_machine,
                          mean_std, read_json, record_command, refuse_another_command,
                          run_repo_script, tested_in_fp32, training_finished)
from ewect.config import DATASETS, LABEL2ID, LABELS, REPO_ROOT
from ewect.decision import DECISION_FILE, decide, load_offsets
from ewect.errors import HelpFormatter, UserError, run_cli
from ewect.metrics import classification_scores

TEST_FILES = DATASETS["both"]["test"]  # every row is tested on both tracks
# row: (--dataset, extra train.py flags, the row its macro-F1 change is measured against)
ROWS = {
    "plain": ("usual", [], None),
    "offsets": ("usual", [], "plain"),
    "weights_auto": ("usual", ["--class_weights", "auto"], "plain"),
    "weights_teams": ("usual", ["--class_weights", "1,1,1,2,1.5,1.5"], "plain"),
    "fgm": ("usual", ["--adversarial", "fgm"], "plain"),
    "rdrop": ("usual", ["--rdrop", "1"], "plain"),
    "both": ("both", [], "plain"),
    "virus": ("virus", [], None),
    "virus_from_usual": ("virus", [], "virus"),
    "folds": ("usual", [], None),  # against its own members
    "virus_folds": ("virus", [], None),  # the same, each fold --init_from plain's run
}
FOLDS = 5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model_name", required=True,
                   help="the model every row fine-tunes: a pretrained folder (e.g. pretrain.py's "
                        "best/)")
    p.add_argument("--lr", type=float, required=True, help="fine-tuning learning rate")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (42, 43, ...)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                   help="which rows to run")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the six raw files")
    p.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "workspace", "recipes"),
                   help="where the cleaned data, checkpoints, logs and results.json go")
    args = p.parse_args()
    args.model_name, args.data_dir, args.work_dir = map(
        os.path.abspath, (args.model_name, args.data_dir, args.work_dir))
    return args


def train_minutes(out):
    """Wall minutes of a finished train.py run, from its log's timestamps: each start (an
    "arguments:" line; a resumed run has several) to its last line, summed, so the hours a run
    sat stopped before --resume are not counted."""
    sessions = []
    with open(os.path.join(out, "train.log"), encoding="utf-8") as f:
        for line in f:
            if line[:4].isdigit():
                if " INFO arguments: " in line or not sessions:
                    sessions.append([])
                sessions[-1].append(pd.Timestamp(line[:19]))
    return sum((s[-1] - s[0]).total_seconds() for s in sessions) / 60


def fine_tune(name, flags, args):
    """train.py into WORK_DIR/NAME (kept if it finished before); returns its best/."""
    out = os.path.join(args.work_dir, name)
    command = ["train.py", *flags, "--lr", str(args.lr), "--epochs", str(args.epochs),
               "--device", "cpu", "--tune_bias", "--output_dir", out]
    refuse_another_command(out, command)
    if not training_finished(out):
        record_command(out, command)
        run_repo_script(name.replace("/", "_"), [*command, "--overwrite_output_dir"],
                        args.work_dir)
    return os.path.join(out, "best")


def test(name, model_dirs, args, offsets=None):
    """{test file: {accuracy, macro_f1}} of the model (or the ensemble of several) on both test
    files, by test.py into WORK_DIR/NAME/test (kept if there). Scored here from the predictions
    file's probabilities: by argmax, or with the given decision offsets."""
    out = os.path.join(args.work_dir, name, "test")
    stems = [os.path.join(out, test_file.replace(".txt", "")) for test_file in TEST_FILES]
    if not all(tested_in_fp32(stem + ".metrics.json") and  # and of these very models
               read_json(stem + ".metrics.json")["model_dir"] == " + ".join(model_dirs)
               for stem in stems):
        run_repo_script(f"{name.replace('/', '_')}_test", [
            "test.py", "--model_dir", *model_dirs, "--device", "cpu", "--decision", "none",
            *TEST_PRECISION,
            "--data_file", *[os.path.join(args.clean_dir, f) for f in TEST_FILES],
            "--output_dir", out], args.work_dir)
    result = {}
    for test_file, stem in zip(TEST_FILES, stems):
        table = pd.read_csv(stem + ".predictions.csv", keep_default_na=False)
        probabilities = table[[f"p_{label}" for label in LABELS]].to_numpy()
        # calibrated by the model's temperature, if it has one; the offsets are the model's own
        calibration = read_json(stem + ".metrics.json").get("calibration") or {}
        scores = classification_scores(table["gold"].map(LABEL2ID).to_numpy(),
                                       decide(probabilities, offsets,
                                              calibration.get("temperature", 1.0)))
        result[test_file] = {"accuracy": scores["acc"], "macro_f1": scores["macro_f1"]}
    return result


def data_flags(dataset, args):
    return [flag for split in ("train", "eval") for flag in (
        f"--{split}_file", *[os.path.join(args.clean_dir, name)
                             for name in DATASETS[dataset][split]])]


def run_row(row, seed, args):
    """{'scores': test scores, 'minutes': training time} of one row's run with this seed; for
    folds, the ensemble's, plus its members' scores."""
    dataset, extra, _ = ROWS[row]
    if row in ("offsets", "virus_from_usual", "virus_folds"):  # the rows built on plain's runs
        base = fine_tune(f"plain_seed{seed}", ["--model_name", args.model_name, "--seed",
                                               str(seed), *data_flags("usual", args)], args)
    if row == "offsets":  # plain's runs, deciding with the offsets fitted on usual_eval
        return {"scores": test(f"plain_seed{seed}", [base], args,
                               load_offsets(os.path.join(base, DECISION_FILE))), "minutes": 0.0}
    start = (["--init_from", base] if row in ("virus_from_usual", "virus_folds")
             else ["--model_name", args.model_name])
    if row in ("folds", "virus_folds"):
        members = [fine_tune(f"{row}_seed{seed}/fold{k}", [
            *start, "--seed", str(seed), *data_flags(dataset, args),
            "--folds", str(FOLDS), "--fold", str(k)], args) for k in range(1, FOLDS + 1)]
        return {"scores": test(f"{row}_seed{seed}/ensemble", members, args),
                "members": [test(f"{row}_seed{seed}/fold{k}", [member], args)
                            for k, member in enumerate(members, 1)],
                "minutes": sum(train_minutes(os.path.dirname(m)) for m in members)}
    best = fine_tune(f"{row}_seed{seed}",
                     [*start, "--seed", str(seed), *data_flags(dataset, args), *extra], args)
    return {"scores": test(f"{row}_seed{seed}", [best], args),
            "minutes": train_minutes(os.path.dirname(best))}


def table_row(name, runs, minutes, baseline_runs=None):
    """A Markdown row: accuracy and macro-F1 per test file, mean ± std over the runs, the mean
    change of macro-F1 from the baseline's runs (in points), and training minutes per run."""
    cells = [name, str(len(runs))]
    for test_file in TEST_FILES:
        f1s = [r[test_file]["macro_f1"] for r in runs]
        cells += [mean_std([r[test_file]["accuracy"] for r in runs]), mean_std(f1s)]
        if baseline_runs:
            baseline = np.mean([r[test_file]["macro_f1"] for r in baseline_runs])
            cells.append(f"{(np.mean(f1s) - baseline) * 100:+.2f}")
        else:
            cells.append("")
    return "| " + " | ".join(cells + [f"{minutes:.1f}"]) + " |"


def main():
    args = parse_args()
    if not os.path.isdir(args.model_name):
        raise UserError(f"--model_name {args.model_name}: no such folder")
    print(describe_machine(torch.device("cpu")))
    args.clean_dir = os.path.join(args.work_dir, "clean")
    if not os.path.isfile(os.path.join(args.clean_dir, TEST_FILES[-1])):
        run_repo_script("clean_data", ["clean_data.py", "--raw_dir", args.data_dir,
                                       "--out_dir", args.clean_dir], args.work_dir)
    seeds = [42 + i for i in range(args.seeds)]
    results = {}
    for row in args.rows:
        results[row] = [run_row(row, seed, args)
                        for seed in (seeds[:1] if row.endswith("folds") else seeds)]
        print(f"  {row}: done", flush=True)
    with open(os.path.join(args.work_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "rows": results}, f, indent=2)

    print(f"\nfine-tuning {args.model_name}, lr {args.lr:g}, {args.epochs} epochs; seeds "
          f"{seeds} (folds: {seeds[0]}); mean ± sample std; change: macro-F1 points against the "
          "row named\n")
    print("| row | runs | usual_test acc | usual_test macro-F1 | change | virus_test acc | "
          "virus_test macro-F1 | change | train minutes per run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row, runs in results.items():
        minutes = np.mean([r["minutes"] for r in runs])
        if row.endswith("folds"):  # the ensemble against its own members
            members = runs[0]["members"]
            print(table_row(f"{row}: members (each)", members, minutes / FOLDS))
            print(table_row(f"{row}: {FOLDS}-fold ensemble (vs its members)",
                            [runs[0]["scores"]], minutes, members))
            continue
        compared = ROWS[row][2]
        baseline = [r["scores"] for r in results[compared]] if compared in results else None
        print(table_row(row + (f" (vs {compared})" if baseline else ""),
                        [r["scores"] for r in runs], minutes, baseline))


if __name__ == "__main__":
    run_cli(main)
