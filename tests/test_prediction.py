"""The prediction module and inference.py's file handling: formats, streaming, resume."""
import ast
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import inference
from conftest import ROOT, assert_clean_error, load_script, run_main, run_script
from ewect.calibration import (CALIBRATION_FILE, calibrate, fit_temperature, load_calibration,
                               with_temperature)
from ewect.config import LABELS
from ewect.decision import save_offsets
from ewect.errors import UserError
from ewect.modeling import build_model, save_checkpoint
from ewect.prediction import load_predictor

POSTS = ["[哈哈]今天好开心", "气死我了!", "嗯嗯", "好", "今天天气很好我们去公园", "害怕", "哇"]


def tiny_checkpoint(vocab, tmp_path_factory, seed):
    """A tiny random checkpoint as train.py saves it; the seed picks its weights."""
    torch.manual_seed(seed)
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=1,
                                   hidden_size=32)
    folder = tmp_path_factory.mktemp("ckpt") / f"tiny{seed}"
    save_checkpoint(model.eval(), tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(vocab, tmp_path_factory):
    return tiny_checkpoint(vocab, tmp_path_factory, seed=0)


def label(checkpoint, capsys, *args):
    inference.main(["--model_dir", str(checkpoint), "--device", "cpu", *map(str, args)])
    return capsys.readouterr().out


def test_predictor_interface_gives_probabilities_in_input_order(checkpoint):
    predictor = load_predictor(checkpoint, device="cpu", precision="fp32")  # bf16 rounds per batch
    probs = predictor.predict(POSTS, batch_size=3)
    assert predictor.labels == LABELS and probs.shape == (len(POSTS), len(LABELS))
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    one_by_one = np.concatenate([predictor.predict([post]) for post in POSTS])
    assert np.allclose(probs, one_by_one, atol=1e-5)


def test_prediction_precision_auto_is_bf16_on_cpus_with_native_bf16(monkeypatch):
    import ewect.modeling as modeling

    cpu = torch.device("cpu")
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: True)
    assert modeling.prediction_precision("auto", cpu) == "bf16"
    assert modeling.prediction_precision("fp32", cpu) == "fp32"
    assert modeling.prediction_precision("auto", cpu, int8=True) == "fp32"
    assert modeling.choose_precision("auto", cpu) == "fp32"  # training on the CPU stays fp32
    with pytest.raises(UserError, match="--int8 computes in int8; drop --precision bf16"):
        modeling.prediction_precision("bf16", cpu, int8=True)
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    assert modeling.prediction_precision("auto", cpu) == "fp32"


def test_precision_reaches_the_forward_pass(checkpoint):
    fp32 = load_predictor(checkpoint, device="cpu", precision="fp32")
    bf16 = load_predictor(checkpoint, device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    fp32_probs, bf16_probs = fp32.predict(POSTS), bf16.predict(POSTS)
    assert not np.array_equal(fp32_probs, bf16_probs)  # bf16 rounding shows
    assert np.abs(fp32_probs - bf16_probs).max() < 1e-2


def test_contradictory_flags_are_refused_before_the_model_loads(tmp_path):
    # tmp_path holds no checkpoint: the flags' error comes first, without a load of bert-base
    with pytest.raises(UserError, match="--int8 computes in int8; drop --precision bf16"):
        load_predictor(tmp_path, device="cpu", int8=True, precision="bf16")


def test_inference_passes_precision_to_the_predictor(checkpoint, capsys):
    with pytest.raises(UserError, match="--int8 computes in int8; drop --precision bf16"):
        label(checkpoint, capsys, "--input", "好", "--int8", "--precision", "bf16")


def test_importing_prediction_loads_neither_torch_nor_transformers():
    code = ("import sys, ewect.prediction; "
            "print(any(m in sys.modules for m in ('torch', 'transformers')))")
    result = run_script("-c", code)
    assert result.stdout.strip() == "False", result.stderr


def test_modeling_never_imports_prediction():
    # Imports run one way: prediction builds on modeling (loading, precision), and modeling, which
    # training loads, needs nothing of prediction.
    tree = ast.parse((ROOT / "ewect" / "modeling.py").read_text(encoding="utf-8"))
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [m for m in modules if m and m.split(".")[-1] == "prediction"]


def test_text_file_starting_with_a_bracketed_emoticon_is_text(checkpoint, capsys, tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("[哈哈]今天好开心\n\n气死了\n", encoding="utf-8")
    rows = label(checkpoint, capsys, "--input_file", posts).splitlines()
    assert [row.split("\t")[0] for row in rows] == ["1", "3"]
    assert rows[0].endswith("\t[哈哈]今天好开心")


def test_json_file_with_a_byte_order_mark_is_json(checkpoint, capsys, tmp_path):
    posts = tmp_path / "posts.txt"
    records = [{"id": 7, "content": "好开心"}, {"id": 9, "content": "气死了"}]
    posts.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False).encode())
    rows = [json.loads(line) for line in label(checkpoint, capsys, "--input_file", posts,
                                               "--json").splitlines()]
    assert [(r["id"], r["text"]) for r in rows] == [(7, "好开心"), (9, "气死了")]


