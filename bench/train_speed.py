"""Training throughput: this project's training step against the published repo's, on the same
machine, the same posts (usual_train, cleaned) and the same starting weights, in one process.

    python -m bench.train_speed --device cuda --epoch_time     # GPU: 200 steps, plus a full epoch
    python -m bench.train_speed --device cpu                   # 2-core CPU: 1 + 2 steps, ~4 min
    python -m bench.train_speed --device cpu --num_layers 2 --hidden_size 128 --steps 3   # smoke

(a) project: posts tokenized once (ewect.data.encode), length-grouped batches padded to their own
    longest post, on a GPU rounded up to a multiple of 8 (ewect.data.Collator), fused AdamW, bf16
    autocast where the GPU has it, running loss and confusion matrix kept on the device:
    train.py's train_step.
(a') on a GPU, the same with each step replayed from a CUDA graph: train.py --cuda_graphs.
(b) baseline, the published repo's style: a Dataset that tokenizes and pads every post to 140
    on access, DataLoader(shuffle=True), fp32 on CPU / fp16 autocast + GradScaler on GPU,
    loss.item() and scikit-learn accuracy and macro-F1 on every batch.

Both paths train a copy of one randomly initialised model (the compute of the pretrained one: no
network here) for --warmup_steps untimed and --steps timed optimizer steps of --batch_size posts.
tokens/s counts real (non-pad) tokens, [CLS] and [SEP] included; padding is pad positions over all
positions. The output is Markdown, to paste into bench/RESULTS.md.
"""
import argparse
import copy
import itertools
import warnings

import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader

from bench.common import (DEFAULT_DATA_DIR, DEFAULT_VOCAB, VOCAB_HELP, PaddedPostDataset, Timer,
                          current_rss_mib, describe_machine, load_posts, peak_memory_mib,
                          print_ratio, print_table, published_attention, require_vocab,
                          reset_peak_memory, result)
from ewect.config import MAX_LENGTH
from ewect.data import Collator, encode, length_grouped_batches, pad_multiple
from ewect.errors import HelpFormatter, UserError, run_cli
from ewect.loss import make_loss
from ewect.modeling import build_model, choose_precision, resolve_device
from ewect.training import (CudaGraphSteps, RunningSums, decay_groups,
                            make_grad_scaler, make_optimizer)
from train import graphed_train_step, train_step  # what is measured is train.py's own step

MAX_GRAD_NORM = 1.0  # train.py's default
LR = 1e-5  # train.py's default; the rate does not change the cost of a step
WEIGHT_DECAY = 0.01  # train.py's default
# train.py's LR schedule is left out of both paths: a scheduler step is a few Python operations.


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--num_layers", type=int, default=12, help="BERT layers (12: bert-base)")
    p.add_argument("--hidden_size", type=int, default=768, help="BERT hidden size (768: bert-base)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed optimizer steps per path; None: 2 on CPU, 200 on CUDA")
    p.add_argument("--warmup_steps", type=int, default=None,
                   help="untimed steps before timing, per path; None: 1 on CPU, 20 on CUDA")
    p.add_argument("--batch_size", type=int, default=64, help="posts per step, both paths")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="folder with the raw SMP2020-EWECT files (usual_train.txt is used)")
    p.add_argument("--vocab", default=DEFAULT_VOCAB, help=VOCAB_HELP)
    p.add_argument("--seed", type=int, default=42, help="seed for the weights, dropout and batch order")
    p.add_argument("--batch_order", default="spread", choices=["spread", "epoch"],
                   help="(a)'s timed batches: spread = evenly spaced quantiles of batch size, so "
                        "a few steps have the epoch's mix of lengths; epoch = the first batches "
                        "in train.py's order (random lengths; fine for hundreds of steps)")
    p.add_argument("--epoch_time", action="store_true",
                   help="GPU only: also time one full epoch of usual_train per path")
    args = p.parse_args()
    on_cuda = resolve_device(args.device).type == "cuda"
    args.steps = args.steps if args.steps is not None else (200 if on_cuda else 2)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (20 if on_cuda else 1)
    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1:
        p.error("--steps and --batch_size must be at least 1, --warmup_steps at least 0")
    return args


