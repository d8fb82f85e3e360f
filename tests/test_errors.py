"""Bad input gets one clear line naming the problem and exit status 2, never a traceback.

Most run the script's main in this process, through the run_cli its `__main__` calls
(conftest.run_main), to save a torch import per test; a new process where that matters."""
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime

import pytest
import torch

from ewect.errors import UserError
from conftest import FIXTURE_RAW, ROOT, assert_clean_error, run_main, run_script, tiny_train_args


def test_clean_data_without_raw_files(tmp_path):
    assert_clean_error(run_main("clean_data.py", "--raw_dir", tmp_path / "nowhere"),
                       "none of the SMP2020-EWECT files")


def test_clean_data_with_malformed_file(tmp_path):
    (tmp_path / "usual_train.txt").write_text('[{"id": 1, "content": "x"', encoding="utf-8")
    assert_clean_error(run_main("clean_data.py", "--raw_dir", tmp_path, "--out_dir", tmp_path / "o"),
                       "usual_train.txt: not valid JSON")


@pytest.mark.parametrize("record, message", [
    ({"id": 700, "label": "happy"}, "record id 700: no 'content' field"),
    ({"id": 700, "content": "好", "label": "joy"}, "record id 700: unknown label 'joy'"),
])
def test_train_names_the_bad_record(tmp_path, clean_dir, vocab, record, message):
    records = json.loads((clean_dir / "usual_train.txt").read_text("utf-8")) + [record]
    bad = tmp_path / "train.txt"
    bad.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    args = tiny_train_args(clean_dir, vocab, tmp_path / "wb")
    args[args.index("--train_file") + 1] = str(bad)
    result = run_main("train.py", *args)
    assert_clean_error(result, f"{bad}: {message}")
    assert not (tmp_path / "wb" / "best").exists()  # stopped before training