@pytest.mark.parametrize("extension", ["csv", "tsv", "xlsx"])
def test_table_files_with_content_and_id_columns(checkpoint, capsys, tmp_path, extension):
    import pandas as pd

    posts = tmp_path / f"posts.{extension}"
    table = pd.DataFrame({"id": ["a1", "a2"], "content": ["好, 开心", "气死了"]})
    if extension == "xlsx":
        table.to_excel(posts, index=False)
    else:
        table.to_csv(posts, sep="," if extension == "csv" else "\t", index=False)
    rows = [json.loads(line) for line in label(checkpoint, capsys, "--input_file", posts,
                                               "--json").splitlines()]
    assert [(r["id"], r["text"]) for r in rows] == [("a1", "好, 开心"), ("a2", "气死了")]


def test_csv_without_content_column_is_refused(checkpoint, tmp_path):
    posts = tmp_path / "posts.csv"
    posts.write_text("id,text\n1,好\n", encoding="utf-8")
    with pytest.raises(UserError, match="no 'content' column"):
        inference.main(["--model_dir", str(checkpoint), "--input_file", str(posts)])


def kill_in_the_second_chunk(write_chunk):
    """A stand-in for RowWriter.write: the first chunk written whole, then a kill while writing
    the first row of the second (part of it written)."""
    chunks_written = []

    def write(writer, lines):
        if chunks_written:
            writer.file.write(lines[0][:7])
            writer.file.flush()
            raise KeyboardInterrupt
        chunks_written.append(write_chunk(writer, lines))

    return write


@pytest.mark.parametrize("as_json", [[], ["--json"], ["--json", "--explain"]])
def test_resume_after_a_kill_equals_one_uninterrupted_run(checkpoint, capsys, tmp_path, as_json,
                                                         monkeypatch):
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS * 3) + "\n", encoding="utf-8")
    whole, part = tmp_path / "whole.out", tmp_path / "part.out"
    common = ["--input_file", posts, "--chunk_size", "4", *as_json]
    label(checkpoint, capsys, *common, "--output", whole)
    assert len(whole.read_text(encoding="utf-8").splitlines()) == 3 * len(POSTS)
    monkeypatch.setattr(inference.RowWriter, "write", kill_in_the_second_chunk(
        inference.RowWriter.write))
    with pytest.raises(KeyboardInterrupt):
        label(checkpoint, capsys, *common, "--output", part)
    monkeypatch.undo()
    assert len(part.read_text(encoding="utf-8").splitlines()) == 5
    with pytest.raises(UserError, match="exists; pass --resume"):
        label(checkpoint, capsys, *common, "--output", part)
    label(checkpoint, capsys, *common, "--output", part, "--resume")
    assert part.read_text(encoding="utf-8") == whole.read_text(encoding="utf-8")


