"""torchrun with 2 CPU processes (gloo): the same recipe as one process, one checkpoint; and two
torchrun agents on 127.0.0.1 as two machines: the same as one machine, and a bulk labelling run
killed on both and resumed loses and doubles no post."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT, free_port, run_main, run_script, tiny_train_args
from ewect.modeling import load_checkpoint


def distributed_options(clean_dir, trained, folder):
    """--batch_size is the step's size over all processes: 2 processes x 4 posts make the same
    8-post steps as one process does, so (dropout off) they end with the same weights; class
    weights, R-Drop's doubled batch and a teacher's soft labels keep that so. One unlabelled post
    makes the posts odd: the processes label uneven shares of them. One eval post: the second
    process evaluates none."""
    (folder / "more.txt").write_text("今天的天气让我心情很好\n", encoding="utf-8")
    eval_posts = json.loads((clean_dir / "usual_eval_labeled.txt").read_text(encoding="utf-8"))
    (folder / "eval.txt").write_text(json.dumps(eval_posts[:1], ensure_ascii=False),
                                     encoding="utf-8")
    return ["--dropout", 0, "--class_weights", "auto", "--rdrop", 0.5,
            "--teacher", trained / "best", "--unlabelled", folder / "more.txt",
            "--eval_file", folder / "eval.txt"]


@pytest.fixture(scope="module")
def two_processes(clean_dir, vocab, trained, tmp_path_factory):
    """(the options, the output folder) of train.py under torchrun, 2 processes on 1 machine."""
    folder = tmp_path_factory.mktemp("ddp")
    options = distributed_options(clean_dir, trained, folder)
    args = tiny_train_args(clean_dir, vocab, folder / "two", *options)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 steps per epoch of 8 posts = 2 process(es) x 1 micro-batch(es) of up to 4" in (
        result.stdout)
    assert result.stdout.count("done: best eval macro-F1") == 1  # only rank 0 logs
    assert "2 process(es) sharing them" in result.stdout  # each labels half the posts
    return options, folder / "two"


def test_two_processes_train_as_one_does(clean_dir, vocab, two_processes, tmp_path):
    options, two = two_processes
    train.main(tiny_train_args(clean_dir, vocab, tmp_path / "one", *options))
    one = tmp_path / "one"
    weights = [load_file(str(n / "last" / "model.safetensors")) for n in (two, one)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[1])
    # the shares the two processes labelled, put back in order: the one process's labels
    labels = [torch.load(n / "teacher.pt", weights_only=True)["log_probs"] for n in (two, one)]
    assert labels[0].shape[1] % 2 == 1 and torch.allclose(*labels, atol=1e-4)
    load_checkpoint(two / "best")
    scores = [json.loads((n / "best" / "eval_results.json").read_text()) for n in (two, one)]
    assert scores[0] == scores[1]


def test_fgm_under_two_processes(clean_dir, vocab, tmp_path):
    # FGM's extra backward pass must leave DDP's gradient sync to the step's last backward.
    args = tiny_train_args(clean_dir, vocab, tmp_path, "--adversarial", "fgm",
                           "--stop_after_steps", 3, "--per_device_batch_size", 2)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    load_checkpoint(tmp_path / "last")


def agents(script, args, job, port, folder, log_name):
    """Two torchrun agents on 127.0.0.1, as two machines of one process each, meeting at a c10d
    rendezvous under the job id `job`; each in a process group of its own (to kill whole)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    launched = []
    for machine in range(2):
        log = open(folder / f"{log_name}{machine}.log", "w")
        launched.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={job}",
             script, *map(str, args)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True))
    return launched


def wait_all(launched, folder, log_name, timeout=240):
    for process in launched:
        process.wait(timeout=timeout)
    logs = "".join((folder / f"{log_name}{m}.log").read_text() for m in range(2))
    assert all(p.returncode == 0 for p in launched), logs
    return logs


def test_two_machines_train_as_one_machine_with_two_processes(clean_dir, vocab, two_processes,
                                                              tmp_path):
    options, two = two_processes
    args = tiny_train_args(clean_dir, vocab, tmp_path / "machines", *options)
    wait_all(agents("train.py", args, "train-job", free_port(), tmp_path, "agent"), tmp_path,
             "agent")
    weights = [load_file(str(n / "last" / "model.safetensors"))
               for n in (two, tmp_path / "machines")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])


# inference.py whose processes each write one chunk, then wait for the other's first chunk and
# stop there (to be killed): the kill then comes at the same point however fast each one starts.
STALLED_INFERENCE = """import os, sys, time
open(os.path.join({folder!r}, "worker" + os.environ["RANK"] + ".pid"), "w").write(str(os.getpid()))
sys.path.insert(0, {root!r})
import inference
from ewect.errors import run_cli
write = inference.RowWriter.write
def write_once(self, lines):
    if os.path.getsize(self.file.name):
        other = self.file.name[:-1] + str(1 - int(self.file.name[-1]))
        while not (os.path.exists(other) and os.path.getsize(other)):
            time.sleep(0.1)
        time.sleep(3600)
    write(self, lines)
inference.RowWriter.write = write_once
run_cli(inference.main)
"""


def test_bulk_labelling_killed_on_two_machines_resumes_without_loss(trained, tmp_path):
    # Both machines (agents and workers) killed mid-run, then a new launch (a new job id) with
    # --resume: every post once, in order, as one process labels them.
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(f"第{i}条:今天天气很好" for i in range(24)) + "\n", "utf-8")
    out = tmp_path / "labels.tsv"
    args = ["--model_dir", trained / "best", "--device", "cpu", "--input_file", posts,
            "--chunk_size", 4, "--output", out]
    stalled = tmp_path / "stalled_inference.py"
    stalled.write_text(STALLED_INFERENCE.format(root=str(ROOT), folder=str(tmp_path)),
                       encoding="utf-8")
    launched = agents(stalled, args, "label-1", free_port(), tmp_path, "first")
    deadline = time.time() + 120
    while not all(os.path.exists(f"{out}.part{r}") and os.path.getsize(f"{out}.part{r}")
                  for r in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in launched)
        time.sleep(0.2)
    for process in launched:  # both machines die: agents, and workers (in sessions of their own)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for rank in range(2):
        os.kill(int((tmp_path / f"worker{rank}.pid").read_text()), signal.SIGKILL)
    assert not out.exists()  # killed before the merge
    wait_all(agents("inference.py", [*args, "--resume"], "label-2", free_port(), tmp_path,
                    "resumed"), tmp_path, "resumed")
    one = tmp_path / "one.tsv"
    assert run_main("inference.py", *args[:-1], one).returncode == 0
    assert out.read_text(encoding="utf-8") == one.read_text(encoding="utf-8")
