"""The speed-accuracy picture on this CPU: usual_test macro-F1 against posts/s of the whole
`inference.py --input_file` command, for each model and backend, and the char TF-IDF baseline;
the frontier (points no faster-and-better point beats) marked, in docs/frontier.png and .md.

    M=workspace/mini_seed
    python -m bench.frontier --from_results workspace/distill/results.json --results_label 4-layer \
        --results_label_c "2-layer, 40 epochs" \
        --model 2-layer=workspace/wb/best --model 4-layer_x2=${M}42/best,${M}43/best

    # a smoke run on the test fixture, after bench/distill.py's (its docstring): 2 minutes
    T=workspace/tiny
    python -m bench.frontier --from_results $T/distill/results.json --model tiny=$T/t42/best \
        --model tiny_x2=$T/t42/best,$T/t43/best --data_dir tests/fixtures/raw \
        --work_dir $T/frontier --png $T/frontier.png --md $T/frontier.md

--model NAME=DIR[,DIR...] (several folders: their ensemble) is timed per --backends as
bench/distill.py times its lines (distill.time_inference): `inference.py --input_file
WORK_DIR/clean/usual_test_labeled.txt --output FILE --device cpu --decision none` plus the
backend's flags, the wall time of the whole command (Python's start, the imports and the model's
load included), the fastest of distill.TIMINGS runs; its macro-F1 is scored from the labels the
command wrote. --from_results adds bench/distill.py's lines, measured there the same way.
The char TF-IDF baseline is fitted on usual_train once (python -m bench.tfidf_baseline --save
WORK_DIR/tfidf.pkl) and timed the same way, by its whole labelling command: `python -m
bench.tfidf_baseline --load WORK_DIR/tfidf.pkl --input_file ... --output FILE` (Python's start,
the imports and the pickle's load included).

Measurements are kept in --cache, keyed by name, backend, folders, their weights' times and the
CPU: a rerun measures only what is new (delete the file to measure everything again).
"""
import argparse
import datetime
import json
import os
import re

from bench import distill, tfidf_baseline
from bench.common import DEFAULT_DATA_DIR, command_line, cpu_name, read_json
from ewect.config import REPO_ROOT
from ewect.errors import HelpFormatter, UserError, run_cli
from ewect.training import write_json

TFIDF = "char TF-IDF"
MARKERS = {"torch_fp32": "o", "torch_int8": "s", "onnx_int8": "^", "sklearn": "D"}


def model_arg(text):
    """argparse type of --model: (NAME, [DIR, ...])."""
    name, _, folders = text.partition("=")
    if not name or not folders:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR[,DIR...], not {text!r}")
    return name, [os.path.abspath(d) for d in folders.split(",")]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", type=model_arg, action="append", default=[],
                   metavar="NAME=DIR[,DIR...]",
                   help="a model to time (several folders: their ensemble); repeat for more")
    p.add_argument("--backends", nargs="+", default=list(distill.BACKENDS),
                   choices=list(distill.BACKENDS), help="the backends each --model is timed on")
    p.add_argument("--from_results", metavar="FILE",
                   help="bench/distill.py's results.json: its lines' measurements are added")
    p.add_argument("--results_label", default="student a",
                   help="what the picture calls --from_results' student a (its other lines are "
                        "named after it), e.g. 4-layer")
    p.add_argument("--results_label_c", default="student c",
                   help="what the picture calls --from_results' student c, e.g. '2-layer, 40 "
                        "epochs'")
    p.add_argument("--no_tfidf", action="store_true", help="leave the TF-IDF baseline out")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the six raw files")
    p.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "workspace", "frontier"),
                   help="where the cleaned data, inference outputs and logs go")
    p.add_argument("--cache",
                   help="the measurements kept between runs (default: WORK_DIR/measurements.json)")
    p.add_argument("--png", default=os.path.join(REPO_ROOT, "docs", "frontier.png"),
                   help="the picture")
    p.add_argument("--md", default=os.path.join(REPO_ROOT, "docs", "frontier.md"),
                   help="the table, with the picture")
    args = p.parse_args()
    args.data_dir, args.work_dir = map(os.path.abspath, (args.data_dir, args.work_dir))
    args.cache = args.cache or os.path.join(args.work_dir, "measurements.json")
    return args


def weights_time(folder):
    path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(path):
        raise UserError(f"--model {folder}: no model.safetensors; pass train.py's best/ folders")
    return os.path.getmtime(path)


def measured(cache, key, measure):
    """cache[key], measured (and the cache file rewritten) only when it is not there."""
    if key not in cache["points"]:
        cache["points"][key] = measure()
        write_json(cache["path"], cache["points"])
    return cache["points"][key]


