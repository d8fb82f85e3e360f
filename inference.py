"""Label Weibo posts with a trained checkpoint: the label and the six probabilities.

    python inference.py --input '你是个什么东西，垃圾' --device cpu
    python inference.py --input_file posts.txt                  # one post per line
    python inference.py --input_file data/raw/virus_test_labeled.txt --json > labels.jsonl
    python inference.py --input_file posts.csv --output labels.jsonl --json   # 'content' column
    python inference.py --input_file posts.txt --output labels.tsv --resume   # go on after a kill
    python inference.py --input '好开心' --backend onnx --int8   # after `python export.py`
    python inference.py --input '好开心' --precision fp32   # exact fp32 where auto picks bf16
    python inference.py --input_file posts.txt --model_dir runA/best runB/best   # an ensemble
    python inference.py --input_file posts.txt --model_dir runA/best runB/best --decision dec.json
    torchrun --nproc_per_node=4 inference.py --input_file posts.txt --output labels.tsv  # 4 GPUs
    python inference.py --input_file posts.csv --output labels.tsv --summary shares.json
    python inference.py --input_file posts.csv --summary shares.json --group_by date --period day
    python inference.py --input '你是个什么东西，垃圾' --explain        # why: each character's part
    python inference.py --input_file posts.txt --output why.jsonl --json --explain

Posts are cleaned exactly as the training data was. --input_file takes plain text (one post per
line, blank lines skipped, id = line number), an SMP2020-EWECT JSON array (labels optional),
JSON Lines, or a CSV, TSV or Excel file with a 'content' column (and an optional 'id'); --format
auto tells them apart by the file's extension and first record. Lines, JSON Lines, CSV and TSV
are streamed: posts are read,
labelled and written in chunks, so memory does not grow with the file; JSON and Excel are read
whole (fine for SMP2020-EWECT's files; use lines or CSV for millions of posts).
Output, one row per post in input order: TSV (id, label, its probability, cleaned text) or with
--json one JSON object per post (id, text as cleaned, label, probabilities). With --output FILE
every chunk is written whole and synced, so a killed run leaves only complete rows, and --resume
skips the posts already there. OUTPUT.run.json records the settings that decide which rows go
where and what they say (input file, its size and time, --format, --json, --chunk_size,
processes; the model folders and their weight files, --backend, --int8, the precision in use and
the decision offsets) until the run is done; --resume with other settings, or of a finished
output, is refused.
Several --model_dir make an ensemble: the mean of their probabilities. The label is the argmax
of the probabilities, or with decision offsets (ewect/decision.py) the argmax of log p + offset:
a single --model_dir's decision.json (train.py --tune_bias) is applied unless --decision none, and
--decision FILE gives offsets explicitly (an ensemble's, say). The probabilities stay the model's.
Under torchrun each process labels every N-th chunk on its own GPU (cuda:LOCAL_RANK; on a CPU
they share the cores) into OUTPUT.partK, and rank 0 merges the parts into OUTPUT in input order
once every process of this launch has marked its part done (an earlier launch's marks are not
taken for them).
--summary S.json adds the file's emotion shares (ewect/shares.py): classify and count and its
corrections, the recommended one with a 95% interval, and a warning when the model sees the posts
differently from the labelled posts its corrections learnt from (the checkpoint's eval posts, or
--calibration_file). --group_by COLUMN gives them per value of a column (per day of a time with
--period day) in S.groups.csv and S.groups.png. Probabilities are calibrated by the checkpoint's
temperature (calibration.json); labels do not change.
--explain adds why (ewect/explain.py): each piece of the cleaned post (a character, a Latin word
or number, an emoji tag) with its change to the probability of the label given; printed for one
post, and as `explanation`, a list of [piece, score] pairs whose pieces concatenate to the
cleaned text, in --json objects (with `cut_at`: the characters explained when --max_length cut
the post, else null) or as a fifth TSV column. Integrated Gradients for torch models, occlusion
for --backend onnx and --int8; an ensemble's is the mean of its members'.
"""
import argparse
import glob
import itertools
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ewect.config import BEST_DIR, LABEL2ID, LABELS, MAX_LENGTH
from ewect.data import add_label_names_arg, read_groups, read_posts, read_records
from ewect.decision import add_decision_arg, choose_offsets, decide
from ewect.errors import UserError, first_line, positive_int, run_cli, script_help
from ewect.explain import METHODS as EXPLAIN_METHODS, make_explainer
from ewect.prediction import BACKENDS, add_precision_arg, load_predictor, weights_identity
from ewect.shares import PERIODS

