"""Fine-tune a BERT-style classifier on SMP2020-EWECT usual_train; keep the epoch with the best
usual_eval macro-F1.

    python train.py                                    # the published recipe, bert-base-chinese
    python train.py --model_name /path/to/bert-base-chinese --device cuda
    torchrun --nproc_per_node=4 train.py               # 4 GPUs, DistributedDataParallel
    python train.py --resume                           # continue an interrupted run
    python train.py --from_scratch --vocab ../shared/models/bert-base-chinese-vocab/vocab.txt \\
        --num_layers 2 --hidden_size 128 --lr 5e-4 --epochs 3 --device cpu   # offline, small

Writes to --output_dir (workspace/wb): best/ (the best epoch, save_pretrained: weights, config with
id2label, tokenizer), last/ (everything --resume needs; written after every epoch and on
Ctrl-C/SIGTERM), tensorboard/ and train.log.
"""
import argparse
import json
import logging
import os
import signal
import sys
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from ewect.config import EVAL_FILE, LABEL2ID, LABELS, MAX_LENGTH, TRAIN_FILE, WORKSPACE
from ewect.data import (Collator, clean_records, encode, length_grouped_batches, read_records,
                        shard)
from ewect.errors import UserError, run_cli
from ewect.metrics import scores
from ewect.modeling import (autocast_dtype, build_model, load_checkpoint, predict_logits,
                            resolve_device, restore_interrupted_save, save_checkpoint)

# Arguments a resumed run must share with the run it continues: they fix the model, the data
# and the batch order. Anything else (epochs, lr, patience, device, ...) may change on --resume.
ESSENTIAL_ARGS = ("model_name", "from_scratch", "vocab", "num_layers", "hidden_size", "dropout",
                  "train_file", "eval_file", "batch_size", "max_length", "seed", "world_size")

