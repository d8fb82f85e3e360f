"""Reading and validating SMP2020-EWECT files (the released JSON, or CSV, TSV, XLSX tables) and
users' post files (lines, JSON, CSV), tokenizing once, length-grouped batching, padding."""
import collections
import csv
import itertools
import json
import os
import random
import re
from dataclasses import dataclass

from .cleaning import clean_text
from .config import CLEAN_DIR, LABEL2ID, LABEL_SPELLINGS, LABELS, PUBLIC_COPY_FILES
from .errors import UserError, first_line

MAX_REPORTED = 20  # bad records listed one per line before the rest is summarised
# A CSV or TSV field longer than this is a quote left open swallowing the file, not a post
# (csv's own limit, 131,072, refused whole files for one long post).
MAX_FIELD_CHARS = 1 << 24


@dataclass
class Record:
    id: object
    content: str
    label: str | None  # None for unlabelled inference input


def load_json_array(path):
    """The file's JSON array, or a UserError saying why it cannot be read."""
    if not os.path.isfile(path):
        hint = ""
        if os.path.dirname(os.path.abspath(path)) == CLEAN_DIR:  # a default file: no data yet
            hint = ("; put the six SMP2020-EWECT files in data/raw/ and run python clean_data.py "
                    "(data/README.md says where to get them)")
        raise UserError(f"{path}: file not found{hint}")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not an error
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, "
                        f"column {err.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of records, found {type(data).__name__}")
    return data


TABLE_KINDS = {".csv": "CSV", ".tsv": "TSV", ".xlsx": "Excel"}  # read_records' formats besides JSON


def load_table(path, kind, columns):
    """The rows of a CSV, TSV or Excel (first sheet) file as dicts of strings, so that ids like
    007 and empty texts stay as written; without an 'id' column the row number is the id."""
    if kind == "Excel":
        rows = load_excel(path, columns)
    else:
        rows = list(_decode_errors(path, table_rows(path, "\t" if kind == "TSV" else ",",
                                                    columns)))
    for number, row in enumerate(rows, 1):
        row.setdefault("id", number)
    return rows


def load_excel(path, columns):
    import pandas as pd

    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_excel(path, dtype=str, keep_default_na=False)
    except ImportError:  # pandas reads .xlsx with openpyxl
        raise UserError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl)") from None
    except Exception as err:  # pandas and openpyxl raise many kinds for a file they cannot parse
        raise UserError(f"{path}: not a readable Excel file ({first_line(err)})") from None
    frame.columns = table_header(path, [str(name) for name in frame.columns], columns)
    # a row with no cell filled is no record, as a blank line of a CSV file is none
    return frame[(frame != "").any(axis=1)].to_dict("records")


def table_header(path, header, columns):
    """The header with public copies' 'text_a' read as 'content', checked to have the columns."""
    if "content" not in header and "text_a" in header:
        header = ["content" if name == "text_a" else name for name in header]
    for column in columns:
        if column not in header:
            raise UserError(f"{path}: no {column!r} column (found {', '.join(header) or 'none'})")
    return header


def table_rows(path, delimiter, columns):
    """The rows of a CSV or TSV file as dicts of strings. TSV is one post a line, quotes and all.
    In CSV a quote left open, or a stray comma, would merge or split posts: it stops the run,
    with the line the row starts on."""
    tsv = delimiter == "\t"
    csv.field_size_limit(MAX_FIELD_CHARS)
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True,
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        rows = _numbered_rows(path, reader)
        header = table_header(path, next(rows, (1, []))[1], columns)
        for line, fields in rows:
            if len(fields) != len(header):
                raise UserError(f"{path}: line {line}: {len(fields)} fields where the header has "
                                f"{len(header)} (a stray {'tab' if tsv else 'quote or comma'}?)")
            yield dict(zip(header, fields))


