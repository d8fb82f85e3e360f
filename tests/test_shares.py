"""Emotion shares: the corrections against QuaPy, a synthetic classifier whose mistakes are known,
the check that warns when a correction cannot hold, and inference.py --summary / --group_by."""
import json
import shutil
import warnings

import numpy as np
import pytest

import inference
from conftest import assert_clean_error, run_main
from ewect.calibration import with_temperature
from ewect.config import LABELS
from ewect.errors import UserError
from ewect.shares import (METHODS, MIN_DISTANCE, MIN_LABELLED, Reference, class_conditional,
                          estimate, group_keys, summarize)
from test_prediction import POSTS, tiny_checkpoint

TRUE_SHARES = np.array([0.45, 0.25, 0.1, 0.05, 0.05, 0.1])


def synthetic_posts(shares, posts, seed, clarity=2.0):
    """A classifier of known behaviour: each post's scores are its true label's one-hot x
    `clarity` plus unit Gaussian noise, and its probabilities their softmax (calibrated where
    clarity is 2, the Bayes posterior under a uniform mix). Returns (probabilities, decided
    labels, true labels)."""
    rng = np.random.default_rng(seed)
    golds = rng.choice(len(LABELS), posts, p=shares)
    scores = rng.normal(size=(posts, len(LABELS)))
    scores[np.arange(posts), golds] += clarity
    probabilities = with_temperature(np.exp(2.0 * scores), 1.0)
    return probabilities, probabilities.argmax(1), golds


def reference_of(posts, seed):
    probabilities, decided, golds = synthetic_posts(np.full(6, 1 / 6), posts, seed)
    return Reference(probabilities, golds, decided, np.full(6, 1 / 6), "synthetic eval posts")