log = logging.getLogger("train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_name", default="bert-base-chinese",
                   help="hub id or local folder of a pretrained model")
    p.add_argument("--from_scratch", action="store_true",
                   help="start from a randomly initialised BERT (offline runs, tests, benchmarks)")
    p.add_argument("--vocab", help="WordPiece vocab.txt for --from_scratch")
    p.add_argument("--num_layers", type=int, default=12, help="layers, with --from_scratch")
    p.add_argument("--hidden_size", type=int, default=768, help="hidden size, with --from_scratch")
    p.add_argument("--train_file", default=TRAIN_FILE, help="cleaned training file")
    p.add_argument("--eval_file", default=EVAL_FILE, help="cleaned file that picks the best epoch")
    p.add_argument("--output_dir", default=WORKSPACE, help="where best/, last/, logs go")
    p.add_argument("--batch_size", type=int, default=64, help="per-process batch size")
    p.add_argument("--eval_batch_size", type=int, default=128, help="batch size for evaluation")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate of AdamW")
    p.add_argument("--weight_decay", type=float, default=0.01,
                   help="AdamW weight decay (none on biases and LayerNorm)")
    p.add_argument("--warmup_epochs", type=float, default=1.0,
                   help="epochs of linear warmup before the linear decay")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--max_length", type=int, default=MAX_LENGTH, help="tokens kept per post")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout")
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    p.add_argument("--seed", type=int, default=42, help="seed for init, dropout and batch order")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="DataLoader workers (default: 2 on CUDA, 0 on CPU)")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many epochs without a better eval macro-F1 (0: never)")
    p.add_argument("--log_every", type=int, default=20,
                   help="steps between reading the running metrics (TensorBoard, progress bar)")
    p.add_argument("--stop_after_steps", type=int, default=0,
                   help="stop after this many optimizer steps in total, saving last/ for "
                        "--resume (0: run all epochs)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="skip and count unusable records instead of stopping")
    args = p.parse_args(argv)
    if args.from_scratch and not args.vocab:
        p.error("--from_scratch needs --vocab VOCAB.txt")
    for name in ("batch_size", "eval_batch_size", "epochs", "max_length", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save last/ and stop at the next step boundary; a second
    signal stops at once."""

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: saving last/ at the end of this step (again to stop at once)",
                    signal.Signals(signum).name)


def setup_logging(output_dir, is_main):
    handlers = [logging.StreamHandler(sys.stdout)]
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log"), encoding="utf-8"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)


def load_split(path, tokenizer, args, drop_empty):
    """(token ids, label ids) of one file, tokenized once for the whole run. Texts are cleaned
    again (idempotent, about a second), so a raw file is read exactly as its cleaned copy."""
    records = clean_records(read_records(path, skip_bad_records=args.skip_bad_records,
                                         log=log.warning), drop_empty)
    return (encode(tokenizer, [r.content for r in records], args.max_length),
            [LABEL2ID[r.label] for r in records])


def main(argv=None):
    args = parse_args(argv)

    # --- processes and device: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, a plain run is rank 0 of 1
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, is_main = int(os.environ.get("LOCAL_RANK", 0)), rank == 0
    args.world_size = world_size
    device = resolve_device(args.device, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    setup_logging(args.output_dir, is_main)
    log.info("arguments: %s", json.dumps(vars(args), ensure_ascii=False))
    amp_dtype = autocast_dtype(device)
    best_dir, last_dir = os.path.join(args.output_dir, "best"), os.path.join(args.output_dir, "last")

    # --- model: from last/ when resuming, else pretrained or from scratch
    torch.manual_seed(args.seed)
    state = read_resume_state(last_dir, args) if args.resume else None
    if state:
        model, tokenizer = load_checkpoint(last_dir, device)
        model.train()
    else:
        model, tokenizer = build_model(args.model_name, args.dropout, args.from_scratch, args.vocab,
                                       args.num_layers, args.hidden_size)
        model.to(device)
    raw_model = model  # the plain module: what is saved and evaluated

    # --- data: each split tokenized once; batches padded to their own longest post
    train_ids, train_labels = load_split(args.train_file, tokenizer, args, drop_empty=True)
    eval_ids, eval_labels = load_split(args.eval_file, tokenizer, args, drop_empty=False)
    train_lengths = [len(ids) for ids in train_ids]
    collate = Collator(train_ids, train_labels, tokenizer.pad_token_id)
    steps_per_epoch = len(shard(length_grouped_batches(train_lengths, args.batch_size, args.seed),
                                rank, world_size))
    if steps_per_epoch == 0:
        raise UserError(f"{args.train_file}: too few records for {world_size} processes")
    log.info("train: %d posts, eval: %d posts, %d steps per epoch, %s on %s%s",
             len(train_ids), len(eval_ids), steps_per_epoch,
             str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", device,
             f" x {world_size} processes" if world_size > 1 else "")

    # --- optimizer: no weight decay on biases and LayerNorm weights (the 1-d parameters)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch)
    # The scaler also skips every step whose gradients are not finite; only fp16 needs real
    # scaling, so elsewhere it starts at 1 and never grows.
    fp16 = amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16 if fp16 else 1.0,
                                  growth_interval=2000 if fp16 else 2 ** 30)
    # A skipped step still advances the schedule, by design; torch warns about that.
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")

    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_f1": -1.0,
                "best_epoch": 0, "epochs_without_gain": 0}
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress.update(state["progress"])
        log.info("resuming from %s at epoch %d, step %d", last_dir, progress["epoch"] + 1,
                 progress["step_in_epoch"])

    if args.compile:
        model = torch.compile(model, dynamic=True)
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard"),
                           purge_step=progress["global_step"] or None) if is_main else None

    def all_reduce(tensor, op=dist.ReduceOp.SUM):
        if world_size > 1:
            dist.all_reduce(tensor, op)
        return tensor

    def evaluate():
        """Loss and scores on the eval file; each process predicts a disjoint share."""
        raw_model.eval()
        mine = list(range(rank, len(eval_ids), world_size))
        logits = predict_logits(raw_model, [eval_ids[i] for i in mine], args.eval_batch_size,
                                device, amp_dtype)
        raw_model.train()
        labels = torch.tensor([eval_labels[i] for i in mine])
        loss_sum = F.cross_entropy(logits, labels, reduction="sum").to(device)
        confusion = torch.bincount(labels * len(LABELS) + logits.argmax(-1),
                                   minlength=len(LABELS) ** 2).to(device)
        result = scores(all_reduce(confusion).view(len(LABELS), -1).cpu().numpy())
        result["loss"] = all_reduce(loss_sum).item() / len(eval_ids)
        return result

    def save_last():
        """last/: model, tokenizer and everything needed to continue exactly where we are."""
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        rngs = [None] * world_size
        if world_size > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if is_main:
            training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                              "scaler": scaler.state_dict(), "progress": dict(progress),
                              "rng_per_rank": rngs, "args": vars(args)}
            save_checkpoint(raw_model, tokenizer, last_dir, extra=lambda folder: torch.save(
                training_state, os.path.join(folder, "training_state.pt")))
        if world_size > 1:
            dist.barrier()

    if state:  # restored last, so that model building and data loading above cannot disturb it
        rng = state["rng_per_rank"][rank]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)

    stop = StopRequest()
    num_workers = args.num_workers if args.num_workers is not None else (2 if device.type == "cuda" else 0)
    # Running sums stay on the device and are read every log_every steps: no host sync per step.
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(len(LABELS) ** 2, dtype=torch.long, device=device)
    finite_steps = torch.zeros((), dtype=torch.long, device=device)
    nonfinite_streak = torch.zeros((), dtype=torch.long, device=device)

    def stop_requested():
        if world_size == 1:
            return stop.signum is not None
        if progress["global_step"] % args.log_every:  # ranks agree only at log steps (one sync)
            return False
        flag = all_reduce(torch.tensor(float(stop.signum is not None), device=device))
        return flag.item() > 0

    try:
        while progress["epoch"] < args.epochs and not (
                args.patience and progress["epochs_without_gain"] >= args.patience):
            epoch = progress["epoch"]
            batches = shard(length_grouped_batches(train_lengths, args.batch_size, args.seed + epoch),
                            rank, world_size)
            if world_size > 1:
                check_disjoint_shards(batches, rank, world_size)
            loader = DataLoader(batches[progress["step_in_epoch"]:], batch_size=None,
                                collate_fn=collate, num_workers=num_workers,
                                pin_memory=device.type == "cuda",
                                generator=torch.Generator())  # keeps the global RNG for dropout only
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not is_main,
                       initial=progress["step_in_epoch"], total=steps_per_epoch, dynamic_ncols=True)
            for batch in bar:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                labels = batch.pop("labels")
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(**batch).logits
                loss = compute_loss(logits.float(), labels)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                finite = torch.isfinite(loss.detach())
                loss_sum += torch.where(finite, loss.detach(), 0.0)
                finite_steps += finite
                nonfinite_streak = torch.where(finite, 0, nonfinite_streak + 1)
                confusion += torch.bincount(labels * len(LABELS) + logits.detach().argmax(-1),
                                            minlength=len(LABELS) ** 2)
                progress["step_in_epoch"] += 1
                progress["global_step"] += 1

                if progress["global_step"] % args.log_every == 0:
                    streak = all_reduce(nonfinite_streak.clone(), dist.ReduceOp.MAX).item()
                    train = scores(all_reduce(confusion).view(len(LABELS), -1).cpu().numpy())
                    mean_loss = all_reduce(loss_sum).item() / max(1, all_reduce(finite_steps).item())
                    lr = scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    if writer:
                        for name, value in (("loss", mean_loss), ("acc", train["acc"]),
                                            ("macro_f1", train["macro_f1"]), ("lr", lr)):
                            writer.add_scalar(f"Train/{name}", value, progress["global_step"])
                    for running in (loss_sum, finite_steps, confusion):
                        running.zero_()
                    if streak >= args.log_every:
                        # The scaler skipped these steps, so the weights in last/ are still sound.
                        bar.close()
                        save_last()
                        raise UserError(
                            f"the loss was not finite for {streak} steps in a row (steps "
                            f"{progress['global_step'] - streak + 1}-{progress['global_step']}); "
                            f"saved {last_dir}; try a lower --lr, then --resume")

                if stop_requested() or progress["global_step"] == args.stop_after_steps:
                    bar.close()
                    save_last()
                    log.info("stopped at epoch %d, step %d; saved %s; continue with --resume",
                             epoch + 1, progress["step_in_epoch"], last_dir)
                    finish(writer, world_size)
                    if stop.signum is not None:
                        sys.exit(128 + stop.signum)
                    return
            bar.close()

            result = evaluate()
            progress.update(epoch=epoch + 1, step_in_epoch=0)
            improved = result["macro_f1"] > progress["best_f1"]
            if improved:
                progress.update(best_f1=result["macro_f1"], best_epoch=epoch + 1, epochs_without_gain=0)
            else:
                progress["epochs_without_gain"] += 1
            if writer:
                for name in ("loss", "acc", "macro_f1"):
                    writer.add_scalar(f"Val/{name}", result[name], epoch + 1)
                writer.flush()
            log.info("epoch %d: eval loss %.4f, acc %.4f, macro-F1 %.4f%s", epoch + 1, result["loss"],
                     result["acc"], result["macro_f1"], " (best so far, saved)" if improved else "")
            if improved and is_main:
                summary = {"epoch": epoch + 1, "eval_file": args.eval_file, "eval_acc": result["acc"],
                           "eval_macro_f1": result["macro_f1"], "eval_loss": result["loss"]}
                save_checkpoint(raw_model, tokenizer, best_dir, extra=lambda folder: write_json(
                    os.path.join(folder, "eval_results.json"), summary))
            save_last()
    finally:
        stop.restore()

    if world_size > 1:
        check_identical_weights(raw_model)
    log.info("done: best eval macro-F1 %.4f at epoch %d, saved in %s", progress["best_f1"],
             progress["best_epoch"], best_dir)
    finish(writer, world_size)


def compute_loss(logits, labels):
    return F.cross_entropy(logits, labels)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)


def read_resume_state(last_dir, args):
    """The training state in last/, after checking that it continues the same run."""
    restore_interrupted_save(last_dir)
    path = os.path.join(last_dir, "training_state.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume: nothing to resume in {last_dir} (no training_state.pt)")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: unreadable training state ({err})") from None
    changed = [f"--{name} was {state['args'].get(name)!r}, now {getattr(args, name)!r}"
               for name in ESSENTIAL_ARGS if state["args"].get(name) != getattr(args, name)]
    if changed:
        raise UserError("--resume: this is not the same run; " + "; ".join(changed))
    return state


def check_disjoint_shards(batches, rank, world_size):
    """Every rank computes its own share; make sure the shares really are disjoint (they would
    overlap if ranks saw different seeds or data)."""
    mine = sorted(i for batch in batches for i in batch)
    shares = [None] * world_size
    dist.all_gather_object(shares, mine)
    seen = [i for share in shares for i in share]
    if len(seen) != len(set(seen)):
        raise UserError("the processes would train on overlapping data; do all ranks see the "
                        "same --train_file and --seed?")
    if rank == 0:
        log.info("data shares per process: %s posts, disjoint", [len(s) for s in shares])


def check_identical_weights(model):
    """DDP keeps replicas in sync; verify it once at the end, before trusting rank 0's save."""
    checksum = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    sums = [None] * dist.get_world_size()
    dist.all_gather_object(sums, checksum)
    if len(set(sums)) != 1:
        raise UserError(f"processes ended with different weights (checksums {sums})")
    log.info("all %d processes hold identical weights", len(sums))


def finish(writer, world_size):
    if writer:
        writer.close()
    if world_size > 1:
        dist.barrier()  # destroying the group while another rank still works hangs gloo
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