def test_resume_of_a_two_process_run_needs_its_settings(checkpoint, tmp_path, monkeypatch):
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(f"{i} {post}" for i, post in enumerate(POSTS * 2)) + "\n",
                     encoding="utf-8")
    single, out = tmp_path / "single.tsv", tmp_path / "out.tsv"
    common = ["--model_dir", checkpoint, "--device", "cpu", "--input_file", posts,
              "--chunk_size", 3]
    assert run_main("inference.py", *common, "--output", single).returncode == 0

    def run(rank, world_size, *extra, launch="launch-2"):
        """inference.py as process `rank` of `world_size` of a torchrun launch."""
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", launch)
        return run_main("inference.py", *common, "--output", out, *extra)

    # A 2-process run killed mid-way: process 1 wrote two rows and part of a third, process 0
    # none yet (of the 5 chunks of 3 posts, process 1 labels the 2nd and the 4th).
    assert run(1, 2, launch="launch-1").returncode == 0
    part1 = tmp_path / "out.tsv.part1"
    rows = part1.read_text(encoding="utf-8").splitlines(keepends=True)
    part1.write_text("".join(rows[:2]) + rows[2][:4], encoding="utf-8")
    (tmp_path / "out.tsv.part1.done").unlink()
    assert_clean_error(run(0, 1), "exists; pass --resume")
    assert_clean_error(run(0, 1, "--resume"), "processes: 2 then, 1 now")
    assert_clean_error(run(0, 3, "--resume"), "processes: 2 then, 3 now")
    assert_clean_error(run(0, 2, "--resume", "--chunk_size", 4), "chunk_size: 3 then, 4 now")
    original, stat = posts.read_bytes(), posts.stat()
    posts.write_bytes(original + "又一条\n".encode())
    assert_clean_error(run(0, 2, "--resume"), "input_bytes")
    posts.write_bytes(original)  # the same file again, to the nanosecond
    os.utime(posts, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert run(1, 2, "--resume").returncode == 0
    assert run(0, 2, "--resume").returncode == 0  # rank 0 merges
    labelled = out.read_text(encoding="utf-8")
    assert [row.split("\t")[0] for row in labelled.splitlines()] == [
        str(i) for i in range(1, 2 * len(POSTS) + 1)]  # every post once, in input order
    assert labelled == single.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv", "posts.txt", "single.tsv"]


def test_the_merge_waits_for_the_parts_of_its_own_launch(checkpoint, tmp_path, monkeypatch):
    # A launch killed before its merge leaves process 1's finished part and its done mark. The
    # next launch's process 0 must merge once process 1 of its own launch is done, however late
    # that one starts, not at once on the earlier launch's mark.
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS * 2) + "\n", encoding="utf-8")
    single, out = tmp_path / "single.tsv", tmp_path / "out.tsv"
    common = ["--model_dir", checkpoint, "--device", "cpu", "--input_file", posts,
              "--chunk_size", 3]
    assert run_main("inference.py", *common, "--output", single).returncode == 0
    launch = {"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "launch-1"}
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    assert run_main("inference.py", *common, "--output", out).returncode == 0  # then killed
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")
    first = subprocess.Popen([sys.executable, "inference.py", *map(str, common), "--output",
                              str(out), "--resume"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=dict(os.environ, RANK="0"))
    done = tmp_path / "out.tsv.part0.done"
    for _ in range(600):  # process 0 labels its part (it starts torch: seconds)
        if done.exists() or first.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(1.5)  # it looks for the parts' marks every 0.5 s
    assert first.poll() is None, first.communicate()[0]  # waiting for process 1
    assert run_main("inference.py", *common, "--output", out, "--resume").returncode == 0
    assert first.wait(timeout=60) == 0, first.communicate()[0]
    assert out.read_text(encoding="utf-8") == single.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv", "posts.txt", "single.tsv"]


@pytest.mark.parametrize("change", ["model_dir", "weights", "calibration", "backend", "int8",
                                    "precision", "decision"])
def test_resume_with_another_model_or_way_of_labelling_is_refused(exported, second_checkpoint,
                                                                   tmp_path, monkeypatch, change):
    # A resumed run whose rows would come from another model, or another computation of it, would
    # mix two models' labels in one file.
    model = tmp_path / "model"
    shutil.copytree(exported, model)  # with its ONNX export, file times kept
    posts, out = tmp_path / "posts.txt", tmp_path / "out.tsv"
    posts.write_text("\n".join(POSTS * 2) + "\n", encoding="utf-8")
    common = ["--device", "cpu", "--input_file", posts, "--chunk_size", 4, "--output", out]
    monkeypatch.setattr(inference.RowWriter, "write", kill_in_the_second_chunk(
        inference.RowWriter.write))
    with pytest.raises(KeyboardInterrupt):
        inference.main([*map(str, common), "--model_dir", str(model), "--precision", "fp32"])
    monkeypatch.undo()
    labelled = out.read_text(encoding="utf-8")
    save_offsets(tmp_path, [0.5, 0, 0, 0, 0, 0], "a test")
    if change == "weights":  # the same folder, its model trained again
        weights = model / "model.safetensors"
        os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 60))
    if change == "calibration":  # calibrate.py run on it meanwhile: other probabilities
        calibrate(model, np.full((6, 6), 1 / 6), np.arange(6), np.arange(6), "eval.txt")
    resumed = {"model_dir": ["--model_dir", second_checkpoint, "--precision", "fp32"],
               "weights": ["--model_dir", model, "--precision", "fp32"],
               "calibration": ["--model_dir", model, "--precision", "fp32"],
               "backend": ["--model_dir", model, "--backend", "onnx"],
               "int8": ["--model_dir", model, "--int8"],
               "precision": ["--model_dir", model, "--precision", "bf16"],
               "decision": ["--model_dir", model, "--precision", "fp32", "--decision",
                            tmp_path / "decision.json"]}[change]
    said = {"model_dir": f"--model_dir: {model} then, {second_checkpoint} now",
            "weights": f"--model_dir {model}: its weights were trained, calibrated or exported "
                       "again",
            "calibration": f"--model_dir {model}: its weights were trained, calibrated or "
                           "exported again",
            "backend": "backend: torch then, onnx now", "int8": "int8: False then, True now",
            "precision": "precision: fp32 then, bf16 now",
            "decision": "decision_offsets: None then, [0.5, 0.0, 0.0, 0.0, 0.0, 0.0] now"}[change]
    assert_clean_error(run_main("inference.py", *common, *resumed, "--resume"), said)
    assert out.read_text(encoding="utf-8") == labelled