def spread(batches, lengths, n, batch_size):
    """n batches at evenly spaced quantiles of padded size. A few random batches of a
    length-grouped epoch can be all short or all long; these have the whole epoch's mix."""
    full = [b for b in batches if len(b) == batch_size]  # the same samples per step as (b)
    by_size = sorted(full, key=lambda b: len(b) * max(lengths[i] for i in b))
    return [by_size[int((k + 0.5) * len(by_size) / n)] for k in range(n)]


def project_batches(ids, args, full_epoch=False):
    """Index batches of train.py's epoch, in its order or (--batch_order spread) the warmup
    batches followed by a spread of the epoch for the timed steps."""
    lengths = [len(x) for x in ids]
    batches = length_grouped_batches(lengths, args.batch_size, args.seed)
    if full_epoch or args.batch_order == "epoch":
        return batches
    timed = spread(batches, lengths, args.steps, args.batch_size)
    chosen = {id(b) for b in timed}
    return [b for b in batches if id(b) not in chosen][:args.warmup_steps] + timed


def project_loader(ids, labels, tokenizer, batches, device):
    """train.py's loader: length-grouped index batches, each padded to its longest post (on a GPU
    rounded up to a multiple of 8)."""
    collate = Collator(ids, labels, tokenizer.pad_token_id, multiple=pad_multiple(device.type))
    return DataLoader(batches, batch_size=None, collate_fn=collate,
                      num_workers=2 if device.type == "cuda" else 0,
                      pin_memory=device.type == "cuda", generator=torch.Generator())


def baseline_loader(texts, labels, tokenizer, batch_size, seed):
    """The published style: tokenize and pad to 140 in __getitem__, shuffle, default workers."""
    return DataLoader(PaddedPostDataset(texts, labels, tokenizer), batch_size=batch_size,
                      shuffle=True, generator=torch.Generator().manual_seed(seed))


def project_step_fn(model, device, cuda_graphs=False):
    """train.py's step; the running sums stay on the device, so nothing waits for the GPU."""
    precision = choose_precision("auto", device)
    optimizer = make_optimizer(model, LR, WEIGHT_DECAY)
    scaler = make_grad_scaler(precision, device)
    graphs = CudaGraphSteps() if cuda_graphs else None
    loss = make_loss(precision)
    running = RunningSums()

    def step(batch):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        size = len(batch["labels"])
        loss_sum, confusion, skipped = graphed_train_step(
            graphs, model, [batch], size, loss, optimizer, MAX_GRAD_NORM) if graphs else train_step(
            model, [batch], size, loss, optimizer, scaler, MAX_GRAD_NORM)
        running.add(loss=loss_sum, confusion=confusion, skipped=skipped.long())
    return step


