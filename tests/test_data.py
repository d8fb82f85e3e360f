"""Reading and validating data files; batching."""
import json
import re

import pytest

from conftest import run_main
from ewect.data import (length_grouped_batches, read_posts, read_records, sorted_batches,
                        split_for_step)
from ewect.errors import UserError
from ewect.mlm import read_corpus


def write(tmp_path, content, name="data.txt"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
                    encoding="utf-8")
    return str(path)


GOOD = {"id": 1, "content": "好开心", "label": "happy"}


@pytest.mark.parametrize("record, problem", [
    ({"id": 2, "label": "happy"}, "record id 2: no 'content' field"),
    ({"id": 2, "content": None, "label": "happy"}, "record id 2: 'content' is NoneType"),
    ({"id": 2, "content": 3.5, "label": "happy"}, "record id 2: 'content' is float"),
    ({"id": 2, "content": "x", "label": "joy"}, "record id 2: unknown label 'joy'"),
    ({"id": 2, "content": "x"}, "record id 2: no 'label' field"),
    ({"id": 1, "content": "x", "label": "sad"}, "record id 1: duplicate id"),
    ({"content": "x", "label": "sad"}, "record #1: no 'id' field"),
    ("just a string", "record #1: not an object"),
])
def test_bad_record_is_named_with_file_and_id(tmp_path, record, problem):
    path = write(tmp_path, [GOOD, record])
    with pytest.raises(UserError) as err:
        read_records(path)
    assert str(err.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(err.value)
    assert [r.id for r in read_records(path, skip_bad_records=True, log=lambda m: None)] == [1]


def test_every_bad_record_is_listed(tmp_path):
    path = write(tmp_path, [GOOD, {"id": 2}, {"id": 3, "content": "x", "label": "?"}])
    with pytest.raises(UserError, match="2 unusable records") as err:
        read_records(path)
    assert "record id 2" in str(err.value) and "record id 3" in str(err.value)


@pytest.mark.parametrize("content, problem", [
    ('[{"id": 1, "content": "x", ', "not valid JSON"),
    ('{"id": 1}', "expected a JSON array"),
    ("[]", "no usable records"),
])
def test_malformed_file(tmp_path, content, problem):
    with pytest.raises(UserError, match=problem):
        read_records(write(tmp_path, content))


def test_no_data_yet_says_where_the_data_goes(tmp_path, monkeypatch):
    # A fresh clone's `sh train.sh`: the default cleaned file is missing because there is no data
    import ewect.data

    monkeypatch.setattr(ewect.data, "CLEAN_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"usual_train.txt: file not found; put the six .*data/raw/"
                                        r" and run python clean_data.py"):
        read_records(str(tmp_path / "usual_train.txt"))


def test_missing_and_non_utf8_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_records(str(tmp_path / "nope.txt"))
    path = tmp_path / "latin1.txt"
    path.write_bytes('[{"id": 1, "content": "caf\xe9", "label": "happy"}]'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_records(str(path))


def test_unlabelled_records_for_inference(tmp_path):
    records = read_records(write(tmp_path, [{"id": "a", "content": "x"}]), require_label=False)
    assert records[0].label is None


ROWS = [{"id": "007", "content": "好,开心\n\"哈哈\"", "label": "neural"},  # comma, newline, quotes
        {"id": "8", "content": "", "label": "sad"}, {"id": "9", "content": "唉", "label": "neural"}]


@pytest.mark.parametrize("name", ["posts.txt", "posts.CSV", "posts.tsv", "posts.xlsx"])
def test_tables_and_the_neural_typo_read_like_the_released_json(tmp_path, name):
    import pandas as pd

    path = str(tmp_path / name)
    rows = ROWS
    if name.endswith(".txt"):
        write(tmp_path, ROWS, name)
    elif name.endswith(".xlsx"):
        pd.DataFrame(ROWS).to_excel(path, index=False)
    elif name.endswith(".tsv"):  # one post a line, quotes as they are: no newline in a post
        rows = [dict(r, content=r["content"].replace("\n", " ")) for r in ROWS]
        write(tmp_path, "id\tcontent\tlabel\n" + "".join("\t".join(r.values()) + "\n"
                                                       for r in rows), name)
    else:
        pd.DataFrame(ROWS).to_csv(path, index=False)
    said = []
    records = read_records(path, log=said.append)
    assert [vars(r) for r in records] == [dict(r, label=r["label"].replace("neural", "neutral"))
                                          for r in rows]
    assert said == [f"{path}: read label 'neural' as 'neutral' (2 records)"]


def test_a_table_without_ids_numbers_its_rows(tmp_path):
    path = write(tmp_path, "content,label\n好,happy\n唉,sad\n", "posts.csv")
    assert [(r.id, r.label) for r in read_records(path)] == [(1, "happy"), (2, "sad")]


@pytest.mark.parametrize("name, content, problem", [
    ("posts.csv", "id,content,label\n1,好,开心,happy\n",  # a stray comma
     "line 2: 4 fields where the header has 3"),
    ("posts.tsv", "id\tcontent\n1\t好\n", "no 'label' column (found id, content)"),
    ("posts.xlsx", "not a spreadsheet", "not a readable Excel file"),
])
def test_malformed_table(tmp_path, name, content, problem):
    with pytest.raises(UserError, match=re.escape(problem)):
        read_records(write(tmp_path, content, name))


# The first post opens a quote it never closes: read as CSV it would swallow posts 2 and 3.
QUOTED_POSTS = ['"好开心 他说', "今天不错", '再见"了', "最后"]


def quoted_tsv(tmp_path, name="posts.tsv", label=None):
    header, tail = ("id\tcontent\tlabel\n", f"\t{label}") if label else ("id\tcontent\n", "")
    return write(tmp_path, header + "".join(f"{i}\t{post}{tail}\n"
                                            for i, post in enumerate(QUOTED_POSTS, 1)), name)


def test_a_tsv_file_is_one_post_a_line_quotes_and_all(tmp_path):
    path = quoted_tsv(tmp_path)
    assert list(read_posts(path)) == [(str(i), post) for i, post in enumerate(QUOTED_POSTS, 1)]
    assert len(read_corpus([path], log=lambda line: None)) == len(QUOTED_POSTS)
    labelled = quoted_tsv(tmp_path, "labelled.tsv", label="happy")
    assert [r.content for r in read_records(labelled)] == QUOTED_POSTS


def test_inference_labels_every_post_of_a_tsv_file(trained, tmp_path):
    result = run_main("inference.py", "--model_dir", trained / "best", "--input_file",
                      quoted_tsv(tmp_path), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(row[0], row[-1]) for row in rows] == [(str(i), post)
                                                    for i, post in enumerate(QUOTED_POSTS, 1)]


@pytest.mark.parametrize("content, line", [
    ('id,content\n1,好\n2,"好开心 他说\n3,今天不错\n', 3),  # a quote never closed
    ('id,content\n1,"好开心 他说\n2,今天不错\n3,再见"了\n4,最后\n', 2),  # closed, then text
    ('id,content\n1,"好开心 他说\n2,今天",不错\n3,最后\n', 2),  # closed, then a field too many
    ("id,content\n1,好\n2,好,开心\n", 3),  # a stray comma
    ("id,content\n1,好\n2\n", 3),  # a field missing
])
def test_a_csv_file_with_broken_quoting_names_the_line(tmp_path, content, line):
    path = write(tmp_path, content, "posts.csv")
    for read in (lambda: list(read_posts(path)), lambda: read_records(path, require_label=False)):
        with pytest.raises(UserError) as err:
            read()
        assert str(err.value).startswith(f"{path}: line {line}: "), str(err.value)
        assert "\n" not in str(err.value)


def test_length_grouped_batches_cover_every_post_once_and_group_lengths():
    lengths = [(i * 37) % 101 + 3 for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, seed=1, group_size=4)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(1000))
    assert batches == length_grouped_batches(lengths, 16, seed=1, group_size=4)
    assert batches != length_grouped_batches(lengths, 16, seed=2, group_size=4)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_order = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    padded_random = sum(len(b) * max(lengths[i] for i in b) for b in random_order)
    assert padded < 0.8 * padded_random  # grouping removes most of the padding


@pytest.mark.parametrize("world_size, accumulation", [(1, 1), (2, 1), (3, 1), (4, 2)])
def test_a_step_is_dealt_to_processes_whole_and_evenly(world_size, accumulation):
    lengths = [(i * 37) % 101 + 3 for i in range(200)]
    batch = length_grouped_batches(lengths, 64, seed=1)[0]
    pieces = [split_for_step(batch, rank, world_size, accumulation) for rank in range(world_size)]
    assert all(len(p) == accumulation for p in pieces)
    assert split_for_step([7, 8, 9], 0, 2, 2) == [[7], [9]] and split_for_step([7, 8, 9], 1, 2, 2) == [[8]]
    flat = [i for rank_pieces in pieces for piece in rank_pieces for i in piece]
    assert sorted(flat) == sorted(batch)  # every post of the step once, in some process
    sizes = [len(piece) for rank_pieces in pieces for piece in rank_pieces]
    assert max(sizes) - min(sizes) <= 1
    # Each process's longest post is close to the batch's: nobody waits for a longer piece.
    longest = [max(lengths[i] for piece in p for i in piece) for p in pieces]
    assert min(longest) >= lengths[batch[world_size * accumulation - 1]]


def test_sorted_batches_longest_first():
    assert sorted_batches([1, 5, 3, 4], 2) == [[1, 3], [2, 0]]


def test_gpu_batches_are_padded_to_a_multiple_of_8_and_cpu_batches_to_their_longest_post():
    # A GPU pays for every new batch shape (kernel plans); a CPU pays for every pad token.
    from ewect.data import Collator, pad_multiple
    from ewect.prediction import pad

    ids = [[101, 5, 6, 102], [101, 7, 8, 9, 10, 11, 12, 13, 14, 102]]  # 4 and 10 tokens
    assert (pad_multiple("cuda"), pad_multiple("cpu")) == (8, 1)
    for multiple, width in ((1, 10), (8, 16)):
        batch = Collator(ids, [0, 1], pad_id=0, multiple=multiple)([0, 1])
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, width)
        assert batch["attention_mask"].sum(1).tolist() == [4, 10]
        assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
        input_ids, mask = pad(ids, 0, multiple)
        assert input_ids.shape == (2, width) and mask.sum(1).tolist() == [4, 10]


