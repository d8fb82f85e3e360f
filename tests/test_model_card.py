"""best/README.md: a model card the Hub reads, written by train.py and completed by test.py."""
import json
import shutil

from huggingface_hub import ModelCard

from conftest import run_main
from ewect.config import LABELS
from ewect.model_card import add_test_scores, write_model_card


def results(card, split, data="usual_test_labeled"):
    found = [r for r in card.data.eval_results if r.dataset_split == split and
             (split != "test" or r.dataset_name == f"SMP2020-EWECT {data}")]
    assert all(r.dataset_config == r.dataset_name.split()[-1] for r in found)
    assert len(found) == len({r.metric_type for r in found})  # each score once
    return {r.metric_type: r.metric_value for r in found}


def test_train_writes_a_model_card_the_hub_reads(trained):
    card = ModelCard.load(trained / "best" / "README.md")
    scores = json.loads((trained / "best" / "eval_results.json").read_text(encoding="utf-8"))
    assert card.data.language == "zh" and card.data.pipeline_tag == "text-classification"
    assert card.data.labels == list(LABELS)
    assert results(card, "validation") == {"accuracy": round(scores["eval_acc"], 4),
                                           "f1": round(scores["eval_macro_f1"], 4)}
    assert "python train.py --from_scratch --vocab" in card.text  # the command that made it
    assert "## Intended use and limits" in card.text


def test_test_py_adds_its_scores_and_keeps_the_rest(trained, clean_dir, tmp_path):
    best = tmp_path / "best"
    shutil.copytree(trained / "best", best)
    card_path = best / "README.md"
    card_path.write_text(card_path.read_text(encoding="utf-8") + "\nMy own note.\n", "utf-8")
    for _ in range(2):  # tested twice: its scores replaced, not repeated
        result = run_main("test.py", "--model_dir", best, "--device", "cpu", "--precision",
                          "fp32", "--data_file", clean_dir / "usual_test_labeled.txt",
                          "--output_dir", tmp_path / "test")
        assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "test" / "usual_test_labeled.metrics.json").read_text(
        encoding="utf-8"))
    card = ModelCard.load(card_path)
    assert results(card, "test") == {"accuracy": round(metrics["accuracy"], 4),
                                     "f1": round(metrics["macro_f1"], 4)}
    assert results(card, "validation") == results(ModelCard.load(trained / "best" / "README.md"),
                                                  "validation")
    assert card.text.count("| SMP2020-EWECT usual_test_labeled | accuracy |") == 1
    assert "Not tested yet" not in card.text
    assert card.text.rstrip().endswith("My own note.")


def test_the_scores_of_several_test_files_stay_apart(tmp_path):
    # The Hub's model-index groups results by dataset type, config and split: without a config
    # per file, the second file's scores were filed under the first's name.
    write_model_card(tmp_path, "python train.py", {}, {"eval_file": "eval.txt", "epoch": 1,
                                                       "eval_acc": 0.5, "eval_macro_f1": 0.4})
    for name, accuracy in (("usual_test", 0.1), ("virus_test", 0.2), ("usual_test", 0.3)):
        add_test_scores(tmp_path, name, {"accuracy": accuracy, "macro_f1": accuracy / 2})
    card = ModelCard.load(tmp_path / "README.md")
    assert results(card, "test", "usual_test") == {"accuracy": 0.3, "f1": 0.15}
    assert results(card, "test", "virus_test") == {"accuracy": 0.2, "f1": 0.1}
    assert len(card.data.eval_results) == 6


def test_a_card_this_repo_did_not_write_is_left_as_it_is(tmp_path):
    theirs = "---\nlanguage: en\nlicense: apache-2.0\n---\n# Their model\n"
    (tmp_path / "README.md").write_text(theirs, encoding="utf-8")
    assert not add_test_scores(tmp_path, "usual_test", {"accuracy": 0.5, "macro_f1": 0.4})
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == theirs
