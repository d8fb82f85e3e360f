"""What every training loop here needs (train.py and pretrain.py), in short functions: the
processes of a torchrun run, a run's setup (start_run, optimization), the optimizer and its step,
sums kept on the device between log steps, the resumable state in OUTPUT_DIR/last, and stopping
cleanly on a signal. The loops themselves stay in the scripts, to be read top to bottom."""
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError, first_line
from .modeling import choose_precision, restore_interrupted_save, resolve_device, save_checkpoint

log = logging.getLogger("ewect.training")  # the scripts' handlers print it as their own lines

# ---------------------------------------------------------------------------------------------
# Processes. torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain `python x.py` is rank 0 of 1,
# and every collective below is then a no-op.


@dataclass(frozen=True)
class Process:
    """This process of a run: its rank among world_size processes, and its device."""
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        """Rank 0: it logs, writes TensorBoard and saves."""
        return self.rank == 0


def setup_processes(device_name):
    """This Process, with the process group started under torchrun: NCCL with a GPU for each
    process; gloo on the CPU, and when processes share GPUs (NCCL refuses two processes on one
    GPU; gloo runs the same collectives on CUDA tensors, through the host)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    gpus = torch.cuda.device_count() if device_name != "cpu" else 0
    sharing = world_size > 1 and 0 < gpus < int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = resolve_device(device_name, local_rank % gpus if sharing else local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" and not sharing else "gloo")
    return Process(rank, world_size, device)


def describe_processes(proc):
    """How the run is spread, for the log: the device, and the process group if there is one."""
    if proc.world_size == 1:
        return str(proc.device)
    return f"{proc.device} of rank 0 (process group: {dist.get_backend()})"


def close_processes(finished):
    """End the process group: after a barrier when every rank finished (destroying it while
    another rank still works hangs gloo), at once on an error exit."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


CPU_MAX_LAYERS = 4  # larger models need --device cpu to train on the CPU: it takes days


def refuse_cpu_marathon(device_name, device, model):
    """--device auto found no GPU: train a small model on the CPU, refuse a large one."""
    layers = model.config.num_hidden_layers
    if device_name == "auto" and device.type == "cpu" and layers > CPU_MAX_LAYERS:
        raise UserError(f"no GPU found, and training this {layers}-layer model on the CPU takes "
                        "days (the recipe: about 37 hours for bert-base). Pass --device cpu to "
                        "train on the CPU anyway")


def setup_logging(output_dir, is_main):
    """INFO to stdout and OUTPUT_DIR/train.log (appended to) from rank 0; only warnings from the
    others."""
    handlers = [logging.StreamHandler(sys.stdout)]
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log"),
                                            encoding="utf-8"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)


def all_reduce(tensor, op=dist.ReduceOp.SUM):
    if dist.is_initialized():
        dist.all_reduce(tensor, op)
    return tensor


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save last/ and stop after the current step; a second signal
    stops at once. torchrun passes a terminal's Ctrl-C on to workers that already got it, so a
    repeat within two seconds counts as the same request. requested() is agreed by all processes
    at every step, through a CPU-side (gloo) all-reduce that never waits for the GPU: torchrun
    kills workers 30 s after forwarding a signal, too soon to wait for a log step."""

    def __init__(self):
        self.signum, self.when = None, 0.0
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None

    def _handle(self, signum, frame):
        if self.signum is not None:
            if time.monotonic() - self.when > 2:
                raise KeyboardInterrupt
            return
        self.signum, self.when = signum, time.monotonic()
        log.warning("%s received: saving last/ after this step (again to stop at once)",
                    signal.Signals(signum).name)

    def requested(self):
        if self.group is None:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)])
        dist.all_reduce(flag, group=self.group)
        return flag.item() > 0

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------
# The optimizer and its step.


def decay_groups(model, weight_decay):
    """Parameter groups with no weight decay on biases and LayerNorm weights (the 1-d ones)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model, lr, weight_decay):
    """Fused AdamW (CPU and CUDA): one kernel for all parameters, and it can skip a step on the
    device (apply_update), so no step waits for the GPU."""
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, fused=True)


def make_grad_scaler(precision, device, saved_state=None):
    """fp16 needs loss scaling, which the scaler provides; bf16 and fp32 do not: None. A saved
    scaler state is restored only into an fp16 run (a run may resume in another precision)."""
    if precision != "fp16":
        return None
    scaler = torch.amp.GradScaler(device.type)
    if saved_state:
        scaler.load_state_dict(saved_state)
    return scaler


