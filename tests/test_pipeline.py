"""End to end on the fixture: clean_data.py -> train.py -> test.py -> inference.py."""
import csv
import json
import os
import re
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from conftest import (FIXTURE_RAW, ROOT, SHARED_RAW, load_script, requires_shared_data, run_main,
                      run_script)
from ewect.cleaning import clean_text
from ewect.config import DATA_FILES, LABELS
from ewect.data import encode, read_records
from ewect.modeling import build_model, load_checkpoint, save_checkpoint
from ewect.prediction import predict_logits


def test_clean_data_drops_only_empty_train_records(clean_dir):
    for name in DATA_FILES:
        raw = json.loads((FIXTURE_RAW / name).read_text("utf-8"))
        cleaned = json.loads((clean_dir / name).read_text("utf-8"))
        assert all(r["content"] == clean_text(r["content"]) for r in cleaned)
        if name.endswith("train.txt"):
            assert all(r["content"] for r in cleaned)
            assert len(cleaned) < len(raw)  # the fixture has link-only and mention-only posts
        else:
            assert [r["id"] for r in cleaned] == [r["id"] for r in raw]


def test_training_writes_a_loadable_checkpoint_and_logs(trained):
    best = trained / "best"
    config = json.loads((best / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(6)] == list(LABELS)
    assert (best / "tokenizer.json").is_file() and (best / "model.safetensors").is_file()
    # best/ is the epoch with the highest eval macro-F1 in the log
    f1s = [float(f1) for f1 in re.findall(r"epoch \d+: eval .* macro-F1 ([0-9.]+)",
                                          (trained / "train.log").read_text())]
    assert len(f1s) == 2
    assert json.loads((best / "eval_results.json").read_text())["epoch"] == 1 + f1s.index(max(f1s))
    assert (trained / "last" / "training_state.pt").is_file()
    assert "arguments:" in (trained / "train.log").read_text()
    assert list((trained / "tensorboard").iterdir())
    assert not list(trained.glob("*.tmp")) and not list(trained.glob("*.old"))


def test_reloaded_checkpoint_predicts_like_the_model_in_memory(vocab, tmp_path):
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=2,
                                   hidden_size=32)
    model.eval()
    texts = [clean_text(r.content) for r in read_records(str(FIXTURE_RAW / "usual_test_labeled.txt"))]
    ids = encode(tokenizer, texts, 140)
    before = predict_logits(model, ids, batch_size=4)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    reloaded, reloaded_tokenizer = load_checkpoint(tmp_path / "ckpt")
    after = predict_logits(reloaded, encode(reloaded_tokenizer, texts, 140), batch_size=7)
    assert torch.allclose(before, after, atol=1e-5)
    assert (before.argmax(-1) == after.argmax(-1)).all()


def test_prediction_order_does_not_depend_on_batching(vocab):
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=2,
                                   hidden_size=32)
    model.eval()
    ids = encode(tokenizer, ["好", "今天天气很好我们去公园", "气死了!", "嗯嗯"], 140)
    one_by_one = torch.cat([predict_logits(model, [x], batch_size=1) for x in ids])
    assert torch.allclose(predict_logits(model, ids, batch_size=3), one_by_one, atol=1e-5)