FORMATS = ("auto", "lines", "json", "jsonl", "csv", "tsv", "xlsx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(**script_help(__doc__))
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="one post to label")
    source.add_argument("--input_file",
                        help="file of posts: lines, a JSON array, JSON Lines, or CSV, TSV or "
                             "Excel")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="--input_file's format; auto: .csv, .tsv, .xlsx, .json and .jsonl by "
                        "their extension, a file starting with a JSON array of objects is JSON, "
                        "anything else one post per line")
    p.add_argument("--output", help="write the rows to this file instead of stdout")
    p.add_argument("--resume", action="store_true",
                   help="--output exists from an interrupted run: label only the posts after it")
    p.add_argument("--model_dir", nargs="+", default=[BEST_DIR],
                   help="checkpoint folder written by train.py; several: their ensemble")
    add_decision_arg(p)
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="torch: the checkpoint; onnx: its export by export.py (CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--json", action="store_true", help="one JSON object per post")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="posts per forward pass; None: the measured best for the device")
    p.add_argument("--chunk_size", type=positive_int, default=2048,
                   help="posts read, labelled and written at a time with --input_file")
    p.add_argument("--max_length", type=positive_int, default=MAX_LENGTH,
                   help="tokens kept per post")
    p.add_argument("--int8", action="store_true",
                   help="int8 model: dynamic quantization (torch, CPU) or export.py's int8 file")
    add_precision_arg(p)
    p.add_argument("--explain", nargs="?", const="auto", choices=("auto", *EXPLAIN_METHODS),
                   help="also give each piece's contribution to the label; auto: Integrated "
                        "Gradients (ig) for torch models, occlusion for onnx and --int8 ones")
    p.add_argument("--summary", metavar="S.json",
                   help="also write the file's emotion shares: every method, the recommended "
                        "one's 95%% interval, and a warning when its correction may not hold")
    p.add_argument("--group_by", metavar="COLUMN",
                   help="with --summary: shares per value of this column of a CSV, TSV, Excel, "
                        "JSON or JSON Lines file, in S.groups.csv and S.groups.png")
    p.add_argument("--period", choices=PERIODS,
                   help="with --group_by: its column holds times; group them by day, week or "
                        "month")
    p.add_argument("--calibration_file", nargs="+", metavar="FILE",
                   help="with --summary: posts of your own data labelled by hand (as test.py "
                        "reads them), for the corrections to learn the model's mistakes from "
                        "instead of its eval posts")
    add_label_names_arg(p)
    args = p.parse_args(argv)
    if args.resume and not (args.output and args.input_file):
        p.error("--resume needs --input_file and --output")
    for flag, needs in (("summary", "input_file"), ("group_by", "summary"),
                        ("period", "group_by"), ("calibration_file", "summary")):
        if getattr(args, flag) and not getattr(args, needs):
            p.error(f"--{flag} needs --{needs}")
    return args


def format_row(post_id, text, row, label_id, as_json, explanation=None):
    """One output line for one post: its label and probabilities (and with --explain, why)."""
    label = LABELS[int(label_id)]
    why = {} if explanation is None else {"explanation": explanation.pairs(),
                                          "cut_at": explanation.cut_at}
    if as_json:
        return json.dumps({"id": post_id, "text": text, "label": label,
                           "probabilities": {name: round(float(p), 4)
                                             for name, p in zip(LABELS, row)}, **why},
                          ensure_ascii=False) + "\n"
    row = f"{post_id}\t{label}\t{row[label_id]:.4f}\t{' '.join(text.split())}"
    if why:  # cleaned text has no tabs or newlines, so neither has its JSON
        row += "\t" + json.dumps(why["explanation"], ensure_ascii=False, separators=(",", ":"))
    return row + "\n"