def step_plan(batch_size, per_device_batch_size, world_size):
    """(posts per forward pass, micro-batches per process) for steps of batch_size posts."""
    per_device = per_device_batch_size or math.ceil(batch_size / world_size)
    return per_device, math.ceil(batch_size / (world_size * per_device))


def linear_schedule(optimizer, warmup_epochs, epochs, steps_per_epoch):
    """Linear warmup over the first epoch(s), then linear decay to zero. A step skipped for a
    non-finite loss still advances it, by design (torch's warning about that is silenced)."""
    from transformers import get_linear_schedule_with_warmup

    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
    return get_linear_schedule_with_warmup(optimizer, round(warmup_epochs * steps_per_epoch),
                                           epochs * steps_per_epoch)


def checkpoint_gradients(model, enabled):
    """--gradient_checkpointing: transformers' own, non-reentrant (torch's recommended kind); the
    recomputation restores the random state, so dropout draws the same masks and the loss and
    gradients are those of the run without it."""
    if not enabled:
        return
    if not model.supports_gradient_checkpointing:
        raise UserError(f"--gradient_checkpointing: {model.config.model_type} models do not "
                        "support it in transformers; drop the flag")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def wrap_for_training(module, compile_it, proc):
    """The module the loop calls: torch.compile'd with --compile, in DDP under torchrun."""
    if compile_it:
        module = torch.compile(module, dynamic=True)
    if proc.world_size > 1:
        module = DistributedDataParallel(
            module, device_ids=[proc.device] if proc.device.type == "cuda" else None)
    return module


def loader_workers(requested, device):
    """--num_workers, else 2 on a GPU (collating off the GPU's critical path) and 0 on the CPU
    (its cores compute). Worker processes are forks, so tokenizers' threads are turned off."""
    workers = requested if requested is not None else (2 if device.type == "cuda" else 0)
    if workers:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return workers


def backward(loss, scaler):
    (scaler.scale(loss) if scaler else loss).backward()