def _numbered_rows(path, reader):
    """(first line, fields) of each row of a csv.reader but blank lines."""
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader, None)
        except csv.Error as err:
            raise UserError(f"{path}: line {line}: {err} (a text that starts with a quote must "
                            "end with one; quotes inside it are written twice)") from None
        if fields is None:
            return
        if fields:
            yield line, fields


def raw_file(raw_dir, name):
    """The file of a released name (usual_train.txt, ...) in raw_dir: as released, else where a
    public copy has it (usual/train.tsv, ...); None when neither is there."""
    copy = PUBLIC_COPY_FILES.get(name)  # other files are read by their own name only
    for path in (name, copy):
        if path and os.path.isfile(os.path.join(raw_dir, path)):
            return os.path.join(raw_dir, path)
    return None


def load_items(path, require_label):
    """The file's records, unvalidated: a table by its extension, else the JSON array."""
    kind = TABLE_KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        return load_json_array(path)
    return load_table(path, kind, ("content", "label") if require_label else ("content",))


def respell_labels(path, items, log):
    """Known misspellings of labels (LABEL_SPELLINGS) read as the label meant, said once a file."""
    counts = collections.Counter()
    for item in items:
        label = item.get("label") if isinstance(item, dict) else None
        if isinstance(label, str) and label in LABEL_SPELLINGS:
            item["label"] = LABEL_SPELLINGS[label]
            counts[label] += 1
    for label, count in counts.items():
        log(f"{path}: read label {label!r} as {LABEL_SPELLINGS[label]!r} ({count} records)")


LABEL_NAME_LINE = '{"label": "0", "label_desc": "neutral"}'  # a line of a labels.json


def name_label_ids(path, items, label_names, log):
    """Integer labels, as public copies give them (in their own order, not LABELS'), replaced by
    their names: label_names[i] names id i; without it, the labels.json beside the file does,
    one {"label": "0", "label_desc": "neutral"} a line."""
    labels = [item.get("label") for item in items if isinstance(item, dict)]
    ids = [label for label in labels if _is_label_id(label)]
    if not ids:
        return
    names_file = os.path.join(os.path.dirname(path), "labels.json")
    if label_names:
        source = "--label_names"
        names = {str(i): _known_label(name.strip(), source) for i, name in enumerate(label_names)}
    elif os.path.isfile(names_file):
        source = names_file
        names = read_label_names(names_file)
    else:
        raise UserError(f"{path}: labels are ids such as {ids[0]!r} with no names: put a "
                        f"labels.json beside it ({LABEL_NAME_LINE} a line) or pass --label_names "
                        "NAME0,NAME1,... (the names of ids 0, 1, ... in the file's order)")
    for item in items:
        if isinstance(item, dict) and str(item.get("label")) in names:
            item["label"] = names[str(item["label"])]
    log(f"{path}: label ids read as names ({source}: "
        f"{', '.join(f'{i}={name}' for i, name in names.items())})")


def read_label_names(path):
    """{id: name} of a labels.json file."""
    names = {}
    for number, line in _decode_errors(path, read_lines(path)):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not (isinstance(entry, dict) and "label" in entry
                and isinstance(entry.get("label_desc"), str)):
            raise UserError(f"{path}: line {number}: expected an object like {LABEL_NAME_LINE}")
        names[str(entry["label"])] = _known_label(entry["label_desc"], f"{path}: line {number}")
    return names


def _is_label_id(label):
    return (isinstance(label, int) and not isinstance(label, bool)
            or isinstance(label, str) and re.fullmatch("[0-9]+", label) is not None)


def _known_label(name, where):
    if name not in LABEL2ID and name not in LABEL_SPELLINGS:
        raise UserError(f"{where}: unknown label {name!r} (expected one of {', '.join(LABELS)})")
    return name


def add_label_names_arg(parser):
    """--label_names of clean_data.py, train.py, test.py and inference.py (--calibration_file):
    names of integer labels, for name_label_ids."""
    parser.add_argument("--label_names", type=lambda text: text.split(","),
                        metavar="NAME0,NAME1,...",
                        help="names of a data file's integer labels 0, 1, ... in the file's own "
                             "order, for public copies that number the labels (default: the "
                             "labels.json beside the file)")