def rows_done(path, block=1 << 20):
    """Complete rows already in an output file, counted block by block; a torn last line (a
    kill mid-write) is cut off."""
    if not os.path.exists(path):
        return 0
    rows = complete = offset = 0
    with open(path, "rb+") as f:
        while data := f.read(block):
            rows += data.count(b"\n")
            if b"\n" in data:
                complete = offset + data.rfind(b"\n") + 1
            offset += len(data)
        f.truncate(complete)
    return rows


class RowWriter:
    """Writes whole chunks of rows to stdout, or to a file that is synced after each chunk."""

    def __init__(self, path=None, append=False):
        self.file = open(path, "a" if append else "w", encoding="utf-8") if path else sys.stdout
        self.synced = path is not None

    def write(self, lines):
        self.file.write("".join(lines))
        self.file.flush()
        if self.synced:
            os.fsync(self.file.fileno())

    def close(self):
        if self.synced:
            self.file.close()


def record_path(output):
    return f"{output}.run.json"


def run_settings(args, world_size, precision, offsets):
    """What decides which rows are in OUTPUT (or in which OUTPUT.partK) and what they say: a
    resume needs the same. `precision`: the one the predictor computes in (--precision auto may
    pick another on another machine); `offsets`: the decision offsets in use, or None."""
    stat = os.stat(args.input_file)
    return {"input_file": os.path.abspath(args.input_file), "input_bytes": stat.st_size,
            "input_modified": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
            "format": args.format, "json": args.json, "chunk_size": args.chunk_size,
            "processes": world_size,
            "models": [weights_identity(d, args.backend, args.int8) for d in args.model_dir],
            "backend": args.backend, "int8": args.int8, "precision": precision,
            "decision_offsets": None if offsets is None else [float(o) for o in offsets],
            "summary": bool(args.summary),
            "explain": args.explain}


def describe_change(key, then, now):
    """One setting that differs between a run and its --resume, for the refusal."""
    if key != "models":
        return f"{key}: {then} then, {now} now"
    folders = [" ".join(model[0] for model in models) for models in (then, now)]
    if folders[0] != folders[1]:
        return f"--model_dir: {folders[0]} then, {folders[1]} now"
    return f"--model_dir {folders[1]}: its weights were trained, calibrated or exported again since"


