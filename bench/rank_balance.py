"""How long each step waits for its slowest process: slowest/mean step cost over the ranks of one
step, averaged over an epoch of usual_train, for 2, 4 and 8 processes. No model is run: the cost
of a process's step is its padded positions (posts x longest post, summed over its
micro-batches), which is what the encoder's time follows on these short posts.

    python -m bench.rank_balance                       # usual_train, bert-base-chinese's vocab

(old) before steps were dealt post by post: each process took whole length-grouped batches of --batch_size posts,
      dealt to the ranks in turn, so the ranks of one step had batches of unrelated lengths.
(new) train.py now: one batch of --batch_size posts per step, length-sorted, dealt round-robin
      to the ranks (ewect.data.split_for_step), so the ranks' pieces have nearly equal lengths.
"""
import argparse
import statistics

from transformers import BertTokenizer

from bench.common import DEFAULT_DATA_DIR, DEFAULT_VOCAB, VOCAB_HELP, load_posts, require_vocab
from ewect.config import MAX_LENGTH
from ewect.data import encode, length_grouped_batches, split_for_step, step_batches
from ewect.errors import run_cli


def cost(pieces, lengths):
    return sum(len(p) * max(lengths[i] for i in p) for p in pieces)


def imbalance(per_step_costs):
    """Mean over steps of slowest rank / mean rank."""
    return statistics.mean(max(c) / statistics.mean(c) for c in per_step_costs)


def old_scheme(lengths, batch_size, seed, world_size):
    batches = length_grouped_batches(lengths, batch_size, seed)
    per_rank = len(batches) // world_size
    shards = [batches[r::world_size][:per_rank] for r in range(world_size)]
    return [[cost([shards[r][s]], lengths) for r in range(world_size)] for s in range(per_rank)]


def new_scheme(lengths, batch_size, seed, world_size):
    batches = step_batches(lengths, batch_size, seed, world_size)  # train.py's steps
    return [[cost(split_for_step(b, r, world_size), lengths) for r in range(world_size)]
            for b in batches]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder with the raw files")
    p.add_argument("--vocab", default=DEFAULT_VOCAB, help=VOCAB_HELP)
    p.add_argument("--batch_size", type=int, default=64, help="the recipe's posts per step")
    p.add_argument("--seeds", type=int, default=3, help="epochs (batch orders) averaged")
    args = p.parse_args()
    args.vocab = require_vocab(args.vocab)
    texts, _ = load_posts(args.data_dir, "usual_train.txt", drop_empty=True)
    lengths = [len(ids) for ids in encode(BertTokenizer(args.vocab), texts, MAX_LENGTH)]
    print(f"usual_train: {len(lengths)} posts; slowest/mean process cost per step, mean over "
          f"{args.seeds} epochs (target <= 1.05)\n")
    print("| processes | (old) batch of 64 per process | (new) 64 per step, dealt round-robin |")
    print("| ---: | ---: | ---: |")
    for world_size in (2, 4, 8):
        old = statistics.mean(imbalance(old_scheme(lengths, args.batch_size, s, world_size))
                              for s in range(args.seeds))
        new = statistics.mean(imbalance(new_scheme(lengths, args.batch_size, s, world_size))
                              for s in range(args.seeds))
        print(f"| {world_size} | {old:.3f} | {new:.3f} |")


if __name__ == "__main__":
    run_cli(main)
