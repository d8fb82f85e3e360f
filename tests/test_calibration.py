"""Calibrated probabilities: the temperature, its scores, and every path that applies it."""
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from conftest import assert_clean_error, run_main
from ewect.calibration import (CALIBRATION_FILE, calibrate, calibration_scores,
                               expected_calibration_error, fit_temperature, load_calibration,
                               with_temperature)
from ewect.config import LABELS
from ewect.decision import decide
from ewect.errors import UserError


def overconfident(posts, seed, sharpness=3.0):
    """(probabilities, golds) of a model `sharpness` times too sure of itself. Its scores z are
    the gold one-hot x 1.5 plus unit Gaussian noise, whose true posterior is softmax(1.5 z)."""
    rng = np.random.default_rng(seed)
    golds = rng.integers(0, len(LABELS), posts)
    logits = rng.normal(size=(posts, len(LABELS)))
    logits[np.arange(posts), golds] += 1.5
    return with_temperature(np.exp(1.5 * logits), 1 / sharpness), golds


def test_the_temperature_tames_an_overconfident_model_and_keeps_every_label():
    fit_on, held_out = overconfident(3000, seed=0), overconfident(3000, seed=1)
    temperature = fit_temperature(*fit_on)
    assert 2.5 < temperature < 3.5
    probabilities, golds = held_out
    before = calibration_scores(probabilities, golds)
    after = calibration_scores(with_temperature(probabilities, temperature), golds)
    assert after["nll"] < before["nll"] - 0.3
    assert after["ece"] < before["ece"] / 3 and after["brier"] < before["brier"]
    calibrated = with_temperature(probabilities, temperature)
    assert (calibrated.argmax(1) == probabilities.argmax(1)).all()
    offsets = np.array([0.3, -0.5, 0.0, 1.2, 0.8, -1.0])  # as train.py --tune_bias saves them
    assert (decide(calibrated, offsets, temperature) == decide(probabilities, offsets)).all()
    assert (decide(calibrated, offsets) != decide(probabilities, offsets)).any()  # T matters


def test_the_scores_agree_with_scikit_learn_and_the_definition_of_ece():
    probabilities, golds = overconfident(500, seed=2)
    scores = calibration_scores(probabilities, golds)
    labels = list(range(len(LABELS)))
    assert scores["nll"] == pytest.approx(log_loss(golds, probabilities, labels=labels), abs=1e-6)
    assert scores["brier"] == pytest.approx(
        brier_score_loss(golds, probabilities, labels=labels), abs=1e-6)
    # ECE post by post: 15 bins of width 1/15 of the top probability, |accuracy - confidence|
    # weighted by the share of posts in each
    top, right = probabilities.max(1), probabilities.argmax(1) == golds
    ece = 0.0
    for low in np.arange(15) / 15:
        mine = (top > low) & (top <= low + 1 / 15)
        if mine.any():
            ece += mine.mean() * abs(right[mine].mean() - top[mine].mean())
    assert expected_calibration_error(probabilities, golds) == pytest.approx(ece, abs=1e-6)


def test_a_damaged_calibration_file_is_one_line(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text('{"temperature": "hot"}', encoding="utf-8")
    with pytest.raises(UserError, match="not a calibration file.*python calibrate.py"):
        load_calibration(tmp_path)
    assert load_calibration(tmp_path / "none") is None


def test_train_calibrates_best_and_test_reports_before_and_after(trained, clean_dir, tmp_path):
    record = json.loads((trained / "best" / CALIBRATION_FILE).read_text(encoding="utf-8"))
    eval_posts = json.loads((clean_dir / "usual_eval_labeled.txt").read_text(encoding="utf-8"))
    assert record["posts"] == len(eval_posts) == len(record["eval_probabilities"])
    assert record["temperature"] > 0 and sum(record["training_shares"].values()) == \
        pytest.approx(1, abs=1e-4)
    result = run_main("test.py", "--model_dir", trained / "best", "--device", "cpu",
                      "--precision", "fp32", "--data_file", clean_dir / "usual_test_labeled.txt",
                      "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"calibration (temperature {record['temperature']:.3f}; labels unchanged)" in \
        result.stdout
    assert (tmp_path / "usual_test_labeled.reliability.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "usual_test_labeled.metrics.json").read_text("utf-8"))
    assert metrics["calibration"]["temperature"] == pytest.approx(record["temperature"])
    assert set(metrics["calibration"]["before"]) == {"ece", "nll", "brier"}


def test_calibrate_py_calibrates_a_checkpoint_trained_before(trained, clean_dir, tmp_path):
    older = tmp_path / "best"
    shutil.copytree(trained / "best", older)
    (older / CALIBRATION_FILE).unlink()
    result = run_main("calibrate.py", "--model_dir", older, "--device", "cpu", "--precision",
                      "fp32", "--eval_file", clean_dir / "usual_eval_labeled.txt",
                      "--train_file", clean_dir / "usual_train.txt")
    assert result.returncode == 0, result.stderr
    assert "temperature" in result.stdout and "ECE" in result.stdout
    then = json.loads((trained / "best" / CALIBRATION_FILE).read_text(encoding="utf-8"))
    now = json.loads((older / CALIBRATION_FILE).read_text(encoding="utf-8"))
    assert now["temperature"] == pytest.approx(then["temperature"], abs=1e-3)  # the same fit
    assert now["training_shares"] == pytest.approx(then["training_shares"], abs=1e-6)
    assert_clean_error(run_main("calibrate.py", "--model_dir", tmp_path / "nothing"),
                       "no checkpoint here")
    (older / CALIBRATION_FILE).write_text("{", encoding="utf-8")  # damaged: written anew
    assert run_main("calibrate.py", "--model_dir", older, "--device", "cpu", "--precision",
                    "fp32", "--eval_file", clean_dir / "usual_eval_labeled.txt", "--train_file",
                    clean_dir / "usual_train.txt").returncode == 0
    assert load_calibration(older)["temperature"] == pytest.approx(now["temperature"])


def test_the_temperature_stays_where_decision_offsets_keep_every_label():
    # an underconfident model would want T far below 1; below 0.25 offsets divided by T could
    # lift a class whose calibrated probability fell under decide()'s floor
    probabilities, golds = overconfident(2000, seed=3, sharpness=0.1)
    assert fit_temperature(probabilities, golds) == pytest.approx(0.25, abs=1e-3)


def test_fitting_on_no_posts_is_refused(tmp_path):
    with pytest.raises(UserError, match="no posts to calibrate on"):
        calibrate(tmp_path, np.zeros((0, len(LABELS))), [], [0, 1], "empty.txt")
