"""Offline from a fresh clone: --from_scratch builds its vocabulary from the run's own posts,
train_offline.sh goes from the raw files to a tested model (and picks up where it stopped), and a
hub that cannot be reached is answered in seconds, from the local cache when the model is there."""
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest
from transformers import AutoTokenizer, pipeline

from conftest import FIXTURE_RAW, ROOT, run_main, tiny_train_args
from ewect.config import LABELS
from ewect.errors import UserError
from ewect.vocab import SPECIAL_TOKENS, build_vocab

POSTS = ["今天好开心 Hello", "hello 今天", "HELLO 好", "好 world 今", "开心 world",
         "罕 worlds"]


def saved_vocab(folder):
    """A checkpoint's tokens, in id order."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)


def test_built_vocabulary_is_bert_wordpiece_with_a_token_per_chinese_character():
    from ewect.modeling import scratch_tokenizer

    tokens = build_vocab(POSTS, vocab_size=100, min_frequency=2)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] is id 0
    assert len(tokens) == len(set(tokens))
    tokenizer = scratch_tokenizer(tokens)
    assert tokenizer.pad_token_id == 0 and len(tokenizer) == len(tokens)
    assert tokenizer.tokenize("今天好开心") == ["今", "天", "好", "开", "心"]
    # Lowercased; "hello" (3 times) and "world" (twice) are whole tokens, learnt from pieces.
    assert tokenizer.tokenize("Hello WORLD") == ["hello", "world"]
    assert "罕" not in tokens and tokenizer.tokenize("罕") == ["[UNK]"]  # seen once: below 2
    assert "罕" in build_vocab(POSTS, vocab_size=100, min_frequency=1)
    # The cap: the commonest characters first (##l 9 times, ##o 6), ties in character order
    # (##d, ##e, ..., 今, 好: 3 times each).
    assert build_vocab(POSTS, vocab_size=8, min_frequency=1) == [*SPECIAL_TOKENS, "##l", "##o",
                                                                 "##d"]
    with pytest.raises(UserError, match="--vocab_size 5"):
        build_vocab(POSTS, vocab_size=5, min_frequency=1)


def test_the_same_posts_give_the_same_vocabulary_in_every_process(tmp_path):
    # Many ties between equal counts, and other hash seeds: nothing may depend on hash order
    # (HF tokenizers' WordPiece trainer gives two processes different vocabularies here).
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    posts = [" ".join(rng.choice(words) for _ in range(10)) + " 好开心" for _ in range(300)]
    corpus = tmp_path / "posts.txt"
    corpus.write_text("\n".join(posts), encoding="utf-8")
    code = ("import sys; from ewect.vocab import build_vocab; "
            "print('\\n'.join(build_vocab(open(sys.argv[1], encoding='utf-8').read().split("
            "'\\n'), 400, 2)))")
    outputs = [subprocess.run([sys.executable, "-c", code, str(corpus)], cwd=ROOT, check=True,
                              capture_output=True, text=True,
                              env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout
               for seed in (1, 2)]
    assert outputs[0] == outputs[1] == "\n".join(build_vocab(posts, 400, 2)) + "\n"
    assert len(outputs[0].split()) == 400


def test_train_from_scratch_without_vocab_builds_and_saves_one(clean_dir, tmp_path):
    from ewect.data import clean_records, read_records

    args = tiny_train_args(clean_dir, "unused", tmp_path / "wb", "--epochs", 1)
    del args[1:3]  # no --vocab
    result = run_main("train.py", *args)
    assert result.returncode == 0, result.stderr
    posts = [r.content for r in clean_records(
        read_records(str(clean_dir / "usual_train.txt")), drop_empty=True)]
    expected = build_vocab(posts)
    log = (tmp_path / "wb" / "train.log").read_text("utf-8")
    assert (f"vocabulary: built from {len(posts)} posts, {len(expected)} tokens "
            "(min frequency 2)") in log
    assert saved_vocab(tmp_path / "wb" / "best") == expected


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """train_offline.sh, tiny, on the fixture: stopped after one fine-tuning step, then run
    again. (out, first run, second run)."""
    out = tmp_path_factory.mktemp("offline")
    env = dict(os.environ, EWECT_RAW_DIR=str(FIXTURE_RAW), CLEAN_DIR=str(out / "clean"),
               OUT=str(out / "run"), LAYERS="1", HIDDEN="32", PRETRAIN_EPOCHS="1",
               FINETUNE_EPOCHS="2", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = ["sh", str(ROOT / "train_offline.sh"), "--batch_size", "16"]
    runs = [subprocess.run(command + extra, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300) for extra in (["--stop_after_steps", "1"], [])]
    return out, *runs


def test_offline_command_picks_up_where_it_stopped_and_prints_the_metrics(offline_run):
    out, first, second = offline_run
    run = out / "run"
    assert first.returncode != 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    for step in ("cleaning", "pretraining", "fine-tuning"):
        assert re.search(rf"^== {step}: ", first.stdout, re.M), first.stdout
    assert "run the same command again" in first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"^== cleaning: .*skipped", second.stdout, re.M), second.stdout
    assert re.search(r"^== pretraining: .*skipped", second.stdout, re.M), second.stdout
    assert re.search(r"^== fine-tuning: resuming", second.stdout, re.M), second.stdout
    metrics = json.loads((run / "wb" / "test" / "usual_test_labeled.metrics.json").read_text())
    assert metrics["posts"] == 18
    assert (f"usual_test: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
            in second.stdout)
    assert f"model: {run / 'wb' / 'best'}" in second.stdout


def test_offline_command_refuses_a_folder_of_another_recipe(offline_run):
    # Its finished steps would be skipped and their scores printed as this recipe's.
    out = offline_run[0]
    env = dict(os.environ, EWECT_RAW_DIR=str(FIXTURE_RAW), CLEAN_DIR=str(out / "clean"),
               OUT=str(out / "run"), LAYERS="2", HIDDEN="32", PRETRAIN_EPOCHS="1",
               FINETUNE_EPOCHS="2")
    result = subprocess.run(["sh", str(ROOT / "train_offline.sh")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "holds a run of other settings (layers 1" in result.stderr


def test_offline_command_refuses_a_finished_step_of_other_flags(offline_run):
    # `sh train_offline.sh --adversarial fgm` after a plain run skipped fine-tuning as done and
    # printed the plain model's scores as the new command's.
    out = offline_run[0]
    env = dict(os.environ, EWECT_RAW_DIR=str(FIXTURE_RAW), CLEAN_DIR=str(out / "clean"),
               OUT=str(out / "run"), LAYERS="1", HIDDEN="32", PRETRAIN_EPOCHS="1",
               FINETUNE_EPOCHS="2")
    result = subprocess.run(["sh", str(ROOT / "train_offline.sh"), "--batch_size", "16",
                             "--adversarial", "fgm"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{out / 'run' / 'wb'} was made by another command" in result.stderr


@pytest.mark.parametrize("flags, status", [(["--best", "--no_such_flag"], 2),
                                           (["--best", "--help"], 0)])
def test_offline_command_checks_train_flags_before_pretraining(tmp_path, flags, status):
    # A mistyped flag for train.py was refused only after the pretraining (hours with --best).
    env = dict(os.environ, EWECT_RAW_DIR=str(FIXTURE_RAW), OUT=str(tmp_path / "run"),
               CLEAN_DIR=str(tmp_path / "clean"))
    result = subprocess.run(["sh", str(ROOT / "train_offline.sh"), *flags], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == status, result.stdout + result.stderr
    assert ("unrecognized arguments: --no_such_flag" in result.stderr) == (status == 2)
    assert ("usage: train.py" in result.stdout) == (status == 0)
    assert not (tmp_path / "run" / "mlm").exists() and not (tmp_path / "clean").exists()


def test_offline_model_carries_its_built_vocabulary(offline_run):
    from ewect.mlm import read_corpus, split_held_out

    out, _, second = offline_run
    best = out / "run" / "wb" / "best"
    corpus = [str(out / "clean" / name) for name in ("usual_train.txt", "virus_train.txt",
                                                     "usual_eval_labeled.txt",
                                                     "virus_eval_labeled.txt")]
    train_posts, _ = split_held_out(read_corpus(corpus), 0.02, 42)
    expected = build_vocab(train_posts)
    assert len(expected) < 1000  # the fixture's, not bert-base-chinese's 21128
    assert saved_vocab(out / "run" / "mlm" / "best") == saved_vocab(best) == expected
    assert f"{len(expected)} tokens" in (out / "run" / "mlm" / "train.log").read_text("utf-8")
    classify = pipeline("text-classification", model=str(best), device="cpu")
    assert classify("今天好开心")[0]["label"] in LABELS
    assert classify.tokenizer.vocab_size == len(expected)
    result = run_main("export.py", "--model_dir", best, "--check_posts", 8)
    assert result.returncode == 0, result.stderr
    result = run_main("inference.py", "--model_dir", best, "--input", "今天好开心",
                      "--backend", "onnx", "--device", "cpu")
    assert result.returncode == 0 and any(label in result.stdout for label in LABELS), result


def test_unreachable_hub_loads_a_cached_model_in_seconds(monkeypatch, tmp_path, vocab):
    from huggingface_hub import HfApi, constants

    from ewect.modeling import build_model

    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=1,
                                   hidden_size=32)
    repo = tmp_path / "models--some-org--cached-model"
    model.save_pretrained(repo / "snapshots" / ("0" * 40))
    tokenizer.save_pretrained(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    assert build_model("some-org/cached-model")[0].config.num_hidden_layers == 1
    assert time.monotonic() - start < 10
    # HF_HUB_OFFLINE: the hub is not asked at all; the cache still answers.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "model_info", lambda *args, **kwargs: pytest.fail("asked"))
    assert build_model("some-org/cached-model")[0].config.num_hidden_layers == 1
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        build_model("some-org/not-cached")