def test_exporting_the_model_midway_does_not_stop_a_torch_resume(exported, tmp_path,
                                                                 monkeypatch):
    # export.py writes into the model's folder; the torch weights a resumed run reads stay.
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    posts, out, whole = tmp_path / "posts.txt", tmp_path / "out.tsv", tmp_path / "whole.tsv"
    posts.write_text("\n".join(POSTS * 2) + "\n", encoding="utf-8")
    common = ["--model_dir", model, "--device", "cpu", "--precision", "fp32", "--input_file",
              posts, "--chunk_size", 4]
    assert run_main("inference.py", *common, "--output", whole).returncode == 0
    monkeypatch.setattr(inference.RowWriter, "write", kill_in_the_second_chunk(
        inference.RowWriter.write))
    with pytest.raises(KeyboardInterrupt):
        inference.main([*map(str, common), "--output", str(out)])
    monkeypatch.undo()
    for path in (model / "onnx").iterdir():  # exported again
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 60))
    assert run_main("inference.py", *common, "--output", out, "--resume").returncode == 0
    assert out.read_text(encoding="utf-8") == whole.read_text(encoding="utf-8")


# (TORCHELASTIC_RUN_ID, torchrun's process id) of four launches: with a rendezvous, torchrun names
# each launch; with a fixed --master_port every launch is 'none', and its processes share their
# parent, the torchrun process.
LAUNCHES = {"named": [("launch-1", 1), ("launch-2", 2), ("launch-3", 3)],
            "fixed port": [("none", 11), ("none", 12), ("none", 13)]}


@pytest.mark.parametrize("launches", LAUNCHES.values(), ids=LAUNCHES.keys())
def test_a_late_process_goes_on_with_what_its_own_launch_wrote(checkpoint, tmp_path,
                                                              monkeypatch, launches):
    # torchrun's processes start unevenly: process 1 may have written its record and rows
    # before process 0 looks for an earlier run's files; process 0 must not take them for one.
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    single, out = tmp_path / "single.tsv", tmp_path / "out.tsv"
    common = ["--model_dir", checkpoint, "--device", "cpu", "--input_file", posts,
              "--chunk_size", 2]
    assert run_main("inference.py", *common, "--output", single).returncode == 0

    def run(rank, launch):
        run_id, torchrun_pid = launch
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
        monkeypatch.setattr(os, "getppid", lambda: torchrun_pid)
        return run_main("inference.py", *common, "--output", out)

    first, second, third = launches
    assert run(1, first).returncode == 0  # all of process 1's part, before process 0 starts
    assert run(0, first).returncode == 0  # its own launch's files: go on, then merge
    assert out.read_text(encoding="utf-8") == single.read_text(encoding="utf-8")
    out.unlink()
    assert run(1, second).returncode == 0
    assert_clean_error(run(0, third), "exists; pass --resume")  # another launch's: refused


def test_several_machines_with_a_fixed_port_are_asked_for_a_run_id(checkpoint, tmp_path,
                                                                     monkeypatch):
    # Each machine's processes have their own torchrun: nothing tells their launch apart.
    posts = tmp_path / "posts.txt"
    posts.write_text("好\n", encoding="utf-8")
    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_WORLD_SIZE", "2"),
                        ("TORCHELASTIC_RUN_ID", "none")):
        monkeypatch.setenv(name, value)
    assert_clean_error(run_main("inference.py", "--model_dir", checkpoint, "--input_file", posts,
                                "--output", tmp_path / "out.tsv"), "pass --rdzv_id")


def test_several_processes_not_started_by_torchrun_are_refused(checkpoint, tmp_path,
                                                                monkeypatch):
    # Without a launch's name, rank 0 could not tell this launch's parts from a killed one's.
    posts = tmp_path / "posts.txt"
    posts.write_text("好\n", encoding="utf-8")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert_clean_error(run_main("inference.py", "--model_dir", checkpoint, "--input_file", posts,
                                "--output", tmp_path / "out.tsv"), "need torchrun")
    assert list(tmp_path.iterdir()) == [posts]


