"""Whatever users scrape, inference gives a label or a clear error, never a traceback."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_main, run_script
from ewect.cleaning import clean_text
from ewect.config import LABELS
from ewect.modeling import build_model
from ewect.prediction import predict_probabilities

HOSTILE = ["", "\x00\x01\x1b[31m\x7f", "\ud800\udfff lone surrogates", "好" * 100_000,
           "😀🎉🔥[心][哈哈]", "Ελληνικά русский العربية עברית हिन्दी 한국어 日本語",
           "\u200b\u200d\ufeff", "http://t.cn/x @a //@b: c@d.com", "\n\n\n", "ｆｕｌｌ　ｗｉｄｔｈ！"]


@pytest.fixture(scope="module")
def tiny_model(vocab):
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=1,
                                   hidden_size=32)
    return model.eval(), tokenizer


def assert_labels(tiny_model, texts):
    """Finite probabilities for every text, and for each the same as when it is labelled alone:
    a hostile post neither breaks the batch nor changes its neighbours' labels."""
    model, tokenizer = tiny_model
    cleaned = [clean_text(t) for t in texts]
    probs = predict_probabilities(model, tokenizer, cleaned, "cpu", precision="fp32")
    assert probs.shape == (len(texts), len(LABELS)) and np.isfinite(probs).all()
    alone = np.concatenate([predict_probabilities(model, tokenizer, [t], "cpu", precision="fp32")
                            for t in cleaned])
    assert np.allclose(probs, alone, atol=1e-5)


def test_hostile_strings_get_labels(tiny_model):
    assert_labels(tiny_model, HOSTILE)


# 60 random lists: the hand-picked HOSTILE strings above cover the known traps
@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(codec=None), max_size=300), min_size=1, max_size=4))
def test_arbitrary_strings_get_labels(tiny_model, texts):
    assert_labels(tiny_model, texts)


def test_cli_on_hostile_input(trained, tmp_path):
    # A 10,000-character post is truncated, not refused; invalid UTF-8 in the command line arrives
    # as lone surrogates (a real process: the bytes go through the command line).
    for run, text in [(run_main, "好" * 10_000), (run_script, b"\xff\xfe\xed\xa0\x80 bytes")]:
        result = run("inference.py", "--input", text, "--model_dir", trained / "best",
                     "--device", "cpu")
        assert result.returncode == 0 and result.stdout.split()[0] in LABELS, result.stderr
    posts = tmp_path / "hostile.json"  # the JSON format carries what a text file cannot
    posts.write_text(json.dumps([{"id": i, "content": t} for i, t in enumerate(HOSTILE)]),
                     encoding="utf-8")
    result = run_main("inference.py", "--input_file", posts, "--json", "--model_dir",
                      trained / "best", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == list(range(len(HOSTILE)))
    assert all(line["label"] in LABELS for line in lines)
