"""pretrain.py as users run it: the held-out loss falls, the saved folder is a masked LM that
fill-mask and train.py take, an interrupted run resumes exactly, torchrun changes nothing, and bad
input gets one line."""
import json
import math
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForMaskedLM, pipeline

import pretrain
import train
from conftest import (ROOT, assert_clean_error, from_folder_args, run_main, run_script,
                      tiny_train_args)
from ewect.errors import UserError


def tiny_pretrain_args(clean_dir, vocab, output_dir, *extra):
    """A 2-layer, hidden-32 BERT on the fixture's train and eval text: 60 posts, a fifth held
    out (the default 2% would be one post), 6 steps an epoch."""
    corpus = [str(clean_dir / name) for name in ("usual_train.txt", "virus_train.txt",
                                                 "usual_eval_labeled.txt",
                                                 "virus_eval_labeled.txt")]
    return ["--from_scratch", "--vocab", vocab, "--num_layers", "2", "--hidden_size", "32",
            "--batch_size", "8", "--epochs", "3", "--lr", "1e-2", "--held_out_fraction", "0.2",
            "--log_every", "2", "--device", "cpu", "--corpus", *corpus,
            "--output_dir", str(output_dir), *map(str, extra)]


@pytest.fixture(scope="module")
def pretrained(clean_dir, vocab, tmp_path_factory):
    """Output folder of one uninterrupted tiny pretraining run (in-process)."""
    out = tmp_path_factory.mktemp("mlm")
    pretrain.main(tiny_pretrain_args(clean_dir, vocab, out))
    return out


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=atol), name


def test_held_out_loss_falls_and_the_best_epoch_is_kept(pretrained):
    events = EventAccumulator(str(pretrained / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("MLM/held_out_loss")]
    # Fixed masks, eval mode: the loss moves only when the weights learn. (With the fixture's
    # small vocabulary it starts near ln(V) = 6 and falls less than with bert-base-chinese's.)
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0] - 0.1, losses
    assert len(events.Scalars("MLM/held_out_accuracy")) == 3
    best = json.loads((pretrained / "best" / "eval_results.json").read_text())
    assert best["epoch"] == 3 and best["held_out_posts"] == 12
    assert best["held_out_loss"] == pytest.approx(losses[2], rel=1e-5)
    assert best["held_out_perplexity"] == pytest.approx(math.exp(best["held_out_loss"]))


def test_saved_folder_is_a_masked_lm_that_fill_mask_runs(pretrained):
    best = str(pretrained / "best")
    model = AutoModelForMaskedLM.from_pretrained(best)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    predictions = pipeline("fill-mask", model=best, device="cpu")("今天天气真[MASK]")
    assert len(predictions) == 5 and all(p["sequence"] for p in predictions)


def test_saved_folder_fine_tunes_through_train_py(pretrained, clean_dir, vocab, tmp_path):
    out = tmp_path / "wb"
    train.main(from_folder_args(clean_dir, vocab, out, pretrained / "best", "--epochs", 1,
                                "--stop_after_steps", 1))
    encoder = "bert.encoder.layer.0.attention.self.query.weight"
    start, tuned = weights(pretrained / "best")[encoder], weights(out / "last")[encoder]
    assert tuned.shape == start.shape and (tuned - start).abs().max() < 1e-3  # one 1e-5 step


def test_interrupted_then_resumed_run_equals_uninterrupted(pretrained, clean_dir, vocab,
                                                           tmp_path):
    # Stop mid-epoch 1, resume, stop again at the end of epoch 1, then finish.
    out = tmp_path / "mlm"
    pretrain.main(tiny_pretrain_args(clean_dir, vocab, out, "--stop_after_steps", 4))
    pretrain.main(tiny_pretrain_args(clean_dir, vocab, out, "--resume", "--stop_after_steps", 6))
    pretrain.main(tiny_pretrain_args(clean_dir, vocab, out, "--resume"))
    assert_same_weights(out / "last", pretrained / "last")
    assert_same_weights(out / "best", pretrained / "best")


def test_two_processes_pretrain_as_one_with_accumulation(clean_dir, vocab, tmp_path):
    # A step's masks do not depend on how it is dealt out, and its loss is the mean over all of
    # its masked tokens: 2 processes x 4 posts = 1 process x micro-batches of 3 + 3 + 2.
    common = ("--dropout", 0, "--whole_word_mask", "--stop_after_steps", 4)
    args = tiny_pretrain_args(clean_dir, vocab, tmp_path / "two", *common)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "pretrain.py", *args, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 steps per epoch of 8 posts = 2 process(es) x 1 micro-batch(es) of up to 4" in (
        result.stdout)
    pretrain.main(tiny_pretrain_args(clean_dir, vocab, tmp_path / "one", *common,
                                     "--per_device_batch_size", 3))
    assert_same_weights(tmp_path / "two" / "last", tmp_path / "one" / "last", atol=1e-5)


