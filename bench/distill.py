"""Knowledge distillation, measured: students fine-tuned with a teacher ensemble (train.py
--teacher) against the same students fine-tuned plainly; usual_test and virus_test macro-F1, mean
± sample std over seeds, and the speed of the whole `inference.py --input_file` command per
backend.

    python -m bench.distill --teachers workspace/mini_seed42/best workspace/mini_seed43/best \
        workspace/mini_seed44/best --plain_a workspace/mini_seed42/best \
        workspace/mini_seed43/best workspace/mini_seed44/best \
        --student_a workspace/mlm4_27/best --student_c workspace/mlm40/best    # the whole study

    # a smoke run on the test fixture (about 10 minutes on 2 busy cores, mostly Python starts):
    # tiny students pretrained (on a vocabulary built from the posts), and teachers fine-tuned
    # from one of them, first
    T=workspace/tiny; C=$T/clean
    python clean_data.py --raw_dir tests/fixtures/raw --out_dir $C
    for h in 32 64; do python pretrain.py --from_scratch --num_layers 3 \
        --hidden_size $h --epochs 1 --device cpu --corpus $C/usual_train.txt \
        --output_dir $T/mlm$h; done
    for seed in 42 43 44; do python train.py --model_name $T/mlm32/best --lr 2e-4 --epochs 1 \
        --device cpu --train_file $C/usual_train.txt --eval_file $C/usual_eval_labeled.txt \
        --seed $seed --output_dir $T/t$seed; done
    python -m bench.distill --teachers $T/t42/best $T/t43/best $T/t44/best \
        --plain_a $T/t42/best $T/t43/best --student_a $T/mlm32/best --student_c $T/mlm64/best \
        --data_dir tests/fixtures/raw --epochs 1 --seeds 2 --temperatures 1 4 --alphas 0.5 \
        --work_dir $T/distill

Rows (--rows): a, --student_a (the teachers' own starting model, so the teachers' size);
b, --student_a cut to --student_layers evenly spaced layers (train.py --student_layers); c,
--student_c (another pretrained model, e.g. the 2-layer, hidden-128 one). Each is fine-tuned
plainly (the recipe: usual_train, best epoch by usual_eval macro-F1, --lr (row c: --lr_c),
--epochs) and distilled (the same plus --teacher), and the two are compared; --plain_a DIR ...
reuses finished plain runs of a (the teachers themselves, when trained with this recipe) instead
of training them again.
unlabelled: a distilled with the other track's train texts (virus_train) added through
--unlabelled, learnt from the teachers' soft labels alone, compared with a distilled.
With the defaults and --plain_a, 23 train.py runs (the setting's grid 6, a 2, b and c 6 each,
unlabelled 3).

The distillation setting is chosen on usual_eval, never a test file: a is distilled with seed 42
at every --temperatures x --alphas pair, and the pair whose best epoch has the highest eval
macro-F1 (best/eval_results.json) is used by every distilled row and seed; that seed-42 run is
also a's first distilled run.

Every run, and the teachers' ensemble, is tested on usual_test and virus_test by test.py in fp32
(bench/common.TEST_PRECISION) with plain argmax (--decision none).

Speed, for each row's first run (the teachers: their whole ensemble), on this CPU: posts/s of the
whole `inference.py --input_file WORK_DIR/clean/usual_test_labeled.txt --output FILE --device cpu
--decision none` command per backend: torch fp32 (--precision fp32), torch int8 (--int8, dynamic
quantization) and ONNX int8 (export.py into each model's onnx/ first, then --backend onnx --int8).
Wall time by time.perf_counter around the subprocess, so Python's start, the imports and the
model's load are included (inference.py does not log its load time apart); each command runs
TIMINGS times and the fastest counts. That backend's usual_test macro-F1 is scored from the
labels the command wrote.

A finished training, test or timing in --work_dir is not run again, and an unfinished training
resumes from its last epoch (train.py --resume): an interrupted study continues where it stopped
(teachers or --plain_a runs trained again need a new --work_dir). A run folder started by another
train.py command (OUT/command), say with another --lr, is refused, not taken as this one's. The
teachers label the training posts once per set of posts, not once per run: one distilled run's
OUTPUT_DIR/teacher.pt is copied into the next run's folder (train.py checks it was made by the
same teachers on the same posts, and labels again if not). Per-run logs are in WORK_DIR/logs/,
the numbers in WORK_DIR/results.json (bench/frontier.py --from_results plots them).
"""
import argparse
import math
import os
import shlex
import shutil
import time