def test_resume_of_a_finished_output_is_refused(checkpoint, tmp_path):
    # A finished run leaves no record of what it labelled: resuming it with any input would skip
    # as many posts as the file has rows, and append the rest after them.
    day1, day2, out = tmp_path / "day1.txt", tmp_path / "day2.txt", tmp_path / "out.tsv"
    day1.write_text("\n".join(POSTS[:3]) + "\n", encoding="utf-8")
    day2.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    common = ["--model_dir", checkpoint, "--device", "cpu", "--output", out]
    assert run_main("inference.py", *common, "--input_file", day1).returncode == 0
    labelled = out.read_text(encoding="utf-8")
    for posts in (day1, day2):
        assert_clean_error(run_main("inference.py", *common, "--input_file", posts, "--resume"),
                           f"{out}: finished", "nothing to resume")
    assert out.read_text(encoding="utf-8") == labelled


def test_output_in_a_missing_folder_is_refused_before_the_model_loads(tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("好\n", encoding="utf-8")
    out = tmp_path / "no_such_folder" / "out.tsv"
    assert_clean_error(run_main("inference.py", "--model_dir", tmp_path / "no_model",
                                "--input_file", posts, "--output", out),
                       f"{out}: no folder {out.parent}")


def test_empty_input_file_is_refused(checkpoint, tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("\n \n", encoding="utf-8")
    with pytest.raises(UserError, match="no posts in this file"):
        inference.main(["--model_dir", str(checkpoint), "--input_file", str(posts)])


def test_transformers_pipeline_reads_a_saved_checkpoint(checkpoint):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(checkpoint), top_k=None, device="cpu")
    scores = {r["label"]: r["score"] for r in classify(["好开心"])[0]}
    ours = load_predictor(checkpoint, device="cpu").predict(["好开心"])[0]
    assert sorted(scores) == sorted(LABELS)
    assert np.allclose([scores[name] for name in LABELS], ours, atol=1e-5)


@pytest.fixture(scope="module")
def exported(checkpoint):
    import export

    export.main(["--model_dir", str(checkpoint), "--check_posts", "8"])
    return checkpoint


def test_onnx_export_predicts_like_torch(exported):
    torch_probs = load_predictor(exported, device="cpu", precision="fp32").predict(POSTS)
    onnx_probs = load_predictor(exported, backend="onnx").predict(POSTS, batch_size=3)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    with pytest.raises(UserError, match="--precision bf16 is for --backend torch"):
        load_predictor(exported, backend="onnx", precision="bf16")
    int8_probs = load_predictor(exported, backend="onnx", int8=True).predict(POSTS)
    assert int8_probs.shape == torch_probs.shape and np.allclose(int8_probs.sum(1), 1, atol=1e-5)


def test_onnx_inference_imports_neither_torch_nor_transformers(exported):
    code = ("import sys, inference; inference.main(['--model_dir', sys.argv[1], '--input', '好', "
            "'--backend', 'onnx', '--int8', '--explain']); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = run_script("-c", code, exported)
    assert result.returncode == 0, result.stderr
    label_line, *_, modules = result.stdout.splitlines()
    assert label_line in LABELS and "why" in result.stdout and modules == "[]"


def explained_rows(model, capsys, posts, *flags):
    return [json.loads(line) for line in label(model, capsys, "--input_file", posts, "--json",
                                                "--explain", *flags).splitlines()]


def test_explain_prints_why_for_one_post_and_pairs_that_make_up_the_text(checkpoint, capsys,
                                                                         tmp_path):
    lines = label(checkpoint, capsys, "--input", "[哈哈] 今天好开心", "--explain").splitlines()
    assert lines[0] in LABELS
    assert lines[7].startswith(f"why {lines[0]} (Integrated Gradients; each piece's change to "
                               f"p({lines[0]})")
    assert lines[8] == "  [哈哈] 今天好开心" and set(lines[9]) <= set(" +-")
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS + ["今天天气很好我们去公园"]) + "\n", encoding="utf-8")
    rows = explained_rows(checkpoint, capsys, posts, "--max_length", "8")
    for row in rows:
        cut = row["cut_at"]
        assert "".join(piece for piece, _ in row["explanation"]) == row["text"][:cut]
    assert [row["cut_at"] for row in rows] == [6, None, None, None, 6, None, None, 6]
    tsv = label(checkpoint, capsys, "--input_file", posts, "--explain").splitlines()
    assert [json.loads(line.split("\t")[4]) for line in tsv] == [
        row["explanation"] for row in explained_rows(checkpoint, capsys, posts)]