def clip_gradients(optimizer, scaler, max_grad_norm, finite):
    """Clip the gradients (unscaled first under fp16); returns whether the step must be skipped,
    as a device tensor: `finite` (the losses of this step were finite) is false or a gradient is
    not. Nothing here waits for the GPU."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    return ~(finite & torch.isfinite(norm))


def apply_update(optimizer, scaler, skipped, keep_grads=False):
    """The optimizer's step, skipped on the device when `skipped` is true, then the gradients
    zeroed: set to None, or with keep_grads zeroed where they are (CUDA graphs write them there)."""
    if scaler:  # it found the same inf/NaN gradients in unscale_ and skips the step itself
        scaler.step(optimizer)
        scaler.update()
    else:
        # No public API skips a step on the device, without a host sync. torch's fused optimizers
        # skip it when `found_inf` is set: the attribute GradScaler sets for them
        # (torch/amp/grad_scaler.py), read by fused AdamW's step. tests/test_cuda.py's
        # non-finite-loss test fails if a torch release drops it.
        optimizer.found_inf = skipped.float()
        optimizer.step()
        del optimizer.found_inf
    optimizer.zero_grad(set_to_none=not keep_grads)


def optimizer_step(optimizer, scaler, max_grad_norm, finite):
    """Clip, step and zero the gradients; returns whether the step was skipped (a device
    tensor)."""
    skipped = clip_gradients(optimizer, scaler, max_grad_norm, finite)
    apply_update(optimizer, scaler, skipped)
    return skipped


class CaptureFailed(UserError):
    """A step could not be captured as a CUDA graph; the run can go on without graphs."""


class CudaGraphSteps:
    """Each step's forward and backward replayed from a CUDA graph, one graph per batch shape (on
    a GPU batches are padded to a multiple of 8 tokens: a few dozen shapes at most). Run eagerly,
    a bert-base step launches about a thousand small kernels one at a time, and a fast GPU most
    likely waits on the host launching them; a replay launches the same kernels in one call.
    A shape's first step runs eagerly, on a side stream (the warm-up a capture needs); its second
    is captured, then replayed, as are all later ones. The optimizer's step stays outside
    (apply_update with keep_grads: fused AdamW is a few kernels, and the schedule's learning rate
    stays a number), so the gradients stay where the graphs write them. What compute() closes
    over (the step's size, the loss's options) is fixed in a graph when it is captured: it must
    not change between steps of one shape. So is the model's mode (a graph captured in eval mode
    records no dropout), which is why it is part of a graph's key."""

    def __init__(self):
        self.graphs, self.seen = {}, set()
        self.replays = 0  # for the log: a run whose graphs never replay gains nothing
        self.pool = torch.cuda.graph_pool_handle()  # shared: the graphs never run at once
        self.side = torch.cuda.Stream()

    def __call__(self, compute, batch, training):
        """compute(batch)'s tuple of device tensors, run or replayed on this batch (a dict of
        device tensors) for a model in training mode or not. Use them before the next call: the
        graphs share one memory pool, so any later replay may overwrite them."""
        shape = (training, *((name, tuple(tensor.shape)) for name, tensor in batch.items()))
        if shape in self.graphs:
            graph, inputs, outputs = self.graphs[shape]
            for name, tensor in batch.items():
                inputs[name].copy_(tensor)
            graph.replay()
            self.replays += 1
            return outputs
        if shape in self.seen:
            inputs = {name: tensor.clone() for name, tensor in batch.items()}
            graph = torch.cuda.CUDAGraph()
            try:  # thread_local: the DataLoader's pin-memory thread goes on calling CUDA
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                    outputs = compute(inputs)
            except Exception as err:
                # When compute fails, the graph's exit fails too, in ending the capture, before
                # it switches back from its capture stream: switch back here (train.py saves
                # last/ next), and name the first failure, which that second one hides.
                why = ("--cuda_graphs: capturing a step failed "
                       f"({first_line(err.__context__ or err)})")
                try:
                    torch.cuda.set_stream(torch.cuda.default_stream())
                    torch.cuda.synchronize()
                except Exception:  # CUDA is left unusable: nothing more can be saved
                    raise UserError(f"{why}; --resume from the last epoch's last/ without "
                                    "--cuda_graphs") from err
                raise CaptureFailed(why) from err
            self.graphs[shape] = graph, inputs, outputs
            graph.replay()  # capturing ran nothing: this is the step
            self.replays += 1
            return outputs
        self.seen.add(shape)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            outputs = compute(batch)
        torch.cuda.current_stream().wait_stream(self.side)
        return outputs


def cuda_graphs(args, proc, accumulation, precision):
    """With --cuda_graphs, a CudaGraphSteps, once this run is known to be one that can replay its
    steps; else None."""
    if not args.cuda_graphs:
        return None
    unfit = {"a GPU (--device cuda)": proc.device.type != "cuda",
             "one process, not torchrun": proc.world_size > 1,
             "one micro-batch per step (no smaller --per_device_batch_size)": accumulation > 1,
             "bf16 or fp32 (fp16's loss scaling decides on the host)": precision == "fp16",
             "no --adversarial fgm": args.adversarial != "none",
             "no --compile": args.compile}
    needs = [need for need, missing in unfit.items() if missing]
    if needs:
        raise UserError(f"--cuda_graphs needs {'; '.join(needs)}")
    return CudaGraphSteps()


def rescale_peak_lr(optimizer, scheduler, factor):
    """A resumed run with a new --lr: the schedule keeps its shape, scaled to the new peak."""
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        group["initial_lr"] *= factor


class RunningSums:
    """Named sums kept on the device between log steps: add() never waits for the GPU, read()
    syncs once, sums over all processes and starts again from zero."""

    def __init__(self):
        self.sums = {}

    def add(self, **values):
        for name, value in values.items():
            value = value.detach()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def read(self):
        totals = {name: all_reduce(value).cpu() for name, value in self.sums.items()}
        self.sums = {}
        return totals


def stop_if_every_step_skipped(skipped_steps, log_every, proc, progress, save_last):
    """After a log step: when every step since the last one was skipped for a non-finite loss,
    save last/ (skipped steps changed no weight, so it is sound) and stop with one line."""
    if skipped_steps == proc.world_size * log_every:
        step = progress.global_step
        raise UserError(f"the loss was not finite for {log_every} steps in a row (steps "
                        f"{step - log_every + 1}-{step}); saved {save_last(progress)}; try a "
                        "lower --lr, then --resume")


