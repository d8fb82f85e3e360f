"""Clean the six raw SMP2020-EWECT files into data/clean (same names, same JSON format).

    python clean_data.py                                   # data/raw -> data/clean
    python clean_data.py --raw_dir ../shared/data/smp2020-ewect/raw --out_dir data/clean

The rules live in ewect/cleaning.py. Train records that are empty after cleaning are dropped;
eval and test records are always kept, so their ids survive. Per file it prints records in,
out, dropped (empty after cleaning, or unusable with --skip_bad_records) and changed (records
out whose text cleaning changed).
"""
import argparse
import json
import os

from ewect.config import CLEAN_DIR, DATA_FILES, RAW_DIR, TRAIN_FILES
from ewect.errors import UserError, run_cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw_dir", default=RAW_DIR,
                        help="folder with the six raw files (default: $EWECT_RAW_DIR or data/raw)")
    parser.add_argument("--out_dir", default=CLEAN_DIR, help="where the cleaned files go")
    parser.add_argument("--skip_bad_records", action="store_true",
                        help="skip and count unusable records instead of stopping")
    return parser.parse_args()


def clean_file(src, dst, drop_empty, skip_bad_records):
    """Clean one file; returns (records in, out, dropped, changed)."""
    from ewect.data import clean_records, load_json_array, read_records

    raw_count = len(load_json_array(src))
    records = read_records(src, skip_bad_records=skip_bad_records)
    original = {r.id: r.content for r in records}
    cleaned = clean_records(records, drop_empty)
    tmp = dst + ".tmp"  # written aside, then renamed: a killed run never leaves half a file
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump([vars(r) for r in cleaned], f, ensure_ascii=False)
    os.replace(tmp, dst)
    changed = sum(r.content != original[r.id] for r in cleaned)
    return raw_count, len(cleaned), raw_count - len(cleaned), changed


def main():
    args = parse_args()
    missing = [name for name in DATA_FILES if not os.path.isfile(os.path.join(args.raw_dir, name))]
    if len(missing) == len(DATA_FILES):
        raise UserError(f"{args.raw_dir}: none of the SMP2020-EWECT files is here "
                        f"(expected {', '.join(DATA_FILES)}); see data/README.md")
    os.makedirs(args.out_dir, exist_ok=True)
    print(f"{'file':<26}{'in':>8}{'out':>8}{'dropped':>9}{'changed':>9}")
    for name in DATA_FILES:
        if name in missing:
            print(f"{name:<26}  missing, skipped")
            continue
        counts = clean_file(os.path.join(args.raw_dir, name), os.path.join(args.out_dir, name),
                            drop_empty=name in TRAIN_FILES, skip_bad_records=args.skip_bad_records)
        print(f"{name:<26}" + "".join(f"{n:>{w}}" for n, w in zip(counts, (8, 8, 9, 9))))
    print(f"cleaned files are in {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