def _problem(item, seen_ids, require_label):
    """Why this record cannot be used, or None."""
    if not isinstance(item, dict):
        return f"not an object but {type(item).__name__}"
    if "id" not in item:
        return "no 'id' field"
    if not isinstance(item["id"], (int, str)) or isinstance(item["id"], bool):
        return f"'id' is {type(item['id']).__name__}, not a number or string"
    if item["id"] in seen_ids:
        return "duplicate id"
    if "content" not in item:
        return "no 'content' field"
    if not isinstance(item["content"], str):
        return f"'content' is {type(item['content']).__name__}, not a string"
    if require_label:
        if "label" not in item:
            return "no 'label' field"
        if item["label"] not in LABEL2ID:
            return f"unknown label {item['label']!r} (expected one of {', '.join(LABELS)})"
    return None


def record_name(item, index):
    """How an error names a record of a JSON array or table: by its id, else its index."""
    if isinstance(item, dict) and "id" in item:
        return f"record id {item['id']!r}"
    return f"record #{index}"


def read_records(path, require_label=True, skip_bad_records=False, log=print, label_names=None):
    """All records of one file: a JSON array, or a .csv, .tsv or .xlsx table with content (or
    text_a) and label columns (id optional); integer labels are named by label_names or a
    labels.json beside the file. Unusable records stop the run with every problem listed, with
    file and record id, unless skip_bad_records is set: then they are skipped and counted."""
    records, bad, seen_ids = [], [], set()
    items = load_items(path, require_label)
    if require_label:
        name_label_ids(path, items, label_names, log)
        respell_labels(path, items, log)
    for index, item in enumerate(items):
        problem = _problem(item, seen_ids, require_label)
        if problem:
            bad.append(f"{path}: {record_name(item, index)}: {problem}")
            continue
        seen_ids.add(item["id"])
        label = item["label"] if require_label else None
        records.append(Record(item["id"], item["content"], label))
    if bad and not skip_bad_records:
        if len(bad) == 1:
            raise UserError(f"{bad[0]} (fix it, or pass --skip_bad_records to skip it)")
        listed = bad[:MAX_REPORTED] + ([f"... and {len(bad) - MAX_REPORTED} more"]
                                       if len(bad) > MAX_REPORTED else [])
        raise UserError(f"{path}: {len(bad)} unusable records (fix them, or pass "
                        "--skip_bad_records to skip them):\n  " + "\n  ".join(listed))
    if bad:
        log(f"{path}: skipped {len(bad)} unusable record(s) (--skip_bad_records)")
    if not records:
        raise UserError(f"{path}: no usable records")
    return records


def held_out_fold(records, labels, folds, fold, seed):
    """(training part, held-out part) of the records: part `fold` (1..folds) of a K-fold split
    stratified by `labels`, the same for every fold of one seed, so the K runs of an ensemble
    partition the data."""
    from sklearn.model_selection import StratifiedKFold

    if folds > len(records):
        raise UserError(f"--folds {folds}: more folds than the {len(records)} posts to split")
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels)
    train_part, held_out = list(splits)[fold - 1]
    return [records[i] for i in train_part], [records[i] for i in held_out]


def clean_records(records, drop_empty):
    """The records with their content cleaned. drop_empty is for training files: posts that
    cleaning empties are left out; eval and test files keep every record, so their ids survive."""
    cleaned = [Record(r.id, clean_text(r.content), r.label) for r in records]
    return [r for r in cleaned if r.content or not drop_empty]


