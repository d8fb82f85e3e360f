"""Building, loading and saving the classifier: one place for each (prediction: prediction.py)."""
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertTokenizer)
from transformers.utils import logging as transformers_logging

from .config import ID2LABEL, LABEL2ID, LABELS
from .errors import UserError, first_line

transformers_logging.disable_progress_bar()  # no "Writing model shards" bar on every save


def resolve_device(name, local_rank=0):
    """'auto' picks the GPU when there is one; asking for a GPU that is not there is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device {name}: expected auto, cpu or cuda")


def autocast_dtype(device):
    """bf16 on GPUs that have it, fp16 on older ones, None (fp32) on CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_model(model_name, dropout=0.1, from_scratch=False, vocab=None, num_layers=12,
                hidden_size=768):
    """(model, tokenizer): pretrained from a hub name or local folder, or, with from_scratch, a
    randomly initialised BERT of the given size on the given WordPiece vocabulary."""
    if from_scratch:
        if not vocab or not os.path.isfile(vocab):
            raise UserError(f"--from_scratch needs --vocab VOCAB.txt; not a file: {vocab}")
        tokenizer = BertTokenizer(vocab)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                            num_hidden_layers=num_layers,
                            num_attention_heads=max(1, hidden_size // 64),
                            intermediate_size=4 * hidden_size, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, num_labels=len(LABELS),
                            id2label=ID2LABEL, label2id=LABEL2ID)
        config._attn_implementation = "sdpa"
        return BertForSequenceClassification(config), tokenizer
    if os.path.isabs(model_name) or model_name.startswith((".", "~")):
        if not os.path.isdir(os.path.expanduser(model_name)):
            raise UserError(f"--model_name {model_name}: no such folder")
    elif not os.path.isdir(model_name):
        try:  # a hub id: the local cache first, so a downloaded model needs no network
            return _from_pretrained(model_name, dropout, local_files_only=True)
        except (OSError, ValueError):
            pass
        if not _hub_reachable():  # else from_pretrained retries for about a minute
            raise UserError(
                f"cannot download model {model_name!r}: no network access. Download it on a "
                "machine that has network into a folder and pass --model_name FOLDER, or use "
                "--from_scratch --vocab VOCAB.txt")
    return _from_pretrained(model_name, dropout)


def _from_pretrained(model_name, dropout, local_files_only=False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, local_files_only=local_files_only)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_name, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
            attn_implementation="sdpa", local_files_only=local_files_only,
            num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID)
    except (OSError, ValueError) as err:
        if local_files_only:
            raise
        raise UserError(f"cannot load model {model_name!r} ({first_line(err)}); pass a local "
                        "folder with --model_name, or use --from_scratch --vocab VOCAB.txt"
                        ) from None
    return model, tokenizer


def _hub_reachable():
    """Whether the hub's host name resolves: a quick test for 'no network at all'."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urllib.parse.urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def load_checkpoint(model_dir, device="cpu"):
    """(model, tokenizer) saved by train.py, in eval mode on the device."""
    restore_interrupted_save(model_dir)
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"{model_dir}: no checkpoint here (config.json missing); "
                        "train one with `sh train.sh` or pass --model_dir")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # a broken checkpoint fails in many library-specific ways
        raise UserError(f"{model_dir}: broken checkpoint ({first_line(err)})") from None
    labels = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    if labels != LABELS:
        raise UserError(f"{model_dir}: checkpoint labels {labels} are not {LABELS}")
    return model.to(device).eval(), tokenizer


def _sibling(path, suffix):
    return path.with_name(path.name + suffix)


def restore_interrupted_save(directory):
    """Finish or undo a save_atomically() that was killed between its two renames."""
    path = Path(directory)
    old = _sibling(path, ".old")
    if old.exists():
        try:
            if path.exists():
                shutil.rmtree(old)
            else:
                os.replace(old, path)
        except FileNotFoundError:
            pass  # another process (a DDP rank) got there first


def save_atomically(directory, write):
    """Call write(folder) on a temporary folder, then swap it into place. A kill at any moment
    leaves either the previous folder or the new one, complete (restore_interrupted_save puts a
    previous one back if the kill fell between the two renames)."""
    path = Path(directory)
    tmp, old = _sibling(path, ".tmp"), _sibling(path, ".old")
    restore_interrupted_save(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model, tokenizer, directory, extra=None):
    """save_pretrained of model and tokenizer (loadable by any transformers user), atomically;
    extra(folder) may add files such as the training state."""
    def write(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if extra:
            extra(folder)
    save_atomically(directory, write)


def check_max_length(model, max_length):
    limit = model.config.max_position_embeddings
    if max_length > limit:
        raise UserError(f"--max_length {max_length}: this model reads at most {limit} tokens")
