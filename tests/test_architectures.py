"""Every encoder architecture Chinese NLP reaches for, through the whole path: a tiny random
folder of each, saved as hub models are (a masked-LM checkpoint and the tokenizer its Chinese
hub models ship), fine-tuned (plainly, with FGM, with R-Drop, as a teacher, cut to fewer
layers), tested, labelled (torch, int8, ONNX), run by transformers' pipeline(), served by the
demo, and pretrained further. Each (architecture, use) pair is a test; docs/training.md's
compatibility matrix is generated from their results:

    python -m pytest tests/test_architectures.py                  # checks the matrix in the docs
    EWECT_WRITE_MATRIX=1 python -m pytest tests/test_architectures.py   # writes it there
"""
import os
import re

import pytest
import torch

from conftest import ROOT, run_main

LAYERS, HIDDEN = 2, 32
# model_type: (its config's size settings, the tokenizer its Chinese hub models ship, hub models)
ARCHITECTURES = {
    "bert": ({}, "bert", "bert-base-chinese, hfl/chinese-roberta-wwm-ext(-large), "
                         "hfl/chinese-macbert-base"),
    "ernie": ({}, "bert", "nghuyong/ernie-3.0-base-zh"),
    "electra": ({"embedding_size": HIDDEN}, "bert",
                "hfl/chinese-electra-180g-base-discriminator"),
    "deberta-v2": ({"relative_attention": True, "position_biased_input": False,
                    "pos_att_type": ["p2c", "c2p"], "position_buckets": 64}, "bert",
                   "IDEA-CCNL/Erlangshen-DeBERTa-v2-97M-Chinese"),
    "megatron-bert": ({}, "bert", "IDEA-CCNL/Erlangshen-MegatronBert-1.3B"),
    "albert": ({"embedding_size": 16}, "bert", "voidful/albert_chinese_base"),
    "xlnet": ({"d_model": HIDDEN, "n_layer": LAYERS, "n_head": 2, "d_inner": 4 * HIDDEN},
              "xlnet", "hfl/chinese-xlnet-base"),
    "roformer": ({"embedding_size": HIDDEN}, "bert", "junnyu/roformer_v2_chinese_char_base"),
    "xlm-roberta": ({"max_position_embeddings": 160 + 2}, "xlm-roberta", "xlm-roberta-base"),
}
NAMES = list(ARCHITECTURES)
USES = {"train": "train.py", "fgm": "--adversarial fgm", "rdrop": "--rdrop", "teacher":
        "--teacher", "student_layers": "--student_layers",
        "checkpointing": "--gradient_checkpointing", "test": "test.py",
        "torch": "inference.py", "int8": "--int8", "onnx": "export.py, --backend onnx",
        "pipeline": "pipeline()", "demo": "app.py, --explain", "pretrain": "pretrain.py"}
# What cannot work, and the error line that says so
CANNOT = {
    ("albert", "student_layers"): "no encoder.layer list in AlbertForSequenceClassification",
    ("xlnet", "student_layers"): "no encoder.layer list in XLNetForSequenceClassification",
    ("xlnet", "pretrain"): "xlnet has no masked-LM head",
    ("albert", "checkpointing"): "albert models do not support it",
    ("xlnet", "checkpointing"): "xlnet models do not support it",
}
RESULTS = {}  # (architecture, use): "yes" or the error line, for the matrix


def sentencepiece_tokenizer(kind, texts):
    """A unigram (SentencePiece-style) tokenizer of XLNet's or XLM-R's kind whose pieces are the
    fixture's characters, as their hub models' are trained, built offline."""
    from transformers import XLMRobertaTokenizer, XLNetTokenizer

    chars = sorted({c for text in texts for c in text if c.strip()} | set("abcdefghijklmnopqrst"))
    if kind == "xlnet":
        specials = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"]
        return XLNetTokenizer(vocab=[(s, 0.0) for s in specials] + [(c, -5.0) for c in chars])
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = [(s, 0.0) for s in specials] + [(c, -5.0) for c in chars] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab)