def stop_for_resume(stop, save_last, progress):
    """Save last/ and end the run so that --resume continues it; a signal's exit status tells
    the shell the run was interrupted, though nothing is lost."""
    folder = save_last(progress)
    log.info("stopped at epoch %d, step %d; saved %s; continue with --resume",
             progress.epoch + 1, progress.step_in_epoch, folder)
    if stop.signum is not None:
        sys.exit(128 + stop.signum)


# ---------------------------------------------------------------------------------------------
# A run's setup, shared by train.py and pretrain.py: the output folder, logging and the saved
# state (start_run); the optimizer, its schedule and scaler, restored on --resume, and the
# function that saves last/ (optimization).


@dataclass
class Progress:
    """Where a run is: saved in last/, what --resume continues from."""
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps done in the epoch under way
    global_step: int = 0
    best_epoch: int = 0  # the best epoch so far (0: none yet)
    best_f1: float = -1.0  # train.py: its eval macro-F1
    epochs_without_gain: int = 0  # train.py: epochs since it (--patience)
    best_loss: float = math.inf  # pretrain.py: its held-out loss


def start_run(args, essential_args, proc):
    """Check that OUTPUT_DIR can take this run, log to the console and OUTPUT_DIR/train.log, log
    the arguments, and with --resume return the saved state (else None)."""
    prepare_output_dir(args)
    setup_logging(args.output_dir, proc.is_main)
    log.info("arguments: %s", json.dumps(vars(args), ensure_ascii=False))
    return load_training_state(args, essential_args) if args.resume else None


def optimization(model, tokenizer, args, state, steps_per_epoch, proc, **saved_with):
    """(optimizer, scheduler, scaler, progress, save_last): fused AdamW, the linear schedule and
    with fp16 the grad scaler, restored from `state` on --resume with the run's progress and each
    process's random state (call it once the model is built and the data loaded: they would
    disturb the random state). save_last(progress) saves OUTPUT_DIR/last, the `saved_with` entries
    in its state, and returns the folder; a collective: every process calls it."""
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scheduler = linear_schedule(optimizer, args.warmup_epochs, args.epochs, steps_per_epoch)
    scaler = make_grad_scaler(choose_precision(args.precision, proc.device), proc.device,
                              state and state.get("scaler"))
    progress = resume(state, optimizer, scheduler, args.lr, proc) if state else Progress()
    last_dir = os.path.join(args.output_dir, "last")

    def save_last(progress):
        save_training_state(model, tokenizer, last_dir, proc, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "progress": asdict(progress),
            "args": vars(args), **saved_with})
        return last_dir

    return optimizer, scheduler, scaler, progress, save_last


def tensorboard(output_dir, progress, proc):
    """Rank 0's TensorBoard writer into OUTPUT_DIR/tensorboard (a resumed run's curves go on from
    its step, later points of the interrupted run dropped); None on the other ranks."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(output_dir, "tensorboard"),
                         purge_step=progress.global_step or None) if proc.is_main else None


# ---------------------------------------------------------------------------------------------
# The output folder and the resumable state in OUTPUT_DIR/last.

STATE_FILE = "training_state.pt"


def starting_folders(args):
    """The local folders this run reads at its start: --model_name, or --vocab's folder with
    --from_scratch; --init_from; --teacher."""
    names = [getattr(args, "init_from", None), *(getattr(args, "teacher", None) or [])]
    names.append(os.path.dirname(args.vocab or "") if args.from_scratch else args.model_name)
    return [os.path.expanduser(name) for name in names
            if name and os.path.isdir(os.path.expanduser(name))]


def is_within(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def prepare_output_dir(args):
    """Check that OUTPUT_DIR can take this run. A new run never replaces an earlier run's best/ by
    accident; --overwrite_output_dir replaces it (clear_earlier_run, once this run has read its
    inputs); --resume needs last/."""
    out = args.output_dir
    restore_interrupted_save(os.path.join(out, "last"))
    restore_interrupted_save(os.path.join(out, "best"))
    earlier = [name for name in ("best", "last") if os.path.isdir(os.path.join(out, name))]
    if args.resume:
        if not os.path.isfile(os.path.join(out, "last", STATE_FILE)):
            raise UserError(f"--resume: nothing to resume in {os.path.join(out, 'last')} "
                            f"(no {STATE_FILE})")
    elif earlier and not args.overwrite_output_dir:
        raise UserError(f"{out} already holds a training run ({' and '.join(earlier)}/): pass "
                        "--resume to continue it, --overwrite_output_dir to start over, or "
                        "another --output_dir")
    elif earlier:
        for source in starting_folders(args):  # e.g. pretrain.py --model_name workspace/mlm/best
            if any(is_within(source, folder) for folder in earlier_run(out)):
                raise UserError(f"{source} is in --output_dir {out}, whose run "
                                "--overwrite_output_dir replaces: pass another --output_dir")


def earlier_run(out):
    return [os.path.join(out, name) for name in ("best", "last", "tensorboard")]


def clear_earlier_run(args, is_main):
    """--overwrite_output_dir: delete the earlier run's checkpoints, curves and log lines, called
    once this run has read its data and built its model, so that a typo or a bad file costs
    nothing. The log keeps this run's lines, from its 'arguments:' line on; the handler appends,
    so it goes on writing after them."""
    if not (args.overwrite_output_dir and is_main):
        return
    for folder in earlier_run(args.output_dir):
        shutil.rmtree(folder, ignore_errors=True)
    with open(os.path.join(args.output_dir, "train.log"), "rb+") as f:
        text = f.read()
        start = text.rfind(b"\n", 0, text.rfind(b" INFO arguments: ")) + 1
        f.seek(0)
        f.write(text[start:])
        f.truncate()


def posts_fingerprint(*parts):
    """A hash of the posts (and labels) a run learns from and is scored on, kept in its state:
    files of the same names may hold other posts by the time of a --resume."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, ensure_ascii=False).encode())
    return digest.hexdigest()


