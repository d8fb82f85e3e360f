"""bench/gpu_check.sh on the CPU (--dry-run), so that the rare GPU machine cannot lose its minutes
to a typo or a missing file, and so that the check cannot call a stage that did nothing a pass."""
import json
import os
import subprocess

from conftest import ROOT


def gpu_check(tmp_path, vocab, *args, **env):
    """The dry run with that vocab.txt, or (vocab None) one built from the fixture's posts."""
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1", **env)
    env.pop("GPU_CHECK_VOCAB", None)
    if vocab:
        env["GPU_CHECK_VOCAB"] = vocab
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=400)
    summary_file = tmp_path / "gpu_check.json"
    return result, json.loads(summary_file.read_text()) if summary_file.exists() else None


def test_gpu_check_dry_run_passes_every_stage(vocab, tmp_path):
    result, summary = gpu_check(tmp_path, vocab)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(summary) == ["environment", "cuda_tests", "train_speed", "predict_speed", "epoch",
                             "epoch_graphs", "graphs_match", "test", "bulk_predict"]
    assert {name: s["status"] for name, s in summary.items()} == dict.fromkeys(summary, "ok"), (
        result.stdout)
    # a dry run's results can never pass for the GPU's
    assert {s["device"] for s in summary.values()} == {"cpu"} and "device: cpu" in result.stdout
    cuda_log = (tmp_path / "cuda_tests.log").read_text()
    assert " passed" in cuda_log and "skipped" not in cuda_log  # the CUDA tests ran, on the CPU
    assert "| bulk_predict | ok |" in result.stdout  # the summary is printed last
    assert "labelled 2,000 posts in" in (tmp_path / "bulk_predict.log").read_text()


def test_cuda_tests_that_skip_fail_the_check(vocab, tmp_path):
    # On this CPU-only machine, CUDA tests meant for the GPU all skip: that must not read "ok".
    # (Run as a rerun of one stage after an earlier run: the earlier stage's result stays.)
    # (And with no vocabulary given: one is built from the fixture, nothing outside the repo.)
    earlier = {"environment": {"status": "ok", "device": "cuda", "seconds": 1.0, "last_lines": []}}
    (tmp_path / "gpu_check.json").write_text(json.dumps(earlier))
    result, summary = gpu_check(tmp_path, None, "cuda_tests", EWECT_CUDA_TESTS_DEVICE="cuda")
    assert result.returncode == 1, result.stdout + result.stderr
    assert list(summary) == ["environment", "cuda_tests"]
    assert summary["environment"] == earlier["environment"]
    assert summary["cuda_tests"]["status"].startswith("failed")
    assert "| cuda_tests | failed" in result.stdout and "| environment |" not in result.stdout


def test_an_unknown_stage_is_an_error_not_an_empty_pass(vocab, tmp_path):
    result, summary = gpu_check(tmp_path, vocab, "cuda_test")
    assert result.returncode == 2 and "no stage named cuda_test" in result.stderr
    assert summary is None