def launch_id(world_size):
    """The torchrun launch this process belongs to, the same for all of its processes and new
    each launch: torchrun's run id or, with a fixed --master_port (the run id is then 'none' for
    every launch), the torchrun process that started them on this machine: its host, id and start
    time (ids are reused). None for one process, or a launcher that gives no run id."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if world_size == 1 or run_id is None:
        return None
    if run_id != "none":
        return run_id
    if os.environ.get("LOCAL_WORLD_SIZE", str(world_size)) != str(world_size):
        raise UserError("torchrun on several machines with a fixed --master_port gives every "
                        "launch the same run id: pass --rdzv_id with a new id each launch")
    parent = os.getppid()
    try:  # /proc/PID/stat's 22nd field, after the name in parentheses: the start time
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return f"torchrun {parent} started at {started} on {socket.gethostname()}"


def write_atomically(path, text, rank):
    """The whole text or nothing, even when every process writes the same file at once."""
    with open(f"{path}.{rank}", "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.{rank}", path)


def write_record(output, settings, world_size, rank):
    """OUTPUT.run.json, written before any row (by each process, the same text)."""
    write_atomically(record_path(output), json.dumps(
        {**settings, "launch": launch_id(world_size)}, indent=1), rank)


def begun_by_this_launch(record, world_size):
    """Whether OUTPUT.run.json was written by another process of this same torchrun launch, one
    that started sooner: the files beside it are then this run's own. (An earlier run's files
    were there before this launch began, so every process of it sees them and refuses.)"""
    try:
        then = json.loads(Path(record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return launch_id(world_size) is not None and then.get("launch") == launch_id(world_size)


def leftovers(output):
    """(files an earlier run left, its parts among them, how to start over)."""
    parts = sorted(glob.glob(glob.escape(output) + ".part*"))
    earlier = [path for path in (output, record_path(output), probabilities_path(output))
               if os.path.exists(path)] + parts
    start_over = "delete " + " and ".join(dict.fromkeys(
        f"{output}.part*" if path in parts else path for path in earlier)) + " to start over"
    return earlier, parts, start_over


def check_earlier_run(args, world_size):
    """A new run never writes over what an earlier one left; --resume goes on with it only when
    it recorded its settings (returned, for refuse_other_settings once the model is loaded).
    Leftover parts are never ignored: resumed or refused."""
    output, record = args.output, record_path(args.output)
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        raise UserError(f"{output}: no folder {folder}")
    earlier, parts, start_over = leftovers(output)
    if not args.resume:
        if earlier and not begun_by_this_launch(record, world_size):
            raise UserError(f"{earlier[0]} exists; pass --resume to go on with it, or "
                            f"{start_over}")
        return None
    if os.path.exists(record):
        try:
            return json.loads(Path(record).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{record}: cannot read ({first_line(err)}); {start_over}") from None
    if parts:
        raise UserError(f"{parts[0]}: part of a run of several processes whose settings were not "
                        f"recorded; {start_over}")
    if os.path.exists(output):  # resuming would skip as many posts, of any input, as it has rows
        raise UserError(f"{output}: finished (or not written by inference.py): without "
                        f"{os.path.basename(record)} there is nothing to resume; {start_over}")
    return None


def refuse_other_settings(output, then, now):
    """--resume: the settings recorded when OUTPUT was begun (`then`) must be today's. A setting
    that an older version did not record is taken as unchanged."""
    then = {"explain": None, **then}  # recorded from the first version with --explain: absent, none
    changed = [key for key, value in now.items() if key in then and then[key] != value]
    if {"backend", "int8"} & set(changed):  # another backend reads other files of the model
        changed = [key for key in changed if key != "models"]
    changed = [describe_change(key, then[key], now[key]) for key in changed]
    if changed:
        raise UserError(f"{output} was begun with other settings ({'; '.join(changed)}); resume "
                        f"with the same ones, or {leftovers(output)[2]}")


def chunks(items, size):
    return iter(lambda: list(itertools.islice(items, size)), [])


def process_group():
    """(rank, world size, local rank) under torchrun, (0, 1, 0) otherwise."""
    env = os.environ
    return (int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def probabilities_path(output):
    """--summary's record of every post's calibrated probabilities beside OUTPUT (or a part, or
    S.json without --output): float32 rows, written and synced with each chunk before its rows,
    so a resumed run has those of the rows already written."""
    return f"{output}.probabilities"


ROW_BYTES = len(LABELS) * 4  # one post's float32 probabilities


def keep_probabilities(path, rows):
    """The probabilities file opened to append after its first `rows` rows (those of the rows
    already in the output; a chunk written after them, whose rows a kill cut off, is dropped)."""
    if rows == 0:
        return open(path, "wb")
    if not os.path.exists(path) or os.path.getsize(path) < rows * ROW_BYTES:
        raise UserError(f"{path}: has the probabilities of fewer posts than the output has rows "
                        "(removed?), so the summary cannot be resumed; start over")
    f = open(path, "rb+")
    f.truncate(rows * ROW_BYTES)
    f.seek(0, os.SEEK_END)
    return f


def label_file(args, posts, predictor, offsets=None, rank=0, world_size=1, settings=None,
               explainer=None):
    """Stream the posts through clean → predict → write, chunk by chunk, in input order. With
    several processes, process k labels chunks k, k+N, k+2N, … into OUTPUT.partk. With --output,
    `settings` (run_settings) go into OUTPUT.run.json first; with --summary, the probabilities go
    to probabilities_path(OUTPUT or OUTPUT.partk or S.json). Returns (posts this process
    labelled, seconds it took)."""
    from tqdm import tqdm

    from ewect.cleaning import clean_text

    output = f"{args.output}.part{rank}" if world_size > 1 else args.output
    mine = (post for index, chunk in enumerate(chunks(posts, args.chunk_size))
            if index % world_size == rank for post in chunk)
    skip = rows_done(output) if args.resume and output else 0
    if args.output:
        write_record(args.output, settings, world_size, rank)
    writer = RowWriter(output, append=skip > 0)
    kept = (keep_probabilities(probabilities_path(output or args.summary), skip)
            if args.summary else None)
    progress = tqdm(unit=" posts", initial=skip, file=sys.stderr, dynamic_ncols=True,
                    disable=None if rank == 0 else True)  # None: no bar unless a terminal
    labelled, start = 0, time.perf_counter()
    try:
        for chunk in chunks(itertools.islice(mine, skip, None), args.chunk_size):
            texts = [clean_text(text) for _, text in chunk]
            probs = predictor.predict(texts, args.batch_size, args.max_length)
            if kept:
                kept.write(probs.astype(np.float32).tobytes())
                kept.flush()
                os.fsync(kept.fileno())
            label_ids = decide(probs, offsets, predictor.temperature)
            why = (explainer.explain(texts, label_ids, args.max_length) if explainer
                   else [None] * len(texts))
            writer.write([format_row(post_id, text, row, label_id, args.json, explanation)
                          for (post_id, _), text, row, label_id, explanation
                          in zip(chunk, texts, probs, label_ids, why)])
            progress.update(len(chunk) * world_size)
            labelled += len(chunk)
    finally:
        progress.close()
        writer.close()
        if kept:
            kept.close()
    return labelled, time.perf_counter() - start


def done_mark(world_size):
    """What OUTPUT.partK.done says: this launch, and which attempt of it (torchrun's
    --max_restarts starts the processes again under the same launch). A mark an earlier launch
    or attempt left is not this one's, so rank 0 never merges before a slow process is done."""
    return f"{launch_id(world_size)}, attempt {os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"