@pytest.fixture(scope="module")
def folders(vocab, clean_dir, tmp_path_factory):
    """{architecture: a tiny masked-LM folder of it, as a hub model is saved}."""
    import json

    from transformers import (AutoConfig, AutoModelForMaskedLM, BertTokenizer,
                              XLNetLMHeadModel)

    texts = [r["content"] for name in os.listdir(clean_dir)
             for r in json.loads((clean_dir / name).read_text(encoding="utf-8"))]
    made = {}
    for name, (size, tokenizer_kind, _) in ARCHITECTURES.items():
        tokenizer = (BertTokenizer(vocab) if tokenizer_kind == "bert"
                     else sentencepiece_tokenizer(tokenizer_kind, texts))
        settings = {} if name == "xlnet" else {
            "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
            "intermediate_size": 4 * HIDDEN, "max_position_embeddings": 160}
        config = AutoConfig.for_model(name, vocab_size=len(tokenizer),
                                      pad_token_id=tokenizer.pad_token_id, **{**settings, **size})
        torch.manual_seed(0)
        model = (XLNetLMHeadModel if name == "xlnet" else AutoModelForMaskedLM.from_config)(config)
        folder = tmp_path_factory.mktemp("hub") / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        made[name] = folder
    return made


def train_args(clean_dir, folder, out, *extra):
    return ["--model_name", folder, "--epochs", "1", "--batch_size", "8", "--lr", "1e-3",
            "--device", "cpu", "--log_every", "2", "--train_file", clean_dir / "usual_train.txt",
            "--eval_file", clean_dir / "usual_eval_labeled.txt", "--output_dir", out, *extra]


def record(name, use, result):
    """The use works (exit 0), or fails with exactly the error line CANNOT expects."""
    cannot = CANNOT.get((name, use))
    if cannot is None:
        assert result.returncode == 0, result.stderr[-2000:]
        RESULTS[(name, use)] = "yes"
    else:
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert cannot in result.stderr, result.stderr
        RESULTS[(name, use)] = "no: " + cannot


@pytest.fixture(scope="module")
def trained(folders, clean_dir, tmp_path_factory):
    """{architecture: its fine-tuned best/} (train.py's defaults but size and epochs)."""
    best = {}
    for name, folder in folders.items():
        out = tmp_path_factory.mktemp("ft") / name
        record(name, "train", run_main("train.py", *train_args(clean_dir, folder, out)))
        best[name] = out / "best"
    return best


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("use, flags", [("fgm", ["--adversarial", "fgm"]),
                                        ("rdrop", ["--rdrop", "1.0"]),
                                        ("student_layers", ["--student_layers", "1"]),
                                        ("checkpointing", ["--gradient_checkpointing"])])
def test_fine_tuning_options(name, use, flags, folders, clean_dir, tmp_path):
    record(name, use, run_main("train.py", *train_args(clean_dir, folders[name], tmp_path,
                                                       "--stop_after_steps", "2", *flags)))


@pytest.mark.parametrize("name", NAMES)
def test_a_teacher_for_a_student_of_another_architecture(name, trained, folders, clean_dir,
                                                         tmp_path):
    student = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
    record(name, "teacher", run_main("train.py", *train_args(
        clean_dir, folders[student], tmp_path, "--stop_after_steps", "2", "--teacher",
        trained[name])))


@pytest.mark.parametrize("name", NAMES)
def test_test_and_inference(name, trained, clean_dir, tmp_path):
    best = trained[name]
    record(name, "test", run_main("test.py", "--model_dir", best, "--device", "cpu",
                                  "--data_file", clean_dir / "usual_test_labeled.txt",
                                  "--output_dir", tmp_path))
    for use, flags in (("torch", []), ("int8", ["--int8"])):
        result = run_main("inference.py", "--model_dir", best, "--device", "cpu", "--input",
                          "[哈哈]今天好开心", *flags)
        record(name, use, result)
        assert result.stdout.split("\n")[0] in ("happy", "angry", "sad", "fear", "surprise",
                                                "neutral")


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_and_backend(name, trained, tmp_path):
    import shutil

    best = tmp_path / "best"
    shutil.copytree(trained[name], best)
    export = run_main("export.py", "--model_dir", best, "--check_posts", "4")
    if export.returncode:
        record(name, "onnx", export)
        return
    record(name, "onnx", run_main("inference.py", "--model_dir", best, "--backend", "onnx",
                                  "--input", "今天好开心", "--explain"))


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_and_demo(name, trained):
    import app
    from ewect.config import LABELS
    from ewect.prediction import load_predictor
    from transformers import pipeline

    scores = pipeline("text-classification", model=str(trained[name]), top_k=None,
                      device="cpu")(["今天好开心"])[0]
    assert sorted(r["label"] for r in scores) == sorted(LABELS)
    RESULTS[(name, "pipeline")] = "yes"
    demo = app.build_demo(load_predictor(trained[name], device="cpu"))
    functions = {fn.api_name: fn.fn for fn in demo.fns.values()}
    assert functions["classify_text"]("今天好开心")["label"] in LABELS
    why = functions["explain_text"]("今天好开心")
    assert "".join(piece for piece, _ in why) == "今天好开心"
    RESULTS[(name, "demo")] = "yes"


