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
from dataclasses import dataclass, field

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
from ewect.errors import UserError, first_line, positive_int, run_cli
from ewect.metrics import scores
from ewect.modeling import (autocast_dtype, build_model, check_max_length, load_checkpoint,
                            resolve_device, restore_interrupted_save, save_checkpoint)
from ewect.prediction import predict_logits
from ewect.training import (RunningMetrics, confusion_counts, make_grad_scaler, make_optimizer,
                            train_step)

# Arguments a resumed run must share with the run it continues: they fix the model, the data
# and the batch order. Anything else (epochs, lr, patience, device, ...) may change on --resume.
ESSENTIAL_ARGS = ("model_name", "from_scratch", "vocab", "num_layers", "hidden_size", "dropout",
                  "train_file", "eval_file", "batch_size", "max_length", "seed", "world_size")

SCRATCH_LR = 5e-4  # --lr's default with --from_scratch; see README's results table

log = logging.getLogger("train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_name", default="bert-base-chinese",
                   help="hub id or local folder of a pretrained model")
    p.add_argument("--from_scratch", action="store_true",
                   help="start from a randomly initialised BERT (offline runs, tests, benchmarks)")
    p.add_argument("--vocab", help="WordPiece vocab.txt for --from_scratch")
    p.add_argument("--num_layers", type=positive_int, default=12,
                   help="layers, with --from_scratch")
    p.add_argument("--hidden_size", type=positive_int, default=768,
                   help="hidden size, with --from_scratch")
    p.add_argument("--train_file", default=TRAIN_FILE, help="cleaned training file")
    p.add_argument("--eval_file", default=EVAL_FILE, help="cleaned file that picks the best epoch")
    p.add_argument("--output_dir", default=WORKSPACE, help="where best/, last/, logs go")
    p.add_argument("--batch_size", type=positive_int, default=64, help="per-process batch size")
    p.add_argument("--eval_batch_size", type=positive_int, default=128,
                   help="batch size for evaluation")
    p.add_argument("--lr", type=float, default=None,
                   # '%(default).0s' prints nothing; it stops argparse adding "(default: None)"
                   help="peak learning rate of AdamW (default: 1e-5, the published fine-tuning "
                        f"recipe; {SCRATCH_LR:g} with --from_scratch, as random weights need "
                        "larger steps)%(default).0s")
    p.add_argument("--weight_decay", type=float, default=0.01,
                   help="AdamW weight decay (none on biases and LayerNorm)")
    p.add_argument("--warmup_epochs", type=float, default=1.0,
                   help="epochs of linear warmup before the linear decay")
    p.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    p.add_argument("--max_length", type=positive_int, default=MAX_LENGTH,
                   help="tokens kept per post")
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
    p.add_argument("--log_every", type=positive_int, default=20,
                   help="steps between reading the running metrics (TensorBoard, progress bar)")
    p.add_argument("--stop_after_steps", type=int, default=0,
                   help="stop after this many optimizer steps in total, saving last/ for "
                        "--resume (0: run all epochs)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="start a new run even though OUTPUT_DIR holds one (its best/ is replaced)")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="skip and count unusable records instead of stopping")
    args = p.parse_args(argv)
    if args.from_scratch and not args.vocab:
        p.error("--from_scratch needs --vocab VOCAB.txt")
    if args.lr is None:
        args.lr = SCRATCH_LR if args.from_scratch else 1e-5
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


class Processes:
    """This process's place in the run: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain
    `python train.py` is rank 0 of 1, and every collective below is then a no-op."""

    def __init__(self, device_name):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.is_main = self.rank == 0
        self.device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
        if self.world_size > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def all_reduce(self, tensor, op="sum"):
        if self.world_size > 1:
            dist.all_reduce(tensor, dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, obj):
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def close(self):
        if self.world_size > 1:
            dist.barrier()  # destroying the group while another rank still works hangs gloo
            dist.destroy_process_group()


@dataclass
class Split:
    """One file, tokenized once for the whole run."""
    input_ids: list
    labels: list


@dataclass
class Run:
    """Everything the loop and the saves share."""
    args: argparse.Namespace
    procs: Processes
    model: torch.nn.Module      # what trains: maybe compiled, maybe wrapped in DDP
    raw_model: torch.nn.Module  # the plain module: what is evaluated and saved
    tokenizer: object
    train: Split
    eval: Split
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    amp_dtype: object
    steps_per_epoch: int
    running: RunningMetrics  # loss and scores since the last log step, across epochs
    writer: object = None
    progress: dict = field(default_factory=lambda: {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_f1": -1.0, "best_epoch": 0,
        "epochs_without_gain": 0})

    @property
    def last_dir(self):
        return last_dir(self.args)

    @property
    def best_dir(self):
        return os.path.join(self.args.output_dir, "best")

    def finished(self):
        p, patience = self.progress, self.args.patience
        early_stop = bool(patience) and p["epochs_without_gain"] >= patience
        return p["epoch"] >= self.args.epochs or early_stop


def last_dir(args):
    """Where the resumable state goes."""
    return os.path.join(args.output_dir, "last")


def setup_logging(output_dir, is_main):
    handlers = [logging.StreamHandler(sys.stdout)]
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        log_file = os.path.join(output_dir, "train.log")
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)