def refuse_changed_posts(state, fingerprint):
    if state and state.get("posts", fingerprint) != fingerprint:
        raise UserError("--resume: the training or eval posts differ from those the run began "
                        "with (a data file, or the cleaning, changed since); resume with the same "
                        "posts, or start over with --overwrite_output_dir")


def load_training_state(args, essential_args):
    """The state saved in last/, after checking that it continues the same run (other settings
    may change, and are logged). Loaded to the CPU: the run may resume on another device, and
    under torchrun each rank would otherwise put the whole state on the GPU it was saved from."""
    path = os.path.join(args.output_dir, "last", STATE_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: unreadable training state ({first_line(err)})") from None
    then = state["args"]  # a setting that an older version did not save is taken as unchanged
    changed = [f"--{name} was {then[name]!r}, now {getattr(args, name)!r}"
               for name in essential_args if name in then and then[name] != getattr(args, name)]
    if changed:
        raise UserError("--resume: this is not the same run; " + "; ".join(changed))
    others = [f"--{name} {then.get(name)!r} -> {value!r}" for name, value in vars(args).items()
              if name not in (*essential_args, "resume", "overwrite_output_dir", "stop_after_steps")
              and then.get(name) != value]
    if others:
        log.info("changed since the run began: %s", "; ".join(others))
    return state


def save_training_state(model, tokenizer, folder, proc, state):
    """OUTPUT_DIR/last: the model, the tokenizer and the one state dict that continues the run,
    with every process's random state added. A collective: every process calls it."""
    rngs = gather_rng_states(proc.device)
    if proc.is_main:
        state = dict(state, rng_per_rank=rngs)
        save_checkpoint(model, tokenizer, folder, extra=lambda tmp: torch.save(
            state, os.path.join(tmp, STATE_FILE)))


def write_json(path, obj):
    """Written aside, then renamed: a kill while writing never leaves half a file that a later
    run would take as finished, or fail on."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
    os.replace(path + ".tmp", path)


def rng_state(device):
    """This process's random state (dropout, masking): what an exact resume needs."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device):
    """Every process's random state, in rank order (each process has its own dropout stream)."""
    mine = rng_state(device)
    if not dist.is_initialized():
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def resume(state, optimizer, scheduler, lr, proc):
    """The Progress where OUTPUT_DIR/last stopped, with optimizer and schedule restored (a new
    --lr scales the schedule's peak) and each process's random state (dropout, masking)."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if lr != state["args"]["lr"]:
        rescale_peak_lr(optimizer, scheduler, lr / state["args"]["lr"])
    restore_rng_state(state["rng_per_rank"], proc)
    return Progress(**state["progress"])


def refuse_shifted_resume(state, progress, world_size, steps_with):
    """A run stopped mid-epoch continues at its step in this epoch's list of steps. That list
    leaves out a last step with fewer posts than processes, so another number of processes may
    make another list: then some posts would be skipped or seen twice. steps_with(world_size):
    the epoch's steps for that many processes."""
    before = len(state["rng_per_rank"])  # one random state per process of the saved run
    if progress.step_in_epoch and before != world_size and (
            steps_with(before) != steps_with(world_size)):
        raise UserError(f"--resume: the run stopped mid-epoch with {before} process(es), "
                        f"{world_size} now, and the rest of this epoch's steps differ between "
                        f"the two; resume with {before} process(es) (the number may change at "
                        "an epoch's end)")


def restore_rng_state(states, proc):
    if len(states) != proc.world_size:
        log.warning("%d processes now, %d before: dropout streams start afresh", proc.world_size,
                    len(states))
        return
    torch.set_rng_state(states[proc.rank]["torch"])
    if proc.device.type == "cuda" and "cuda" in states[proc.rank]:
        torch.cuda.set_rng_state(states[proc.rank]["cuda"], proc.device)


# ---------------------------------------------------------------------------------------------
# The flags train.py and pretrain.py share, declared once.


def add_shared_args(p, model_help):
    """The model to start from and how to run: the flags both training scripts take (what they
    do and why: docs/training.md and docs/pretraining.md)."""
    from .config import MAX_LENGTH, PRECISIONS
    from .errors import (dropout_probability, non_negative_float, non_negative_int,
                         positive_float, positive_int, seed)
    from .vocab import MIN_FREQUENCY, VOCAB_SIZE

    p.add_argument("--model_name", default="bert-base-chinese", help=model_help)
    p.add_argument("--from_scratch", action="store_true",
                   help="start from a randomly initialised BERT of the size below")
    p.add_argument("--vocab", help="WordPiece vocab.txt for --from_scratch (default: one built "
                   "from the training posts)")
    p.add_argument("--vocab_size", type=positive_int, default=VOCAB_SIZE,
                   help="most tokens of the vocabulary --from_scratch builds")
    p.add_argument("--vocab_min_frequency", type=positive_int, default=MIN_FREQUENCY,
                   help="fewest times a token is seen in the posts to enter that vocabulary")
    p.add_argument("--num_layers", type=positive_int, default=12,
                   help="layers, with --from_scratch")
    p.add_argument("--hidden_size", type=positive_int, default=768,
                   help="hidden size, with --from_scratch")
    p.add_argument("--batch_size", type=positive_int, default=64,
                   help="posts per optimizer step, in all processes together")
    p.add_argument("--per_device_batch_size", type=positive_int, default=None,
                   help="most posts per forward pass in one process, the rest by gradient "
                        "accumulation (default: batch_size / processes)")
    p.add_argument("--eval_batch_size", type=positive_int, default=128,
                   help="batch size for evaluation")
    p.add_argument("--weight_decay", type=non_negative_float, default=0.01,
                   help="AdamW weight decay (none on biases and LayerNorm)")
    p.add_argument("--warmup_epochs", type=non_negative_float, default=1.0,
                   help="epochs of linear warmup before the linear decay")
    p.add_argument("--max_length", type=positive_int, default=MAX_LENGTH,
                   help="tokens kept per post")
    p.add_argument("--dropout", type=dropout_probability, default=0.1,
                   help="hidden and attention dropout")
    p.add_argument("--max_grad_norm", type=positive_float, default=1.0,
                   help="gradient clipping norm")
    p.add_argument("--seed", type=seed, default=42,
                   help="seed for init, dropout, batch order (and masks, held-out split)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision, weights staying fp32 (auto: bf16 or fp16 by GPU, "
                        "fp32 on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward pass instead of "
                        "keeping them: less memory, more time (bench/RESULTS.md, 'Gradient "
                        "checkpointing')")
    p.add_argument("--num_workers", type=non_negative_int, default=None,
                   help="DataLoader workers (default: 2 on CUDA, 0 on CPU)")
    p.add_argument("--log_every", type=positive_int, default=20,
                   help="steps between reading the running metrics (TensorBoard, progress bar)")
    p.add_argument("--stop_after_steps", type=non_negative_int, default=0,
                   help="stop after this many steps in all, saving last/ for --resume (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="start a new run in place of OUTPUT_DIR's, which is deleted (refused if "
                        "this run starts from a folder in it)")