def test_rounding_up_never_pads_past_the_model_positions():
    from ewect.data import Collator, padded_width

    assert padded_width([130, 12], 8) == 136
    assert padded_width([299], 8, limit=300) == 300 and padded_width([13], 8, limit=300) == 16
    batch = Collator([[1] * 299], [0], multiple=8, limit=300)([0])
    assert batch["input_ids"].shape == (1, 300)


def test_a_text_file_splits_posts_at_line_feeds_only(tmp_path):
    # A carriage return alone is inside a post (an old Mac editor's, or pasted text): reading it
    # as a line break would label one post as two and shift every later line number.
    path = tmp_path / "posts.txt"
    path.write_bytes("好\r开心\r\n气死了\n\n哭\r\n".encode())
    assert list(read_posts(str(path))) == [(1, "好\r开心"), (2, "气死了"), (4, "哭")]


def test_json_lines_are_read_as_records(tmp_path):
    # inference.py --json writes JSON Lines (the text as 'text'); read as plain lines, each post
    # would be its JSON.
    lines = '{"id": "a", "content": "好开心"}\n\n{"content": "气死了"}\n'
    assert list(read_posts(write(tmp_path, lines, "posts.jsonl"))) == [("a", "好开心"),
                                                                      (3, "气死了")]
    labelled = '{"id": 7, "text": "好开心", "label": "happy"}\n'
    assert list(read_posts(write(tmp_path, labelled, "labels.jsonl"))) == [(7, "好开心")]
    as_text = write(tmp_path, lines, "posts.txt")  # a post of a text file may start with '{'
    assert list(read_posts(as_text)) == [(1, '{"id": "a", "content": "好开心"}'),
                                         (3, '{"content": "气死了"}')]
    assert list(read_posts(as_text, "jsonl")) == [("a", "好开心"), (3, "气死了")]