import torch

from bench.common import (DEFAULT_DATA_DIR, cpu_name, describe_machine, read_json,
                          record_command, refuse_another_command, run_repo_script,
                          training_finished)
from bench.recipes import TEST_FILES, data_flags, table_row, test, train_minutes
from ewect.config import LABEL2ID, REPO_ROOT
from ewect.data import read_records
from ewect.distill import TEACHER_FILE
from ewect.training import write_json
from ewect.errors import HelpFormatter, UserError, positive_int, run_cli
from ewect.metrics import classification_scores
from ewect.prediction import ONNX_DIR, ONNX_FILES

ROWS = ("a", "b", "c", "unlabelled")
# The table's lines: (key, --rows row, distilled, the line its macro-F1 change is measured against)
LINES = (("a_plain", "a", False, None), ("a_kd", "a", True, "a_plain"),
         ("b_plain", "b", False, None), ("b_kd", "b", True, "b_plain"),
         ("c_plain", "c", False, None), ("c_kd", "c", True, "c_plain"),
         ("unlabelled", "unlabelled", True, "a_kd"))
# The inference.py flags of each timed backend (all on --device cpu, plain argmax).
BACKENDS = {"torch_fp32": ["--precision", "fp32"], "torch_int8": ["--int8"],
            "onnx_int8": ["--backend", "onnx", "--int8"]}
TIMINGS = 2  # runs of each timed command; the fastest counts (the others' noise is the CPU's)
SPEED_FILE = "usual_test_labeled.txt"
CHECK_FILE = "usual_eval_labeled.txt"  # export.py checks its ONNX files on it
UNLABELLED_FILE = "virus_train.txt"  # the unlabelled row's extra posts: the other track's


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--teachers", nargs="+", required=True, metavar="DIR",
                   help="the teacher ensemble: train.py best/ folders (e.g. three seeds of the "
                        "4-layer self-pretrained model)")
    p.add_argument("--student_a", required=True, metavar="MODEL",
                   help="the pretrained folder the teachers were fine-tuned from (e.g. "
                        "workspace/mlm4_27/best): students a and b, the unlabelled row and the "
                        "choice of the setting start from it")
    p.add_argument("--student_c", metavar="MODEL",
                   help="another pretrained folder, student c (e.g. the 2-layer, hidden-128 "
                        "workspace/mlm40/best); needed by --rows c")
    p.add_argument("--plain_a", nargs="+", metavar="DIR",
                   help="finished plain fine-tunings of --student_a with this recipe (e.g. the "
                        "teachers themselves), row a's plain runs instead of training new ones")
    p.add_argument("--student_layers", type=positive_int, default=2,
                   help="layers of student b, evenly spaced ones of --student_a")
    p.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 2.0, 4.0],
                   help="--kd_temperature values tried on usual_eval")
    p.add_argument("--alphas", nargs="+", type=float, default=[0.5, 0.9],
                   help="--kd_alpha values tried on usual_eval")
    p.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate")
    p.add_argument("--lr_c", type=float,
                   help="row c's fine-tuning learning rate, plain and distilled (default: --lr): "
                        "a model of another size may fine-tune best at another one; choose it "
                        "for the plain run on usual_eval")
    p.add_argument("--epochs", type=positive_int, default=5, help="fine-tuning epochs")
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tuning seeds (42, 43, ...)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                   help="which students to run (the teachers are always tested and timed)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS),
                   help="the backends whose inference.py speed is measured")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the six raw files")
    p.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "workspace", "distill"),
                   help="where the cleaned data, checkpoints, logs and results.json go")
    args = p.parse_args()
    if "c" in args.rows and not args.student_c:
        p.error("--rows c needs --student_c MODEL")
    if min(args.temperatures) <= 0 or not all(0 <= alpha <= 1 for alpha in args.alphas):
        p.error("--temperatures must be above 0 and --alphas from 0 to 1")
    args.teachers = [os.path.abspath(d) for d in args.teachers]
    args.plain_a = [os.path.abspath(d) for d in args.plain_a or []]
    args.student_a, args.data_dir, args.work_dir = map(
        os.path.abspath, (args.student_a, args.data_dir, args.work_dir))
    args.student_c = args.student_c and os.path.abspath(args.student_c)
    args.lr_c = args.lr_c or args.lr
    return args