def model_point(name, folders, backend, cache, args):
    key = json.dumps([name, backend, folders, [weights_time(d) for d in folders], cpu_name()])

    def measure():
        s = distill.time_inference(re.sub(r"[^\w.-]+", "_", name), folders, backend,
                                   os.path.join(args.clean_dir, distill.SPEED_FILE),
                                   args.work_dir, os.path.join(args.clean_dir, distill.CHECK_FILE))
        return {"name": name, **s}
    return measured(cache, key, measure)


def tfidf_point(cache, args):
    """The TF-IDF baseline, fitted on usual_train once (WORK_DIR/tfidf.pkl), then timed as the
    models are: its whole labelling command over the same usual_test file."""
    key = json.dumps([TFIDF, "whole command", args.data_dir, cpu_name()])

    def measure():
        model = os.path.join(args.work_dir, "tfidf.pkl")
        if not os.path.isfile(model):
            tfidf_baseline.tfidf_scores(args.data_dir, "usual_train.txt", [], save=model)
        input_file = os.path.join(args.clean_dir, distill.SPEED_FILE)
        output = os.path.join(args.work_dir, "speed", "tfidf.tsv")
        command = ["-m", "bench.tfidf_baseline", "--load", distill.repo_path(model), "--input_file",
                   distill.repo_path(input_file), "--output", distill.repo_path(output)]
        return {"name": TFIDF, "backend": "sklearn",
                **distill.time_command("tfidf", command, output, input_file, args.work_dir)}
    return measured(cache, key, measure)


def results_points(path, label, label_c="student c"):
    """(points, a sentence naming the students) of bench/distill.py's results: each line's
    first model, per backend timed."""
    results = read_json(path)
    if results.get("cpu") != cpu_name():
        print(f"warning: {path} was measured on {results.get('cpu')}, not on this "
              f"{cpu_name()}: its speeds are not comparable with the ones measured here")
    args = results["args"]
    rel = distill.repo_path
    named = [f"a {rel(args['student_a'])}"]
    if "b" in args["rows"]:
        named.append(f"b its {args['student_layers']}-layer cut")
    if "c" in args["rows"]:
        named.append(f"c {rel(args['student_c'])}")
    students = (f"From {path}: teachers {' '.join(map(rel, args['teachers']))}; students "
                f"{', '.join(named)}; KD: distilled at T {results['setting'][0]:g}, alpha "
                f"{results['setting'][1]:g}. Each line's point is its first run (seed "
                f"{results['seeds'][0]}; the teachers: their ensemble), not the mean over seeds.")
    names = line_names(label, args["student_layers"], len(args["teachers"]), label_c)
    return [{"name": names.get(key, key), **s} for key, line in results["lines"].items()
            for s in line["speed"].values()], students


def line_names(label, layers, teacher_count, label_c):
    """bench/distill.py's lines as the picture names them, after --results_label and
    --results_label_c (its table's keys are shorter)."""
    teachers = "(teacher)" if teacher_count == 1 else f"x{teacher_count} (teachers)"
    return {"teachers": f"{label} {teachers}", "a_plain": label, "a_kd": f"{label}, KD",
            "b_plain": f"{label} cut to {layers}", "b_kd": f"{label} cut to {layers}, KD",
            "c_plain": label_c, "c_kd": f"{label_c}, KD",
            "unlabelled": f"{label}, KD + unlabelled"}


def mark_frontier(points):
    """Each point's 'frontier': True unless another point is at least as fast and as accurate
    and better in one of the two (so the best accuracy at each speed)."""
    for p in points:
        p["frontier"] = not any(
            q["posts_per_s"] >= p["posts_per_s"] and q["macro_f1"] >= p["macro_f1"]
            and (q["posts_per_s"], q["macro_f1"]) != (p["posts_per_s"], p["macro_f1"])
            for q in points)


# Where a point's name may go, in points from it: beside it first, then further up or down.
LABEL_OFFSETS = [(dx, dy) for level in range(6) for dy in (3 + 11 * level, -11 - 11 * level)
                 for dx in (6, -6)]