@pytest.mark.parametrize("problem", ["missing corpus", "no usable text", "max_length"])
def test_bad_input_gets_one_line(problem, clean_dir, vocab, tmp_path):
    args = tiny_pretrain_args(clean_dir, vocab, tmp_path / "out")
    corpus = args.index("--corpus") + 1
    if problem == "missing corpus":
        args[corpus] = str(tmp_path / "nope.txt")
        expected = ["nope.txt: file not found"]
    elif problem == "no usable text":
        empty = tmp_path / "blank.txt"
        empty.write_text("http://t.cn/abc\n@someone\n", encoding="utf-8")  # cleaned to nothing
        args[corpus:corpus + 4] = [str(empty)]
        expected = ["blank.txt: no usable text"]
    else:
        args += ["--max_length", "600"]
        expected = ["--max_length 600: this model reads at most 512 tokens"]
    assert_clean_error(run_main("pretrain.py", *args), *expected)
    assert not (tmp_path / "out" / "last").exists()


def test_pretrain_sh_takes_paths_relative_to_the_users_folder(clean_dir, vocab, tmp_path):
    args = tiny_pretrain_args(clean_dir, vocab, "mine", "--stop_after_steps", 1)
    result = subprocess.run(["sh", str(ROOT / "pretrain.sh"), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, NGPU="1"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mine" / "last" / "training_state.pt").is_file()


def test_a_held_out_share_with_nothing_to_score_is_refused(vocab, tmp_path):
    # 2% of 20 one-character posts: one post, and its one token is not chosen under seed 42.
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n".join("好坏大小多少上下左右天地日月山水风云雨雪"), encoding="utf-8")
    args = ["--from_scratch", "--vocab", vocab, "--num_layers", "1", "--hidden_size", "32",
            "--device", "cpu", "--corpus", str(corpus), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match="held-out 1 post.* no masked token.*--held_out_fraction"):
        pretrain.main(args)


def test_continued_pretraining_never_saves_a_worse_best_than_its_start(pretrained, clean_dir,
                                                                        vocab, tmp_path):
    # A learning rate that wrecks the model: no epoch beats the model the run started from, so
    # best/ stays that model, scored before the first step.
    out = tmp_path / "continued"
    args = tiny_pretrain_args(clean_dir, vocab, out, "--epochs", 1, "--lr", 5)
    start = args.index("--from_scratch")
    args[start:start + 3] = ["--model_name", str(pretrained / "best")]
    pretrain.main(args)
    log = (out / "train.log").read_text()
    assert "the starting model: held-out loss" in log
    best = json.loads((out / "best" / "eval_results.json").read_text())
    started = json.loads((pretrained / "best" / "eval_results.json").read_text())
    assert best["epoch"] == 0
    assert best["held_out_loss"] == pytest.approx(started["held_out_loss"], rel=1e-4)
    assert_same_weights(out / "best", pretrained / "best")


def test_no_finite_held_out_loss_points_at_no_best(clean_dir, vocab, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "evaluate", lambda *a, **k: {
        "loss": math.nan, "perplexity": math.nan, "accuracy": 0.0})
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no epoch gave a finite held-out loss.*last"):
        pretrain.main(tiny_pretrain_args(clean_dir, vocab, out, "--epochs", 1))
    assert not (out / "best").exists() and (out / "last" / "model.safetensors").is_file()


@pytest.mark.parametrize("script", ["pretrain.py", "train.py"])
def test_an_out_of_range_seed_gets_one_line(script, clean_dir, vocab, tmp_path):
    make_args = tiny_pretrain_args if script == "pretrain.py" else tiny_train_args
    result = run_main(script, *make_args(clean_dir, vocab, tmp_path, "--seed", -1))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--seed" in result.stderr and "error:" in result.stderr


def test_defaults_fit_a_model_pretrained_from_scratch(pretrained, tmp_path):
    # pretrain.py from scratch: 1e-3 (RESULTS); its model fine-tunes at 5e-4 for 4 epochs unless
    # told otherwise; any other folder at the published 1e-5 for 30.
    import json

    assert pretrain.parse_args(["--from_scratch", "--vocab", "v.txt"]).lr == 1e-3
    assert json.loads((pretrained / "best" / "eval_results.json").read_text())["from_scratch"]
    own = ["--model_name", str(pretrained / "best")]
    assert (train.parse_args(own).lr, train.parse_args(own).epochs) == (5e-4, 4)
    given = train.parse_args([*own, "--lr", "1e-4", "--epochs", "7"])
    assert (given.lr, given.epochs) == (1e-4, 7)
    other = tmp_path / "other"
    other.mkdir()
    assert (train.parse_args(["--model_name", str(other)]).lr,
            train.parse_args(["--model_name", str(other)]).epochs) == (1e-5, 30)
