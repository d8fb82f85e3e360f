"""bench/distill.py and bench/frontier.py: the distillation setting is chosen on the eval file,
a timed inference.py run is scored from its own output, the frontier keeps exactly the points
that no faster-and-better point beats, and a study reuses only what the same command and models
made."""
import argparse
import json
import os

import numpy as np
import pytest

from bench import distill, frontier, recipes, tfidf_baseline
from conftest import FIXTURE_RAW
from ewect.config import LABEL2ID
from ewect.data import read_records
from ewect.errors import UserError
from ewect.metrics import classification_scores
from ewect.prediction import load_predictor


def point(name, speed, f1):
    return {"name": name, "backend": "torch_fp32", "posts_per_s": speed, "macro_f1": f1}


def test_the_frontier_holds_the_points_no_other_is_as_fast_and_as_accurate_as():
    points = [point("big", 10, 0.70), point("small", 100, 0.65), point("worse", 50, 0.60),
              point("slow twin", 10, 0.69), point("tie", 100, 0.65), point("fastest", 1000, 0.50)]
    frontier.mark_frontier(points)
    assert {p["name"] for p in points if p["frontier"]} == {"big", "small", "tie", "fastest"}


def test_crowded_points_are_named_further_off_with_a_line_to_them():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [dict(point(f"model {i}", 100 + i, 0.5 + 0.0002 * i), frontier=False)
              for i in range(8)]  # too close for eight names beside them
    fig, ax = plt.subplots(figsize=(10, 6.5))
    ax.set_xscale("log")
    ax.set(xlim=(50, 400), ylim=(0.49, 0.51))
    frontier.place_labels(ax, points)
    assert sorted(text.get_text() for text in ax.texts) == [f"model {i}" for i in range(8)]
    assert any(text.arrow_patch for text in ax.texts)
    plt.close(fig)