def clean_data(data_dir, work_dir):
    """WORK_DIR/clean: the raw files cleaned by clean_data.py (once)."""
    clean_dir = os.path.join(work_dir, "clean")
    if not os.path.isfile(os.path.join(clean_dir, TEST_FILES[-1])):
        run_repo_script("clean_data", ["clean_data.py", "--raw_dir", data_dir,
                                       "--out_dir", clean_dir], work_dir)
    return clean_dir


def student_flags(row, args):
    """train.py's starting model of a row's student (a, b, c; unlabelled is a)."""
    if row == "c":
        return ["--model_name", args.student_c]
    cut = ["--student_layers", str(args.student_layers)] if row == "b" else []
    return ["--model_name", args.student_a, *cut]


def kd_flags(setting, args, unlabelled=False):
    temperature, alpha = setting
    extra = ["--unlabelled", os.path.join(args.clean_dir, UNLABELLED_FILE)] if unlabelled else []
    return ["--teacher", *args.teachers, "--kd_temperature", f"{temperature:g}",
            "--kd_alpha", f"{alpha:g}", *extra]


def run_name(row, seed, setting=None):
    """WORK_DIR's folder of one run: row, plain or the distillation setting, seed."""
    if setting is None:
        return f"{row}_plain_seed{seed}"
    temperature, alpha = setting
    return f"{row}_kd_T{temperature:g}_alpha{alpha:g}_seed{seed}"


def fine_tune(name, flags, seed, args, lr=None):
    """train.py into WORK_DIR/NAME with the study's recipe, at lr (default --lr; kept if it
    finished before); returns its best/. A distilled run starts with the teachers' soft labels
    of the last distilled run on the same posts, when there was one (WORK_DIR/teacher_labels/)."""
    out = os.path.join(args.work_dir, name)
    command = ["train.py", *flags, *data_flags("usual", args), "--lr", str(lr or args.lr),
               "--epochs", str(args.epochs), "--seed", str(seed), "--device", "cpu",
               "--output_dir", out]
    refuse_another_command(out, command)
    if training_finished(out):
        return os.path.join(out, "best")
    labels = os.path.join(out, TEACHER_FILE)
    shared = None
    if "--teacher" in flags:
        posts = "usual+unlabelled" if "--unlabelled" in flags else "usual"
        shared = os.path.join(args.work_dir, "teacher_labels", posts + ".pt")
        if os.path.isfile(shared) and not os.path.isfile(labels):
            os.makedirs(out, exist_ok=True)
            shutil.copyfile(shared, labels)
    # a run stopped midway goes on from its last finished epoch rather than from the start
    start = "--resume" if os.path.isdir(os.path.join(out, "last")) else "--overwrite_output_dir"
    record_command(out, command)
    run_repo_script(name, [*command, start], args.work_dir)
    if shared:
        os.makedirs(os.path.dirname(shared), exist_ok=True)
        shutil.copyfile(labels, shared)
    return os.path.join(out, "best")


def best_setting(grid):
    """((T, alpha), {(T, alpha): eval macro-F1}) of a grid of runs {(T, alpha): best/}: the pair
    whose best epoch scored highest on the eval file, as train.py recorded it."""
    scores = {setting: read_json(os.path.join(best, "eval_results.json"))["eval_macro_f1"]
              for setting, best in grid.items()}
    return max(scores, key=scores.get), scores


def choose_setting(seed, args):
    """Student a distilled with this seed at each pair of the grid; the best pair on usual_eval."""
    grid = {}
    for temperature in args.temperatures:
        for alpha in args.alphas:
            setting = (temperature, alpha)
            grid[setting] = fine_tune(run_name("a", seed, setting),
                                      [*student_flags("a", args), *kd_flags(setting, args)],
                                      seed, args)
    return best_setting(grid)


def minutes_of(best):
    """Training minutes of a train.py run from its log (None for a folder without one)."""
    folder = os.path.dirname(best)
    return train_minutes(folder) if os.path.isfile(os.path.join(folder, "train.log")) else None


def sum_or_none(minutes):
    minutes = list(minutes)
    return None if None in minutes else sum(minutes)


def line_runs(row, distilled, setting, seeds, args):
    """[{model_dir, scores, minutes}] of one table line: a run per seed (or --plain_a's)."""
    if row == "a" and not distilled and args.plain_a:
        return [{"model_dir": best, "minutes": minutes_of(best),
                 "scores": test(f"a_plain_given{k}", [best], args)}
                for k, best in enumerate(args.plain_a, 1)]
    runs = []
    for seed in seeds:
        flags = student_flags(row, args)
        if distilled:
            flags += kd_flags(setting, args, unlabelled=row == "unlabelled")
        name = run_name(row, seed, setting if distilled else None)
        best = fine_tune(name, flags, seed, args, lr=args.lr_c if row == "c" else args.lr)
        runs.append({"model_dir": best, "minutes": minutes_of(best),
                     "scores": test(name, [best], args)})
    return runs


