"""Pretrain a BERT with masked-LM (BERT §3.1) on Weibo text, from scratch or continued from a
pretrained model; keep the epoch with the lowest held-out loss.

    python pretrain.py --from_scratch --num_layers 2 --hidden_size 128 --epochs 20 --device cpu
        # offline, small: a vocabulary built from the corpus (or --vocab VOCAB.txt)
    python pretrain.py --model_name bert-base-chinese --whole_word_mask  # continued, GPU
    torchrun --nproc_per_node=4 pretrain.py --model_name bert-base-chinese
    python pretrain.py --resume                                        # continue a stopped run
    python train.py --model_name workspace/mlm/best                    # then fine-tune it

The corpus (--corpus, default: the cleaned train and eval files of both tracks, never the test
files) loses its exact duplicates; --held_out_fraction of it (2%) is held out, masked once with
fixed masks, and gives the held-out loss, perplexity and masked-token accuracy of every epoch.
Writes to --output_dir (workspace/mlm): best/ (save_pretrained of the BertForMaskedLM and its
tokenizer, with eval_results.json), last/ (the same plus training_state.pt for --resume),
tensorboard/ and train.log.
"""
import argparse
import contextlib
import logging
import math
import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ewect.config import PRETRAIN_CORPUS, REPO_ROOT
from ewect.data import sorted_batches, split_for_step, step_batches
from ewect.errors import UserError, non_negative_float, positive_int, run_cli, script_help
from ewect.mlm import (MaskingCollator, build_mlm_model, encode_corpus, masked_lm_loss,
                       read_corpus, self_pretrained, split_held_out)
from ewect.modeling import autocast, choose_precision, save_checkpoint
from ewect.prediction import check_max_length
from ewect.training import (RunningSums, StopRequest, add_shared_args, all_reduce, backward,
                            checkpoint_gradients, clear_earlier_run, close_processes,
                            describe_processes,
                            loader_workers, optimization, optimizer_step, posts_fingerprint,
                            refuse_changed_posts, refuse_cpu_marathon, refuse_shifted_resume,
                            setup_processes, start_run, step_plan, stop_for_resume,
                            stop_if_every_step_skipped, tensorboard, wrap_for_training,
                            write_json)
from ewect.vocab import scratch_vocab

# What a resumed run must share with the run it continues: the model, the corpus, the batches
# and the masks. Anything else (epochs, lr, device, precision, processes) may change on --resume.
ESSENTIAL_ARGS = ("model_name", "from_scratch", "vocab", "num_layers", "hidden_size", "num_heads",
                  "intermediate_size", "dropout", "corpus", "held_out_fraction", "whole_word_mask",
                  "batch_size", "max_length", "seed")
# --lr defaults. A random small BERT takes large steps: 1e-3 pretrained 2.6 points better than
# 5e-4 (bench/RESULTS.md, "Self-pretraining, longer and at a larger lr"); a pretrained one
# continues at the rate of domain-adaptive pretraining, small enough to keep what it knows.
SCRATCH_LR, CONTINUED_LR = 1e-3, 5e-5

log = logging.getLogger("pretrain")


def parse_args(argv=None):
    """The command line; every flag is explained in docs/pretraining.md."""
    p = argparse.ArgumentParser(**script_help(__doc__))
    add_shared_args(p, "hub id or local folder of a pretrained model to continue pretraining")
    p.add_argument("--num_heads", type=positive_int,
                   help="attention heads, with --from_scratch (default: hidden_size / 64)")
    p.add_argument("--intermediate_size", type=positive_int,
                   help="feed-forward size, with --from_scratch (default: 4 x hidden_size)")
    p.add_argument("--corpus", nargs="+", default=list(PRETRAIN_CORPUS), metavar="FILE",
                   help="files of posts, any format inference.py reads (default: the cleaned "
                        "train and eval files of both tracks)")
    p.add_argument("--held_out_fraction", type=float, default=0.02,
                   help="share of the corpus held out to pick the best epoch")
    p.add_argument("--whole_word_mask", action="store_true",
                   help="mask whole jieba words (Chinese-BERT-wwm) instead of single tokens")
    p.add_argument("--output_dir", default=os.path.join(REPO_ROOT, "workspace", "mlm"),
                   help="where best/, last/, logs go")
    p.add_argument("--lr", type=non_negative_float,
                   help=f"peak learning rate of AdamW (default: {CONTINUED_LR:g}; {SCRATCH_LR:g} "
                        "with --from_scratch)")
    p.add_argument("--epochs", type=positive_int, default=20, help="pretraining epochs")
    args = p.parse_args(argv)
    if not 0 < args.held_out_fraction < 1:
        p.error("--held_out_fraction must be between 0 and 1")
    if args.lr is None:
        args.lr = SCRATCH_LR if args.from_scratch else CONTINUED_LR
    return args