def open_text(path, newline=""):
    """The file opened as UTF-8 text (a byte-order mark dropped), or a one-line error."""
    try:
        return open(path, encoding="utf-8-sig", newline=newline)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def detect_format(path):
    """'csv', 'tsv', 'xlsx', 'json' or 'jsonl' by extension; 'json' when the file opens with a JSON
    array of objects ('[{' or '[]', so a post like '[哈哈]…' on the first line stays text); else
    'lines'."""
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension in ("csv", "tsv", "xlsx", "json", "jsonl"):
        return extension
    with open_text(path) as f:
        try:
            head = f.read(4096)
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None
    return "json" if re.match(r"\s*\[\s*[{\]]", head) else "lines"


def read_lines(path):
    """(line number, text) of each line but blank ones. Only a line feed ends a line: a carriage
    return elsewhere than before one is inside a post (splitting there would label one post as
    two and shift every later line number)."""
    with open_text(path, newline="\n") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line.rstrip("\r\n")


def read_csv(path, delimiter=","):
    for number, row in enumerate(table_rows(path, delimiter, ("content",)), 1):
        yield row.get("id") or number, row["content"]


def read_json_lines(path):
    for number, line in read_lines(path):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
        yield post_of(item, number, f"{path}: line {number}")


def post_of(item, number, where):
    """(id, text) of a record of posts to label: an object with a string 'content' (or 'text', as
    inference.py --json writes). Its id is only echoed, so a repeated one is kept and a missing
    one is the post's number."""
    if not isinstance(item, dict):
        raise UserError(f"{where}: not an object but {type(item).__name__}")
    field = next((name for name in ("content", "text") if name in item), None)
    if field is None:
        raise UserError(f"{where}: no 'content' (or 'text') field")
    if not isinstance(item[field], str):
        raise UserError(f"{where}: {field!r} is {type(item[field]).__name__}, not a string")
    post_id = item.get("id")
    if not isinstance(post_id, (int, str, type(None))) or isinstance(post_id, bool):
        raise UserError(f"{where}: 'id' is {type(post_id).__name__}, not a number or string")
    return (number if post_id in (None, "") else post_id), item[field]


def read_posts(path, file_format="auto"):
    """An iterator of (id, text) over the file's posts; a JSON array or an Excel file is read
    whole, lines, JSON Lines, CSV and TSV lazily. The first post is read here, so a bad or empty
    file fails before the model loads."""
    file_format = detect_format(path) if file_format == "auto" else file_format
    if file_format in ("json", "xlsx"):
        items = (load_json_array(path) if file_format == "json"
                 else load_table(path, "Excel", ("content",)))
        posts = iter([post_of(item, index + 1, f"{path}: {record_name(item, index)}")
                      for index, item in enumerate(items)])
    elif file_format == "tsv":
        posts = _decode_errors(path, read_csv(path, delimiter="\t"))
    else:
        posts = _decode_errors(path, {"lines": read_lines, "jsonl": read_json_lines,
                                      "csv": read_csv}[file_format](path))
    first = next(posts, None)
    if first is None:
        raise UserError(f"{path}: no posts in this file")
    return itertools.chain([first], posts)


def read_groups(path, file_format, column):
    """The value of `column` for each post of read_posts(path, file_format), as text, in the
    same order; one line naming the file when it has no such column (one post per line has no
    columns at all), or the record that lacks it."""
    file_format = detect_format(path) if file_format == "auto" else file_format
    if file_format == "lines":
        raise UserError(f"{path}: one post per line has no columns to group by; give a CSV, TSV, "
                        f"Excel, JSON or JSON Lines file with a {column!r} column")
    if file_format in ("csv", "tsv", "xlsx"):
        rows = (load_table(path, "Excel", ("content", column)) if file_format == "xlsx" else
                _decode_errors(path, table_rows(path, "\t" if file_format == "tsv" else ",",
                                                ("content", column))))
        return (row[column] for row in rows)
    items = (enumerate(load_json_array(path), 1) if file_format == "json"
             else ((number, json.loads(line)) for number, line in read_lines(path)))
    return _group_values(path, items, column, "record" if file_format == "json" else "line")


def _group_values(path, items, column, unit):
    for number, item in items:
        if not isinstance(item, dict) or item.get(column) is None:
            raise UserError(f"{path}: {unit} {number}: no {column!r} field to group by")
        yield str(item[column])