def test_the_corrections_are_quapys():
    quapy = pytest.importorskip("quapy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from quapy.method.aggregative import ACC, EMQ, PACC
    reference = reference_of(600, seed=0)
    probabilities, decided, _ = synthetic_posts(TRUE_SHARES, 400, seed=1)
    classes = np.arange(len(LABELS))
    hard = ACC.getPteCondEstim(classes, reference.golds, reference.decided)
    soft = PACC.getPteCondEstim(classes, reference.golds, reference.probabilities)
    assert np.allclose(class_conditional(reference.golds, np.eye(6)[reference.decided]), hard)
    assert np.allclose(class_conditional(reference.golds, reference.probabilities), soft)
    cc = quapy.functional.prevalence_from_labels(decided, classes)
    expected = {
        "cc": cc, "pcc": probabilities.mean(0),
        "acc": ACC.solve_adjustment(hard, cc, method="inversion", solver="minimize"),
        "pacc": ACC.solve_adjustment(soft, probabilities.mean(0), method="inversion",
                                     solver="minimize"),
        "emq": EMQ.EM(reference.training_shares, probabilities)[0]}
    for method in expected:
        assert estimate(method, probabilities, decided, reference) == pytest.approx(
            expected[method], abs=2e-4), method


def test_a_known_classifier_is_corrected_and_the_check_stays_silent():
    reference = reference_of(6000, seed=2)
    probabilities, decided, golds = synthetic_posts(TRUE_SHARES, 6000, seed=3)
    rates = class_conditional(reference.golds, np.eye(6)[reference.decided])
    cc = estimate("cc", probabilities, decided, reference)
    # counting is off by what theory says: the predicted shares are rates x the true shares
    assert cc == pytest.approx(rates @ TRUE_SHARES, abs=0.015)
    assert np.abs(cc - TRUE_SHARES).max() > 0.08
    summary = summarize(probabilities, decided, reference)
    assert summary["warning"] == "" and summary["method"] == "pacc"
    assert summary["why"].startswith("the check finds a change of mix alone")
    for method in ("acc", "pacc", "emq"):
        assert np.abs(np.array(list(summary["shares"][method].values())) - TRUE_SHARES).max() \
            < 0.025, method
    low, high = np.array(list(summary["interval95"].values())).T
    assert ((low <= TRUE_SHARES) & (TRUE_SHARES <= high)).sum() >= 5  # each a 95% interval
    assert (high - low).max() < 0.06


def test_posts_that_look_different_to_the_model_make_it_warn():
    # the same mix, but every post less clear to the model than the labelled posts were: the
    # corrections' assumption (only the mix changed) is broken
    reference = reference_of(6000, seed=2)
    probabilities, decided, _ = synthetic_posts(TRUE_SHARES, 3000, seed=4, clarity=1.0)
    summary = summarize(probabilities, decided, reference)
    assert summary["method"] == "pcc_own"
    assert "corrections may not hold" in summary["warning"]
    assert summary["check"]["distance"] >= MIN_DISTANCE
    assert "synthetic eval posts" in summary["warning"]
    few = summarize(probabilities[:50], decided[:50], reference)
    assert few["small"] and few["method"] == "pcc_own" and "too few" in few["warning"]


def test_few_labelled_posts_leave_the_plain_estimate_which_undoes_the_temperature():
    probabilities, decided, _ = synthetic_posts(TRUE_SHARES, 3000, seed=5)
    summary = summarize(probabilities, decided, reference_of(MIN_LABELLED - 1, seed=6))
    assert summary["warning"] == "" and summary["method"] == "pcc_own"
    assert f"only {MIN_LABELLED - 1} labelled posts" in summary["why"]
    reference = reference_of(60, seed=6)
    reference.temperature = 2.0
    assert estimate("pcc_own", probabilities, decided, reference) == pytest.approx(
        with_temperature(probabilities, 0.5).mean(0), abs=1e-6)


def test_times_are_grouped_by_day_week_and_month():
    times = ["2020-01-30 23:59:59", "2020-01-31T08:00:00", "2020-02-03", "2020/02/04 10:00"]
    assert group_keys(times, "day", "f") == ["2020-01-30", "2020-01-31", "2020-02-03",
                                             "2020-02-04"]
    assert group_keys(times, "week", "f") == ["2020-01-27", "2020-01-27", "2020-02-03",
                                              "2020-02-03"]
    assert group_keys(times, "month", "f") == ["2020-01", "2020-01", "2020-02", "2020-02"]
    assert group_keys(["1580428800", "1580515200"], "day", "f") == ["2020-01-31", "2020-02-01"]
    assert group_keys(["20200131", "20200201"], "day", "f") == ["2020-01-31", "2020-02-01"]
    assert group_keys(["1580428800000"], "day", "f") == ["2020-01-31"]  # milliseconds
    # Weibo's own format and mixed zones: each post's own wall clock
    assert group_keys(["Fri Jan 31 23:05:00 +0800 2020", "2020-01-31T23:30:00+08:00",
                       "2020-02-01T00:10:00Z"], "day", "f") == ["2020-01-31", "2020-01-31",
                                                               "2020-02-01"]
    assert group_keys(["b", "a"], None, "f") == ["b", "a"]
    with pytest.raises(UserError, match=r"f: post 2: 'yesterday' is not a date or time"):
        group_keys(["2020-01-01", "yesterday"], "day", "f")


# --- inference.py --summary ------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(vocab, clean_dir, tmp_path_factory):
    """A tiny checkpoint calibrated as train.py leaves one (calibrate.py on the fixture)."""
    folder = tiny_checkpoint(vocab, tmp_path_factory, seed=0)
    result = run_main("calibrate.py", "--model_dir", folder, "--device", "cpu",
                      "--eval_file", clean_dir / "usual_eval_labeled.txt",
                      "--train_file", clean_dir / "usual_train.txt")
    assert result.returncode == 0, result.stderr
    return folder


def dated_posts(path, days=3, per_day=7):
    lines = ["id,date,content"] + [
        f"{day * per_day + i + 1},2020-02-{day + 1:02d} {8 + i}:00:00,{POSTS[i % len(POSTS)]}"
        for day in range(days) for i in range(per_day)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def summarise(model, *args):
    result = run_main("inference.py", "--model_dir", model, "--device", "cpu", *args)
    assert result.returncode == 0, result.stderr
    return result


def test_summary_of_a_file(calibrated, tmp_path):
    posts = dated_posts(tmp_path / "posts.csv")
    result = summarise(calibrated, "--input_file", posts, "--summary", tmp_path / "s.json")
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert summary["posts"] == 21 and summary["method"] in METHODS
    assert set(summary["shares"]) == set(METHODS)
    for shares in summary["shares"].values():
        assert list(shares) == list(LABELS) and sum(shares.values()) == pytest.approx(1, abs=1e-3)
    assert all(low <= high for low, high in summary["interval95"].values())
    assert summary["small"] and "too few" in summary["warning"]  # 21 posts
    assert "shares of 21 posts" in result.stderr and "warning:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posts.csv", "s.json"]


def test_summary_of_a_killed_and_resumed_run_equals_an_uninterrupted_one(calibrated, tmp_path,
                                                                        monkeypatch):
    posts = dated_posts(tmp_path / "posts.csv")
    common = ["--input_file", posts, "--chunk_size", 4, "--group_by", "date", "--period", "day"]
    summarise(calibrated, *common, "--output", tmp_path / "whole.tsv", "--summary",
              tmp_path / "whole.json")
    write = inference.RowWriter.write
    written = []

    def write_then_die(writer, lines):  # the second chunk's probabilities are kept, not its rows
        if written:
            raise KeyboardInterrupt
        written.append(write(writer, lines))

    monkeypatch.setattr(inference.RowWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        inference.main(["--model_dir", str(calibrated), "--device", "cpu", *map(str, common),
                        "--output", str(tmp_path / "part.tsv"), "--summary",
                        str(tmp_path / "part.json")])
    monkeypatch.undo()
    assert not (tmp_path / "part.json").exists()
    assert_clean_error(run_main("inference.py", "--model_dir", calibrated, "--device", "cpu",
                                *common[:4], "--output", tmp_path / "part.tsv", "--resume"),
                       "summary: True then, False now")
    summarise(calibrated, *common, "--output", tmp_path / "part.tsv", "--summary",
              tmp_path / "part.json", "--resume")
    for name in ("tsv", "groups.csv"):
        assert (tmp_path / f"part.{name}").read_bytes() == (tmp_path / f"whole.{name}"
                                                            ).read_bytes(), name
    summaries = [json.loads((tmp_path / f"{run}.json").read_text(encoding="utf-8"))
                 for run in ("part", "whole")]
    assert summaries[0].pop("groups") != summaries[1].pop("groups")  # each its own CSV
    assert summaries[0] == summaries[1]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("part"))
    assert left == ["part.groups.csv", "part.groups.png", "part.json", "part.tsv"]


def test_a_summary_of_two_processes_equals_one(calibrated, tmp_path, monkeypatch):
    posts = dated_posts(tmp_path / "posts.csv", days=2)
    common = ["--input_file", posts, "--chunk_size", 3]
    summarise(calibrated, *common, "--output", tmp_path / "one.tsv", "--summary",
              tmp_path / "one.json")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch")
    for rank in ("1", "0"):  # process 0 merges once process 1 has marked its part done
        monkeypatch.setenv("RANK", rank)
        summarise(calibrated, *common, "--output", tmp_path / "two.tsv", "--summary",
                  tmp_path / "two.json")
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.tsv", "posts.csv",
                                                          "two.json", "two.tsv"]


