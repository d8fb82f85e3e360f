"""bench/gpu_check.sh end to end on the CPU (--dry-run), so that the rare GPU session cannot lose
its minutes to a typo or a missing file."""
import json
import os
import subprocess

from conftest import ROOT


def test_gpu_check_dry_run_passes_every_stage(vocab, tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_VOCAB=vocab, OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(summary) == ["environment", "cuda_tests", "train_speed", "predict_speed", "epoch",
                             "test"]
    assert {name: s["status"] for name, s in summary.items()} == dict.fromkeys(summary, "ok"), (
        result.stdout)
    assert "| test | ok |" in result.stdout  # the summary is printed last
