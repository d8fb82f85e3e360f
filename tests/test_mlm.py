"""Masked-LM pretraining parts (ewect/mlm.py): corpus reading, masking, the sparse loss, saving."""
import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertTokenizer, pipeline

from conftest import FIXTURE_RAW
from ewect.data import length_grouped_batches
from ewect.errors import UserError
from ewect.mlm import (MaskingCollator, build_mlm_model, encode_corpus, mask_tokens,
                       masked_lm_loss, read_corpus, replacement_ids, split_held_out)
from ewect.modeling import build_model

FIXTURE_CORPUS = [str(FIXTURE_RAW / name) for name in ("usual_train.txt", "virus_train.txt",
                                                       "usual_eval_labeled.txt",
                                                       "virus_eval_labeled.txt")]


@pytest.fixture(scope="module")
def tokenizer(vocab):
    return BertTokenizer(vocab)


@pytest.fixture(scope="module")
def corpus():
    return read_corpus(FIXTURE_CORPUS, log=lambda line: None)


def tiny_model(vocab, seed=0):
    torch.manual_seed(seed)
    return build_mlm_model(from_scratch=True, vocab=vocab, num_layers=2, hidden_size=32)[0]


def test_masking_statistics_follow_bert(tokenizer):
    """15% of eligible tokens chosen; of those 80% [MASK], 10% random, 10% kept; specials and
    padding never touched; random tokens never special."""
    rows, length = 4000, 48
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, length + 1, (rows,), generator=generator)
    candidates = replacement_ids(tokenizer)
    ids = candidates[torch.randint(len(candidates), (rows, length), generator=generator)]
    ids[:, 0] = tokenizer.cls_token_id
    ids[torch.arange(rows), lengths - 1] = tokenizer.sep_token_id
    ids[torch.arange(length) >= lengths[:, None]] = tokenizer.pad_token_id
    eligible = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))

    inputs, labels = mask_tokens(ids, eligible, mask_id=tokenizer.mask_token_id,
                                 replacement_ids=candidates, generator=generator)
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])
    assert not chosen[~eligible].any() and torch.equal(inputs[~eligible], ids[~eligible])
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.01
    masked = (inputs == tokenizer.mask_token_id) & chosen
    kept = (inputs == ids) & chosen
    replaced = chosen & ~masked & ~kept
    shares = [float(part.sum() / chosen.sum()) for part in (masked, replaced, kept)]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.02)
    assert not torch.isin(inputs[replaced], torch.tensor(tokenizer.all_special_ids)).any()
    assert not (inputs[~chosen] != ids[~chosen]).any()


def test_whole_word_masking_masks_every_token_of_a_chosen_word(tokenizer, corpus):
    ids, word_ids = encode_corpus(tokenizer, corpus, 140, whole_word_mask=True)
    # jieba's words: 开心 is one word, so its two characters share a word number
    text = corpus.index("今天终于放假了,太开心了!")
    tokens = tokenizer.convert_ids_to_tokens(ids[text])
    assert word_ids[text][tokens.index("开")] == word_ids[text][tokens.index("心")]
    assert word_ids[text][0] == word_ids[text][-1] == -1  # [CLS], [SEP]

    repeats = list(range(len(corpus))) * 60
    batch = MaskingCollator(ids, tokenizer, word_ids, seed=3)(repeats)
    chosen = (batch["labels"] != -100).tolist()
    special = set(tokenizer.all_special_ids)  # [UNK] too: never chosen, even inside a word
    words_seen = words_chosen = eligible = 0
    for row, index in enumerate(repeats):
        by_word = {}
        for position, (token, word) in enumerate(zip(ids[index], word_ids[index])):
            if token not in special:
                by_word.setdefault(word, set()).add(chosen[row][position])
                eligible += 1
        assert all(len(states) == 1 for states in by_word.values()), "a word masked in part"
        words_seen += len(by_word)
        words_chosen += sum(True in states for states in by_word.values())
    assert abs(sum(map(sum, chosen)) / eligible - 0.15) < 0.01  # the share of tokens
    assert abs(words_chosen / words_seen - 0.15) < 0.01