def _decode_errors(path, posts):
    try:
        yield from posts
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None


def encode(tokenizer, texts, max_length):
    """Token ids of every text, truncated, not padded: once per split, in one batched call."""
    texts = list(texts)
    if not texts:  # the fast tokenizer fails on an empty batch (a process's empty share, say)
        return []
    return tokenizer(texts, truncation=True, max_length=max_length,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def length_grouped_batches(lengths, batch_size, seed, shuffle=True, group_size=50):
    """Index batches of similar length in random order (the idea of transformers'
    LengthGroupedSampler): shuffle, sort within groups of group_size batches, shuffle the batches.
    Padding stays small and the order stays random; the same seed gives the same batches."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    span = batch_size * group_size
    batches = []
    for start in range(0, len(order), span):
        group = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def step_batches(lengths, batch_size, seed, world_size):
    """One epoch's steps, each a batch of batch_size posts (length-grouped, random order). Every
    process computes the same list (same seed, same data); a last batch with fewer posts than
    processes is left out, as each process needs one."""
    batches = length_grouped_batches(lengths, batch_size, seed)
    return [b for b in batches if len(b) >= world_size]


def split_for_step(batch, rank, world_size, accumulation=1):
    """This process's micro-batches of one step's batch. The batch (sorted by length, as
    length_grouped_batches makes it) is dealt round-robin into world_size x accumulation pieces,
    so all pieces have nearly the same size and longest post: no process waits for another with
    longer posts. Pieces j = rank, rank + world_size, ... are this process's; a batch too short
    for all pieces leaves some empty, and they are left out."""
    pieces = world_size * accumulation
    return [batch[j::pieces] for j in range(rank, pieces, world_size) if j < len(batch)]


def sorted_batches(lengths, batch_size):
    """Batches of indices sorted by length (longest first), for prediction; padding is minimal."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_multiple(device_type):
    """Batches are padded to a multiple of this many tokens: 8 on a GPU, where every new batch
    shape costs kernel selection on the host (bench/RESULTS.md, "GPU check") and at most 18
    widths up to 140 remain; 1 on the CPU, where every pad token costs compute."""
    return 8 if device_type == "cuda" else 1


def padded_width(lengths, multiple, limit=None):
    """The width of a batch of these lengths: its longest post, rounded up to the multiple but
    never past `limit` (the model's position embeddings, which posts already fit)."""
    rounded = -(-max(lengths) // multiple) * multiple
    return min(rounded, limit) if limit else rounded


class Collator:
    """Pads one batch of token-id lists to its own longest member (rounded up to `multiple`,
    pad_multiple's, within `limit` positions; at the start with `left`, for XLNet); returns torch
    tensors (with `teacher`, an (n, labels) tensor of soft labels, each batch gets its rows)."""

    def __init__(self, input_ids, labels=None, pad_id=0, teacher=None, multiple=1, limit=None,
                 left=False):
        self.input_ids, self.labels, self.pad_id = input_ids, labels, pad_id
        self.teacher, self.multiple, self.limit, self.left = teacher, multiple, limit, left

    def __call__(self, indices):
        import torch

        longest = padded_width([len(self.input_ids[i]) for i in indices], self.multiple,
                               self.limit)
        ids = torch.full((len(indices), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), longest), dtype=torch.long)
        for row, i in enumerate(indices):
            seq = self.input_ids[i]
            place = slice(longest - len(seq), longest) if self.left else slice(0, len(seq))
            ids[row, place] = torch.tensor(seq)
            mask[row, place] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.labels is not None:
            batch["labels"] = torch.tensor([self.labels[i] for i in indices])
        if self.teacher is not None:
            batch["teacher"] = self.teacher[indices]
        return batch

    def collate_pieces(self, pieces):
        """One training step's micro-batches (lists of indices), each padded on its own."""
        return [self(indices) for indices in pieces]