class MaskedLM(torch.nn.Module):
    """masked_lm_loss as a module's forward, so that DDP (and torch.compile) see the call: the
    loss reaches into the encoder and its head, which would bypass DDP's gradient sync."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return masked_lm_loss(self.model, batch)


def mlm_step(model, pieces, masked_in_step, optimizer, scaler, precision, max_grad_norm,
             world_size=1):
    """One optimizer step over this process's micro-batches (`pieces`, on the device). The
    gradient is that of the mean loss over all `masked_in_step` chosen tokens of the step (all
    processes), however they are split (DDP averages over processes, hence the world_size).
    Returns device tensors, not synced: summed loss, chosen and correct tokens, skipped."""
    loss_sum, chosen, correct = 0.0, 0, 0
    finite = torch.ones((), dtype=torch.bool, device=pieces[0]["labels"].device)
    for i, batch in enumerate(pieces):
        last = i == len(pieces) - 1  # DDP all-reduces the gradients on the last one only
        with contextlib.nullcontext() if last else getattr(model, "no_sync", contextlib.nullcontext)():
            with autocast(precision, batch["labels"].device):
                mean_loss, count, right = model(batch)
            loss = mean_loss * count
            backward(loss * world_size / max(masked_in_step, 1), scaler)
        finite &= torch.isfinite(loss)
        loss_sum, chosen, correct = loss_sum + loss.detach(), chosen + count, correct + right
    skipped = optimizer_step(optimizer, scaler, max_grad_norm, finite)
    return loss_sum, chosen, correct, skipped


@torch.inference_mode()
def evaluate(model, collator, lengths, args, proc, precision):
    """Held-out loss (mean over the chosen tokens), perplexity and masked-token accuracy; the
    masks are the same every epoch; each process takes a share of the batches."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=proc.device)  # loss, chosen, correct
    for indices in sorted_batches(lengths, args.eval_batch_size)[proc.rank::proc.world_size]:
        batch = {k: v.to(proc.device) for k, v in collator(indices).items()}
        with autocast(precision, proc.device):
            loss, count, correct = masked_lm_loss(model, batch)
        sums += torch.stack([loss.double() * count, count.double(), correct.double()])
    model.train()
    loss, chosen, correct = all_reduce(sums).tolist()
    loss /= max(chosen, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)),
            "accuracy": correct / max(chosen, 1)}


def main(argv=None):
    args = parse_args(argv)
    proc = setup_processes(args.device)
    finished = False
    try:
        finished = pretrain(args, proc)
    finally:
        close_processes(finished)