@pytest.mark.parametrize("name", NAMES)
def test_continued_pretraining(name, folders, clean_dir, tmp_path):
    record(name, "pretrain", run_main(
        "pretrain.py", "--model_name", folders[name], "--epochs", "1", "--batch_size", "8",
        "--held_out_fraction", "0.2", "--stop_after_steps", "2", "--device", "cpu",
        "--corpus", clean_dir / "usual_train.txt", "--output_dir", tmp_path))


def test_the_4d_mask_is_given_only_to_architectures_that_read_it(trained):
    # forward_mask's set: the 4-D boolean mask gives the 2-D mask's logits there
    from ewect.modeling import EXPANDED_MASK_TYPES, load_checkpoint

    for name in EXPANDED_MASK_TYPES:
        model, tokenizer = load_checkpoint(trained[name])
        batch = tokenizer(["今天好开心", "气"], padding=True, return_tensors="pt")
        with torch.no_grad():
            plain = model(**batch).logits
            try:
                expanded = model(input_ids=batch["input_ids"], attention_mask=batch[
                    "attention_mask"].bool()[:, None, None, :]).logits
                same = torch.allclose(plain, expanded, atol=1e-5)
            except Exception:
                same = False
        assert same, name


def test_a_post_scores_the_same_alone_and_in_a_padded_batch(trained):
    # Padding on the wrong side (XLNet reads its last position) makes labels depend on the batch.
    from ewect.prediction import load_predictor

    posts = ["今天好开心", "气死我了今天天气很好我们去公园", "好"]
    for name in NAMES:
        predictor = load_predictor(trained[name], device="cpu", precision="fp32")
        alone = [predictor.predict([post])[0] for post in posts]
        together = predictor.predict(posts, batch_size=3)
        assert torch.allclose(torch.tensor(together), torch.tensor(alone), atol=1e-5), name


MATRIX_START, MATRIX_END = "<!-- matrix: start -->", "<!-- matrix: end -->"


def matrix_table():
    """The compatibility matrix as Markdown, from RESULTS."""
    rows = ["| architecture | " + " | ".join(USES.values()) + " |",
            "|---" * (len(USES) + 1) + "|"]
    for name in NAMES:
        cells = ["yes" if RESULTS[(name, use)] == "yes" else "no (error line)"
                 for use in USES]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = [f"- {name}, {USES[use]}: `error: ... {why}`" for (name, use), why in CANNOT.items()]
    hubs = [f"- {name}: {hub}" for name, (_, _, hub) in ARCHITECTURES.items()]
    return "\n".join(rows + ["", "Where a use cannot work, one error line says why:", *notes,
                             "", "Hub models of each row:", *hubs])


def test_the_matrix_in_the_docs_is_these_results():
    if len(RESULTS) < len(NAMES) * len(USES):
        pytest.skip("only part of the matrix ran")
    path = ROOT / "docs" / "training.md"
    text = path.read_text(encoding="utf-8")
    table = f"{MATRIX_START}\n{matrix_table()}\n{MATRIX_END}"
    found = re.search(re.escape(MATRIX_START) + ".*?" + re.escape(MATRIX_END), text, re.S)
    if os.environ.get("EWECT_WRITE_MATRIX"):
        text = text.replace(found.group(0), table) if found else text + "\n" + table + "\n"
        path.write_text(text, encoding="utf-8")
    assert found and found.group(0) == table, (
        "docs/training.md's matrix differs from the tests' results: EWECT_WRITE_MATRIX=1 "
        "python -m pytest tests/test_architectures.py")
