"""best/README.md: a model card in the Hugging Face Hub's format, so a checkpoint folder can be
shared as it is (`huggingface-cli upload NAME workspace/wb/best`).

    write_model_card(folder, command, args, eval_scores)   # train.py, with each best/ it saves
    add_test_scores(folder, data_name, scores)             # test.py, keeping what is there

The YAML metadata says language zh, pipeline_tag text-classification, the labels, the base model
and the scores (as `model-index` results, which the Hub shows); the text says what the model was
trained on, with which command and arguments, its eval and test scores, its intended use and the
data set's limits. test.py replaces the scores of the file it tested, and the scores table,
and leaves the rest (a user's own edits too) as it was.
"""
import os

from .config import LABELS

CARD_FILE = "README.md"
TEST_HEADING = "## Test scores"
METRICS = (("accuracy", "accuracy"), ("macro_f1", "f1"))  # (our name, the Hub's metric type)


def _card_data(model_name, base_model, results):
    from huggingface_hub import ModelCardData

    return ModelCardData(
        language="zh", pipeline_tag="text-classification", library_name="transformers",
        tags=["text-classification", "emotion", "weibo", "smp2020-ewect"],
        base_model=base_model, model_name=model_name, eval_results=results or None,
        labels=list(LABELS))


def _result(file_name, metric, value, split):
    """One score as a model-index result. The file's name is the dataset's config too: the Hub's
    model-index groups results by type, config and split, and would merge two test files'."""
    from huggingface_hub import EvalResult

    return EvalResult(task_type="text-classification", dataset_type="smp2020-ewect",
                      dataset_name=f"SMP2020-EWECT {file_name}", dataset_config=file_name,
                      dataset_split=split,
                      metric_type=metric, metric_value=round(float(value), 4),
                      metric_name="macro-F1" if metric == "f1" else metric)


def _scores_table(results):
    rows = [f"| {r.dataset_name} | {r.metric_name} | {r.metric_value:.4f} |"
            for r in results if r.dataset_split == "test"]
    return "\n".join(["| file | score | value |", "| --- | --- | --- |", *rows]) if rows else (
        "Not tested yet: `python test.py --model_dir THIS_FOLDER` adds its scores here.")


def write_model_card(folder, command, args, eval_scores):
    """folder/README.md for a checkpoint train.py saved: eval_scores has eval_file, epoch,
    eval_acc and eval_macro_f1."""
    # a hub id as the Hub's base_model; a local folder (a self-pretrained model) is no hub id
    base = (None if args.get("from_scratch") or args.get("init_from")
            or os.path.isdir(os.path.expanduser(str(args.get("model_name"))))
            else args.get("model_name"))
    eval_name = os.path.splitext(os.path.basename(str(eval_scores["eval_file"])))[0]
    results = [_result(eval_name, "accuracy", eval_scores["eval_acc"], "validation"),
               _result(eval_name, "f1", eval_scores["eval_macro_f1"], "validation")]
    data = _card_data(os.path.basename(os.path.dirname(os.path.abspath(folder))) or "model",
                      base, results)
    shown = {key: " ".join(map(str, value)) if isinstance(value, list) else value
             for key, value in args.items()
             if value is not None and value is not False and value not in ([], "")}
    origin = ("Trained from scratch (a BERT of random weights)" if args.get("from_scratch") else
              f"Fine-tuned from `{args.get('init_from') or args.get('model_name')}`")
    body = f"""
# Weibo emotion classifier (SMP2020-EWECT)

Labels a Chinese Weibo post as one of {", ".join(LABELS)} (in this order: the ids of
`config.json`'s `id2label`). {origin} on SMP2020-EWECT's posts.

```python
from transformers import pipeline
classify = pipeline("text-classification", model="THIS_FOLDER")
classify("你是个什么东西，垃圾")
```

Posts should be cleaned as the training posts were (`ewect.cleaning.clean_text`: traditional to
simplified, full-width to half-width, lowercase, links and @-mentions removed); the repo's
`inference.py` and `test.py` do it. `calibration.json`, when present, holds the temperature that
calibrates the probabilities.

## Training

    {command}

| setting | value |
| --- | --- |
{chr(10).join(f"| {key} | {value} |" for key, value in shown.items())}

## Eval scores

Best epoch {eval_scores["epoch"]} on {eval_scores["eval_file"]}: accuracy
{eval_scores["eval_acc"]:.4f}, macro-F1 {eval_scores["eval_macro_f1"]:.4f} (scikit-learn's: the
mean of the per-label F1).

{TEST_HEADING}

{_scores_table(results)}

## Intended use and limits

For research on the emotions of Chinese social-media posts: labelling posts, and the shares of
emotions in a collection (with `inference.py --summary`, which corrects them). SMP2020-EWECT's
posts are from Weibo in 2020: the usual track everyday posts, the virus track posts about
COVID-19. Its labels come from annotators, one label a post; surprise and fear are rare (under
10% of the posts), so scores on them are the least certain. Posts of other platforms, years or
topics, and long texts (cut at `max_length` tokens), may be labelled worse than these scores
say. Not for decisions about individual people.
"""
    _write(folder, data, body)


def _write(folder, data, body):
    """The card, written aside and renamed into place (never through a link into a cache)."""
    from huggingface_hub import ModelCard

    path = os.path.join(folder, CARD_FILE)
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body.lstrip()}").save(path + ".tmp")
    os.replace(path + ".tmp", path)


def add_test_scores(folder, data_name, scores):
    """The test scores of one data file (scores: accuracy and macro_f1) into folder/README.md:
    its earlier scores replaced, every other result and line kept. Only a card this repo wrote
    (a downloaded model's card is its authors'); one that cannot be read or written is left as
    it is, with a note on stderr. Returns whether the card was updated."""
    import sys

    from huggingface_hub import ModelCard

    path = os.path.join(folder, CARD_FILE)
    try:
        card = ModelCard.load(path) if os.path.isfile(path) else None
        if card is None or "smp2020-ewect" not in (card.data.tags or []):
            return False
        _update(card, folder, data_name, scores)
    except (OSError, ValueError) as err:
        print(f"note: {path}: test scores not added ({str(err).splitlines()[0]})",
              file=sys.stderr)
        return False
    return True


def _update(card, folder, data_name, scores):
    results = [r for r in card.data.eval_results or []
               if not (r.dataset_split == "test" and r.dataset_config == data_name)]
    results += [_result(data_name, metric, scores[key], "test") for key, metric in METRICS]
    card.data.eval_results = results
    body = card.text
    if TEST_HEADING in body:
        before, after = body.split(TEST_HEADING, 1)
        rest = after[after.find("\n## "):] if "\n## " in after else "\n"
        body = f"{before}{TEST_HEADING}\n\n{_scores_table(results)}\n{rest}"
    _write(folder, card.data, body)
