"""Clean the six raw SMP2020-EWECT files into data/clean (same names, same JSON format).

    python clean_data.py                                   # data/raw -> data/clean
    python clean_data.py --raw_dir ~/smp2020-ewect --out_dir data/clean   # files elsewhere
    python clean_data.py --raw_dir ~/UER-py/datasets/smp2020-ewect   # a public copy (TSV)
    python clean_data.py --dedup                           # train copies of eval/test posts out

--raw_dir holds the six files as released (usual_train.txt, ...) or as a public copy lays them
out (usual/train.tsv, usual/dev.tsv, usual/test.tsv, the same for virus, each with its
labels.json); the cleaned files have the released names either way. The rules live in
ewect/cleaning.py. Train records that are empty after cleaning are dropped;
eval and test records are always kept, so their ids survive. Per file it prints records in,
out, dropped (empty after cleaning, or unusable with --skip_bad_records), changed (records
out whose text cleaning changed) and deduped (train records dropped by --dedup).

It also counts, for each train file and each eval or test file, the posts with the same cleaned
text in both; --dedup drops those train records. In the real data (2026-11-28) usual_train
shares 162 posts with usual_eval (129 eval posts) and 287 with usual_test (237 test posts);
virus_train shares 522 with virus_eval and 972 with virus_test, mostly short stock replies
(辛苦了, 武汉加油, [泪]); the two tracks share none. --dedup drops 435 usual_train and 1052
virus_train records.
"""
import argparse
import itertools
import json
import os

from ewect.config import CLEAN_DIR, DATA_FILES, EVAL_FILES, RAW_DIR, TRAIN_FILES
from ewect.data import add_label_names_arg, raw_file
from ewect.errors import UserError, run_cli, script_help


def parse_args():
    parser = argparse.ArgumentParser(**script_help(__doc__, show_defaults=False))
    parser.add_argument("--raw_dir", default=RAW_DIR,
                        help="folder with the six raw files (default: $EWECT_RAW_DIR or data/raw)")
    parser.add_argument("--out_dir", default=CLEAN_DIR, help="where the cleaned files go")
    parser.add_argument("--skip_bad_records", action="store_true",
                        help="skip and count unusable records instead of stopping")
    add_label_names_arg(parser)
    parser.add_argument("--dedup", action="store_true",
                        help="drop train records whose cleaned text is also in an eval or test "
                             "file (those files keep every record; all four must be there)")
    return parser.parse_args()


def clean_file(src, drop_empty, args):
    """One file's records, cleaned: (records in, cleaned records, how many cleaning changed)."""
    from ewect.data import clean_records, load_items, read_records

    raw_count = len(load_items(src, require_label=True))
    records = read_records(src, skip_bad_records=args.skip_bad_records,
                           label_names=args.label_names)
    original = {r.id: r.content for r in records}
    cleaned = clean_records(records, drop_empty)
    return raw_count, cleaned, sum(r.content != original[r.id] for r in cleaned)


def write_records(records, dst):
    tmp = dst + ".tmp"  # written aside, then renamed: a killed run never leaves half a file
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump([vars(r) for r in records], f, ensure_ascii=False)
    os.replace(tmp, dst)


def report_shared_posts(cleaned, held_out_missing):
    """Print, per train file and eval/test file, the posts with the same cleaned text in both."""
    print("posts with the same cleaned text in a train file and an eval or test file:")
    lines = []
    for train, held_out in itertools.product(TRAIN_FILES, EVAL_FILES):
        if train in cleaned and held_out in cleaned:
            train_texts = {r.content for r in cleaned[train]}
            held_out_texts = {r.content for r in cleaned[held_out] if r.content}
            in_train = sum(r.content in held_out_texts for r in cleaned[train])
            in_held_out = sum(r.content in train_texts for r in cleaned[held_out])
            if in_train:
                lines.append(f"  {train}: {in_train} posts, {held_out}: {in_held_out} posts")
    print("\n".join(lines) or "  none")
    if held_out_missing:
        print(f"  (not checked against the missing {', '.join(held_out_missing)})")


def main():
    args = parse_args()
    sources = {name: raw_file(args.raw_dir, name) for name in DATA_FILES}
    missing = [name for name in DATA_FILES if sources[name] is None]
    if len(missing) == len(DATA_FILES):
        raise UserError(f"{args.raw_dir}: none of the SMP2020-EWECT files is here (expected "
                        f"{', '.join(DATA_FILES)}, or a public copy's usual/train.tsv, ...); "
                        "see data/README.md")
    if os.path.realpath(args.out_dir) == os.path.realpath(args.raw_dir):
        raise UserError(f"--out_dir {args.out_dir} is --raw_dir: the cleaned files would replace "
                        "the raw ones, and the dropped records and stripped text be lost")
    held_out_missing = [name for name in EVAL_FILES if name in missing]
    if args.dedup and held_out_missing:  # dropping copies of posts it cannot see would be a lie
        raise UserError(f"--dedup needs every eval and test file, and {args.raw_dir} lacks "
                        f"{', '.join(held_out_missing)}")
    os.makedirs(args.out_dir, exist_ok=True)
    raw_counts, cleaned, changed = {}, {}, {}
    for name in DATA_FILES:
        if name not in missing:
            raw_counts[name], cleaned[name], changed[name] = clean_file(
                sources[name], drop_empty=name in TRAIN_FILES, args=args)
    held_out_texts = {r.content for name in EVAL_FILES for r in cleaned.get(name, ()) if r.content}
    print(f"{'file':<26}{'in':>8}{'out':>8}{'dropped':>9}{'changed':>9}{'deduped':>9}")
    for name in DATA_FILES:
        if name in missing:
            stale = os.path.isfile(os.path.join(args.out_dir, name))
            print(f"{name:<26}  missing, skipped" +
                  (f" (the cleaned copy in {args.out_dir} is an earlier run's)" if stale else ""))
            continue
        records, deduped = cleaned[name], 0
        if args.dedup and name in TRAIN_FILES:
            kept = [r for r in records if r.content not in held_out_texts]
            records, deduped = kept, len(records) - len(kept)
        write_records(records, os.path.join(args.out_dir, name))
        counts = (raw_counts[name], len(records), raw_counts[name] - len(cleaned[name]),
                  changed[name], deduped)
        print(f"{name:<26}" + "".join(f"{n:>{w}}" for n, w in zip(counts, (8, 8, 9, 9, 9))))
    report_shared_posts(cleaned, held_out_missing)
    print(f"cleaned files are in {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