def read_split(path, args, drop_empty):
    """Validated records, cleaned again (idempotent, about a second), so that a raw file is
    read exactly as its cleaned copy."""
    return clean_records(read_records(path, skip_bad_records=args.skip_bad_records,
                                      log=log.warning), drop_empty)


def tokenize_split(records, tokenizer, args):
    return Split(encode(tokenizer, [r.content for r in records], args.max_length),
                 [LABEL2ID[r.label] for r in records])


def epoch_batches(run, epoch):
    """This process's share of the epoch's length-grouped batches; the same for a given seed."""
    lengths = [len(ids) for ids in run.train.input_ids]
    batches = length_grouped_batches(lengths, run.args.batch_size, run.args.seed + epoch)
    return shard(batches, run.procs.rank, run.procs.world_size)


def prepare(args, procs):
    """Model, data, optimizer and schedule; with --resume, restored from last/."""
    device = procs.device
    refuse_to_overwrite(args)
    state = read_resume_state(args) if args.resume else None
    # Data first: a bad record stops the run before a model is downloaded or built.
    train_records = read_split(args.train_file, args, drop_empty=True)
    eval_records = read_split(args.eval_file, args, drop_empty=False)
    torch.manual_seed(args.seed)
    if state:
        model, tokenizer = load_checkpoint(last_dir(args), device)
        model.train()
    else:
        model, tokenizer = build_model(args.model_name, args.dropout, args.from_scratch,
                                       args.vocab, args.num_layers, args.hidden_size)
        model.to(device)
    check_max_length(model, args.max_length)
    train = tokenize_split(train_records, tokenizer, args)
    eval_ = tokenize_split(eval_records, tokenizer, args)

    amp_dtype = autocast_dtype(device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, device)
    run = Run(args, procs, model, model, tokenizer, train, eval_, optimizer, None,
              make_grad_scaler(device, amp_dtype), amp_dtype, steps_per_epoch=0,
              running=RunningMetrics(device))
    run.steps_per_epoch = len(epoch_batches(run, 0))
    if run.steps_per_epoch == 0:
        raise UserError(f"{args.train_file}: too few records for {procs.world_size} processes")
    # Linear warmup over the first epoch(s), then linear decay to zero.
    warmup_steps = round(args.warmup_epochs * run.steps_per_epoch)
    run.scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps,
                                                    args.epochs * run.steps_per_epoch)
    # A step the scaler skips still advances the schedule, by design; torch warns about that.
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
    log.info("train: %d posts, eval: %d posts, %d steps per epoch, %s on %s%s",
             len(train.labels), len(eval_.labels), run.steps_per_epoch,
             str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", device,
             f" x {procs.world_size} processes" if procs.world_size > 1 else "")

    if state:
        optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.progress.update(state["progress"])
        rescale_learning_rate(run, args.lr / state["args"]["lr"])
        # RNG last, so that building the model and loading the data cannot disturb it.
        rng = state["rng_per_rank"][procs.rank]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        log.info("resuming from %s at epoch %d, step %d", run.last_dir, run.progress["epoch"] + 1,
                 run.progress["step_in_epoch"])

    if args.compile:
        run.model = torch.compile(run.model, dynamic=True)
    if procs.world_size > 1:
        run.model = DistributedDataParallel(
            run.model, device_ids=[device] if device.type == "cuda" else None)
    if procs.is_main:
        run.writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard"),
                                   purge_step=run.progress["global_step"] or None)
    return run


