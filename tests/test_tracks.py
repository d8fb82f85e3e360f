"""Both tracks: train.py's --dataset usual|virus|both and several train or eval files."""
import json
import os

import pytest

import train
from conftest import tiny_train_args
from ewect.config import REPO_ROOT
from ewect.errors import UserError

CLEAN = os.path.join(REPO_ROOT, "data", "clean")
WORKSPACE = os.path.join(REPO_ROOT, "workspace")


@pytest.mark.parametrize("argv, train_files, eval_files, output_dir", [
    ([], ["usual_train.txt"], ["usual_eval_labeled.txt"], "wb"),  # unchanged: the published recipe
    (["--dataset", "virus"], ["virus_train.txt"], ["virus_eval_labeled.txt"], "wb_virus"),
    (["--dataset", "both"], ["usual_train.txt", "virus_train.txt"],
     ["usual_eval_labeled.txt", "virus_eval_labeled.txt"], "wb_both"),
])
def test_dataset_picks_the_tracks_files_and_output_folder(argv, train_files, eval_files,
                                                          output_dir):
    args = train.parse_args(argv)
    assert args.train_file == [os.path.join(CLEAN, name) for name in train_files]
    assert args.eval_file == [os.path.join(CLEAN, name) for name in eval_files]
    assert args.output_dir == os.path.join(WORKSPACE, output_dir)


def test_explicit_files_and_folder_override_the_dataset():
    args = train.parse_args(["--dataset", "virus", "--train_file", "a.csv", "b.xlsx",
                             "--output_dir", "mine"])
    assert (args.train_file, args.output_dir) == (["a.csv", "b.xlsx"], "mine")
    assert args.eval_file == [os.path.join(CLEAN, "virus_eval_labeled.txt")]


def test_several_train_files_are_read_together_and_resume_checks_them(clean_dir, vocab, tmp_path):
    files = [clean_dir / "usual_train.txt", clean_dir / "virus_train.txt"]
    posts = sum(len(json.loads(path.read_text("utf-8"))) for path in files)
    out = tmp_path / "wb"
    train.main(tiny_train_args(clean_dir, vocab, out, "--train_file", *files,
                               "--stop_after_steps", 1))
    assert f"train: {posts} posts" in (out / "train.log").read_text()
    with pytest.raises(UserError, match="--train_file was"):
        train.main(tiny_train_args(clean_dir, vocab, out, "--resume"))  # one of the two files
    train.main(tiny_train_args(clean_dir, vocab, out, "--train_file", *files, "--resume",
                               "--stop_after_steps", 2))
    assert "resuming from" in (out / "train.log").read_text()