def test_test_script_reports_scikit_learn_metrics_and_writes_outputs(trained, clean_dir):
    data = clean_dir / "usual_test_labeled.txt"
    result = run_main("test.py", "--model_dir", trained / "best", "--data_file", data,
                      "--output_dir", trained / "test", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    with open(trained / "test" / "usual_test_labeled.predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    golds, preds = [r["gold"] for r in rows], [r["predicted"] for r in rows]
    assert [int(r["id"]) for r in rows] == [r.id for r in read_records(str(data))]
    probs = np.array([[float(r[f"p_{label}"]) for label in LABELS] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    acc = accuracy_score(golds, preds)
    f1 = f1_score(golds, preds, average="macro", labels=list(LABELS), zero_division=0)
    precision, recall, _, _ = precision_recall_fscore_support(
        golds, preds, labels=list(LABELS), zero_division=0)
    official = 2 * precision.mean() * recall.mean() / (precision.mean() + recall.mean())
    assert f"accuracy {acc:.4f}  macro-F1 {f1:.4f} (scikit-learn" in result.stdout
    assert f"official macro-F1 {official:.4f}" in result.stdout
    metrics = json.loads((trained / "test" / "usual_test_labeled.metrics.json").read_text())
    assert np.isclose(metrics["accuracy"], acc) and np.isclose(metrics["macro_f1"], f1)
    assert np.isclose(metrics["official_macro_f1"], official)
    assert (trained / "test" / "usual_test_labeled.confusion.png").read_bytes()[:4] == b"\x89PNG"
    # inference.py labels the same file the same way
    result = run_main("inference.py", "--model_dir", trained / "best", "--input_file", data,
                      "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == preds


def test_inference_single_post(trained):
    result = run_script("inference.py", "--input", "你是个什么东西，垃圾", "--device", "cpu",
                        "--model_dir", trained / "best")
    assert result.returncode == 0, result.stderr
    label, *prob_lines = result.stdout.splitlines()
    assert label in LABELS
    probs = {line.split()[0]: float(line.split()[1]) for line in prob_lines}
    assert list(probs) == list(LABELS) and abs(sum(probs.values()) - 1) < 1e-3
    assert max(probs, key=probs.get) == label


def test_inference_plain_text_file_and_json(trained, tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("好开心啊\n\n@某人 气死我了 http://t.cn/x\n", encoding="utf-8")
    result = run_main("inference.py", "--input_file", posts, "--json", "--device", "cpu",
                      "--model_dir", trained / "best")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == [1, 3]
    assert lines[1]["text"] == "气死我了"  # cleaned as in training
    assert all(line["label"] in LABELS for line in lines)


@requires_shared_data
def test_clean_data_on_the_real_files(tmp_path):
    result = run_script("clean_data.py", "--raw_dir", SHARED_RAW, "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    counts = {line.split()[0]: [int(n) for n in line.split()[1:]]
              for line in result.stdout.splitlines() if line.startswith(DATA_FILES)}
    assert counts["usual_train.txt"][0] == 27768
    assert counts["usual_test_labeled.txt"][:3] == [5000, 5000, 0]  # test ids all survive
    cleaned = json.loads((tmp_path / "usual_train.txt").read_text("utf-8"))
    assert all(r["content"] for r in cleaned)
    assert sum(r["label"] == "fear" for r in cleaned) > 1000
    assert "usual_train.txt: 162 posts, usual_eval_labeled.txt: 129 posts" in result.stdout


def test_clean_data_dedup_drops_train_copies_of_eval_posts(tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(FIXTURE_RAW, raw)
    train = json.loads((raw / "usual_train.txt").read_text("utf-8"))
    eval_post = json.loads((raw / "usual_eval_labeled.txt").read_text("utf-8"))[0]["content"]
    train.append({"id": 900, "content": eval_post + " http://t.cn/x", "label": "happy"})
    (raw / "usual_train.txt").write_text(json.dumps(train, ensure_ascii=False), "utf-8")
    result = run_script("clean_data.py", "--raw_dir", raw, "--out_dir", tmp_path / "clean", "--dedup")
    assert result.returncode == 0, result.stderr
    assert "usual_train.txt: 1 posts, usual_eval_labeled.txt: 1 posts" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines()
               if line.startswith("usual_train.txt "))
    assert row[-1] == "1"  # deduped
    cleaned = {name: json.loads((tmp_path / "clean" / name).read_text("utf-8"))
               for name in ("usual_train.txt", "usual_eval_labeled.txt")}
    assert 900 not in [r["id"] for r in cleaned["usual_train.txt"]]
    assert len(cleaned["usual_eval_labeled.txt"]) == 18  # eval files never lose records


def test_shell_entry_points_take_paths_relative_to_the_users_folder(trained, clean_dir, tmp_path):
    import shutil
    import subprocess

    shutil.copytree(trained / "best", tmp_path / "mine" / "best")
    shutil.copy(clean_dir / "usual_test_labeled.txt", tmp_path / "mine" / "test.txt")
    result = subprocess.run(["sh", str(ROOT / "test.sh"), "--model_dir", "mine/best",
                             "--data_file", "mine/test.txt", "--output_dir", "mine/out",
                             "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mine" / "out" / "test.metrics.json").is_file()


def test_test_script_dataset_picks_its_default_files_and_model():
    from ewect.config import BEST_DIR, TEST_FILE, dataset_files, dataset_output_dir

    parse_args = load_script("test.py").parse_args
    usual = parse_args([])
    assert (usual.model_dir, usual.data_file) == ([BEST_DIR], [TEST_FILE])
    virus = parse_args(["--dataset", "virus"])
    run = dataset_output_dir("virus")
    assert virus.model_dir == [os.path.join(run, "best")]
    assert virus.data_file == dataset_files("virus", "test")
    assert virus.output_dir == os.path.join(run, "test")
    assert len(parse_args(["--dataset", "both"]).data_file) == 2


def test_test_script_applies_decision_offsets_and_reports_plain_argmax(trained, clean_dir,
                                                                        tmp_path):
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(trained / "best", tuned)
    offsets = {label: 50.0 if label == "fear" else 0.0 for label in LABELS}
    (tuned / "decision.json").write_text(json.dumps({"offsets": offsets}), encoding="utf-8")
    data = [clean_dir / "usual_test_labeled.txt", clean_dir / "virus_test_labeled.txt"]
    precisions = {"auto": "bf16", "none": "fp32"}  # --precision rides along: no extra run
    for decision in ("auto", "none"):
        result = run_main("test.py", "--model_dir", tuned, "--data_file", *data, "--device",
                          "cpu", "--output_dir", tmp_path / decision, "--decision", decision,
                          "--precision", precisions[decision])
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("plain argmax: accuracy") == (2 if decision == "auto" else 0)
        for path in data:
            with open(tmp_path / decision / f"{path.stem}.predictions.csv", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            probs = np.array([[float(r[f"p_{label}"]) for label in LABELS] for r in rows])
            argmax = [LABELS[i] for i in probs.argmax(1)]
            preds = [r["predicted"] for r in rows]
            metrics = json.loads((tmp_path / decision / f"{path.stem}.metrics.json").read_text())
            assert metrics["precision"] == precisions[decision]
            if decision == "auto":
                assert preds == ["fear"] * len(rows)
                assert metrics["decision"]["offsets"] == offsets
                assert np.isclose(metrics["decision"]["argmax"]["accuracy"],
                                  accuracy_score([r["gold"] for r in rows], argmax))
            else:
                assert preds == argmax and metrics["decision"] is None


@pytest.mark.parametrize("wrapper, raw_file", [("train.sh", "usual_train.txt"),
                                               ("test.sh", "usual_test_labeled.txt")])
def test_wrappers_clean_again_when_the_data_or_the_rules_changed(tmp_path, wrapper, raw_file):
    # A copy of the repo's layout with stubs: only when the wrapper runs clean_data.py matters.
    import shutil
    import subprocess

    shutil.copy(ROOT / wrapper, tmp_path)
    for script in ("clean_data.py", "train.py", "test.py"):
        (tmp_path / script).write_text(f"print('{script}')\n")
    for folder, name in (("data/raw", raw_file), ("data/clean", raw_file),
                         ("ewect", "cleaning.py")):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / name).write_text("x")

    def cleaned_with(*args, **ages):  # seconds ago each file was last written
        for path, age in ages.items():
            stamp = time.time() - age
            os.utime(tmp_path / path, (stamp, stamp))
        result = subprocess.run(["sh", str(tmp_path / wrapper), *args], capture_output=True,
                                text=True, env=dict(os.environ, NGPU="0", EWECT_RAW_DIR=""),
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return "clean_data.py" in result.stdout

    raw, clean, rules = f"data/raw/{raw_file}", f"data/clean/{raw_file}", "ewect/cleaning.py"
    assert not cleaned_with(**{raw: 300, rules: 300, clean: 100})  # up to date
    assert not cleaned_with("--help", **{raw: 50, rules: 300, clean: 100})  # help: no cleaning
    assert cleaned_with(**{raw: 50, rules: 300, clean: 100})       # the raw file replaced
    assert cleaned_with(**{raw: 300, rules: 50, clean: 100})       # the cleaning rules changed
    (tmp_path / clean).unlink()
    assert cleaned_with(**{raw: 300, rules: 300})                  # never cleaned