def rescale_learning_rate(run, factor):
    """A resumed run may ask for another peak --lr: the restored schedule keeps its shape (warmup,
    decay, where it stands) and scales to the new peak."""
    if factor == 1:
        return
    run.scheduler.base_lrs = [lr * factor for lr in run.scheduler.base_lrs]
    for group in run.optimizer.param_groups:
        group["lr"] *= factor
        group["initial_lr"] *= factor


def refuse_to_overwrite(args):
    """A new run replaces best/ after its first epoch: never by accident."""
    if args.resume or args.overwrite_output_dir:
        return
    restore_interrupted_save(last_dir(args))
    if os.path.exists(os.path.join(last_dir(args), "training_state.pt")):
        raise UserError(f"{args.output_dir} already holds a training run: pass --resume to "
                        "continue it, or --overwrite_output_dir to start over, or another "
                        "--output_dir")


def read_resume_state(args):
    """The training state in last/, after checking that it continues the same run."""
    folder = last_dir(args)
    restore_interrupted_save(folder)
    path = os.path.join(folder, "training_state.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume: nothing to resume in {folder} (no training_state.pt)")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: unreadable training state ({first_line(err)})") from None
    changed = [f"--{name} was {state['args'].get(name)!r}, now {getattr(args, name)!r}"
               for name in ESSENTIAL_ARGS if state["args"].get(name) != getattr(args, name)]
    if changed:
        raise UserError("--resume: this is not the same run; " + "; ".join(changed))
    return state


def save_last(run):
    """last/: model, tokenizer and everything needed to continue exactly where we are."""
    device = run.procs.device
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    rngs = run.procs.all_gather(rng)  # each process has its own dropout stream
    if run.procs.is_main:
        state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict(), "progress": dict(run.progress),
                 "rng_per_rank": rngs, "args": vars(run.args)}
        save_checkpoint(run.raw_model, run.tokenizer, run.last_dir, extra=lambda folder: torch.save(
            state, os.path.join(folder, "training_state.pt")))
    run.procs.barrier()


def evaluate(run):
    """Loss and scores on the eval file; each process predicts a disjoint share."""
    procs, split = run.procs, run.eval
    mine = list(range(procs.rank, len(split.labels), procs.world_size))
    run.raw_model.eval()
    logits = predict_logits(run.raw_model, [split.input_ids[i] for i in mine],
                            run.args.eval_batch_size, procs.device, run.amp_dtype)
    run.raw_model.train()
    labels = torch.tensor([split.labels[i] for i in mine])
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").to(procs.device)
    confusion = confusion_counts(labels, logits).to(procs.device)
    result = scores(procs.all_reduce(confusion).view(len(LABELS), -1).cpu().numpy())
    result["loss"] = procs.all_reduce(loss_sum).item() / len(split.labels)
    return result


def log_training(run, bar):
    """Read the running metrics (the one host sync of log_every steps) into the progress bar
    and TensorBoard; stop if the loss has not been finite for a whole interval."""
    mean_loss, train, streak = run.running.read(run.procs.all_reduce)
    lr, step = run.scheduler.get_last_lr()[0], run.progress["global_step"]
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
    if run.writer:
        for name, value in (("loss", mean_loss), ("acc", train["acc"]),
                            ("macro_f1", train["macro_f1"]), ("lr", lr)):
            run.writer.add_scalar(f"Train/{name}", value, step)
    if streak >= run.args.log_every:
        bar.close()
        save_last(run)  # the scaler skipped these steps, so these weights are still sound
        raise UserError(f"the loss was not finite for {streak} steps in a row (steps "
                        f"{step - streak + 1}-{step}); saved {run.last_dir}; try a lower --lr, "
                        "then --resume")


