"""Gradient checkpointing measured: peak memory and time of one training step with and without
train.py --gradient_checkpointing (transformers' own, non-reentrant), on random posts.

    python -m bench.checkpointing                                   # 12 layers, hidden 256, CPU
    python -m bench.checkpointing --layers 24 --hidden 1024 --batch 64 --device cuda   # large

Each setting runs in a process of its own (the CPU's peak resident set only grows in a
process): build a BERT of the size with bert-base-chinese's vocabulary size, AdamW, then steps
of forward, backward and update on --batch posts of --length tokens; the peak is measured over
the last --steps steps (after a warm-up step that allocates the optimizer's state), beside the
floor (the memory in use before them: the process, the weights and AdamW's state; the gradients
are freed between steps), so that peak - floor is what the steps' activations and gradients
took. Markdown, for RESULTS.
"""
import argparse
import json
import subprocess
import sys
import time

import torch

from bench.common import current_rss_mib, describe_machine, peak_memory_mib, reset_peak_memory

VOCAB_SIZE = 21128  # bert-base-chinese's


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12, help="encoder layers")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (a head per 64)")
    p.add_argument("--batch", type=int, default=32, help="posts per step")
    p.add_argument("--length", type=int, default=128, help="tokens per post")
    p.add_argument("--steps", type=int, default=3, help="measured steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--one", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args):
    """One setting, in this process: {peak_mib, seconds per step}."""
    from transformers import BertForSequenceClassification

    from ewect.modeling import bert_config

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(VOCAB_SIZE, args.layers, args.hidden,
                                                      num_labels=6)).to(device).train()
    if args.one == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, VOCAB_SIZE, (args.batch, args.length), device=device)
    labels = torch.randint(0, 6, (args.batch,), device=device)

    def step():
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from here on
    reset_peak_memory(device)
    floor = (torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == "cuda"
             else current_rss_mib())
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"peak_mib": peak_memory_mib(device), "floor_mib": floor,
            "seconds": (time.perf_counter() - start) / args.steps}


def main():
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    print(describe_machine(torch.device(args.device)))
    print(f"BERT {args.layers} layers, hidden {args.hidden}, {args.batch} posts of "
          f"{args.length} tokens a step, AdamW\n")
    print("| setting | peak memory, MiB | of which above the floor | s/step |\n|---|---|---|---|")
    rows = {}
    for setting in ("plain", "checkpointing"):
        out = subprocess.run([sys.executable, "-m", "bench.checkpointing", *sys.argv[1:],
                              "--one", setting], capture_output=True, text=True, check=True)
        rows[setting] = json.loads(out.stdout.strip().splitlines()[-1])
        row = rows[setting]
        print(f"| {setting} | {row['peak_mib']:.0f} | {row['peak_mib'] - row['floor_mib']:.0f} | "
              f"{row['seconds']:.2f} |")
    print(f"\ncheckpointing: {rows['checkpointing']['peak_mib'] / rows['plain']['peak_mib']:.2f}x "
          f"the memory, {rows['checkpointing']['seconds'] / rows['plain']['seconds']:.2f}x the "
          "time")


if __name__ == "__main__":
    main()