def test_the_study_points_are_named_after_the_students_and_the_teachers_counted(tmp_path):
    speed = {"onnx_int8": {"backend": "onnx_int8", "posts_per_s": 900, "macro_f1": 0.70}}
    results = {"cpu": frontier.cpu_name(), "seeds": [42], "setting": [2.0, 0.5],
               "args": {"student_a": "s", "teachers": ["t1", "t2"], "rows": ["a", "c"],
                        "student_layers": 2, "student_c": "c"},
               "lines": {"teachers": {"speed": speed}, "a_kd": {"speed": speed},
                         "c_kd": {"speed": speed}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    points, _ = frontier.results_points(str(tmp_path / "results.json"), "tiny", "small")
    assert [p["name"] for p in points] == ["tiny x2 (teachers)", "tiny, KD", "small, KD"]

def test_the_distillation_setting_is_the_one_with_the_best_eval_macro_f1(tmp_path):
    grid = {}
    for (temperature, alpha), f1 in {(1.0, 0.5): 0.61, (2.0, 0.9): 0.64, (4.0, 0.5): 0.62}.items():
        best = tmp_path / f"T{temperature}_a{alpha}" / "best"
        best.mkdir(parents=True)
        (best / "eval_results.json").write_text(json.dumps({"eval_macro_f1": f1}))
        grid[temperature, alpha] = str(best)
    (temperature, alpha), scores = distill.best_setting(grid)
    assert (temperature, alpha) == (2.0, 0.9)
    assert scores == {(1.0, 0.5): 0.61, (2.0, 0.9): 0.64, (4.0, 0.5): 0.62}


def test_the_tfidf_baseline_is_timed_by_a_whole_command_of_its_own(clean_dir, tmp_path,
                                                                    monkeypatch):
    # Timed in process it had no Python start and no load, and beat the models on speed unfairly.
    monkeypatch.setattr(distill, "TIMINGS", 1)
    args = argparse.Namespace(data_dir=str(FIXTURE_RAW), work_dir=str(tmp_path),
                              clean_dir=str(clean_dir))
    point = frontier.tfidf_point({"path": str(tmp_path / "cache.json"), "points": {}}, args)
    fitted = tfidf_baseline.tfidf_scores(str(FIXTURE_RAW), "usual_train.txt",
                                         ["usual_test_labeled.txt"])["usual_test_labeled.txt"]
    assert point["command"].startswith("python -m bench.tfidf_baseline --load ")
    assert point["macro_f1"] == pytest.approx(fitted["macro_f1"])  # its own labels, scored
    assert point["posts"] == len(read_records(str(clean_dir / "usual_test_labeled.txt")))


def test_a_timed_inference_run_is_scored_from_its_own_labels(trained, clean_dir, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(distill, "TIMINGS", 1)  # one start of inference.py is enough here
    test_file = str(clean_dir / "usual_test_labeled.txt")
    model = str(trained / "best")
    speed = distill.time_inference("tiny", [model], "torch_fp32", test_file, str(tmp_path),
                                   test_file)
    records = read_records(test_file)
    probabilities = load_predictor(model, device="cpu", precision="fp32").predict(
        [r.content for r in records])
    expected = classification_scores([LABEL2ID[r.label] for r in records],
                                     np.argmax(probabilities, -1))["macro_f1"]
    assert speed["posts"] == len(records)
    assert speed["macro_f1"] == pytest.approx(expected)
    assert len(speed["timings"]) == 1 and speed["seconds"] == speed["timings"][0]
    assert speed["posts_per_s"] == pytest.approx(len(records) / speed["seconds"])
    assert "inference.py --model_dir" in speed["command"]


@pytest.mark.parametrize("stopped_midway", [False, True])
def test_a_study_run_stopped_midway_resumes_and_a_new_one_starts_clean(tmp_path, monkeypatch,
                                                                       stopped_midway):
    commands = []
    monkeypatch.setattr(distill, "run_repo_script", lambda name, argv, work_dir:
                        commands.append(argv))
    if stopped_midway:  # train.py saved last/ after an epoch, and never logged its end
        (tmp_path / "a_plain_seed42" / "last").mkdir(parents=True)
    args = distill.argparse.Namespace(work_dir=str(tmp_path), clean_dir=str(tmp_path), lr=2e-4,
                                      epochs=5)
    distill.fine_tune("a_plain_seed42", ["--model_name", "m"], 42, args)
    [argv] = commands
    assert ("--resume" in argv) == stopped_midway
    assert ("--overwrite_output_dir" in argv) == (not stopped_midway)
    args.lr = 1e-4  # the same folder, another recipe: neither finished nor resumed as this one
    with pytest.raises(UserError, match="a_plain_seed42 was made by another command"):
        distill.fine_tune("a_plain_seed42", ["--model_name", "m"], 42, args)
    assert len(commands) == 1


def test_row_c_fine_tunes_at_its_own_lr_and_the_others_at_lr(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(distill, "run_repo_script", lambda name, argv, work_dir:
                        commands.append(argv))
    monkeypatch.setattr(distill, "test", lambda name, model_dirs, args: {})
    args = distill.argparse.Namespace(work_dir=str(tmp_path), clean_dir=str(tmp_path), lr=2e-4,
                                      lr_c=5e-4, epochs=5, student_a="a", student_c="c",
                                      student_layers=2, teachers=["t"], plain_a=[])
    for row in "abc":
        distill.line_runs(row, False, None, [42], args)
    lrs = [argv[argv.index("--lr") + 1] for argv in commands]
    assert lrs == ["0.0002", "0.0002", "0.0005"]


def test_training_minutes_leave_out_the_time_a_run_sat_stopped(tmp_path):
    (tmp_path / "train.log").write_text(
        "2026-11-30 01:00:00,000 INFO arguments: {}\n"
        "2026-11-30 01:30:00,000 INFO epoch 1: ...\n"
        "2026-11-30 08:00:00,000 INFO arguments: {}\n"  # resumed hours later
        "2026-11-30 08:30:00,000 INFO done: best eval macro-F1 ...\n")
    assert recipes.train_minutes(str(tmp_path)) == 60


def test_test_results_of_other_models_are_not_taken_as_these(tmp_path, monkeypatch):
    ran = []

    def fake_test_py(name, argv, work_dir):  # writes what test.py writes, for argv's models
        ran.append(argv)
        out = argv[argv.index("--output_dir") + 1]
        models = argv[argv.index("--model_dir") + 1:argv.index("--device")]
        os.makedirs(out, exist_ok=True)
        for test_file in recipes.TEST_FILES:
            stem = os.path.join(out, test_file.replace(".txt", ""))
            with open(stem + ".metrics.json", "w") as f:
                json.dump({"precision": "fp32", "model_dir": " + ".join(models)}, f)
            with open(stem + ".predictions.csv", "w") as f:
                f.write("gold," + ",".join(f"p_{label}" for label in LABEL2ID) + "\n")
                f.write("happy," + ",".join(["1"] + ["0"] * 5) + "\n")

    monkeypatch.setattr(recipes, "run_repo_script", fake_test_py)
    args = argparse.Namespace(work_dir=str(tmp_path), clean_dir=str(tmp_path))
    recipes.test("teachers", ["/old/a"], args)
    recipes.test("teachers", ["/old/a"], args)  # the same models: kept
    recipes.test("teachers", ["/new/a", "/new/b"], args)  # others: tested again
    assert len(ran) == 2


def test_bench_vocab_is_the_hubs_on_a_fresh_clone_and_one_line_offline(monkeypatch, tmp_path):
    # Without the copy beside the repo the benchmarks default to the hub's bert-base-chinese
    # vocab.txt; offline, that is one line saying to pass --vocab.
    import huggingface_hub

    from bench import common

    downloaded = tmp_path / "vocab.txt"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name: str(downloaded) if repo == "bert-base-chinese" else None)
    assert common.require_vocab(common.HUB_VOCAB) == str(downloaded)

    def offline(repo, name):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError, match="could not be downloaded .*pass --vocab"):
        common.require_vocab(common.HUB_VOCAB)
    with pytest.raises(UserError, match="not a file"):
        common.require_vocab(str(tmp_path / "missing.txt"))


VOCAB_BENCHES = ["bench/cleaning_ablation.py", "bench/predict_speed.py",
                 "bench/pretrain_ablation.py", "bench/pretrain_speed.py", "bench/train_speed.py"]


@pytest.mark.parametrize("script", VOCAB_BENCHES)
def test_bench_parsing_leaves_the_hub_vocab_for_require_vocab(script, monkeypatch):
    # pretrain_ablation made it an absolute path, so the hub's was never asked for
    import sys

    from conftest import load_script

    monkeypatch.setattr(sys, "argv", [script, "--vocab", "bert-base-chinese"])
    assert load_script(script).parse_args().vocab == "bert-base-chinese"


def test_bench_data_files_of_other_names_are_read_by_their_name(tmp_path):
    from bench.common import load_posts

    (tmp_path / "mine.txt").write_text((FIXTURE_RAW / "usual_test_labeled.txt").read_text("utf-8"),
                                       encoding="utf-8")
    texts, labels = load_posts(str(tmp_path), "mine.txt", drop_empty=False)
    assert len(texts) == len(labels) == 18
    with pytest.raises(UserError, match="no usual_train.txt"):
        load_posts(str(tmp_path), "usual_train.txt", drop_empty=False)
