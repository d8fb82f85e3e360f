"""What the benchmarks share: default paths, loading and cleaning one raw SMP2020-EWECT file, the
published repo's padded Dataset (the baseline of the speed benchmarks), timing, peak memory, the
machine description, the results table; and for the accuracy studies (pretrain_ablation.py,
recipes.py) running the repo's own scripts and summarising seeds.

Not a benchmark itself; run the scripts next to it.
"""
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ewect.config import LABEL2ID, MAX_LENGTH
from ewect.data import clean_records, raw_file, read_records
from ewect.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent

# The six raw files: EWECT_RAW_DIR, else data/raw where README has users put them, else the copy
# beside the repo on the machines these benchmarks were measured on (as is the vocabulary).
USER_RAW_DIR = REPO_ROOT / "data" / "raw"
DEFAULT_DATA_DIR = os.environ.get("EWECT_RAW_DIR") or str(
    USER_RAW_DIR if raw_file(str(USER_RAW_DIR), "usual_train.txt")
    else REPO_ROOT.parent / "shared" / "data" / "smp2020-ewect" / "raw")
# bert-base-chinese's vocabulary: the copy beside the repo where the benchmarks were measured,
# else the hub's, downloaded on first use (require_vocab).
HUB_VOCAB = "bert-base-chinese"  # the hub model whose vocab.txt is meant
SHARED_VOCAB = REPO_ROOT.parent / "shared" / "models" / "bert-base-chinese-vocab" / "vocab.txt"
DEFAULT_VOCAB = str(SHARED_VOCAB) if SHARED_VOCAB.is_file() else HUB_VOCAB
VOCAB_HELP = "bert-base-chinese's vocab.txt (bert-base-chinese: the hub's, downloaded once)"
MIB = 2 ** 20


@contextlib.contextmanager
def published_attention():
    """Torch's default attention kernels, for the published-style paths (b): this repo turns
    cuDNN's off on a GPU (ewect.modeling.resolve_device), the published code does not."""
    was_on = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was_on)


def require_vocab(path):
    """The vocab.txt to use: the file given, or for HUB_VOCAB the hub's (cached after the first
    download). Stops with one line before any slow work when there is none."""
    if os.path.isfile(path):
        return path
    if path != HUB_VOCAB:
        raise UserError(f"--vocab {path}: not a file; pass bert-base-chinese's vocab.txt (or "
                        f"--vocab {HUB_VOCAB}: the hub's)")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(HUB_VOCAB, "vocab.txt")
    except Exception as err:  # offline, a proxy, the hub down: all say the same to the user
        raise UserError(f"--vocab: bert-base-chinese's vocab.txt could not be downloaded "
                        f"({type(err).__name__}); pass --vocab PATH/vocab.txt") from None


def load_posts(data_dir, name, drop_empty, limit=None):
    """(cleaned texts, label ids) of one raw file, cleaned as clean_data.py does: train files drop
    posts that are empty once cleaned, eval/test files keep them. limit keeps the first N records."""
    if not os.path.isdir(data_dir):
        raise UserError(f"--data_dir {data_dir}: no such folder; pass --data_dir or set "
                        "EWECT_RAW_DIR to the folder with the raw SMP2020-EWECT files")
    path = raw_file(data_dir, name)
    if path is None:
        raise UserError(f"--data_dir {data_dir}: no {name}; see data/README.md")
    records = clean_records(read_records(path)[:limit], drop_empty)
    return [r.content for r in records], [LABEL2ID[r.label] for r in records]


class PaddedPostDataset(Dataset):
    """The published repo's input pipeline: each post tokenized on access and padded to 140."""

    def __init__(self, texts, labels, tokenizer, max_length=MAX_LENGTH):
        self.texts, self.labels, self.tokenizer, self.max_length = texts, labels, tokenizer, max_length

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        encoded = self.tokenizer(self.texts[i], padding="max_length", max_length=self.max_length,
                                 truncation=True, return_tensors="pt")
        item = {key: value.squeeze(0) for key, value in encoded.items()}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[i])
        return item


