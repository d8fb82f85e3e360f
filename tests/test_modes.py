"""Dropout wherever a model learns, none wherever one predicts. transformers' from_pretrained and
load_checkpoint return a model in eval mode: a loop that does not switch it trains without
dropout, silently, and a prediction path that forgets to switch back gives random labels."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import pretrain
import train
from conftest import from_folder_args, pretrained_folder, run_main, tiny_train_args
from ewect.cleaning import clean_text
from ewect.config import LABEL2ID, LABELS, MAX_LENGTH
from ewect.data import encode, read_records
from ewect.modeling import load_checkpoint, save_checkpoint
from ewect.prediction import load_predictor, predict_logits
from test_pretrain import tiny_pretrain_args


@pytest.fixture(scope="module")
def bert(vocab, tmp_path_factory):
    return pretrained_folder(tmp_path_factory.mktemp("pretrained") / "bert", vocab)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_the_first_epoch_from_a_pretrained_folder_has_dropout(bert, clean_dir, vocab, tmp_path):
    for dropout in (0.1, 0):
        train.main(from_folder_args(clean_dir, vocab, tmp_path / str(dropout), bert,
                                    "--epochs", 1, "--dropout", dropout))
    with_dropout, without = weights(tmp_path / "0.1" / "last"), weights(tmp_path / "0" / "last")
    assert any(not torch.equal(with_dropout[k], without[k]) for k in without)


def test_rdrop_compares_two_dropout_samples_from_the_first_step(bert, clean_dir, vocab, tmp_path,
                                                                 monkeypatch):
    divergences, kl_div = [], F.kl_div

    def recorded(*args, **kwargs):
        value = kl_div(*args, **kwargs)
        divergences.append(value.item())
        return value

    monkeypatch.setattr(F, "kl_div", recorded)  # R-Drop's two directions of the step's KL
    train.main(from_folder_args(clean_dir, vocab, tmp_path, bert, "--rdrop", 1,
                                "--stop_after_steps", 1))
    assert len(divergences) == 2 and min(divergences) > 1e-4, divergences


def test_a_run_from_a_pretrained_folder_resumes_exactly(bert, clean_dir, vocab, tmp_path):
    # Stopped mid-epoch 1 and resumed: the same run as one left alone (2 epochs of 6 steps).
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    train.main(from_folder_args(clean_dir, vocab, whole, bert))
    train.main(from_folder_args(clean_dir, vocab, out, bert, "--stop_after_steps", 3))
    train.main(from_folder_args(clean_dir, vocab, out, bert, "--resume"))
    a, b = weights(whole / "last"), weights(out / "last")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def record_modes(monkeypatch, module, step_name):
    """Whether every submodule of the model was in training mode, at each step of `module`."""
    modes, step = [], getattr(module, step_name)

    def recorded(model, *args, **kwargs):
        modes.append(all(m.training for m in model.modules()))
        return step(model, *args, **kwargs)

    monkeypatch.setattr(module, step_name, recorded)
    return modes


@pytest.mark.parametrize("start", ["model_name", "init_from", "student_layers", "teacher",
                                   "resume"])
def test_every_way_to_start_training_trains_in_training_mode(start, bert, trained, clean_dir,
                                                             vocab, tmp_path, monkeypatch):
    out = tmp_path / "wb"
    extra = {"model_name": [], "init_from": ["--init_from", trained / "best"],
             "student_layers": ["--student_layers", 1], "teacher": ["--teacher", trained / "best"],
             "resume": []}[start]
    args = from_folder_args(clean_dir, vocab, out, bert, *extra)
    if start == "init_from":
        args = args[2:]  # --init_from is the model to start from
    if start == "resume":
        train.main([*args, "--stop_after_steps", "2"])
        args.append("--resume")
    modes = record_modes(monkeypatch, train, "train_step")
    train.main([*args, "--epochs", "1"])
    assert modes and all(modes)


def test_continued_pretraining_trains_in_training_mode(bert, clean_dir, vocab, tmp_path,
                                                       monkeypatch):
    args = tiny_pretrain_args(clean_dir, vocab, tmp_path / "mlm", "--epochs", 1)
    del args[:3]  # --from_scratch --vocab VOCAB: continued from the pretrained folder
    modes = record_modes(monkeypatch, pretrain, "mlm_step")
    pretrain.main(["--model_name", str(bert), *args])
    assert modes and all(modes)


# --- prediction -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy(trained, tmp_path_factory):
    """The trained checkpoint with dropout 0.5 and a classifier 30x as sharp (the tiny run's is
    near uniform): predicted in training mode, its probabilities would be far from its own."""
    model, tokenizer = load_checkpoint(trained / "best")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.5
    with torch.no_grad():
        model.classifier.weight.mul_(30)
    folder = tmp_path_factory.mktemp("noisy") / "best"
    save_checkpoint(model, tokenizer, folder)
    return folder


def logits_in_mode(folder, texts, training):
    model, tokenizer = load_checkpoint(folder)
    torch.manual_seed(0)
    return predict_logits(model.train(training), encode(tokenizer, texts, MAX_LENGTH))


def cleaned(path, drop_empty):
    records = read_records(str(path))
    texts = [clean_text(r.content) for r in records]
    keep = [i for i, text in enumerate(texts) if text or not drop_empty]
    return [texts[i] for i in keep], [LABEL2ID[records[i].label] for i in keep]


def test_the_reference_is_far_from_a_prediction_with_dropout(noisy, clean_dir):
    # what makes the tests below fail if a path predicts in training mode
    texts, _ = cleaned(clean_dir / "usual_eval_labeled.txt", drop_empty=False)
    eval_mode, train_mode = (logits_in_mode(noisy, texts, training) for training in (False, True))
    assert (eval_mode.softmax(-1) - train_mode.softmax(-1)).abs().max() > 0.1


def test_evaluation_and_the_teachers_labels_are_without_dropout(noisy, clean_dir, vocab,
                                                                tmp_path):
    # lr 0: the weights stay the checkpoint's, so the run's eval loss is the checkpoint's own
    args = tiny_train_args(clean_dir, vocab, tmp_path, "--epochs", 1, "--lr", 0, "--dropout", 0.5,
                           "--teacher", noisy)[3:]
    train.main(["--init_from", str(noisy), *args])
    texts, labels = cleaned(clean_dir / "usual_eval_labeled.txt", drop_empty=False)
    expected = F.cross_entropy(logits_in_mode(noisy, texts, False), torch.tensor(labels)).item()
    results = json.loads((tmp_path / "best" / "eval_results.json").read_text())
    assert results["eval_loss"] == pytest.approx(expected, abs=1e-5)
    train_texts, _ = cleaned(clean_dir / "usual_train.txt", drop_empty=True)
    teacher = torch.load(tmp_path / "teacher.pt", weights_only=True)["log_probs"][0].exp()
    reference = logits_in_mode(noisy, train_texts, False).softmax(-1)
    assert (teacher - reference).abs().max() < 1e-5  # in the run's precision: fp32 on a CPU


def test_test_inference_and_export_predict_without_dropout(noisy, clean_dir, tmp_path):
    data = clean_dir / "usual_eval_labeled.txt"
    texts, _ = cleaned(data, drop_empty=False)
    reference = logits_in_mode(noisy, texts, False).softmax(-1).numpy()
    assert run_main("test.py", "--model_dir", noisy, "--data_file", data, "--device", "cpu",
                    "--precision", "fp32", "--output_dir", tmp_path).returncode == 0
    with open(tmp_path / "usual_eval_labeled.predictions.csv", encoding="utf-8") as f:
        tested = np.array([[float(row[f"p_{label}"]) for label in LABELS]
                           for row in csv.DictReader(f)])
    assert np.abs(tested - reference).max() < 1e-4
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(texts) + "\n", encoding="utf-8")  # none is empty: one a line
    result = run_main("inference.py", "--model_dir", noisy, "--input_file", posts, "--json",
                      "--device", "cpu", "--precision", "fp32")
    labelled = np.array([[row["probabilities"][label] for label in LABELS]
                         for row in map(json.loads, result.stdout.splitlines())])
    assert np.abs(labelled - reference).max() < 1e-4  # written to 4 decimals
    assert run_main("export.py", "--model_dir", noisy, "--check_posts", 4).returncode == 0
    exported = load_predictor(noisy, backend="onnx").predict(texts)
    assert np.abs(exported - reference).max() < 1e-4
