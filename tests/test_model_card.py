"""best/README.md: a model card the Hub reads, written by train.py and completed by test.py."""
import json
import shutil

from huggingface_hub import ModelCard

from conftest import run_main
from ewect.config import LABELS


def results(card, split, data="usual_test_labeled"):
    found = [r for r in card.data.eval_results if r.dataset_split == split and
             (split != "test" or r.dataset_name == f"SMP2020-EWECT {data}")]
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