def test_an_ensemble_of_one_model_twice_explains_as_the_model(checkpoint, capsys, tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    twice = explained_rows(checkpoint, capsys, posts, "--model_dir", checkpoint, checkpoint)
    assert twice == explained_rows(checkpoint, capsys, posts)


def test_onnx_explains_by_occlusion_as_torch_does(exported, capsys, tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    onnx = explained_rows(exported, capsys, posts, "--backend", "onnx")
    torch_rows = explained_rows(exported, capsys, posts, "--explain", "occlusion",
                                "--precision", "fp32")
    for a, b in zip(onnx, torch_rows):
        assert [piece for piece, _ in a["explanation"]] == [piece for piece, _ in b["explanation"]]
        assert [s for _, s in a["explanation"]] == pytest.approx(
            [s for _, s in b["explanation"]], abs=2e-4)


def test_onnx_without_an_export_says_how_to_make_one(checkpoint, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (bare / name).write_bytes((checkpoint / name).read_bytes())
    with pytest.raises(UserError, match="python export.py --model_dir"):
        load_predictor(bare, backend="onnx")


@pytest.mark.parametrize("failure", ["check", "int8"])
def test_failed_export_leaves_the_previous_export_as_it_was(exported, second_checkpoint, tmp_path,
                                                           monkeypatch, failure):
    import shutil

    import onnxruntime.quantization

    from ewect.prediction import ONNX_FILES, OnnxPredictor

    # a retrained checkpoint (other weights) beside the export of the previous one
    folder = shutil.copytree(exported, tmp_path / "ckpt")
    shutil.copy(second_checkpoint / "model.safetensors", folder / "model.safetensors")
    files_before = sorted(tmp_path.rglob("*"))
    onnx_before = {name: (folder / "onnx" / name).read_bytes() for name in ONNX_FILES.values()}
    if failure == "check":
        monkeypatch.setattr(OnnxPredictor, "logits",
                            lambda self, ids, batch_size: np.ones((len(ids), len(LABELS))))
        expected = "logits differ from torch"
    else:
        def broken_quantizer(*args, **kwargs):
            raise RuntimeError("quantization failed")

        monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", broken_quantizer)
        expected = "quantization failed"
    result = run_main("export.py", "--model_dir", folder, "--check_posts", 8)
    assert_clean_error(result, expected, "left as it was")
    assert {name: (folder / "onnx" / name).read_bytes() for name in ONNX_FILES.values()} == (
        onnx_before)
    assert sorted(tmp_path.rglob("*")) == files_before  # no temporary folder left behind


@pytest.mark.parametrize("damaged", ["onnx/model.onnx", "tokenizer.json"])
def test_a_damaged_export_or_tokenizer_gets_one_line(exported, tmp_path, damaged):
    import shutil

    folder = shutil.copytree(exported, tmp_path / "ckpt")
    if damaged == "tokenizer.json":
        (folder / damaged).unlink()
    else:  # cut short, as by a full disk
        (folder / damaged).write_bytes((folder / damaged).read_bytes()[:1000])
    with pytest.raises(UserError, match=f"{folder / damaged}: unreadable"):
        load_predictor(folder, backend="onnx")


def test_export_without_a_checkpoint(tmp_path):
    assert_clean_error(run_main("export.py", "--model_dir", tmp_path), "no checkpoint here")


def test_export_with_a_check_file_that_is_not_there(checkpoint, tmp_path):
    # Only the default eval file falls back to the repo's fixture: a named one is a typo.
    before = sorted(checkpoint.rglob("*"))
    result = run_main("export.py", "--model_dir", checkpoint, "--check_file", tmp_path / "typo")
    assert_clean_error(result, f"--check_file {tmp_path / 'typo'}: no such file")
    assert sorted(checkpoint.rglob("*")) == before  # nothing exported unchecked


def test_two_processes_label_disjoint_shares_merged_in_input_order(checkpoint, capsys, tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(f"{i} {post}" for i, post in enumerate(POSTS * 2)) + "\n",
                     encoding="utf-8")
    single, merged = tmp_path / "single.jsonl", tmp_path / "merged.jsonl"
    common = ["--model_dir", checkpoint, "--input_file", posts, "--chunk_size", 3, "--json",
              "--device", "cpu"]
    inference.main([*map(str, common), "--output", str(single)])
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "inference.py", *common, "--output", merged, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert merged.read_text(encoding="utf-8") == single.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.jsonl", "posts.txt",
                                                          "single.jsonl"]


def test_test_script_with_onnx_scores_like_torch(exported, clean_dir, tmp_path):
    data = clean_dir / "usual_test_labeled.txt"
    outputs = {}
    for backend in ("torch", "onnx"):
        result = run_script("test.py", "--model_dir", exported, "--data_file", data,
                            "--output_dir", tmp_path / backend, "--backend", backend,
                            "--device", "cpu", "--precision", "fp32")
        assert result.returncode == 0, result.stderr
        outputs[backend] = json.loads(
            (tmp_path / backend / "usual_test_labeled.metrics.json").read_text())
    assert outputs["onnx"]["backend"] == "onnx"
    assert outputs["onnx"]["precision"] == outputs["torch"]["precision"] == "fp32"
    assert outputs["onnx"]["confusion"] == outputs["torch"]["confusion"]


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_missing_onnx_packages_get_one_line(exported, monkeypatch, package):
    import export

    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(UserError, match=f"needs the {package} package"):
        export.main(["--model_dir", str(exported)])
    if package == "onnxruntime":
        with pytest.raises(UserError, match="needs the onnxruntime package"):
            load_predictor(exported, backend="onnx")


def test_onnx_labels_hostile_strings(exported):
    from ewect.cleaning import clean_text
    from test_hostile_input import HOSTILE

    probs = load_predictor(exported, backend="onnx").predict([clean_text(t) for t in HOSTILE])
    assert probs.shape == (len(HOSTILE), len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def second_checkpoint(vocab, tmp_path_factory):
    """Another tiny random checkpoint, of other weights."""
    return tiny_checkpoint(vocab, tmp_path_factory, seed=1)


def test_ensemble_averages_its_members_probabilities(checkpoint, second_checkpoint):
    single = load_predictor(checkpoint, device="cpu").predict(POSTS)
    assert np.array_equal(load_predictor([checkpoint, checkpoint], device="cpu").predict(POSTS),
                          single)
    other = load_predictor(second_checkpoint, device="cpu").predict(POSTS)
    assert not np.allclose(single, other, atol=1e-3)
    mean = load_predictor([checkpoint, second_checkpoint], device="cpu").predict(POSTS, 3)
    assert np.allclose(mean, (single + other) / 2, atol=1e-6)


def test_onnx_ensemble_of_one_export_twice_is_that_export(exported):
    single = load_predictor(exported, backend="onnx").predict(POSTS)
    assert np.array_equal(load_predictor([exported] * 2, backend="onnx").predict(POSTS), single)


def with_offsets(checkpoint, folder, decision):
    """A copy of the checkpoint with this decision.json content beside its weights."""
    import shutil

    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("onnx"))
    (folder / "decision.json").write_text(decision, encoding="utf-8")
    return folder


def test_inference_applies_the_checkpoints_decision_offsets(checkpoint, capsys, tmp_path):
    offsets = {label: 50.0 if label == "fear" else 0.0 for label in LABELS}
    tuned = with_offsets(checkpoint, tmp_path / "tuned", json.dumps({"offsets": offsets}))
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    inference.main(["--model_dir", str(tuned), "--input_file", str(posts), "--json"])
    out, err = capsys.readouterr()
    assert err.count(f"labels decided with the offsets in {tuned / 'decision.json'}") == 1
    decided = [json.loads(line) for line in out.splitlines()]
    plain = [json.loads(line) for line in label(tuned, capsys, "--input_file", posts, "--json",
                                                "--decision", "none").splitlines()]
    assert [row["label"] for row in decided] == ["fear"] * len(POSTS)
    assert [row["probabilities"] for row in decided] == [row["probabilities"] for row in plain]
    assert [row["label"] for row in plain] == [max(row["probabilities"],
                                                   key=row["probabilities"].get) for row in plain]


def test_malformed_decision_file_is_one_error_line(checkpoint, tmp_path):
    tuned = with_offsets(checkpoint, tmp_path / "tuned", '{"offsets": {"happy": 1}}')
    assert_clean_error(run_main("inference.py", "--model_dir", tuned, "--input", "好"),
                       "decision.json: not a decision file")


def test_no_posts_give_no_rows(checkpoint):
    # a process's share of too few posts under torchrun can be empty
    assert load_predictor(checkpoint, device="cpu").predict([]).shape == (0, len(LABELS))


def test_padding_a_batch_further_leaves_its_logits_unchanged(checkpoint):
    # GPU batches are padded to a multiple of 8 tokens: the attention mask must hide the extra
    from ewect.data import encode
    from ewect.prediction import pad

    predictor = load_predictor(checkpoint, device="cpu", precision="fp32")
    model, ids = predictor.model, encode(predictor.tokenizer, POSTS, 140)
    logits = {}
    for multiple in (1, 8):
        input_ids, mask = (torch.from_numpy(a) for a in pad(ids, 0, multiple))
        with torch.inference_mode():
            logits[multiple] = model(input_ids=input_ids, attention_mask=mask).logits
    assert input_ids.shape[1] % 8 == 0 and input_ids.shape[1] > max(map(len, ids))
    assert torch.allclose(logits[1], logits[8], atol=1e-5)


def calibrated_copy(folder, tmp_path, name="calibrated", temperature=2.0, eval_posts=0):
    """A copy of a checkpoint (with its exports) and a calibration.json of this temperature;
    eval_posts picks which eval posts it was fitted on."""
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    rng = np.random.default_rng(eval_posts)
    golds = rng.integers(0, len(LABELS), 60)
    calibrate(copy, rng.dirichlet(np.ones(len(LABELS)), 60), golds, golds, "eval.txt")
    record = json.loads((copy / CALIBRATION_FILE).read_text(encoding="utf-8"))
    (copy / CALIBRATION_FILE).write_text(json.dumps({**record, "temperature": temperature}),
                                         encoding="utf-8")
    return copy


@pytest.mark.parametrize("backend, int8", [("torch", False), ("torch", True), ("onnx", False),
                                           ("onnx", True)])
def test_every_backend_applies_the_checkpoint_temperature(exported, tmp_path, backend, int8):
    folder = calibrated_copy(exported, tmp_path)
    precision = "fp32" if backend == "torch" and not int8 else "auto"
    calibrated = load_predictor(folder, backend, "cpu", int8, precision=precision)
    own = load_predictor(folder, backend, "cpu", int8, precision=precision, calibrated=False)
    assert (calibrated.temperature, own.temperature) == (2.0, 1.0)
    probabilities, own_probabilities = calibrated.predict(POSTS), own.predict(POSTS)
    assert np.allclose(probabilities, with_temperature(own_probabilities, 2.0), atol=1e-5)
    assert (probabilities.argmax(1) == own_probabilities.argmax(1)).all()
    assert probabilities.max(1).mean() < own_probabilities.max(1).mean()  # less sure at T 2


def test_an_ensemble_is_calibrated_as_a_whole(checkpoint, second_checkpoint, tmp_path):
    members = [calibrated_copy(checkpoint, tmp_path, "a"),
               calibrated_copy(second_checkpoint, tmp_path, "b")]
    ensemble = load_predictor(members, device="cpu", precision="fp32")
    own = load_predictor(members, device="cpu", precision="fp32", calibrated=False)
    record = load_calibration(members[0])  # both members' eval records are the same here
    assert ensemble.temperature == pytest.approx(
        fit_temperature(record["eval_probabilities"], record["eval_labels"]))
    assert ensemble.temperature != 2.0  # fitted for the ensemble, not taken from a member
    probabilities, own_probabilities = ensemble.predict(POSTS), own.predict(POSTS)
    assert np.allclose(probabilities, with_temperature(own_probabilities, ensemble.temperature),
                       atol=1e-5)
    assert (probabilities.argmax(1) == own_probabilities.argmax(1)).all()
    members[1] = calibrated_copy(second_checkpoint, tmp_path, "c", eval_posts=1)
    apart = load_predictor(members, device="cpu", precision="fp32")
    assert apart.temperature == 1.0 and "different eval posts" in apart.calibration_note


def test_inference_prints_calibrated_probabilities_with_the_same_labels(checkpoint, tmp_path,
                                                                       capsys):
    folder = calibrated_copy(checkpoint, tmp_path, temperature=0.3)  # sharpens: labels could flip
    save_offsets(folder, np.array([0.4, -0.3, 0.0, 0.9, 0.2, -0.6]), "eval.txt")
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    rows = [json.loads(line) for line in label(folder, capsys, "--input_file", posts, "--json",
                                               "--precision", "fp32").splitlines()]
    (folder / CALIBRATION_FILE).unlink()
    own = [json.loads(line) for line in label(folder, capsys, "--input_file", posts, "--json",
                                              "--precision", "fp32").splitlines()]
    assert [row["label"] for row in rows] == [row["label"] for row in own]
    assert [row["probabilities"] for row in rows] != [row["probabilities"] for row in own]


def test_testing_another_runs_model_writes_beside_it_not_over_the_default_runs_scores():
    parse_args = load_script("test.py").parse_args
    assert parse_args([]).output_dir == os.path.join(ROOT, "workspace", "wb", "test")
    assert parse_args(["--model_dir", "workspace/offline/wb/best"]).output_dir == os.path.join(
        "workspace", "offline", "wb", "test")
    assert parse_args(["--model_dir", "runA/last/"]).output_dir == os.path.join("runA", "test")
    for models in (["runA/best", "runB/best"], ["some/exported_model"]):  # not one run's
        assert parse_args(["--model_dir", *models]).output_dir == os.path.join(
            ROOT, "workspace", "wb", "test")
    assert parse_args(["--model_dir", "a/best", "--output_dir", "x"]).output_dir == "x"
