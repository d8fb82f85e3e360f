"""Masked-LM pretraining throughput: this project's path against the straightforward one, on the
same machine, the same posts (usual_train, cleaned), the same batches and the same starting
weights, in one process.

    python -m bench.pretrain_speed --device cpu                 # 2-core CPU: 1 + 3 steps, ~7 min
    python -m bench.pretrain_speed --device cpu --num_layers 2 --hidden_size 128 --steps 2   # smoke
    python -m bench.pretrain_speed --device cuda --steps 100 --warmup_steps 10

(a) project: posts tokenized once (ewect.mlm.encode_corpus), length-grouped batches padded to
    their own longest post and masked in the collate step (ewect.mlm.MaskingCollator), the
    21128-way vocabulary projection only at the chosen positions (ewect.mlm.masked_lm_loss),
    AdamW from ewect.training.make_optimizer (fused on CUDA).
(b) straightforward: every post tokenized and padded to 140 on access, transformers'
    DataCollatorForLanguageModeling, BertForMaskedLM(labels=...) projecting every position onto
    the vocabulary, plain AdamW.
(a') the project's batches with (b)'s loss over every position: how much of the speed-up is the
    sparse vocabulary projection rather than the padding.

Both paths train a copy of one randomly initialised BertForMaskedLM on the same index batches
(evenly spaced quantiles of an epoch's length-grouped batches: a few steps with the epoch's mix of
lengths), in the same precision (fp32 on CPU, autocast bf16/fp16 on CUDA), gradients clipped to 1.
tokens/s counts real (non-pad) tokens, [CLS] and [SEP] included, so both paths count the same
tokens; padding is pad positions over all positions. The output is Markdown for bench/RESULTS.md.
"""
import argparse
import copy

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling

from bench.common import (DEFAULT_DATA_DIR, DEFAULT_VOCAB, VOCAB_HELP, PaddedPostDataset,
                          current_rss_mib, describe_machine, load_posts, peak_memory_mib,
                          print_ratio, print_table, require_vocab, reset_peak_memory, result)
from bench.train_speed import spread, time_steps
from ewect.config import MAX_LENGTH
from ewect.data import length_grouped_batches
from ewect.errors import HelpFormatter, UserError, run_cli
from ewect.mlm import MaskingCollator, build_mlm_model, encode_corpus, masked_lm_loss
from ewect.modeling import autocast_dtype, resolve_device
from ewect.training import decay_groups, make_optimizer

LR, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-4, 0.01, 1.0  # the rate does not change the cost of a step


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--num_layers", type=int, default=12, help="BERT layers (12: bert-base)")
    p.add_argument("--hidden_size", type=int, default=768, help="BERT hidden size (768: bert-base)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per path")
    p.add_argument("--warmup_steps", type=int, default=1, help="untimed steps first, per path")
    p.add_argument("--batch_size", type=int, default=64, help="posts per step, both paths")
    p.add_argument("--whole_word_mask", action="store_true",
                   help="(a) masks whole jieba words (the cost of a step does not change)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="folder with the raw SMP2020-EWECT files (usual_train.txt is used)")
    p.add_argument("--vocab", default=DEFAULT_VOCAB, help=VOCAB_HELP)
    p.add_argument("--seed", type=int, default=42, help="seed for the weights, masks and batches")
    args = p.parse_args()
    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1:
        p.error("--steps and --batch_size must be at least 1, --warmup_steps at least 0")
    return args


def sparse_loss(model, batch):
    return masked_lm_loss(model, batch)[0]


def dense_loss(model, batch):
    """BertForMaskedLM's own loss: the vocabulary projection at every position."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


def step_fn(loss_of, project_optimizer):
    """make_step(model, device) for a loss; project_optimizer: make_optimizer (fused AdamW),
    else plain AdamW."""
    def make_step(model, device):
        amp_dtype = autocast_dtype(device)
        optimizer = (make_optimizer(model, LR, WEIGHT_DECAY) if project_optimizer else
                     torch.optim.AdamW(decay_groups(model, WEIGHT_DECAY), lr=LR))

        def step(batch):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_of(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    return make_step


def run_path(name, template, loader, make_step, args, device):
    """Train a fresh copy of the template on one path; a result row."""
    torch.manual_seed(args.seed)  # the same dropout draws for both paths
    peak_reset = reset_peak_memory(device)
    model = copy.deepcopy(template).to(device).train()
    seconds, samples, real, positions = time_steps(loader, make_step(model, device),
                                                   args.warmup_steps, args.steps, device)
    return result(name, samples, seconds, real, positions, peak_memory_mib(device), peak_reset)


def main():
    args = parse_args()
    device = resolve_device(args.device)
    print(describe_machine(device))
    args.vocab = require_vocab(args.vocab)
    texts, _ = load_posts(args.data_dir, "usual_train.txt", drop_empty=True)
    torch.manual_seed(args.seed)
    template, tokenizer = build_mlm_model(from_scratch=True, vocab=args.vocab,
                                          num_layers=args.num_layers, hidden_size=args.hidden_size)
    ids, word_ids = encode_corpus(tokenizer, texts, MAX_LENGTH, args.whole_word_mask)  # not timed
    lengths = [len(x) for x in ids]
    epoch = length_grouped_batches(lengths, args.batch_size, args.seed)
    if args.warmup_steps + args.steps > len(epoch):
        raise UserError(f"--warmup_steps + --steps must fit in one epoch ({len(epoch)} steps)")
    timed = spread(epoch, lengths, args.steps, args.batch_size)
    batches = [b for b in epoch if b not in timed][:args.warmup_steps] + timed
    amp = autocast_dtype(device)
    print(f"model: BertForMaskedLM, {args.num_layers} layers, hidden {args.hidden_size}, vocab "
          f"{template.config.vocab_size}, {sum(p.numel() for p in template.parameters()) / 1e6:.1f}"
          f"M parameters; data: usual_train, {len(texts)} posts, batches of {args.batch_size}; "
          f"{'whole-word' if args.whole_word_mask else 'token'} masking; precision "
          f"{str(amp).replace('torch.', '') if amp else 'fp32'}; {args.warmup_steps} untimed + "
          f"{args.steps} timed steps per path")
    reset_peak_memory(device)
    print(f"process RSS before the paths: {current_rss_mib():.0f} MiB")

    on_cuda = device.type == "cuda"
    project = DataLoader(batches, batch_size=None, num_workers=2 if on_cuda else 0,
                         pin_memory=on_cuda,
                         collate_fn=MaskingCollator(ids, tokenizer, word_ids, seed=args.seed))
    baseline = DataLoader(PaddedPostDataset(texts, None, tokenizer), batch_sampler=batches,
                          collate_fn=DataCollatorForLanguageModeling(tokenizer, seed=args.seed))
    rows = [run_path("(a) project", template, project, step_fn(sparse_loss, True), args, device),
            run_path("(b) straightforward", template, baseline, step_fn(dense_loss, False), args,
                     device),
            run_path("(a') project, dense head", template, project, step_fn(dense_loss, True),
                     args, device)]
    print()
    print_table(rows, "posts")
    print()
    print_ratio("speed-up (a)/(b), tokens/s", rows[0], rows[1])
    print_ratio("of which the sparse head, (a)/(a')", rows[0], rows[2])


if __name__ == "__main__":
    run_cli(main)