def test_a_word_piece_continues_its_word(tokenizer):
    # "yyds", Weibo slang, is one jieba word of several WordPiece tokens (yy ##ds with
    # bert-base-chinese's vocabulary, y ##y ##d ##s with the built one): all get one word id.
    ids, word_ids = encode_corpus(tokenizer, ["我说yyds世界"], 140, whole_word_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    pieces = [i for i, token in enumerate(tokens) if token.startswith("##")]
    assert pieces, tokens  # the branch under test runs
    assert len({word_ids[0][i] for i in [pieces[0] - 1, *pieces]}) == 1, (tokens, word_ids)


def test_held_out_masks_do_not_depend_on_the_batches(tokenizer, corpus):
    # pretrain.py's held-out loss is compared across epochs and across a --resume that may use
    # another --eval_batch_size: each post's masks must be its own.
    ids, _ = encode_corpus(tokenizer, corpus, 140)
    held_out = MaskingCollator(ids, tokenizer, seed=5, per_post=True)
    whole = held_out(list(range(12)))
    for start in (0, 5):
        part = held_out(list(range(start, start + 4)))
        width = part["labels"].shape[1]
        assert torch.equal(part["labels"], whole["labels"][start:start + 4, :width])
        assert torch.equal(part["input_ids"], whole["input_ids"][start:start + 4, :width])


def test_masks_depend_only_on_seed_and_batch(tokenizer, corpus):
    ids, _ = encode_corpus(tokenizer, corpus, 140)
    collate = MaskingCollator(ids, tokenizer, seed=5)
    assert torch.equal(collate([0, 1, 2])["input_ids"], collate([0, 1, 2])["input_ids"])
    other = MaskingCollator(ids, tokenizer, seed=6)([0, 1, 2])
    assert not torch.equal(collate([0, 1, 2])["labels"], other["labels"])


def test_sparse_loss_equals_the_full_vocabulary_loss(vocab, tokenizer, corpus):
    model = tiny_model(vocab).eval()
    ids, _ = encode_corpus(tokenizer, corpus, 140)
    batch = MaskingCollator(ids, tokenizer, seed=0)(list(range(32)))
    loss, count, correct = masked_lm_loss(model, batch)
    dense = model(**{k: v for k, v in batch.items() if k != "masked_positions"})
    assert loss.item() == pytest.approx(dense.loss.item(), rel=1e-5)
    chosen = batch["labels"] != -100
    assert count.item() == chosen.sum().item() > 0
    assert correct.item() == (dense.logits.argmax(-1)[chosen] == batch["labels"][chosen]).sum()


def test_a_few_steps_lower_the_held_out_loss(vocab, tokenizer, corpus):
    train, held_out = split_held_out(corpus, fraction=0.1, seed=0)
    model = tiny_model(vocab)
    ids, word_ids = encode_corpus(tokenizer, train, 140, whole_word_mask=True)
    held_ids, _ = encode_corpus(tokenizer, held_out, 140)
    held_batch = MaskingCollator(held_ids, tokenizer, seed=0)(list(range(len(held_ids))))

    def held_out_loss():
        model.eval()
        with torch.no_grad():
            return masked_lm_loss(model, held_batch)[0].item()

    before = held_out_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    collate = MaskingCollator(ids, tokenizer, word_ids, seed=0)
    model.train()
    for epoch in range(2):  # 4 steps of 16 posts each
        for batch in length_grouped_batches([len(x) for x in ids], 16, seed=epoch):
            masked_lm_loss(model, collate(batch))[0].backward()
            optimizer.step()
            optimizer.zero_grad()
    assert held_out_loss() < 0.95 * before  # from ln(vocabulary size), by more than 5%


def test_saved_folder_loads_for_fill_mask_and_fine_tuning(vocab, tokenizer, tmp_path):
    model = tiny_model(vocab)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)).__name__ == "BertForMaskedLM"
    predictions = pipeline("fill-mask", model=str(tmp_path), device="cpu")("今天天气真[MASK]")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)
    classifier, _ = build_model(str(tmp_path))  # train.py --model_name FOLDER
    assert classifier.config.num_labels == 6
    assert torch.equal(classifier.bert.embeddings.word_embeddings.weight,
                       model.bert.embeddings.word_embeddings.weight)
    assert build_mlm_model(str(tmp_path))[0].config.num_hidden_layers == 2  # continued pretraining


def test_corpus_reads_json_csv_and_plain_text_and_drops_duplicates(tmp_path):
    (tmp_path / "posts.json").write_text(json.dumps(
        [{"id": 1, "content": "好开心"}, {"id": 2, "content": "http://t.cn/abc"}],
        ensure_ascii=False), encoding="utf-8")
    (tmp_path / "posts.csv").write_text("id,content\n1,好开心\n2,\"有点,难过\"\n", encoding="utf-8")
    (tmp_path / "crawl.txt").write_text("[哈哈]太棒了\n\n有点,难过\n好開心\n", encoding="utf-8")
    texts = read_corpus([str(tmp_path / name) for name in ("posts.json", "posts.csv",
                                                            "crawl.txt")], log=lambda line: None)
    assert texts == ["好开心", "有点,难过", "[哈哈]太棒了"]  # cleaned, then deduplicated


def test_split_held_out_is_deterministic_and_disjoint():
    texts = [f"post {i}" for i in range(500)]
    train, held_out = split_held_out(texts, seed=1)
    assert len(held_out) == 10 and sorted(train + held_out) == sorted(texts)
    assert split_held_out(texts, seed=1) == (train, held_out)
    assert split_held_out(texts, seed=2)[1] != held_out


def test_a_test_file_in_the_corpus_is_warned_about(tmp_path):
    path = tmp_path / "usual_test_labeled.txt"
    path.write_text("好开心\n", encoding="utf-8")
    lines = []
    read_corpus([str(path)], log=lines.append)
    assert len(lines) == 1 and "test file" in lines[0] and str(path) in lines[0]
    assert not lines[0].startswith("warning")  # a logger's WARNING says so already


@pytest.mark.parametrize("name, content, message", [
    (None, None, "missing.txt: file not found"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "latin1.txt: not UTF-8 text"),
    ("links.txt", "http://t.cn/abc\n \n@someone\n".encode(), "no usable text"),
    ("posts.csv", "id,text\n1,好\n".encode(), "posts.csv: no 'content' column"),
    ("bad.json", b'[{"id": 1}]', "bad.json: record id 1: no 'content' (or 'text') field"),
])
def test_bad_corpus_gets_one_line(tmp_path, name, content, message):
    path = tmp_path / (name or "missing.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_corpus([str(path)], log=lambda line: None)
    assert message in str(err.value) and "\n" not in str(err.value)