def pretrain(args, proc):
    """The run: setup, loop, finish. True when it finished, False when stopped for --resume."""
    # Setup. The corpus first: a bad one stops the run before a model is downloaded or built.
    state = start_run(args, ESSENTIAL_ARGS, proc)
    texts = read_corpus(args.corpus, log=log.warning)
    train_texts, held_texts = split_held_out(texts, args.held_out_fraction, args.seed)
    posts = posts_fingerprint(train_texts, held_texts)
    refuse_changed_posts(state, posts)
    torch.manual_seed(args.seed)
    if state:
        model, tokenizer = build_mlm_model(os.path.join(args.output_dir, "last"),
                                           dropout=args.dropout)
    else:
        vocab = scratch_vocab(args, train_texts, log.info)
        model, tokenizer = build_mlm_model(args.model_name, args.from_scratch, vocab,
                                           args.num_layers, args.hidden_size, args.num_heads,
                                           args.intermediate_size, args.dropout)
    model.to(proc.device).train()  # from_pretrained gives it in eval mode
    refuse_cpu_marathon(args.device, proc.device, model)
    check_max_length(model, args.max_length)
    checkpoint_gradients(model, args.gradient_checkpointing)
    train_ids, train_words = encode_corpus(tokenizer, train_texts, args.max_length,
                                           args.whole_word_mask)
    held_ids, held_words = encode_corpus(tokenizer, held_texts, args.max_length,
                                         args.whole_word_mask)
    held_out = MaskingCollator(held_ids, tokenizer, held_words, seed=args.seed, per_post=True)
    held_lengths = [len(ids) for ids in held_ids]
    if not any(len(held_out(b)["masked_positions"])
               for b in sorted_batches(held_lengths, args.eval_batch_size)):
        raise UserError(f"the held-out {len(held_ids)} post(s) have no masked token to score: "
                        "raise --held_out_fraction or give a larger --corpus")

    # Steps: --batch_size posts each, dealt to the processes, by gradient accumulation if need be.
    per_device, accumulation = step_plan(args.batch_size, args.per_device_batch_size,
                                         proc.world_size)
    lengths = [len(ids) for ids in train_ids]

    def epoch_batches(epoch, processes=proc.world_size):
        return step_batches(lengths, args.batch_size, args.seed + epoch, processes)

    steps_per_epoch = len(epoch_batches(0))
    if steps_per_epoch == 0:
        raise UserError(f"corpus: too few posts for a step of {args.batch_size}")
    clear_earlier_run(args, proc.is_main)  # every input read: the earlier run can go
    precision = choose_precision(args.precision, proc.device)
    optimizer, scheduler, scaler, progress, save_last = optimization(
        model, tokenizer, args, state, steps_per_epoch, proc, posts=posts)
    if state:
        refuse_shifted_resume(state, progress, proc.world_size,
                              lambda processes: epoch_batches(progress.epoch, processes))
        log.info("resuming from %s at epoch %d, step %d", os.path.join(args.output_dir, "last"),
                 progress.epoch + 1, progress.step_in_epoch)
    log.info("corpus: %d posts, held out: %d; %s masking; %d steps per epoch of %d posts = %d "
             "process(es) x %d micro-batch(es) of up to %d; %s on %s", len(train_ids),
             len(held_ids), "whole-word" if args.whole_word_mask else "token", steps_per_epoch,
             args.batch_size, proc.world_size, accumulation, per_device, precision,
             describe_processes(proc))

    def save_best(result, epoch):  # rank 0 only
        summary = {"epoch": epoch, "held_out_posts": len(held_ids),
                   "whole_word_mask": args.whole_word_mask,
                   "from_scratch": args.from_scratch or self_pretrained(args.model_name),
                   **{f"held_out_{name}": value for name, value in result.items()}}
        save_checkpoint(model, tokenizer, os.path.join(args.output_dir, "best"),
                        extra=lambda folder: write_json(
                            os.path.join(folder, "eval_results.json"), summary))

    if not state and not args.from_scratch:
        # Continued pretraining: the model it starts from is the first "best", so that best/ is
        # never worse than it, even when the first epochs (new warm-up, new lr) are.
        result = evaluate(model, held_out, held_lengths, args, proc, precision)
        log.info("the starting model: held-out loss %.4f, perplexity %.2f, masked-token "
                 "accuracy %.4f (saved as best/ until an epoch beats it)", result["loss"],
                 result["perplexity"], result["accuracy"])
        if math.isfinite(result["loss"]):
            progress.best_loss = result["loss"]
            if proc.is_main:
                save_best(result, 0)

    trained_model = wrap_for_training(MaskedLM(model), args.compile, proc)
    writer = tensorboard(args.output_dir, progress, proc)
    stop, running = StopRequest(), RunningSums()

    # The loop: the epoch's steps, then the held-out loss, best/ when it fell, and last/.
    try:
        while progress.epoch < args.epochs:
            # New masks every epoch; a step's masks depend only on its posts, not on the workers,
            # the processes or the micro-batches: resume and torchrun train on the same tokens.
            collator = MaskingCollator(train_ids, tokenizer, train_words,
                                       seed=args.seed + progress.epoch)
            loader = DataLoader([(b, split_for_step(b, proc.rank, proc.world_size, accumulation))
                                 for b in epoch_batches(progress.epoch)[progress.step_in_epoch:]],
                                batch_size=None, collate_fn=collator.collate_step,
                                num_workers=loader_workers(args.num_workers, proc.device),
                                pin_memory=proc.device.type == "cuda",
                                generator=torch.Generator())  # leaves the global RNG to dropout
            bar = tqdm(loader, desc=f"epoch {progress.epoch + 1}/{args.epochs}",
                       disable=not proc.is_main, initial=progress.step_in_epoch,
                       total=steps_per_epoch, dynamic_ncols=True)
            for pieces, masked_in_step in bar:
                pieces = [{k: v.to(proc.device, non_blocking=True) for k, v in piece.items()}
                          for piece in pieces]
                loss_sum, chosen, correct, skipped = mlm_step(
                    trained_model, pieces, masked_in_step, optimizer, scaler, precision,
                    args.max_grad_norm, proc.world_size)
                scheduler.step()
                running.add(loss=torch.where(skipped, 0.0, loss_sum), correct=correct,
                            chosen=torch.where(skipped, 0, chosen), all_chosen=chosen,
                            skipped=skipped.long())
                progress.step_in_epoch += 1
                progress.global_step += 1
                if progress.global_step % args.log_every == 0:  # the one host sync in log_every
                    sums = running.read()
                    lr = scheduler.get_last_lr()[0]
                    mean_loss = sums["loss"].item() / max(1, sums["chosen"].item())
                    accuracy = sums["correct"].item() / max(1, sums["all_chosen"].item())
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    if writer:
                        for name, value in (("loss", mean_loss), ("accuracy", accuracy),
                                            ("lr", lr)):
                            writer.add_scalar(f"Train/{name}", value, progress.global_step)
                    stop_if_every_step_skipped(sums["skipped"].item(), args.log_every, proc,
                                               progress, save_last)
                if stop.requested() or progress.global_step == args.stop_after_steps:
                    bar.close()
                    stop_for_resume(stop, save_last, progress)
                    return False
            bar.close()
            result = evaluate(model, held_out, held_lengths, args, proc, precision)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            improved = result["loss"] < progress.best_loss
            if improved:
                progress.best_loss, progress.best_epoch = result["loss"], progress.epoch
            log.info("epoch %d: held-out loss %.4f, perplexity %.2f, masked-token accuracy %.4f%s",
                     progress.epoch, result["loss"], result["perplexity"], result["accuracy"],
                     " (best so far, saved)" if improved else "")
            if writer:
                for name in ("loss", "perplexity", "accuracy"):
                    writer.add_scalar(f"MLM/held_out_{name}", result[name], progress.epoch)
                writer.flush()
            if improved and proc.is_main:
                save_best(result, progress.epoch)
            save_last(progress)
    finally:
        stop.restore()
        if writer:
            writer.close()

    # Finish.
    best_dir = os.path.join(args.output_dir, "best")
    if not math.isfinite(progress.best_loss):
        raise UserError(f"no epoch gave a finite held-out loss, so no best/ was saved; the last "
                        f"weights are in {os.path.join(args.output_dir, 'last')} (see "
                        f"{args.output_dir}/train.log: try a lower --lr)")
    log.info("done: best held-out loss %.4f (perplexity %.2f) at epoch %d, saved in %s; "
             "fine-tune it with train.py --model_name %s", progress.best_loss,
             math.exp(min(progress.best_loss, 50)), progress.best_epoch, best_dir, best_dir)
    return True


if __name__ == "__main__":
    run_cli(main)