def mark_done(output, rank, world_size):
    write_atomically(f"{output}.part{rank}.done", done_mark(world_size), rank)


def marked_done(part, mark):
    try:
        return Path(part + ".done").read_text(encoding="utf-8") == mark
    except OSError:
        return False


def wait_for_parts(output, world_size):
    """Rank 0: until every process of this launch has marked its part done."""
    mark = done_mark(world_size)
    while not all(marked_done(f"{output}.part{rank}", mark) for rank in range(world_size)):
        time.sleep(0.5)  # torchrun stops every process if one fails, so this cannot hang


def merge_probabilities(output, world_size, chunk_size):
    """--summary's probabilities of the parts, interleaved back into input order as the rows
    will be, into probabilities_path(OUTPUT); the parts stay until merge_parts."""
    rows = [np.fromfile(probabilities_path(f"{output}.part{rank}"), np.float32
                        ).reshape(-1, len(LABELS)) for rank in range(world_size)]
    pieces = []
    for index in range(-(-sum(map(len, rows)) // chunk_size)):  # chunk k: process k % N's
        start = index // world_size * chunk_size
        pieces.append(rows[index % world_size][start:start + chunk_size])
    np.concatenate(pieces).tofile(probabilities_path(output))


def merge_parts(output, world_size, chunk_size):
    """Rank 0, once every part is done: interleave the parts' chunks back into input order in
    OUTPUT (written whole, then renamed into place), and remove the parts."""
    parts = [f"{output}.part{rank}" for rank in range(world_size)]
    files = [open(part, encoding="utf-8") for part in parts]
    with open(output + ".tmp", "w", encoding="utf-8") as merged:
        for chunk_index in itertools.count():
            rows = list(itertools.islice(files[chunk_index % world_size], chunk_size))
            if not rows:
                break
            merged.writelines(rows)
        merged.flush()
        os.fsync(merged.fileno())
    for f in files:
        f.close()
    os.replace(output + ".tmp", output)
    for part in parts:
        for path in (part, part + ".done", probabilities_path(part)):
            if os.path.exists(path):
                os.remove(path)


def label_one(args, predictor, offsets=None, explainer=None):
    from ewect.cleaning import clean_text
    from ewect.explain import describe

    text = clean_text(args.input)
    row = predictor.predict([text], 1, args.max_length)[0]
    label_id = decide(row[None], offsets, predictor.temperature)[0]
    explanation = explainer.explain([text], [label_id], args.max_length)[0] if explainer else None
    if args.json:
        print(format_row(None, text, row, label_id, True, explanation), end="")
        return
    print(LABELS[label_id])
    for name, p in zip(LABELS, row):
        print(f"  {name:<9}{p:.4f}")
    if explanation and explanation.pieces:
        print("\n".join(describe(explanation, LABELS[label_id], explainer.method)))
    if not text:
        print("note: nothing was left of this post after cleaning", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    if args.input is not None and not args.input.strip():
        raise UserError("--input is empty: give the text of a post")
    rank, world_size, local_rank = process_group()
    if world_size > 1 and not (args.input_file and args.output):
        raise UserError("several processes (torchrun) need --input_file and --output")
    if world_size > 1 and launch_id(world_size) is None:
        raise UserError("several processes need torchrun, which names each launch "
                        "(TORCHELASTIC_RUN_ID): rank 0 merges only the parts of its own launch")
    posts = read_posts(args.input_file, args.format) if args.input_file else None
    began_with = check_earlier_run(args, world_size) if args.output else None
    # --summary's inputs are checked by every process before any post is labelled
    if args.summary and not os.path.isdir(os.path.dirname(args.summary) or "."):
        raise UserError(f"--summary {args.summary}: no folder {os.path.dirname(args.summary)}")
    groups = group_keys(args) if args.group_by else None
    labelled_posts = ([r for path in args.calibration_file for r in read_records(
        path, label_names=args.label_names, log=lambda note: print(note, file=sys.stderr))]
        if args.calibration_file else None)  # notes on stderr: rows may be on stdout
    offsets, source = choose_offsets(args.model_dir, args.decision)
    loading = time.perf_counter()
    predictor = load_predictor(args.model_dir, args.backend, args.device, args.int8, local_rank,
                               args.precision)
    explainer = make_explainer(predictor, args.explain) if args.explain else None
    loading = time.perf_counter() - loading
    settings = None
    if args.output:  # once the model is loaded: only then is the precision in use known
        settings = run_settings(args, world_size, predictor.precision, offsets)
        if began_with:
            refuse_other_settings(args.output, began_with, settings)
    if source and rank == 0:
        print(f"labels decided with the offsets in {source} (--decision none: plain argmax)",
              file=sys.stderr)
    if args.summary and labelled_posts is None and predictor.calibration is None:
        why = getattr(predictor, "calibration_note", None) or "it has no calibration.json"
        raise UserError(f"--summary: {' '.join(args.model_dir)}: nothing saved with the model to "
                        f"learn its mistakes from ({why}): run `python calibrate.py --model_dir "
                        "DIR`, or pass --calibration_file with posts labelled by hand")
    reference = (labelled_reference(args, predictor, offsets, labelled_posts)
                 if args.summary and rank == 0 else None)
    if posts is None:
        label_one(args, predictor, offsets, explainer)
        return
    try:
        label_and_summarize(args, posts, predictor, offsets, reference, groups, settings,
                            loading, explainer)
    finally:  # without --output there is nothing to resume: the summary's probabilities go
        kept = probabilities_path(args.summary or "")
        if args.summary and not args.output and os.path.exists(kept):
            os.remove(kept)


def label_and_summarize(args, posts, predictor, offsets, reference, groups, settings, loading,
                        explainer=None):
    """Label (and explain) the file (this process's share of it), merge the parts on rank 0,
    write the summary, and mark the run done."""
    rank, world_size, _ = process_group()
    labelled, seconds = label_file(args, posts, predictor, offsets, rank, world_size, settings,
                                   explainer)
    if args.output and rank == 0:  # the throughput of a bulk run, once the model is loaded
        print(f"{'process 0 ' if world_size > 1 else ''}labelled {labelled:,} posts in "
              f"{seconds:.1f} s: {labelled / max(seconds, 1e-9):,.0f} posts/s (loading the "
              f"model took {loading:.1f} s)", file=sys.stderr)
    if world_size > 1:
        mark_done(args.output, rank, world_size)
        if rank == 0:  # the summary before the merge: a kill meanwhile leaves the parts whole
            wait_for_parts(args.output, world_size)
            if args.summary:
                merge_probabilities(args.output, world_size, args.chunk_size)
                write_summary(args, predictor, offsets, reference, groups)
            merge_parts(args.output, world_size, args.chunk_size)
    elif args.summary:
        write_summary(args, predictor, offsets, reference, groups)
    if rank == 0 and args.output:
        os.remove(record_path(args.output))  # done: nothing left to resume
        if args.summary:
            os.remove(probabilities_path(args.output))


def group_keys(args):
    """Each post's --group_by group, read before any post is labelled: a missing column or an
    unreadable time stops the run at once."""
    from ewect.shares import group_keys as keys_of

    return keys_of(read_groups(args.input_file, args.format, args.group_by), args.period,
                   f"{args.input_file}: column {args.group_by!r}")


def labelled_reference(args, predictor, offsets, labelled_posts):
    """What --summary's corrections learn from: --calibration_file's records, labelled now, or
    the eval posts saved with the checkpoint (calibration.json); calibrated and decided as the
    file's posts are."""
    from ewect.cleaning import clean_text
    from ewect.shares import Reference, saved_reference

    calibration = predictor.calibration
    if labelled_posts is None:
        return saved_reference(calibration, predictor.temperature, offsets)
    probabilities = predictor.predict([clean_text(r.content) for r in labelled_posts],
                                      args.batch_size, args.max_length)
    golds = np.array([LABEL2ID[r.label] for r in labelled_posts])
    # emq starts from the training shares; a model without its record: those of these posts
    training = (calibration["training_shares"] if calibration is not None
                else np.bincount(golds, minlength=len(LABELS)) / len(golds))
    return Reference(probabilities, golds, decide(probabilities, offsets, predictor.temperature),
                     training, " ".join(args.calibration_file), predictor.temperature)


def write_summary(args, predictor, offsets, reference, groups):
    """S.json from the probabilities of every post (and with --group_by, S.groups.csv and
    S.groups.png), written aside and renamed."""
    import pandas as pd

    from ewect.shares import describe, plot_groups, summarize, summarize_groups

    kept = probabilities_path(args.output or args.summary)
    probabilities = np.fromfile(kept, np.float32).reshape(-1, len(LABELS))
    decided = decide(probabilities, offsets, predictor.temperature)
    summary = summarize(probabilities, decided, reference)
    stem = os.path.splitext(args.summary)[0]
    if groups is not None:
        if len(groups) != len(decided):
            raise UserError(f"{args.input_file}: changed while it was labelled ({len(groups)} "
                            f"posts now, {len(decided)} labelled); "
                            + (leftovers(args.output)[2] if args.output else "start over"))
        rows = summarize_groups(groups, probabilities, decided, reference)
        pd.DataFrame(rows).to_csv(stem + ".groups.csv", index=False)
        plot_groups(rows, stem + ".groups.png", f"{os.path.basename(args.input_file)}: shares "
                    f"by {args.group_by}{f' ({args.period})' if args.period else ''}")
        summary["groups"] = stem + ".groups.csv"
    write_atomically(args.summary, json.dumps(summary, ensure_ascii=False, indent=1), 0)
    print(describe(summary) + f"\nwrote {args.summary}" +
          (f", {stem}.groups.csv, {stem}.groups.png" if groups is not None else ""),
          file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
