"""Building, loading and saving the classifier: one place for each (prediction: prediction.py)."""
import os
import shutil
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer,
                          BertConfig, BertForSequenceClassification, BertTokenizer)
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
        # cuDNN's attention kernel builds a plan for every new batch shape (2.8 ms of host time
        # per layer call on an H200): a first pass over usual_test, every shape new, took 9.7 s
        # with it and 1.9 s without. The other SDPA kernels need no plan (bench/RESULTS.md,
        # "GPU check").
        torch.backends.cuda.enable_cudnn_sdp(False)
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device {name}: expected auto, cpu or cuda")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def choose_precision(name, device):
    """--precision auto: bf16 on GPUs that have it natively (Ampere and later), fp16 on older
    GPUs (T4, V100: torch calls bf16 'supported' there too, but only emulated, which is slow),
    fp32 on the CPU. Weights and optimizer stay fp32 in every case; this is autocast's dtype."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    return name


def cpu_has_native_bf16():
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX: Xeons since Cooper Lake,
    EPYCs since Zen 4). Elsewhere torch emulates bf16 on the CPU, slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:  # not Linux: no way to tell, so no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def prediction_precision(name, device, int8=False):
    """--precision of test.py, inference.py and the demo: as choose_precision, except that auto
    is bf16 also on CPUs with native bf16, where it halves bert-base's prediction time and
    changes about one label in 1,000 (bench/RESULTS.md). Training stays fp32 on every CPU, so that
    a run's numbers do not depend on the CPU it ran on. An int8 model computes in int8 and fp32."""
    if int8:
        if name not in ("auto", "fp32"):
            raise UserError(f"--int8 computes in int8; drop --precision {name}")
        return "fp32"
    if name == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return choose_precision(name, device)


def autocast(precision, device):
    """The forward pass's autocast context for a precision from choose_precision()."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision], enabled=precision != "fp32")


def autocast_dtype(device):
    """Autocast dtype of training's --precision auto on this device (None: fp32)."""
    return AMP_DTYPES[choose_precision("auto", torch.device(device))]


# Architectures whose forward takes the 4-D boolean mask as it is, giving the 2-D mask's outputs
# (tests/test_architectures.py checks each); the others are given the 2-D mask.
EXPANDED_MASK_TYPES = frozenset({"bert", "ernie", "electra", "albert", "xlm-roberta"})


def forward_mask(model, attention_mask):
    """The attention mask for the model's forward (wrapped by DDP or not). The BERT family gets
    the (batch, 1, 1, length) boolean mask transformers passes straight to attention: given the
    2-D mask, BERT's forward checks `mask.all()` to skip it, which waits for the GPU every pass."""
    if getattr(model, "module", model).config.model_type in EXPANDED_MASK_TYPES:
        return attention_mask.bool()[:, None, None, :]
    return attention_mask


def bert_config(vocab_size, num_layers, hidden_size, dropout=0.1, num_heads=None,
                intermediate_size=None, **extra):
    """A BERT of the given size, by default with bert-base's proportions: a head per 64
    dimensions, a feed-forward layer 4x as wide."""
    num_heads = num_heads or max(1, hidden_size // 64)
    if hidden_size % num_heads:
        raise UserError(f"--hidden_size {hidden_size} is not a multiple of the {num_heads} heads")
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size or 4 * hidden_size,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **extra)
    config._attn_implementation = "sdpa"
    return config


# Seconds the hub has to answer before it counts as unreachable; a slow link or mirror can give
# it more with the hub library's own HF_HUB_ETAG_TIMEOUT.
HUB_TIMEOUT = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", 5))