def test_shares_by_day(calibrated, tmp_path):
    posts = dated_posts(tmp_path / "posts.csv", days=3)
    summarise(calibrated, "--input_file", posts, "--summary", tmp_path / "s.json",
              "--group_by", "date", "--period", "day")
    import pandas as pd

    rows = pd.read_csv(tmp_path / "s.groups.csv")
    assert list(rows["group"]) == ["2020-02-01", "2020-02-02", "2020-02-03"]
    assert list(rows["posts"]) == [7, 7, 7] and rows["small"].all()
    assert (rows[list(LABELS)].sum(axis=1) - 1).abs().max() < 1e-3
    assert (rows["happy_low"] <= rows["happy_high"]).all()
    assert (tmp_path / "s.groups.png").stat().st_size > 0
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert summary["posts"] == 21 and summary["groups"].endswith("s.groups.csv")


def test_bad_groups_and_missing_calibration_are_one_line_before_any_labelling(
        calibrated, vocab, tmp_path_factory, tmp_path):
    posts = dated_posts(tmp_path / "posts.csv")
    common = ["--model_dir", calibrated, "--device", "cpu", "--input_file", posts, "--summary",
              tmp_path / "s.json"]
    assert_clean_error(run_main("inference.py", *common, "--group_by", "day"),
                       "posts.csv: no 'day' column (found id, date, content)")
    assert_clean_error(run_main("inference.py", *common[:6], "--summary",
                                tmp_path / "none" / "s.json"), "--summary", "no folder")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "好", "date": "2020-01-01"}\n{"content": "哇", "date": "昨天"}\n',
                   encoding="utf-8")
    assert_clean_error(run_main("inference.py", *common[:5], bad, "--summary", tmp_path / "b.json",
                                "--group_by", "date", "--period", "day"),
                       "bad.jsonl: column 'date': post 2: '昨天' is not a date or time")
    lines = tmp_path / "posts.txt"
    lines.write_text("好\n", encoding="utf-8")
    assert_clean_error(run_main("inference.py", *common[:5], lines, "--summary",
                                tmp_path / "c.json", "--group_by", "date"),
                       "one post per line has no columns to group by")
    result = run_main("inference.py", *common[:6], "--group_by", "date")
    assert result.returncode == 2 and "error: --group_by needs --summary" in result.stderr
    uncalibrated = tiny_checkpoint(vocab, tmp_path_factory, seed=3)
    assert_clean_error(run_main("inference.py", "--model_dir", uncalibrated, *common[2:]),
                       "nothing saved with the model to learn its mistakes from",
                       "python calibrate.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "posts.csv", "posts.txt"]


def test_hand_labelled_posts_replace_the_eval_posts(calibrated, clean_dir, tmp_path, vocab,
                                                    tmp_path_factory):
    posts = dated_posts(tmp_path / "posts.csv")
    labelled = clean_dir / "virus_eval_labeled.txt"
    uncalibrated = tiny_checkpoint(vocab, tmp_path_factory, seed=3)  # needs none with its own
    for model in (calibrated, uncalibrated):
        summarise(model, "--input_file", posts, "--summary", tmp_path / "s.json",
                  "--calibration_file", labelled)
        summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
        assert summary["labelled_posts"] == str(labelled)
    shutil.rmtree(uncalibrated)
