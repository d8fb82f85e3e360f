"""Label Weibo posts with a trained checkpoint: the label and the six probabilities.

    python inference.py --input '你是个什么东西，垃圾' --device cpu
    python inference.py --input_file posts.txt                  # one post per line
    python inference.py --input_file data/raw/virus_test_labeled.txt --json > labels.jsonl

Posts are cleaned exactly as the training data was. --input_file takes plain text (one post per
line, blank lines skipped) or an SMP2020-EWECT JSON array (labels optional). --json prints one
JSON object per post: id, text (as cleaned), label, probabilities.
"""
import argparse
import json
import sys

from ewect.config import BEST_DIR, LABELS, MAX_LENGTH
from ewect.errors import UserError, positive_int, run_cli


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="one post to label")
    source.add_argument("--input_file", help="file of posts: one per line, or a JSON array")
    p.add_argument("--model_dir", default=BEST_DIR, help="checkpoint folder written by train.py")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--json", action="store_true", help="print one JSON object per post")
    p.add_argument("--batch_size", type=positive_int, default=64, help="posts per forward pass")
    p.add_argument("--max_length", type=positive_int, default=MAX_LENGTH,
                   help="tokens kept per post")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantization of the Linear layers (CPU only)")
    return p.parse_args()


def read_posts(path):
    """[(id, text)] from a JSON array of records or from plain lines (id = line number)."""
    from ewect.data import read_records

    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1024).lstrip()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if head.startswith("["):
        return [(r.id, r.content) for r in read_records(path, require_label=False)]
    with open(path, encoding="utf-8") as f:
        try:
            posts = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None
    if not posts:
        raise UserError(f"{path}: no posts in this file")
    return posts


def main():
    args = parse_args()
    if args.input is not None:
        if not args.input.strip():
            raise UserError("--input is empty: give the text of a post")
        posts = [(None, args.input)]
    else:
        posts = read_posts(args.input_file)

    from ewect.cleaning import clean_text
    from ewect.modeling import load_for_prediction, predict_probabilities

    model, tokenizer, device = load_for_prediction(args.model_dir, args.device, args.int8)
    texts = [clean_text(text) for _, text in posts]
    probs = predict_probabilities(model, tokenizer, texts, device, args.batch_size, args.max_length)
    for (post_id, _), text, row in zip(posts, texts, probs):
        label = LABELS[int(row.argmax())]
        if args.json:
            print(json.dumps({"id": post_id, "text": text, "label": label,
                              "probabilities": {name: round(float(p), 4)
                                                for name, p in zip(LABELS, row)}},
                             ensure_ascii=False))
        elif post_id is None:
            print(label)
            for name, p in zip(LABELS, row):
                print(f"  {name:<9}{p:.4f}")
            if not text:
                print("note: nothing was left of this post after cleaning", file=sys.stderr)
        else:
            print(f"{post_id}\t{label}\t{row.max():.4f}\t{text}")


if __name__ == "__main__":
    run_cli(main)
