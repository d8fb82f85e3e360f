"""Public copies of SMP2020-EWECT: TSV files with integer label ids in the copy's own order, a
text_a column, and the ids' names in a labels.json beside them."""
import json

import pytest

from conftest import FIXTURE_RAW, assert_clean_error, run_main, tiny_train_args
from ewect.config import DATA_FILES, PUBLIC_COPY_FILES
from ewect.data import read_records
from ewect.errors import UserError

COPY_ORDER = ("neutral", "happy", "angry", "sad", "fear", "surprise")  # not the repo's LABELS
RELEASED = FIXTURE_RAW / "usual_test_labeled.txt"


def public_copy(folder, labels_json=True, released=RELEASED, name="test.tsv"):
    """A released fixture file as a public copy: qid, label id, text_a."""
    folder.mkdir(parents=True, exist_ok=True)
    records = json.loads(released.read_text("utf-8"))
    path = folder / name
    path.write_text("qid\tlabel\ttext_a\n" + "".join(
        f"{r['id']}\t{COPY_ORDER.index(r['label'])}\t{r['content']}\n" for r in records),
        encoding="utf-8")
    if labels_json:
        (folder / "labels.json").write_text("".join(
            json.dumps({"label": str(i), "label_desc": name}) + "\n"
            for i, name in enumerate(COPY_ORDER)), encoding="utf-8")
    return path


def scores(trained, data_file, output_dir, *extra):
    """metrics.json of test.py on one file, less the file's name."""
    result = run_main("test.py", "--model_dir", trained / "best", "--data_file", data_file,
                      "--output_dir", output_dir, "--device", "cpu", *extra)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((output_dir / f"{data_file.stem}.metrics.json").read_text("utf-8"))
    del metrics["data_file"]
    return metrics


def test_a_public_copy_scores_as_the_released_file(trained, tmp_path):
    released = scores(trained, RELEASED, tmp_path / "released")
    assert scores(trained, public_copy(tmp_path / "copy"), tmp_path / "copy") == released
    names = ",".join(COPY_ORDER)
    assert scores(trained, public_copy(tmp_path / "bare", labels_json=False),
                        tmp_path / "bare", "--label_names", names) == released


def test_label_ids_without_names_get_one_line_saying_how_to_name_them(trained, tmp_path):
    path = public_copy(tmp_path, labels_json=False)
    result = run_main("test.py", "--model_dir", trained / "best", "--data_file", path,
                      "--output_dir", tmp_path, "--device", "cpu")
    assert_clean_error(result, f"{path}: ", "labels.json", "--label_names")
    assert result.stderr.count("\n") == 1


def test_train_reads_public_copies_with_label_names(clean_dir, vocab, tmp_path):
    path = public_copy(tmp_path, labels_json=False)
    args = tiny_train_args(clean_dir, vocab, tmp_path / "out", "--train_file", path,
                           "--eval_file", path, "--epochs", 1)
    assert_clean_error(run_main("train.py", *args), f"{path}: ", "--label_names")
    result = run_main("train.py", *args, "--label_names", ",".join(COPY_ORDER))
    assert result.returncode == 0, result.stderr
    records = read_records(str(path), label_names=COPY_ORDER, log=lambda line: None)
    released = json.loads(RELEASED.read_text("utf-8"))
    assert [(r.content, r.label) for r in records] == [(r["content"], r["label"])
                                                       for r in released]


@pytest.mark.parametrize("labels_json, problem", [
    ('{"label": "0", "label_desc": "joy"}\n', "labels.json: line 1: unknown label 'joy'"),
    ('{"label": "0"}\n', "labels.json: line 1: expected"),
    ("not json\n", "labels.json: line 1: expected"),
])
def test_a_bad_labels_json_is_named(tmp_path, labels_json, problem):
    path = public_copy(tmp_path)
    (tmp_path / "labels.json").write_text(labels_json, encoding="utf-8")
    with pytest.raises(UserError, match=problem):
        read_records(str(path))


def test_clean_data_names_integer_labels_as_its_error_says(tmp_path):
    # The error tells the user to pass --label_names: clean_data.py must take it.
    raw = tmp_path / "raw"
    raw.mkdir()
    records = json.loads((FIXTURE_RAW / "usual_train.txt").read_text("utf-8"))
    numbered = [{**r, "label": COPY_ORDER.index(r["label"])} for r in records]
    (raw / "usual_train.txt").write_text(json.dumps(numbered, ensure_ascii=False), "utf-8")
    out = tmp_path / "clean"
    assert_clean_error(run_main("clean_data.py", "--raw_dir", raw, "--out_dir", out),
                       "--label_names")
    result = run_main("clean_data.py", "--raw_dir", raw, "--out_dir", out,
                      "--label_names", ",".join(COPY_ORDER))
    assert result.returncode == 0, result.stderr
    cleaned = json.loads((out / "usual_train.txt").read_text("utf-8"))
    named = {r["id"]: r["label"] for r in records}
    assert cleaned and all(r["label"] == named[r["id"]] for r in cleaned)


def test_clean_data_reads_a_public_copys_layout_as_the_release(tmp_path):
    # UER-py's copy: usual/train.tsv, usual/dev.tsv, ... with labels.json beside them
    for name in DATA_FILES:
        copy_path = tmp_path / "copy" / PUBLIC_COPY_FILES[name]
        public_copy(copy_path.parent, released=FIXTURE_RAW / name, name=copy_path.name)
    for raw, out in ((FIXTURE_RAW, tmp_path / "from_release"),
                     (tmp_path / "copy", tmp_path / "from_copy")):
        result = run_main("clean_data.py", "--raw_dir", raw, "--out_dir", out)
        assert result.returncode == 0, result.stderr
    for name in DATA_FILES:
        released, copied = (json.loads((tmp_path / folder / name).read_text("utf-8"))
                            for folder in ("from_release", "from_copy"))
        assert [(r["content"], r["label"]) for r in copied] == [
            (r["content"], r["label"]) for r in released], name