def hub_problem(model_name):
    """Why model_name cannot come from the hub now, or None when the hub answers one request
    within HUB_TIMEOUT seconds (any answer: 'no such model' is from_pretrained's to report).
    Without this check, a download fails only after the hub library's retries, about 50 s."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(model_name, timeout=HUB_TIMEOUT)
    except (HfHubHTTPError, ValueError):  # an answer, or a name that is no hub id
        return None
    except Exception:  # no connection, no name resolution, a time-out, a proxy's refusal
        return f"the hub at {constants.ENDPOINT} cannot be reached"
    return None


# A config's dropout probabilities, as each architecture names them (XLNet: dropout and
# summary_last_dropout; ALBERT's classifier: classifier_dropout_prob)
DROPOUT_SETTINGS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                    "summary_last_dropout", "classifier_dropout_prob")


def from_pretrained(auto_class, model_name, dropout=0.1, config_kwargs=None, **kwargs):
    """(model, tokenizer) from a local folder (~ expanded) or a hub id, weights in fp32 whatever
    dtype they were saved in: trained in fp16 they overflow, in bf16 an lr-1e-5 update rounds
    away and the model silently stops learning. Autocast gives the speed of half precision.
    Attention is transformers' choice: SDPA where the architecture has it, else its own
    (DeBERTa-v2, MegatronBERT, RoFormer, XLNet). config_kwargs change the config (the labels),
    kwargs go to from_pretrained. A hub id comes from the local cache alone when the hub cannot
    be reached or HF_HUB_OFFLINE is set."""
    config_kwargs = config_kwargs or {}
    model_name = os.path.expanduser(model_name)
    if (os.path.isabs(model_name) or model_name.startswith(".")) and not os.path.isdir(model_name):
        raise UserError(f"--model_name {model_name}: no such folder")
    problem = None if os.path.isdir(model_name) else hub_problem(model_name)
    offline = problem is not None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, local_files_only=offline)
        config = AutoConfig.from_pretrained(model_name, local_files_only=offline, **config_kwargs)
        for name in DROPOUT_SETTINGS:  # those of its architecture
            if hasattr(config, name):
                setattr(config, name, dropout)
        model = auto_class.from_pretrained(model_name, config=config, dtype=torch.float32,
                                           local_files_only=offline, **kwargs)
    except (OSError, ValueError) as err:
        why = f"{problem} and it is not in the local cache" if problem else first_line(err)
        raise UserError(f"cannot load model {model_name!r} ({why}); without network, pass a "
                        "local model folder with --model_name PATH, or build a model offline "
                        "with `sh train_offline.sh`") from None
    return model, tokenizer


def build_model(model_name, dropout=0.1, from_scratch=False, vocab=None, num_layers=12,
                hidden_size=768, log=print):
    """(classifier, tokenizer) for training: pretrained (from_pretrained above), or, with
    from_scratch, a randomly initialised BERT of the given size on the given vocabulary. A
    classifier with another number of labels (a 2-class sentiment model, say) keeps its encoder
    and gets a new six-way head, as run_glue does."""
    if from_scratch:
        tokenizer = scratch_tokenizer(vocab)
        config = bert_config(len(tokenizer), num_layers, hidden_size, dropout,
                             num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID)
        return BertForSequenceClassification(config), tokenizer
    (model, loading), tokenizer = from_pretrained(
        AutoModelForSequenceClassification, model_name, dropout,
        {"num_labels": len(LABELS), "id2label": ID2LABEL, "label2id": LABEL2ID},
        ignore_mismatched_sizes=True, output_loading_info=True)
    saved_biases = [saved for _, saved, _ in loading["mismatched_keys"] if len(saved) == 1]
    if saved_biases:  # (name, saved shape, new shape) of the head's weight and bias
        old = saved_biases[0][0]
        log(f"{model_name}: a classifier of {old} labels{_label_names(model_name)}, now "
            f"{len(LABELS)}: a new classification head, randomly initialised")
    return model, tokenizer


def _label_names(model_name):
    """' (name, name, …)' of a saved classifier's labels, for the log; '' if it has none."""
    # just loaded, so in the folder or the cache: no second trip to the hub
    config = AutoConfig.from_pretrained(os.path.expanduser(model_name), local_files_only=True)
    names = [config.id2label[i] for i in range(config.num_labels)]
    return "" if all(name.startswith("LABEL_") for name in names) else f" ({', '.join(names)})"


def scratch_tokenizer(vocab):
    """The BertTokenizer of a model from scratch: on a WordPiece vocab.txt file, or on a list of
    tokens in id order (ewect.vocab.build_vocab). save_pretrained keeps it with the model."""
    if isinstance(vocab, (list, tuple)):
        return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    if not vocab or not os.path.isfile(os.path.expanduser(vocab)):
        raise UserError(f"--vocab {vocab}: not a file (leave --vocab out to build a vocabulary "
                        "from the training posts)")
    return BertTokenizer(os.path.expanduser(vocab))


def load_checkpoint(model_dir, device="cpu"):
    """(model, tokenizer) saved by train.py, in eval mode on the device."""
    restore_interrupted_save(model_dir)
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"{model_dir}: no checkpoint here (config.json missing); "
                        "train one with `sh train.sh` or pass --model_dir")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # a broken checkpoint fails in many library-specific ways
        raise UserError(f"{model_dir}: broken checkpoint ({first_line(err)})") from None
    check_labels(model_dir, model.config)
    return model.to(device).eval(), tokenizer


def check_labels(model_dir, config=None):
    """A classifier of this repo's six labels, in order, or a one-line error."""
    if config is None:
        try:
            config = AutoConfig.from_pretrained(os.path.expanduser(model_dir))
        except (OSError, ValueError) as err:
            raise UserError(f"{model_dir}: not a checkpoint ({first_line(err)})") from None
    labels = tuple(config.id2label[i] for i in range(config.num_labels))
    if labels != LABELS:
        raise UserError(f"{model_dir}: checkpoint labels {labels} are not {LABELS}")


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
