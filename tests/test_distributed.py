"""torchrun with 2 CPU processes (gloo): the same recipe as one process, one checkpoint."""
import json

import torch
from safetensors.torch import load_file

import train
from conftest import run_script, tiny_train_args
from ewect.modeling import load_checkpoint


def test_two_processes_train_as_one_does(clean_dir, vocab, trained, tmp_path):
    # --batch_size is the step's size over all processes: 2 processes x 4 posts make the same
    # 8-post steps as one process does, so (dropout off) they end with the same weights; class
    # weights, R-Drop's doubled batch and a teacher's soft labels keep that so.
    # One unlabelled post makes the posts odd: the processes label uneven shares of them.
    # One eval post: the second process evaluates none.
    (tmp_path / "more.txt").write_text("今天的天气让我心情很好\n", encoding="utf-8")
    eval_posts = json.loads((clean_dir / "usual_eval_labeled.txt").read_text(encoding="utf-8"))
    (tmp_path / "eval.txt").write_text(json.dumps(eval_posts[:1], ensure_ascii=False),
                                       encoding="utf-8")
    options = ["--dropout", 0, "--class_weights", "auto", "--rdrop", 0.5,
               "--teacher", trained / "best", "--unlabelled", tmp_path / "more.txt",
               "--eval_file", tmp_path / "eval.txt"]
    args = tiny_train_args(clean_dir, vocab, tmp_path / "two", *options)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 steps per epoch of 8 posts = 2 process(es) x 1 micro-batch(es) of up to 4" in (
        result.stdout)
    assert result.stdout.count("done: best eval macro-F1") == 1  # only rank 0 logs
    assert "2 process(es) sharing them" in result.stdout  # each labels half the posts
    train.main(tiny_train_args(clean_dir, vocab, tmp_path / "one", *options))
    two, one = (load_file(str(tmp_path / n / "last" / "model.safetensors")) for n in ("two", "one"))
    assert all(torch.allclose(two[k], one[k], atol=1e-5) for k in one)
    # the shares the two processes labelled, put back in order: the one process's labels
    labels = [torch.load(tmp_path / n / "teacher.pt", weights_only=True)["log_probs"]
              for n in ("two", "one")]
    assert labels[0].shape[1] % 2 == 1 and torch.allclose(*labels, atol=1e-4)
    load_checkpoint(tmp_path / "two" / "best")
    scores = [json.loads((tmp_path / n / "best" / "eval_results.json").read_text())
              for n in ("two", "one")]
    assert scores[0] == scores[1]


def test_fgm_under_two_processes(clean_dir, vocab, tmp_path):
    # FGM's extra backward pass must leave DDP's gradient sync to the step's last backward.
    args = tiny_train_args(clean_dir, vocab, tmp_path, "--adversarial", "fgm",
                           "--stop_after_steps", 3, "--per_device_batch_size", 2)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    load_checkpoint(tmp_path / "last")
