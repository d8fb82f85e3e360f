"""torchrun with 2 CPU processes (gloo): disjoint data shares, identical weights, one checkpoint."""
import re

from conftest import run_script, tiny_train_args
from ewect.modeling import load_checkpoint


def test_two_processes_train_on_disjoint_data_and_agree(clean_dir, vocab, tmp_path):
    args = tiny_train_args(clean_dir, vocab, tmp_path / "wb", "--batch_size", 4)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    # 42 posts in batches of 4 -> 11 batches -> 5 per process (the odd one is left out each epoch)
    shares = re.findall(r"data shares per process: \[(\d+), (\d+)\] posts, disjoint", result.stdout)
    assert len(shares) == 2 and all(38 <= int(a) + int(b) <= 42 for a, b in shares)
    assert "all 2 processes hold identical weights" in result.stdout
    assert result.stdout.count("done: best eval macro-F1") == 1  # only rank 0 logs
    load_checkpoint(tmp_path / "wb" / "best")