def repo_path(path):
    """The path as the repo's scripts take it, from the repo root: relative when inside it."""
    inside = os.path.commonpath([os.path.abspath(path), REPO_ROOT]) == REPO_ROOT
    return os.path.relpath(path, REPO_ROOT) if inside else os.path.abspath(path)


def exported(model_dir):
    """Whether export.py's int8 file is there and newer than the weights."""
    onnx = os.path.join(model_dir, ONNX_DIR, ONNX_FILES[True])
    return os.path.isfile(onnx) and (os.path.getmtime(onnx) >=
                                     os.path.getmtime(os.path.join(model_dir, "model.safetensors")))


def time_inference(name, model_dirs, backend, input_file, work_dir, check_file):
    """{posts, seconds, timings, posts_per_s, macro_f1, command, ...} of `inference.py
    --input_file INPUT_FILE --output FILE` with the model (several: their ensemble) on the CPU:
    wall seconds of the whole command, Python's start, imports and the model's load included, the
    fastest of TIMINGS runs; macro-F1 from the labels it wrote against the file's own. For an
    ONNX backend, export.py exports the models first unless done since their weights changed."""
    if backend.startswith("onnx") and not all(map(exported, model_dirs)):
        run_repo_script(f"export_{name}", ["export.py", "--model_dir", *model_dirs,
                                           "--check_file", check_file], work_dir)
    output = os.path.join(work_dir, "speed", f"{name}.{backend}.tsv")
    command = ["inference.py", "--model_dir", *map(repo_path, model_dirs), "--input_file",
               repo_path(input_file), "--output", repo_path(output), "--device", "cpu",
               "--decision", "none", *BACKENDS[backend]]
    return {"model_dirs": list(model_dirs), "backend": backend,
            **time_command(f"{name}_{backend}", command, output, input_file, work_dir)}


def time_command(name, command, output, input_file, work_dir):
    """{posts, seconds, timings, posts_per_s, macro_f1, command} of a labelling command (a repo
    script and its arguments) that writes `id<TAB>label...` lines to output: wall seconds of the
    whole command, the fastest of TIMINGS runs; macro-F1 from the labels it wrote against the
    labelled input_file's own."""
    os.makedirs(os.path.dirname(output), exist_ok=True)
    timings = []
    for attempt in range(1, TIMINGS + 1):
        for path in (output, output + ".run.json"):  # inference.py never writes over a run
            if os.path.exists(path):
                os.remove(path)
        start = time.perf_counter()
        run_repo_script(f"speed_{name}_{attempt}", command, work_dir)
        timings.append(time.perf_counter() - start)
    with open(output, encoding="utf-8") as f:
        predicted = [LABEL2ID[line.rstrip("\n").split("\t")[1]] for line in f]
    gold = [LABEL2ID[r.label] for r in read_records(input_file)]
    if len(predicted) != len(gold):
        raise UserError(f"{output}: {len(predicted)} rows for the {len(gold)} posts of "
                        f"{input_file}")
    seconds = min(timings)
    return {"posts": len(gold), "seconds": seconds, "timings": timings,
            "posts_per_s": len(gold) / seconds,
            "macro_f1": classification_scores(gold, predicted)["macro_f1"],
            "command": "python " + shlex.join(command)}


def speed(key, model_dirs, backend, args):
    """time_inference of a line's model, kept in WORK_DIR/speed/KEY.BACKEND.json (and timed
    again for other models, or for weights written since)."""
    path = os.path.join(args.work_dir, "speed", f"{key}.{backend}.json")
    weights = [os.path.join(d, "model.safetensors") for d in model_dirs]
    if (os.path.isfile(path) and read_json(path)["model_dirs"] == list(model_dirs)
            and os.path.getmtime(path) > max(map(os.path.getmtime, weights))):
        return read_json(path)
    result = time_inference(key, model_dirs, backend, os.path.join(args.clean_dir, SPEED_FILE),
                            args.work_dir, os.path.join(args.clean_dir, CHECK_FILE))
    write_json(path, result)
    return result