@pytest.mark.parametrize("content, problem", [
    ('{"id": 1, "post": "好"}\n', "line 1: no 'content' (or 'text') field"),
    ('{"id": 1, "content": "好"}\n[1, 2]\n', "line 2: not an object but list"),
    ('{"id": 1, "content": "好"}\n{"id": 2, "content": "好"\n', "line 2: not valid JSON"),
    ('{"id": 1, "content": null}\n', "line 1: 'content' is NoneType, not a string"),
])
def test_bad_json_lines_name_their_line(tmp_path, content, problem):
    path = write(tmp_path, content, "posts.jsonl")
    with pytest.raises(UserError, match=re.escape(f"{path}: {problem}")):
        list(read_posts(path))


@pytest.mark.parametrize("content, problem", [
    ({"posts": [{"id": 1, "content": "好"}]}, "expected a JSON array of records, found dict"),
    (["好开心", "气死了"], "record #0: not an object but str"),
])
def test_a_json_file_that_is_not_an_array_of_records_is_refused(tmp_path, content, problem):
    path = write(tmp_path, content, "posts.json")  # read as lines, each post would be JSON text
    with pytest.raises(UserError, match=re.escape(problem)):
        list(read_posts(path))


@pytest.mark.parametrize("name", ["posts.json", "posts.xlsx"])
def test_posts_with_repeated_or_missing_ids_are_all_labelled(tmp_path, name):
    # Ids of posts to label are only echoed; as in CSV, a missing one is the post's number.
    import pandas as pd

    records = [{"id": 7, "content": "好"}, {"id": 7, "content": "气死了"}, {"content": "哭"}]
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        expected = [(7, "好"), (7, "气死了"), (3, "哭")]
    else:
        pd.DataFrame(records).astype({"id": "Int64"}).to_excel(path, index=False)
        expected = [("7", "好"), ("7", "气死了"), (3, "哭")]
    assert list(read_posts(str(path))) == expected


@pytest.mark.parametrize("name", ["posts.csv", "posts.tsv"])
def test_a_huge_post_in_a_table_is_read_whole(tmp_path, name):
    # csv's default limit is 131,072 characters a field: past it the whole file was refused.
    huge = "好" * 200_000
    sep = "," if name.endswith(".csv") else "\t"
    path = write(tmp_path, f"id{sep}content\n1{sep}{huge}\n2{sep}气死了\n", name)
    assert list(read_posts(path)) == [("1", huge), ("2", "气死了")]


@pytest.mark.parametrize("extension", ["csv", "xlsx"])
def test_a_blank_row_of_a_table_is_no_post(tmp_path, extension):
    import pandas as pd

    path = tmp_path / f"posts.{extension}"
    if extension == "csv":
        path.write_text("content\n好开心\n\n气死了\n", encoding="utf-8")
    else:
        pd.DataFrame({"content": ["好开心", None, "气死了"]}).to_excel(path, index=False)
    assert list(read_posts(str(path))) == [(1, "好开心"), (2, "气死了")]