def baseline_step_fn(model, device):
    """The published step: fp16 + GradScaler on GPU only, and a host sync plus scikit-learn
    metrics on every batch."""
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(decay_groups(model, WEIGHT_DECAY), lr=LR)  # not fused
    scaler = torch.amp.GradScaler(device.type, enabled=on_cuda)

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.float16, enabled=on_cuda):
            outputs = model(**batch)
        scaler.scale(outputs.loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        outputs.loss.item()
        preds = outputs.logits.argmax(-1).cpu().numpy()
        golds = batch["labels"].cpu().numpy()
        accuracy_score(golds, preds)
        f1_score(golds, preds, average="macro")
    return step


def time_steps(loader, step, warmup_steps, steps, device):
    """(seconds, samples, real tokens, positions) of `steps` steps after `warmup_steps` untimed
    ones; steps=None runs the rest of the epoch. Counting reads the batch while it is still on
    the CPU, so it costs no device sync."""
    batches = iter(loader)
    for _ in range(warmup_steps):
        step(next(batches))
    timed = batches if steps is None else itertools.islice(batches, steps)  # fetches no extra batch
    samples = real_tokens = positions = 0
    with Timer(device) as timer:
        for batch in timed:
            samples += len(batch["input_ids"])
            real_tokens += int(batch["attention_mask"].sum())
            positions += batch["attention_mask"].numel()
            step(batch)
    return timer.seconds, samples, real_tokens, positions


def run_path(name, template, make_loader, make_step, args, device):
    """Train a fresh copy of the template model on one path; a result row."""
    torch.manual_seed(args.seed)  # the same dropout draws for both paths
    peak_reset = reset_peak_memory(device)
    model = copy.deepcopy(template).to(device).train()
    step = make_step(model, device)
    seconds, samples, real, positions = time_steps(make_loader(), step, args.warmup_steps,
                                                   args.steps, device)
    row = result(name, samples, seconds, real, positions, peak_memory_mib(device), peak_reset)
    if args.epoch_time and device.type == "cuda":
        row["epoch_seconds"] = time_steps(make_loader(full_epoch=True), step, 0, None, device)[0]
    del model, step
    return row


def main():
    args = parse_args()
    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", category=UndefinedMetricWarning)  # batches miss classes
    print(describe_machine(device))

    args.vocab = require_vocab(args.vocab)
    texts, labels = load_posts(args.data_dir, "usual_train.txt", drop_empty=True)
    torch.manual_seed(args.seed)
    template, tokenizer = build_model("bert-base-chinese", from_scratch=True, vocab=args.vocab,
                                      num_layers=args.num_layers, hidden_size=args.hidden_size)
    ids = encode(tokenizer, texts, MAX_LENGTH)  # once per run, as train.py does; not timed
    epoch_steps = -(-len(texts) // args.batch_size)
    if args.warmup_steps + args.steps > epoch_steps:
        raise UserError(f"--warmup_steps + --steps must fit in one epoch ({epoch_steps} steps "
                        f"of {args.batch_size})")
    precision = choose_precision("auto", device)
    print(f"model: {args.num_layers} layers, hidden {args.hidden_size}, "
          f"{sum(p.numel() for p in template.parameters()) / 1e6:.1f}M parameters; "
          f"data: usual_train, {len(texts)} posts, {epoch_steps} steps of {args.batch_size} per epoch")
    print(f"precision: (a) {precision}, "
          f"(b) {'fp16' if device.type == 'cuda' else 'fp32'}; "
          f"{args.warmup_steps} untimed + {args.steps} timed steps per path")
    reset_peak_memory(device)  # trims the heap, so the floor printed is the one the paths start on
    print(f"process RSS before the paths: {current_rss_mib():.0f} MiB")

    def project_loader_fn(full_epoch=False):
        return project_loader(ids, labels, tokenizer, project_batches(ids, args, full_epoch),
                              device)

    rows = [run_path("(a) project", template, project_loader_fn, project_step_fn, args, device)]
    with published_attention():
        rows.append(run_path("(b) baseline", template,
                             lambda full_epoch=False: baseline_loader(texts, labels, tokenizer,
                                                                      args.batch_size, args.seed),
                             baseline_step_fn, args, device))
    try:  # last: a capture that fails can leave CUDA unusable, and (a) and (b) are measured
        if device.type == "cuda" and precision != "fp16":  # what --cuda_graphs takes
            rows.insert(1, run_path("(a') project, CUDA graphs", template, project_loader_fn,
                                    lambda model, device: project_step_fn(model, device, True),
                                    args, device))
    finally:
        report(rows, ids, args, device)


def report(rows, ids, args, device):
    """The table and the speed-ups of (a), [(a'),] (b)."""
    print()
    print_table(rows, "samples")
    print()
    print_ratio("speed-up (a)/(b), samples/s", rows[0], rows[-1])
    if len(rows) == 3:
        print_ratio("speed-up (a')/(b), samples/s", rows[1], rows[-1])
    # Shows whether the timed batches were typical of an epoch (see --batch_order).
    epoch_tokens = sum(len(x) for x in ids)
    print(f"real tokens per sample: timed (a) {rows[0]['real_tokens'] / rows[0]['items']:.1f}, "
          f"(b) {rows[-1]['real_tokens'] / rows[-1]['items']:.1f}; "
          f"whole epoch {epoch_tokens / len(ids):.1f}")
    if device.type != "cuda":
        if args.epoch_time:
            print("--epoch_time: skipped on the CPU (an epoch would take hours)")
    elif args.epoch_time:
        for row in rows:
            print(f"{row['name']}: {row['epoch_seconds']:.1f} s per epoch of usual_train")


if __name__ == "__main__":
    run_cli(main)
