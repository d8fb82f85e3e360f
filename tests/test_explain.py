"""Explanations (ewect/explain.py) and the error report (ewect/error_report.py)."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from ewect.config import LABEL2ID, LABELS
from ewect.data import encode
from ewect.error_report import error_report
from ewect.errors import UserError
from ewect.explain import Explanation, make_explainer, tokenize
from ewect.modeling import build_model, save_checkpoint
from ewect.prediction import load_predictor

CUE = "怒"  # the character that decides the label of the model trained below
FILLER = list("今天我们去公园吃饭看书天气很好明后也是的了")
COMPLETENESS_TOLERANCE = 0.01  # of a probability: 16 Gauss-Legendre points (bench/RESULTS.md)


def cue_posts(count, rng):
    """Posts of 6 to 12 filler characters, half of them with the cue at a random place."""
    posts, labels = [], []
    for number in range(count):
        chars = list(rng.choice(FILLER, rng.integers(6, 13)))
        angry = number % 2 == 0
        if angry:
            chars.insert(rng.integers(0, len(chars) + 1), CUE)
        posts.append("".join(chars))
        labels.append(LABEL2ID["angry" if angry else "happy"])
    return posts, labels


@pytest.fixture(scope="module")
def cue_model(vocab, tmp_path_factory):
    """A tiny BERT trained until one character decides its label: angry with it, happy without
    (p about 0.8, as sure as real models are; trained on to p 0.99, a model's probability jumps
    from 0 to 1 so abruptly along IG's path that even 256 points miss completeness)."""
    torch.manual_seed(0)
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=1,
                                   hidden_size=32, dropout=0.0)
    posts, labels = cue_posts(256, np.random.default_rng(0))
    ids = tokenizer(posts, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(100):
        batch = slice(step * 32 % 256, step * 32 % 256 + 32)
        loss = model(input_ids=ids["input_ids"][batch], attention_mask=ids["attention_mask"][batch],
                     labels=torch.tensor(labels[batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("cue") / "model"
    save_checkpoint(model.eval(), tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def cue_predictor(cue_model):
    return load_predictor(cue_model, device="cpu", precision="fp32")


def test_the_character_that_decides_the_label_ranks_first(cue_predictor):
    posts, labels = cue_posts(20, np.random.default_rng(1))
    probabilities = cue_predictor.predict(posts)
    assert list(probabilities.argmax(-1)) == labels  # the model learnt the cue
    angry = [post for post, label in zip(posts, labels) if label == LABEL2ID["angry"]]
    for method in ("ig", "occlusion"):
        explanations = make_explainer(cue_predictor, method).explain(
            angry, [LABEL2ID["angry"]] * len(angry))
        for post, explanation in zip(angry, explanations):
            assert explanation.pieces[explanation.top(1)[0]] == CUE, (method, post)


def test_integrated_gradients_add_up_to_the_change_in_probability(cue_predictor):
    # Completeness: the scores sum to p(label | post) - p(label | the baseline post of [MASK]s).
    posts, labels = cue_posts(12, np.random.default_rng(2))
    explanations = make_explainer(cue_predictor, "ig").explain(posts, labels)
    tokenizer, changes = cue_predictor.tokenizer, []
    for post, label, explanation in zip(posts, labels, explanations):
        ids = encode(tokenizer, [post], 140)[0]
        baseline = [ids[0]] + [tokenizer.mask_token_id] * (len(ids) - 2) + [ids[-1]]
        p = torch.softmax(torch.from_numpy(cue_predictor.logits([ids, baseline], 2)), -1)
        changes.append(float(p[0, label] - p[1, label]))
        assert sum(explanation.scores) == pytest.approx(changes[-1], abs=COMPLETENESS_TOLERANCE)
        assert abs(explanation.delta) <= COMPLETENESS_TOLERANCE
    assert max(changes) > 0.5  # the cue moves p by far more than the tolerance


def test_scores_are_in_units_of_the_calibrated_probability(cue_predictor):
    posts, labels = cue_posts(4, np.random.default_rng(3))
    posts, labels = posts[::2], labels[::2]  # with the cue: angry
    explainer = make_explainer(cue_predictor, "occlusion")
    plain = explainer.explain(posts, labels)
    cue_predictor.temperature = 3.0
    try:
        softened = make_explainer(cue_predictor, "occlusion").explain(posts, labels)
    finally:
        cue_predictor.temperature = 1.0
    for a, b in zip(plain, softened):  # a softer probability moves less
        assert np.abs(b.scores).sum() < np.abs(a.scores).sum()


POSTS_WITH_EVERYTHING = [
    "[哈哈]今天好开心", "hello世界2020年!", "好 的 ok [doge]", "😂😂笑死", "[未闭合 的括号",
    "今天天气很好我们去公园吃饭看书" * 3,
]


def test_pieces_concatenate_to_the_cleaned_text(vocab):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab)
    for max_length in (140, 16):
        tokenized = tokenize(tokenizer, POSTS_WITH_EVERYTHING, max_length)
        assert [post.ids for post in tokenized] == encode(tokenizer, POSTS_WITH_EVERYTHING,
                                                          max_length)
        for text, post in zip(POSTS_WITH_EVERYTHING, tokenized):
            cut = len(text) if post.cut_at is None else post.cut_at
            assert "".join(post.pieces) == text[:cut]
        # only the long post is cut, after its 14 characters (16 tokens with [CLS] and [SEP])
        assert [post.cut_at for post in tokenized] == [None] * 5 + [
            None if max_length == 140 else 14]
    whole = tokenize(tokenizer, POSTS_WITH_EVERYTHING)
    assert whole[0].pieces[0] == "[哈哈]"  # an emoji tag is one piece
    assert "hello" in whole[1].pieces and "2020" in whole[1].pieces  # word pieces: one
    assert tokenize(tokenizer, [""])[0].pieces == []


def test_an_ensemble_explains_by_the_mean_of_its_members(cue_model, vocab, tmp_path):
    posts, labels = cue_posts(4, np.random.default_rng(4))
    single = make_explainer(load_predictor(cue_model, device="cpu", precision="fp32"))
    twice = make_explainer(load_predictor([cue_model, cue_model], device="cpu",
                                          precision="fp32"))
    for a, b in zip(single.explain(posts, labels), twice.explain(posts, labels)):
        assert b.pieces == a.pieces and b.scores == pytest.approx(a.scores, abs=1e-6)
    other = tmp_path / "other"  # another tokenizer: its pieces need not line up
    vocabulary = open(vocab, encoding="utf-8").read().split("\n")
    (tmp_path / "vocab.txt").write_text("\n".join(vocabulary[:-1] + ["额外"]) + "\n",
                                        encoding="utf-8")
    model, tokenizer = build_model(None, from_scratch=True, vocab=str(tmp_path / "vocab.txt"),
                                   num_layers=1, hidden_size=32)
    save_checkpoint(model.eval(), tokenizer, other)
    with pytest.raises(UserError, match="share one tokenizer"):
        make_explainer(load_predictor([cue_model, other], device="cpu"))


def test_integrated_gradients_are_refused_for_an_int8_model(cue_model):
    predictor = load_predictor(cue_model, device="cpu", int8=True)
    assert make_explainer(predictor).method == "occlusion"
    with pytest.raises(UserError, match="ig needs the torch backend without --int8.*occlusion"):
        make_explainer(predictor, "ig")


class FirstCharacter:
    """An explainer stub: the first character carries everything."""
    method = "stub"

    def explain(self, texts, targets, max_length=None):
        return [Explanation(list(text), [1.0] + [0.0] * (len(text) - 1)) for text in texts]


def test_error_report_lists_the_surest_mistakes_of_each_confusion_first():
    angry, sad, happy = LABEL2ID["angry"], LABEL2ID["sad"], LABEL2ID["happy"]
    texts = ["甲一", "乙二", "丙三", "丁四", "戊五", "己六", "庚七"]
    golds = [angry, angry, angry, sad, happy, happy, sad]
    predicted = [sad, sad, sad, angry, happy, happy, sad]
    probabilities = np.full((7, len(LABELS)), 0.05)
    for row, p in enumerate([0.5, 0.9, 0.7, 0.8, 0.9, 0.9, 0.9]):
        probabilities[row, predicted[row]] = p
    markdown, page = error_report([f"id{i}" for i in range(7)], texts, golds, predicted,
                                  probabilities, FirstCharacter(), 2, "report")
    # angry -> sad (3 posts) before sad -> angry (1); its two surest: 乙 (0.9), then 丙 (0.7)
    assert markdown.index("angry → sad") < markdown.index("sad → angry")
    section = markdown[markdown.index("## angry → sad"):markdown.index("## sad → angry")]
    assert section.index("**乙**二") < section.index("**丙**三") and "甲" not in section
    assert "the 2 most confident of 3" in section
    assert "| angry | sad | 3 | 100.0% |" in markdown
    happy_row = next(line for line in markdown.splitlines() if line.startswith("| happy |"))
    assert "戊 1" in happy_row and "己 1" in happy_row  # what carries happy: 戊, 己
    assert page.count("<li>") == 3 and "id1" in page and "乙" in page


def test_error_report_escapes_markup_in_posts():
    markdown, page = error_report(["x"], ["好*a*<b>|c"], [0], [1], np.full((1, 6), 0.2),
                                  FirstCharacter(), 1, "t")
    assert r"**好**\*a\*\<b\>\|c" in markdown
    assert "&lt;</span>" in page and "<b>" not in page


def test_test_py_errors_report_names_the_surest_mistakes_of_the_predictions(cue_model,
                                                                            tmp_path):
    from conftest import run_main

    # The cue model labels posts with the cue angry and the rest happy; gold labels that say
    # otherwise make two confusions: sad -> angry (5 posts) and fear -> happy (3 posts).
    posts, labels = cue_posts(16, np.random.default_rng(5))
    golds = [LABELS[label] for label in labels]
    for i in (0, 2, 4, 6, 8):
        golds[i] = "sad"
    for i in (1, 3, 5):
        golds[i] = "fear"
    data = tmp_path / "posts.json"
    data.write_text(json.dumps([{"id": i, "content": post, "label": gold} for i, (post, gold)
                                in enumerate(zip(posts, golds))], ensure_ascii=False), "utf-8")
    result = run_main("test.py", "--model_dir", cue_model, "--device", "cpu", "--precision",
                      "fp32", "--data_file", data, "--output_dir", tmp_path, "--errors", "2")
    assert result.returncode == 0, result.stderr
    assert "posts.errors.md" in result.stdout
    markdown = (tmp_path / "posts.errors.md").read_text(encoding="utf-8")
    page = (tmp_path / "posts.errors.html").read_text(encoding="utf-8")
    table = pd.read_csv(tmp_path / "posts.predictions.csv")
    table["p"] = [row[f"p_{row.predicted}"] for _, row in table.iterrows()]
    expected = []
    for gold, predicted in (("sad", "angry"), ("fear", "happy")):
        rows = table[(table.gold == gold) & (table.predicted == predicted)]
        assert len(rows) == {"sad": 5, "fear": 3}[gold]
        for _, row in rows.sort_values("p", ascending=False).head(2).iterrows():
            expected.append((str(row.id), predicted, f"{row.p:.3f}", gold))
    listed = re.findall(r"id (\d+), p\((\w+)\) ([\d.]+), p\((\w+)\)", markdown)
    assert listed == expected
    assert markdown.index("## sad → angry: the 2 most confident of 5") < markdown.index(
        "## fear → happy: the 2 most confident of 3")
    assert page.count("<li>") == 4
    angry_row = next(line for line in markdown.splitlines() if line.startswith("| angry |"))
    assert angry_row.startswith(f"| angry | 3 | {CUE} 3")  # the cue carries every angry post