def train_epoch(run, stop):
    """Train the rest of the current epoch; False if a stop was asked for (last/ is saved)."""
    args, procs, progress = run.args, run.procs, run.progress
    device, epoch = procs.device, progress["epoch"]
    batches = epoch_batches(run, epoch)
    num_workers = args.num_workers if args.num_workers is not None else (
        2 if device.type == "cuda" else 0)
    if num_workers:  # workers only pad; tokenizers would warn that the fork disables its threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if procs.world_size > 1:
        check_disjoint_shards(batches, procs)
    loader = DataLoader(batches[progress["step_in_epoch"]:], batch_size=None,
                        collate_fn=Collator(run.train.input_ids, run.train.labels,
                                            run.tokenizer.pad_token_id),
                        num_workers=num_workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # leaves the global RNG to dropout alone
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not procs.is_main,
               initial=progress["step_in_epoch"], total=run.steps_per_epoch, dynamic_ncols=True)
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, logits = train_step(run.model, batch, run.optimizer, run.scaler, run.amp_dtype,
                                  args.max_grad_norm)
        run.scheduler.step()
        run.running.update(loss, logits, batch["labels"])
        progress["step_in_epoch"] += 1
        progress["global_step"] += 1
        at_log_step = progress["global_step"] % args.log_every == 0
        if at_log_step:
            log_training(run, bar)
        # Processes agree on a signal only at log steps (one collective); alone, at every step.
        signalled = stop.signum is not None
        if procs.world_size > 1:
            signalled = at_log_step and procs.all_reduce(
                torch.tensor(float(signalled), device=device)).item() > 0
        if signalled or progress["global_step"] == args.stop_after_steps:
            bar.close()
            save_last(run)
            log.info("stopped at epoch %d, step %d; saved %s; continue with --resume",
                     epoch + 1, progress["step_in_epoch"], run.last_dir)
            return False
    bar.close()
    return True


def end_epoch(run):
    """Evaluate, keep the best epoch in best/, and save last/."""
    progress, epoch = run.progress, run.progress["epoch"]
    result = evaluate(run)
    progress.update(epoch=epoch + 1, step_in_epoch=0)
    improved = result["macro_f1"] > progress["best_f1"]
    if improved:
        progress.update(best_f1=result["macro_f1"], best_epoch=epoch + 1, epochs_without_gain=0)
    else:
        progress["epochs_without_gain"] += 1
    if run.writer:
        for name in ("loss", "acc", "macro_f1"):
            run.writer.add_scalar(f"Val/{name}", result[name], epoch + 1)
        run.writer.flush()
    log.info("epoch %d: eval loss %.4f, acc %.4f, macro-F1 %.4f%s", epoch + 1, result["loss"],
             result["acc"], result["macro_f1"], " (best so far, saved)" if improved else "")
    if improved and run.procs.is_main:
        summary = {"epoch": epoch + 1, "eval_file": run.args.eval_file, "eval_acc": result["acc"],
                   "eval_macro_f1": result["macro_f1"], "eval_loss": result["loss"]}
        save_checkpoint(run.raw_model, run.tokenizer, run.best_dir, extra=lambda folder: write_json(
            os.path.join(folder, "eval_results.json"), summary))
    save_last(run)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)


def check_disjoint_shards(batches, procs):
    """Every process computes its own share; make sure the shares really are disjoint (they
    would overlap if processes saw different seeds or data)."""
    shares = procs.all_gather(sorted(i for batch in batches for i in batch))
    seen = [i for share in shares for i in share]
    if len(seen) != len(set(seen)):
        raise UserError("the processes would train on overlapping data; do all of them see the "
                        "same --train_file and --seed?")
    if procs.is_main:
        log.info("data shares per process: %s posts, disjoint", [len(s) for s in shares])


def check_identical_weights(run):
    """DDP keeps replicas in sync; verify it once at the end, before trusting rank 0's save."""
    checksum = float(sum(p.detach().double().sum().item() for p in run.raw_model.parameters()))
    sums = run.procs.all_gather(checksum)
    if len(set(sums)) != 1:
        raise UserError(f"processes ended with different weights (checksums {sums})")
    log.info("all %d processes hold identical weights", len(sums))


def main(argv=None):
    args = parse_args(argv)
    procs = Processes(args.device)
    args.world_size = procs.world_size
    setup_logging(args.output_dir, procs.is_main)
    log.info("arguments: %s", json.dumps(vars(args), ensure_ascii=False))
    run = prepare(args, procs)

    stop = StopRequest()
    try:
        while not run.finished():
            if not train_epoch(run, stop):
                break
            end_epoch(run)
    finally:
        stop.restore()
        if run.writer:
            run.writer.close()
    if stop.signum is not None:
        sys.exit(128 + stop.signum)  # interrupted, though nothing is lost
    if run.finished():
        if procs.world_size > 1:
            check_identical_weights(run)
        log.info("done: best eval macro-F1 %.4f at epoch %d, saved in %s",
                 run.progress["best_f1"], run.progress["best_epoch"], run.best_dir)
    procs.close()


if __name__ == "__main__":
    run_cli(main)