def print_tables(results, args):
    setting, grid = results["setting"], results["grid"]
    print(f"\nthe setting, chosen on usual_eval: student a ({repo_path(args.student_a)}) "
          f"distilled, seed {results['seeds'][0]}\n")
    print("| T | alpha | usual_eval macro-F1 of the best epoch | chosen |")
    print("|---|---|---|---|")
    for row in grid:
        chosen = "yes" if [row["temperature"], row["alpha"]] == setting else ""
        print(f"| {row['temperature']:g} | {row['alpha']:g} | {row['eval_macro_f1']:.4f} | "
              f"{chosen} |")

    lines = results["lines"]
    print(f"\nteachers: {' '.join(map(repo_path, args.teachers))}; students: a "
          f"{repo_path(args.student_a)}, b its {args.student_layers}-layer cut, c "
          f"{args.student_c and repo_path(args.student_c)}; lr {args.lr:g} (c: {args.lr_c:g}), "
          f"{args.epochs} epochs, seeds {results['seeds']}; distilled at T {setting[0]:g}, alpha "
          f"{setting[1]:g}; tests in fp32, argmax; mean ± sample std; change: macro-F1 points "
          "against the line named; minutes: train.py's wall time (the teachers' labelling of "
          "the posts is in the first distilled run's; the teachers' line: their sum)\n")
    print("| line | runs | usual_test acc | usual_test macro-F1 | change | virus_test acc | "
          "virus_test macro-F1 | change | train minutes per run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, line in lines.items():
        compared = line["compared_with"]
        baseline = ([r["scores"] for r in lines[compared]["runs"]] if compared in lines
                    else None)
        known = [r["minutes"] for r in line["runs"] if r["minutes"] is not None]
        minutes = sum(known) / len(known) if known else math.nan
        print(table_row(key + (f" (vs {compared})" if baseline else ""),
                        [r["scores"] for r in line["runs"]], minutes, baseline))

    print(f"\nspeed on this CPU ({cpu_name()}, {torch.get_num_threads()} torch threads): the "
          f"whole inference.py command over {SPEED_FILE} (model load included), the faster of "
          f"{TIMINGS} runs; macro-F1: that model on that backend, from the command's output\n")
    print("| line | model | backend | posts/s | seconds | usual_test macro-F1 |")
    print("|---|---|---|---|---|---|")
    for key, line in lines.items():
        for backend, s in line["speed"].items():
            model = " + ".join(map(repo_path, s["model_dirs"]))
            print(f"| {key} | {model} | {backend} | {s['posts_per_s']:.1f} | {s['seconds']:.1f} "
                  f"| {s['macro_f1']:.4f} |")


def main():
    args = parse_args()
    for flag, folders in (("--teachers", args.teachers), ("--student_a", [args.student_a]),
                          ("--student_c", [args.student_c] if args.student_c else []),
                          ("--plain_a", args.plain_a)):
        for folder in folders:
            if not os.path.isdir(folder):
                raise UserError(f"{flag} {folder}: no such folder")
    print(describe_machine(torch.device("cpu")))
    args.clean_dir = clean_data(args.data_dir, args.work_dir)
    seeds = [42 + i for i in range(args.seeds)]
    setting, grid = choose_setting(seeds[0], args)
    lines = {"teachers": {"runs": [{
        "model_dir": args.teachers, "minutes": sum_or_none(map(minutes_of, args.teachers)),
        "scores": test("teachers", args.teachers, args)}], "compared_with": None}}
    for key, row, distilled, compared in LINES:
        if row in args.rows:
            lines[key] = {"runs": line_runs(row, distilled, setting, seeds, args),
                          "compared_with": compared}
            print(f"  {key}: done", flush=True)
    for key, line in lines.items():  # the first run's model; the teachers' whole ensemble
        first = line["runs"][0]["model_dir"]
        model_dirs = first if isinstance(first, list) else [first]
        line["speed"] = {backend: speed(key, model_dirs, backend, args)
                         for backend in args.backends}
    results = {"args": vars(args), "cpu": cpu_name(), "seeds": seeds, "setting": list(setting),
               "grid": [{"temperature": t, "alpha": a, "eval_macro_f1": f1}
                        for (t, a), f1 in grid.items()], "lines": lines}
    write_json(os.path.join(args.work_dir, "results.json"), results)
    print_tables(results, args)
    print(f"\nwrote {os.path.join(args.work_dir, 'results.json')}")


if __name__ == "__main__":
    run_cli(main)