def test_hub_model_without_network(clean_dir, vocab, tmp_path):
    # A new process, as users run it, with the hub at a closed local port and HF_HUB_OFFLINE
    # unset: the hub library's retries alone would take about 50 s to give up.
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")
    args = tiny_train_args(clean_dir, vocab, tmp_path / "wb")[3:]  # no --from_scratch --vocab V
    result = subprocess.run([sys.executable, "train.py", "--model_name",
                             "some-org/a-model-nobody-cached", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    # Timed from the run's first log line, after the imports (seconds on a busy machine).
    started = re.search(r"^(\S+ \S+) INFO arguments:", result.stdout, re.M)[1]
    elapsed = datetime.now() - datetime.strptime(started, "%Y-%m-%d %H:%M:%S,%f")
    assert elapsed.total_seconds() < 10, result.stdout
    assert_clean_error(result, "cannot load model 'some-org/a-model-nobody-cached'",
                       "http://127.0.0.1:9 cannot be reached", "--model_name PATH",
                       "sh train_offline.sh")
    assert result.stderr.count("\n") == 1, result.stderr
    from ewect import modeling

    with pytest.raises(UserError, match="no such folder"):
        modeling.build_model(str(tmp_path / "bert-base-chinese"))


def test_train_with_missing_data_file(tmp_path, vocab):
    assert_clean_error(run_main("train.py", "--from_scratch", "--vocab", vocab, "--train_file",
                                  tmp_path / "missing.txt", "--output_dir", tmp_path, "--device", "cpu"),
                       "missing.txt: file not found")


def test_train_with_a_csv_file_without_labels(tmp_path, vocab):
    posts = tmp_path / "posts.csv"
    posts.write_text("id,content\n1,好开心\n", encoding="utf-8")
    assert_clean_error(run_main("train.py", "--from_scratch", "--vocab", vocab, "--train_file",
                                  posts, "--output_dir", tmp_path, "--device", "cpu"),
                       f"{posts}: no 'label' column (found id, content)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_a_gpu(trained):
    assert_clean_error(run_main("inference.py", "--input", "好", "--device", "cuda",
                                  "--model_dir", trained / "best"), "--device cuda: no CUDA GPU")


@pytest.mark.parametrize("text", ["", "   \t "])
def test_inference_empty_text(text):
    assert_clean_error(run_script("inference.py", "--input", text), "--input is empty")


def test_inference_without_checkpoint(tmp_path):
    assert_clean_error(run_main("inference.py", "--input", "好", "--model_dir", tmp_path),
                       f"{tmp_path}: no checkpoint here")


def test_test_script_with_broken_checkpoint(trained, tmp_path, clean_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    assert_clean_error(run_main("test.py", "--model_dir", broken, "--data_file",
                                  clean_dir / "usual_test_labeled.txt"), "broken checkpoint")


def test_test_script_with_missing_data_file(trained, tmp_path):
    assert_clean_error(run_main("test.py", "--model_dir", trained / "best", "--data_file",
                                  tmp_path / "nope.txt"), "nope.txt: file not found")


def test_test_script_with_a_file_as_output_dir(trained, tmp_path, clean_dir):
    taken = tmp_path / "results"
    taken.write_text("not a folder", encoding="utf-8")
    assert_clean_error(run_main("test.py", "--model_dir", tmp_path / "no_model", "--data_file",
                                clean_dir / "usual_test_labeled.txt", "--output_dir", taken),
                       f"--output_dir {taken}: a file, not a folder")
    inside = taken / "out"  # a folder under a file
    assert_clean_error(run_main("test.py", "--model_dir", tmp_path / "no_model", "--data_file",
                                clean_dir / "usual_test_labeled.txt", "--output_dir", inside),
                       f"--output_dir {inside}: cannot create it")


def test_test_script_says_how_many_records_it_skipped(trained, tmp_path, clean_dir):
    # Scores over fewer records than the file has must not read as the whole file's.
    records = json.loads((clean_dir / "usual_test_labeled.txt").read_text("utf-8"))
    records[1]["id"] = records[0]["id"]  # a repeated id: unusable
    path = tmp_path / "dirty.json"
    path.write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    result = run_main("test.py", "--model_dir", trained / "best", "--data_file", path,
                      "--output_dir", tmp_path / "out", "--device", "cpu", "--skip_bad_records")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "dirty.metrics.json").read_text("utf-8"))
    assert (metrics["posts"], metrics["skipped_records"]) == (len(records) - 1, 1)
    assert f"{len(records) - 1} posts (1 unusable record(s) skipped)" in result.stdout


def test_inference_with_hostile_file(trained, tmp_path):
    path = tmp_path / "posts.txt"
    path.write_bytes(b"\xff\xfe bad bytes\n")
    assert_clean_error(run_main("inference.py", "--input_file", path, "--model_dir",
                                  trained / "best"), "not UTF-8")


def test_max_length_beyond_the_model_and_zero_batch_size(trained):
    result = run_main("inference.py", "--input", "好" * 3000, "--max_length", 1000,
                        "--model_dir", trained / "best", "--device", "cpu")
    assert_clean_error(result, "--max_length 1000: this model reads at most 512 tokens")
    result = run_main("inference.py", "--input", "好", "--batch_size", 0)
    assert result.returncode == 2 and "--batch_size: must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("script, flag, value", [
    ("train.py", "--lr", "-1"), ("train.py", "--lr", "nan"), ("train.py", "--dropout", "2"),
    ("train.py", "--max_grad_norm", "0"), ("train.py", "--max_grad_norm", "-1"),
    ("train.py", "--weight_decay", "-1"), ("train.py", "--warmup_epochs", "-1"),
    ("train.py", "--patience", "-1"), ("train.py", "--num_workers", "-1"),
    ("train.py", "--rdrop", "-1"), ("train.py", "--adv_epsilon", "0"),
    ("train.py", "--kd_temperature", "0"), ("train.py", "--stop_after_steps", "-1"),
    ("pretrain.py", "--lr", "-1"), ("pretrain.py", "--dropout", "1"),
])
def test_a_nonsense_setting_is_refused_before_anything_runs(tmp_path, script, flag, value):
    # Each ran silently (a negative gradient norm clips the gradient's sign: training uphill; a
    # negative patience stops before the first epoch) or ended in a traceback.
    result = run_main(script, flag, value, "--output_dir", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert f"argument {flag}: must be" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_more_folds_than_posts_is_one_error_line(tmp_path, clean_dir, vocab):
    result = run_main("train.py", *tiny_train_args(clean_dir, vocab, tmp_path, "--folds", 1000))
    assert_clean_error(result, "--folds 1000: more folds than the", "posts")


def test_clean_data_never_writes_over_the_raw_files(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(FIXTURE_RAW, raw)
    before = {f.name: f.read_bytes() for f in raw.iterdir()}
    assert_clean_error(run_main("clean_data.py", "--raw_dir", raw, "--out_dir", raw / "."),
                       "--out_dir", "is --raw_dir")
    assert {f.name: f.read_bytes() for f in raw.iterdir()} == before


def test_clean_data_dedup_without_the_held_out_files_is_refused(tmp_path):
    # It would drop nothing and report no shared posts, as if it had checked.
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(FIXTURE_RAW / "usual_train.txt", raw)
    assert_clean_error(run_main("clean_data.py", "--raw_dir", raw, "--out_dir", tmp_path / "c",
                                "--dedup"), "--dedup needs every eval and test file",
                       "usual_eval_labeled.txt")
    result = run_main("clean_data.py", "--raw_dir", raw, "--out_dir", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert "not checked against the missing usual_eval_labeled.txt" in result.stdout