def place_labels(ax, points):
    """Each point's name at the first offset where it stays inside the axes and covers no point
    and no name placed before (frontier points first); a name moved off its point gets a thin
    line to it. A name with no such place is left out: the table lists every point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = [Bbox.from_extents(x - 4, y - 4, x + 4, y + 4) for x, y in ax.transData.transform(
        [(p["posts_per_s"], p["macro_f1"]) for p in points])]
    for p in sorted(points, key=lambda p: (not p["frontier"], -p["posts_per_s"])):
        for dx, dy in LABEL_OFFSETS:
            label = ax.annotate(
                p["name"], (p["posts_per_s"], p["macro_f1"]), xytext=(dx, dy),
                textcoords="offset points", ha="left" if dx > 0 else "right", fontsize=8,
                fontweight="bold" if p["frontier"] else "normal",
                arrowprops=dict(arrowstyle="-", color="grey", lw=0.5) if abs(dy) > 14 else None)
            # the text's own box: an annotation's box takes in its line to the point, which
            # always covers the point itself
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and not any(
                    box.overlaps(other) for other in taken):
                taken.append(box)
                break
            label.remove()


def plot(points, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    for backend, marker in MARKERS.items():
        group = [p for p in points if p["backend"] == backend]
        if group:
            ax.scatter([p["posts_per_s"] for p in group], [p["macro_f1"] for p in group],
                       marker=marker, s=50, zorder=3, label=backend.replace("_", " "))
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    best = sorted((p for p in points if p["frontier"]), key=lambda p: p["posts_per_s"])
    # The best accuracy reachable at least this fast, from the left edge: a falling staircase.
    left = ax.get_xlim()[0]
    ax.step([left] + [p["posts_per_s"] for p in best],
            [best[0]["macro_f1"]] + [p["macro_f1"] for p in best], where="pre", color="grey",
            linestyle="--", zorder=2, label="frontier")
    ax.set_xlim(left=left)
    ax.set_xlabel("posts/s of the whole inference.py --input_file command (log scale)")
    ax.set_ylabel("usual_test macro-F1")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # covers no point
    place_labels(ax, points)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_table(points, path, png, title, students):
    lines = [
        "# Speed and accuracy", "", title, "",
        "usual_test macro-F1 against posts/s of the whole `inference.py --input_file` command "
        "(Python's start, imports and the model's load included; the faster of "
        f"{distill.TIMINGS} runs; the TF-IDF: its own whole labelling command, "
        "`python -m bench.tfidf_baseline --load`). On the frontier: no other point is at least "
        "as fast and at least as accurate, and better in one. Made by "
        f"`{command_line()}`. {students}".rstrip(), "",
        f"![speed and accuracy]({os.path.relpath(png, os.path.dirname(os.path.abspath(path)))})",
        "", "| name | backend | usual_test macro-F1 | posts/s | on frontier | command |",
        "|---|---|---:|---:|---|---|"]
    for p in sorted(points, key=lambda p: -p["posts_per_s"]):
        lines.append(f"| {p['name']} | {p['backend'].replace('_', ' ')} | {p['macro_f1']:.4f} | "
                     f"{p['posts_per_s']:.1f} | {'yes' if p['frontier'] else 'no'} | "
                     f"`{p['command']}` |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    args = parse_args()
    if not args.model and not args.from_results and args.no_tfidf:
        raise UserError("nothing to draw: pass --model, --from_results or leave the TF-IDF in")
    if args.from_results and not os.path.isfile(args.from_results):
        raise UserError(f"--from_results {args.from_results}: no such file; bench/distill.py "
                        "writes WORK_DIR/results.json when it ends")
    os.makedirs(args.work_dir, exist_ok=True)
    cache = {"path": args.cache,
             "points": read_json(args.cache) if os.path.isfile(args.cache) else {}}
    points = []
    if args.model or not args.no_tfidf:
        args.clean_dir = distill.clean_data(args.data_dir, args.work_dir)
    if args.model:
        points += [model_point(name, folders, backend, cache, args)
                   for name, folders in args.model for backend in args.backends]
    students = ""
    if args.from_results:
        more, students = results_points(args.from_results, args.results_label,
                                        args.results_label_c)
        points += more
    if not args.no_tfidf:
        points.append(tfidf_point(cache, args))
    mark_frontier(points)
    title = (f"usual_test macro-F1 and speed on {cpu_name()} ({os.cpu_count()} logical CPUs), "
             f"{datetime.date.today().isoformat()}")
    plot(points, args.png, title)
    write_table(points, args.md, args.png, title, students)
    print("\n".join(f"{p['name']:<24} {p['backend']:<11} macro-F1 {p['macro_f1']:.4f}  "
                    f"{p['posts_per_s']:8.1f} posts/s{'  frontier' if p['frontier'] else ''}"
                    for p in sorted(points, key=lambda p: -p["posts_per_s"])))
    print(f"wrote {args.png} and {args.md}")


if __name__ == "__main__":
    run_cli(main)