def synchronize(device):
    """CUDA runs asynchronously: without this a timer stops before the GPU has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds of a block, synchronized with the device at both ends."""

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def reset_peak_memory(device):
    """Start a new peak-memory measurement. On the CPU, peak RSS normally only grows in a
    process; Linux resets its high-water mark when '5' is written to /proc/self/clear_refs, and
    malloc_trim first hands freed heap back so the earlier path's garbage is not counted.
    Returns False when the CPU peak could not be reset (it then includes earlier paths)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the reset below still works, just from a higher floor
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device):
    """CUDA: peak bytes allocated by tensors; CPU: peak resident set of the whole process
    (interpreter, data and every model alive at the time included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB


def current_rss_mib():
    """Resident set now (Linux), to show the floor under the CPU peaks."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def cpu_name():
    """The CPU's model name (Linux), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def describe_machine(device):
    """One line per fact needed to compare results across machines."""
    import transformers
    lines = [f"command: {command_line()}",
             f"cpu: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads "
             f"{torch.get_num_threads()}",
             f"software: python {platform.python_version()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}"]
    if device.type == "cuda":
        lines.append(f"gpu: {torch.cuda.get_device_name(device)}")
    lines.append(f"device: {device}")
    return "\n".join(lines)


def command_line():
    """The command that ran this process, as typed at the repo root: `python -m bench.NAME ...`
    for a benchmark (whose sys.argv[0] is then its file's full path)."""
    script = Path(sys.argv[0]).resolve()
    if script.parent == REPO_ROOT / "bench" and script.suffix == ".py":
        return "python " + shlex.join(["-m", f"bench.{script.stem}", *sys.argv[1:]])
    return "python " + shlex.join(sys.argv)


def result(name, items, seconds, real_tokens, positions, peak_mib, peak_reset=True, **extra):
    """One row of the results table; extra keys are kept for the script's own lines."""
    return dict(name=name, items=items, seconds=seconds, real_tokens=real_tokens,
                positions=positions, peak_mib=peak_mib, peak_reset=peak_reset, **extra)


def print_table(rows, unit):
    """A Markdown table, ready to paste into bench/RESULTS.md."""
    print(f"| path | {unit} | seconds | {unit}/s | tokens/s | padding | peak memory MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        padding = 1 - r["real_tokens"] / r["positions"] if r["positions"] else 0.0
        peak = f"{r['peak_mib']:.0f}" + ("" if r["peak_reset"] else " (not reset)")
        print(f"| {r['name']} | {r['items']} | {r['seconds']:.2f} | {r['items'] / r['seconds']:.1f} "
              f"| {r['real_tokens'] / r['seconds']:.0f} | {padding:.1%} | {peak} |")


def print_ratio(label, fast, slow):
    """Speed-up of one row over another, in items per second."""
    speedup = (fast["items"] / fast["seconds"]) / (slow["items"] / slow["seconds"])
    print(f"{label}: {speedup:.2f}x")


def run_repo_script(name, command, work_dir):
    """Run one of the repo's scripts (command: what follows `python`: its file, or -m and a
    bench module, and arguments) from the repo root, its output in WORK_DIR/logs/NAME.log; the
    command is printed first, as the recipe."""
    print("$ python", shlex.join(command), flush=True)
    os.makedirs(os.path.join(work_dir, "logs"), exist_ok=True)
    log_path = os.path.join(work_dir, "logs", name + ".log")
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call([sys.executable, *command], cwd=REPO_ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    if code:
        raise UserError(f"{name} failed (exit status {code}); see {log_path}")


def training_finished(out):
    """Whether train.py ran to its end in OUT (the last line of its log names the best epoch)."""
    log_path = os.path.join(out, "train.log")
    return os.path.isfile(log_path) and "done: best eval" in Path(log_path).read_text("utf-8")


# test.py flags of every bench: --precision auto would be bf16 on CPUs that have it, and a
# study's scores must not depend on the CPU it ran on.
TEST_PRECISION = ["--precision", "fp32"]


def tested_in_fp32(metrics_path):
    """Whether test.py wrote these metrics with TEST_PRECISION (older ones may be bf16)."""
    return os.path.isfile(metrics_path) and read_json(metrics_path).get("precision") == "fp32"


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def refuse_another_command(out, command):
    """Stop when OUT was started by another command (OUT/command): its finished or half-finished
    run, found by folder name, would pass for this command's (say, after --lr changed). Folders
    from before the file was kept are taken as they are."""
    path = os.path.join(out, "command")
    made_by = Path(path).read_text("utf-8").strip() if os.path.isfile(path) else None
    if made_by not in (None, shlex.join(command)):
        raise UserError(f"{out} was made by another command ({made_by}); use another "
                        f"--work_dir, or delete {out} to redo it")


def record_command(out, command):
    """OUT/command, for refuse_another_command: written as a run starts."""
    os.makedirs(out, exist_ok=True)
    Path(os.path.join(out, "command")).write_text(shlex.join(command) + "\n", "utf-8")


def mean_std(values):
    """'mean ± sample std' over seeds, to 4 places; one value as it is."""
    if len(values) == 1:
        return f"{values[0]:.4f}"  # one seed: no spread to show
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
