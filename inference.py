"""Label Weibo posts with a trained checkpoint: the label and the six probabilities.

    python inference.py --input '你是个什么东西，垃圾' --device cpu
    python inference.py --input_file posts.txt                  # one post per line
    python inference.py --input_file data/raw/virus_test_labeled.txt --json > labels.jsonl
    python inference.py --input_file posts.csv --output labels.jsonl --json   # 'content' column
    python inference.py --input_file posts.txt --output labels.tsv --resume   # go on after a kill
    python inference.py --input '好开心' --backend onnx --int8   # after `python export.py`

Posts are cleaned exactly as the training data was. --input_file takes plain text (one post per
line, blank lines skipped, id = line number), an SMP2020-EWECT JSON array (labels optional) or a
CSV file with a 'content' column (and an optional 'id'); --format auto tells them apart by the
file's extension and first record. Lines and CSV are streamed: posts are read, labelled and
written in chunks, so memory does not grow with the file; a JSON array is read whole (fine for
SMP2020-EWECT's files; use lines or CSV for millions of posts).
Output, one row per post in input order: TSV (id, label, its probability, cleaned text) or with
--json one JSON object per post (id, text as cleaned, label, probabilities). With --output FILE
every chunk is written whole and synced, so a killed run leaves only complete rows, and --resume
skips the posts already there.
"""
import argparse
import csv
import itertools
import json
import os
import re
import sys

from ewect.config import BEST_DIR, LABELS, MAX_LENGTH
from ewect.errors import UserError, positive_int, run_cli
from ewect.prediction import BACKENDS

FORMATS = ("auto", "lines", "json", "csv")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="one post to label")
    source.add_argument("--input_file", help="file of posts: lines, a JSON array or CSV")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="--input_file's format; auto: .csv is CSV, a file starting with a JSON "
                        "array of objects is JSON, anything else one post per line")
    p.add_argument("--output", help="write the rows to this file instead of stdout")
    p.add_argument("--resume", action="store_true",
                   help="--output exists from an interrupted run: label only the posts after it")
    p.add_argument("--model_dir", default=BEST_DIR, help="checkpoint folder written by train.py")
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
    args = p.parse_args(argv)
    if args.resume and not args.output:
        p.error("--resume needs --output")
    return args


def open_text(path):
    """The file opened as UTF-8 text (a byte-order mark dropped), or a one-line error."""
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def detect_format(path):
    """'csv' by extension; 'json' when the file opens with a JSON array of objects ('[{' or
    '[]', so a post like '[哈哈]…' on the first line stays text); else 'lines'."""
    if path.lower().endswith(".csv"):
        return "csv"
    with open_text(path) as f:
        try:
            head = f.read(4096)
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None
    return "json" if re.match(r"\s*\[\s*[{\]]", head) else "lines"


def read_lines(path):
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line.rstrip("\r\n")


def read_csv(path):
    with open_text(path) as f:
        rows = csv.DictReader(f)
        if "content" not in (rows.fieldnames or []):
            raise UserError(f"{path}: no 'content' column (found {rows.fieldnames})")
        for number, row in enumerate(rows, 1):
            yield row.get("id") or number, row["content"] or ""


def read_posts(path, file_format="auto"):
    """An iterator of (id, text) over the file's posts; a JSON array is read whole, lines and
    CSV lazily. The first post is read here, so a bad or empty file fails before the model loads."""
    file_format = detect_format(path) if file_format == "auto" else file_format
    if file_format == "json":
        from ewect.data import read_records

        posts = iter([(r.id, r.content) for r in read_records(path, require_label=False)])
    else:
        posts = _decode_errors(path, {"lines": read_lines, "csv": read_csv}[file_format](path))
    first = next(posts, None)
    if first is None:
        raise UserError(f"{path}: no posts in this file")
    return itertools.chain([first], posts)


def _decode_errors(path, posts):
    try:
        yield from posts
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None
    except csv.Error as err:
        raise UserError(f"{path}: not valid CSV ({err})") from None


def format_row(post_id, text, row, as_json):
    """One output line for one post."""
    label = LABELS[int(row.argmax())]
    if as_json:
        return json.dumps({"id": post_id, "text": text, "label": label,
                           "probabilities": {name: round(float(p), 4)
                                             for name, p in zip(LABELS, row)}},
                          ensure_ascii=False) + "\n"
    return f"{post_id}\t{label}\t{row.max():.4f}\t{' '.join(text.split())}\n"


def rows_done(path):
    """Complete rows already in an output file; a torn last line (a kill mid-write) is cut."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            f.truncate(complete)
    return data.count(b"\n", 0, complete)


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


def label_file(args, posts, predictor):
    """Stream the posts through clean → predict → write, chunk by chunk, in input order."""
    from tqdm import tqdm

    from ewect.cleaning import clean_text

    skip = rows_done(args.output) if args.resume else 0
    posts = itertools.islice(posts, skip, None)
    writer = RowWriter(args.output, append=skip > 0)
    progress = tqdm(unit=" posts", initial=skip, file=sys.stderr, dynamic_ncols=True,
                    disable=None)  # None: no bar when stderr is not a terminal
    try:
        while chunk := list(itertools.islice(posts, args.chunk_size)):
            texts = [clean_text(text) for _, text in chunk]
            probs = predictor.predict(texts, args.batch_size, args.max_length)
            writer.write([format_row(post_id, text, row, args.json)
                          for (post_id, _), text, row in zip(chunk, texts, probs)])
            progress.update(len(chunk))
    finally:
        progress.close()
        writer.close()


def label_one(args, predictor):
    from ewect.cleaning import clean_text

    text = clean_text(args.input)
    row = predictor.predict([text], 1, args.max_length)[0]
    if args.json:
        print(format_row(None, text, row, True), end="")
        return
    print(LABELS[int(row.argmax())])
    for name, p in zip(LABELS, row):
        print(f"  {name:<9}{p:.4f}")
    if not text:
        print("note: nothing was left of this post after cleaning", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    if args.input is not None and not args.input.strip():
        raise UserError("--input is empty: give the text of a post")
    if args.output and not args.resume and os.path.exists(args.output):
        raise UserError(f"{args.output} exists; pass --resume to go on with it, or remove it")
    posts = read_posts(args.input_file, args.format) if args.input_file else None
    from ewect.prediction import load_predictor

    predictor = load_predictor(args.model_dir, args.backend, args.device, args.int8)
    if posts is None:
        label_one(args, predictor)
    else:
        label_file(args, posts, predictor)


if __name__ == "__main__":
    run_cli(main)
