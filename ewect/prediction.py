"""Labelling posts with a trained checkpoint: the one prediction path of test.py, inference.py,
bench/predict_speed.py and the demo.

    predictor = load_predictor("workspace/wb/best")                   # torch, GPU if there is one
    predictor = load_predictor(DIR, backend="onnx", int8=True)        # export.py's DIR/onnx files
    predictor = load_predictor([DIR_A, DIR_B])                        # an ensemble: mean of both
    probabilities = predictor.predict([clean_text(t) for t in posts])  # (n, 6), LABELS order

Probabilities are calibrated by the checkpoint's temperature (ewect/calibration.py) unless
load_predictor(..., calibrated=False); .temperature says which (1.0: none). Both backends
tokenize once, sort the posts by length and pad each batch to its own longest post, then put the
rows back in input order. An ensemble averages its members' probabilities, each
member tokenizing with its own tokenizer. Importing this module imports neither torch nor
transformers: the torch backend imports them when it is loaded, and the onnx backend never does
(it needs onnxruntime, the tokenizers library and numpy only), so it starts in a fraction of a
second.
"""
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .calibration import CALIBRATION_FILE, fit_temperature, load_calibration, with_temperature
from .config import LABELS, MAX_LENGTH, PRECISIONS
from .data import pad_multiple, padded_width, sorted_batches
from .errors import UserError, first_line

BACKENDS = ("torch", "onnx")
# Posts per forward pass. On the 2-core CPU small batches win (the activations of a big one fall
# out of the cache): bert-base fp32 ran 21 posts/s at 16, 19 at 32, ~10 at 128; onnx int8 72 at
# 16, 53 at 64 (bench/RESULTS.md). GPUs want big batches; 128 is the published default there.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 128}
ONNX_DIR = "onnx"
ONNX_FILES = {False: "model.onnx", True: "model.int8.onnx"}  # keyed by int8


def weights_identity(model_dir, backend="torch", int8=False, calibrated=True):
    """A checkpoint as a resumed run knows it: its path, and the size and time of its config, its
    calibration and the weight files the backend reads (torch: the checkpoint's; onnx:
    export.py's file), so that a model trained, calibrated or exported again in the same folder
    is told apart from the one the run began with (calibrated=False: a model whose probabilities
    are used before the temperature, as a teacher's). A folder that is gone: its path alone."""
    folder = os.path.abspath(os.path.expanduser(model_dir))
    if backend == "onnx":
        weights = [f"{ONNX_DIR}/{ONNX_FILES[int8]}"]
    else:
        weights = [name for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                   if name.endswith((".safetensors", ".bin"))]
    calibration = [CALIBRATION_FILE] if calibrated else []
    paths = sorted((name, os.path.join(folder, name))
                   for name in ["config.json", *calibration, *weights])
    return [folder, *(f"{name}:{os.path.getsize(path)}:{os.path.getmtime(path)}"
                      for name, path in paths if os.path.isfile(path))]


def softmax(logits, temperature=1.0):
    """Row-wise softmax of a numpy array (divided by a temperature), in float32."""
    logits = logits / temperature
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def position_limit(config):
    """The most tokens a model reads (a config object or dict), or None: XLNet's relative
    positions have no limit (its config says -1)."""
    limit = (config.get("max_position_embeddings") if isinstance(config, dict)
             else getattr(config, "max_position_embeddings", None))
    return limit if limit and limit > 0 else None


def check_length_limit(max_length, limit):
    if limit is not None and max_length > limit:
        raise UserError(f"--max_length {max_length}: this model reads at most {limit} tokens")


def check_max_length(model, max_length):
    """check_length_limit for a loaded torch model (prediction, train.py, pretrain.py)."""
    check_length_limit(max_length, position_limit(model.config))


def predict_sorted(input_ids, batch_size, run_batch, num_labels=len(LABELS)):
    """Logits (numpy float32, input order) of every token-id list; run_batch(list of id lists)
    returns one batch's logits, the batch being of similar lengths."""
    logits = np.empty((len(input_ids), num_labels), dtype=np.float32)
    for indices in sorted_batches([len(ids) for ids in input_ids], batch_size):
        logits[indices] = run_batch([input_ids[i] for i in indices])
    return logits


def pads_left(config):
    """Whether a model reads its batches padded on the left (a config object or dict): XLNet,
    which classifies from its last position, where its tokenizer puts <cls>."""
    model_type = config.get("model_type") if isinstance(config, dict) else config.model_type
    return model_type == "xlnet"


def pad(batch, pad_id, multiple=1, limit=None, left=False):
    """(input_ids, attention_mask) int64 arrays of one batch, padded (at the end, or with `left`
    at the start) to its longest member rounded up to `multiple` (ewect.data.pad_multiple)
    within `limit` positions."""
    longest = padded_width([len(ids) for ids in batch], multiple, limit)
    input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, ids in enumerate(batch):
        place = slice(longest - len(ids), longest) if left else slice(0, len(ids))
        input_ids[row, place] = ids
        mask[row, place] = 1
    return input_ids, mask


# --- torch backend ----------------------------------------------------------------------------

def quantize_int8(model):
    """Dynamic int8 quantization of the Linear layers, for CPU prediction."""
    import torch

    # torch.ao.quantization works in the pinned torch but warns that it is deprecated (its
    # successor is the separate torchao package); the warnings say nothing a user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                          dtype=torch.qint8)
        except (AttributeError, ImportError, RuntimeError) as err:
            raise UserError(f"--int8 is not available with torch {torch.__version__} "
                            f"({first_line(err)}); drop --int8") from None


def predict_logits(model, input_ids, batch_size=128, device="cpu", amp_dtype=None):
    """Logits (a float32 torch tensor on the CPU) for every token-id list, in the input order.
    The batches' logits stay on the device until the end: no host sync per batch on a GPU."""
    import torch

    device = torch.device(device)
    pad_id, multiple = model.config.pad_token_id or 0, pad_multiple(device.type)
    limit, left = position_limit(model.config), pads_left(model.config)
    results, order = [], []
    with torch.inference_mode():
        for indices in sorted_batches([len(ids) for ids in input_ids], batch_size):
            ids, mask = (torch.from_numpy(a).to(device, non_blocking=True)
                         for a in pad([input_ids[i] for i in indices], pad_id, multiple, limit,
                                      left))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                results.append(model(input_ids=ids, attention_mask=mask).logits.float())
            order += indices
        logits = torch.empty(len(input_ids), model.config.num_labels)
        if results:
            logits[torch.tensor(order)] = torch.cat(results).cpu()
    return logits


def add_precision_arg(p, has_int8=True):
    """--precision, the same flag in test.py, inference.py and app.py (which has no --int8)."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision of the torch backend: auto is bf16 on GPUs and CPUs "
                        "with native bf16, fp16 on older GPUs, fp32 elsewhere"
                        + (" and with --int8" if has_int8 else ""))


def predict_probabilities(model, tokenizer, cleaned_texts, device, batch_size=128,
                          max_length=MAX_LENGTH, precision="auto", temperature=1.0):
    """Label probabilities (numpy, one row per text, columns in LABELS order) of texts that went
    through clean_text, as the training data did; softmax of the logits / temperature."""
    import torch

    from .data import encode
    from .modeling import AMP_DTYPES, prediction_precision

    check_max_length(model, max_length)
    amp_dtype = AMP_DTYPES[prediction_precision(precision, torch.device(device))]
    logits = predict_logits(model, encode(tokenizer, cleaned_texts, max_length), batch_size,
                            device, amp_dtype)
    return softmax(logits.numpy(), temperature)


def checkpoint_calibration(model_dir, calibrated):
    """(calibration.json's record or None, the temperature to apply: 1.0 unless calibrated). A
    damaged file stops a calibrated model only: calibrate.py, which writes it again, and a
    teacher, which uses its own probabilities, read around it."""
    try:
        calibration = load_calibration(model_dir)
    except UserError:
        if calibrated:
            raise
        return None, 1.0
    return calibration, calibration["temperature"] if calibration and calibrated else 1.0


class TorchPredictor:
    """The checkpoint as train.py saved it (or its int8 quantization, on the CPU)."""
    labels = LABELS

    def __init__(self, model_dir, device="auto", int8=False, local_rank=0, precision="auto",
                 calibrated=True):
        from .modeling import load_checkpoint, prediction_precision, resolve_device

        # Every flag is checked before the (bert-base: seconds long) load.
        if int8 and device == "cuda":
            raise UserError("--int8 runs on the CPU; drop --device cuda or --int8")
        self.device = resolve_device("cpu" if int8 else device, local_rank)
        self.precision = prediction_precision(precision, self.device, int8)
        self.calibration, self.temperature = checkpoint_calibration(model_dir, calibrated)
        self.model, self.tokenizer = load_checkpoint(model_dir, self.device)
        if int8:
            self.model = quantize_int8(self.model)
        self.int8, self.pad_id = int8, self.model.config.pad_token_id or 0
        self.default_batch_size = DEFAULT_BATCH_SIZE[self.device.type]

    def logits(self, input_ids, batch_size):
        """Logits (numpy, input order) of token-id lists, as predict computes them."""
        from .modeling import AMP_DTYPES

        return predict_logits(self.model, input_ids, batch_size, self.device,
                              AMP_DTYPES[self.precision]).numpy()

    def predict(self, cleaned_texts, batch_size=None, max_length=MAX_LENGTH):
        return predict_probabilities(self.model, self.tokenizer, list(cleaned_texts), self.device,
                                     batch_size or self.default_batch_size, max_length,
                                     self.precision, self.temperature)


# --- onnx backend -----------------------------------------------------------------------------

def cpu_threads():
    """Threads for onnxruntime: the cores this process may use (2 here, 16 on a big box)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class OnnxPredictor:
    """export.py's ONNX files run by onnxruntime on the CPU; tokenized by tokenizer.json."""
    labels = LABELS
    default_batch_size = DEFAULT_BATCH_SIZE["cpu"]
    precision = "fp32"  # of the fp32 file; the int8 file's own kernels otherwise

    def __init__(self, model_dir, device="auto", int8=False, local_rank=0, precision="auto",
                 calibrated=True, onnx_dir=None):
        """onnx_dir: where the .onnx files are, model_dir/onnx unless export.py checks new ones."""
        if device == "cuda":
            raise UserError("--backend onnx runs on the CPU; drop --device cuda")
        if precision not in ("auto", "fp32"):  # the exported graph fixes its own precision
            raise UserError(f"--precision {precision} is for --backend torch; drop it")
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as err:
            raise UserError(f"--backend onnx needs the {err.name} package: "
                            "pip install -r requirements.txt") from None
        if not (Path(model_dir) / "config.json").is_file():
            raise UserError(f"{model_dir}: no checkpoint here (config.json missing); "
                            "train one with `sh train.sh` or pass --model_dir")
        path = Path(onnx_dir or Path(model_dir) / ONNX_DIR) / ONNX_FILES[int8]
        if not path.is_file():
            raise UserError(f"{path}: not found; write it with `python export.py --model_dir "
                            f"{model_dir}`")
        config = self._read_json(Path(model_dir) / "config.json")
        id2label = config.get("id2label", {})
        labels = tuple(id2label.get(str(i)) for i in range(len(id2label)))
        if labels != LABELS:  # as load_checkpoint checks for torch: ensembles average columns
            raise UserError(f"{model_dir}: checkpoint labels {labels} are not {LABELS}")
        self.calibration, self.temperature = checkpoint_calibration(model_dir, calibrated)
        self.int8, self.pad_id = int8, config.get("pad_token_id") or 0
        self.pads_left = pads_left(config)
        self.position_limit = position_limit(config)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads()
        options.inter_op_num_threads = 1
        self.tokenizer = self._load(Tokenizer.from_file, Path(model_dir) / "tokenizer.json",
                                    "the checkpoint's tokenizer, saved by train.py")
        self.tokenizer.no_padding()
        self.session = self._load(lambda file: onnxruntime.InferenceSession(
            file, options, providers=["CPUExecutionProvider"]), path,
            f"write it again with `python export.py --model_dir {model_dir}`")

    @staticmethod
    def _load(reader, path, advice):
        """reader(path), or one line naming a missing or damaged file (tokenizers and
        onnxruntime raise their own kinds of errors)."""
        try:
            return reader(str(path))
        except Exception as err:
            raise UserError(f"{path}: unreadable ({first_line(err)}); {advice}") from None

    @staticmethod
    def _read_json(path):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: cannot read ({first_line(err)})") from None

    def encode(self, cleaned_texts, max_length):
        self.tokenizer.enable_truncation(max_length)
        return [e.ids for e in self.tokenizer.encode_batch(list(cleaned_texts))]

    def logits(self, input_ids, batch_size):
        def run_batch(batch):
            ids, mask = pad(batch, self.pad_id, left=self.pads_left)
            return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

        return predict_sorted(input_ids, batch_size, run_batch)

    def predict(self, cleaned_texts, batch_size=None, max_length=MAX_LENGTH):
        check_length_limit(max_length, self.position_limit)
        ids = self.encode(cleaned_texts, max_length)
        return softmax(self.logits(ids, batch_size or self.default_batch_size), self.temperature)


class EnsemblePredictor:
    """Several checkpoints as one: the mean of their (uncalibrated) probabilities. Each member
    tokenizes with its own tokenizer, so members may differ in vocabulary, size and --max_length
    limit. The ensemble is calibrated as a whole, by a temperature fitted on the mean of the
    members' saved eval probabilities when every member was calibrated on the same eval posts;
    otherwise it is not (.temperature 1.0, and .calibration_note says why)."""
    labels = LABELS

    def __init__(self, members, calibrated=True):
        self.members = members  # loaded with calibrated=False
        self.precision = members[0].precision  # one --precision for all
        records = [member.calibration for member in members]
        self.calibration, self.temperature, self.calibration_note = None, 1.0, None
        if any(record is None for record in records):
            self.calibration_note = ("a member has no readable calibration.json (python "
                                     "calibrate.py)")
        elif any(not np.array_equal(r["eval_labels"], records[0]["eval_labels"])
                 for r in records):  # the same posts in the same order, however their path reads
            self.calibration_note = "the members were calibrated on different eval posts"
        else:
            probabilities = np.mean([r["eval_probabilities"] for r in records], axis=0)
            self.calibration = {
                **records[0], "eval_probabilities": probabilities,
                "training_shares": np.mean([r["training_shares"] for r in records], axis=0),
                "temperature": fit_temperature(probabilities, records[0]["eval_labels"])}
            self.temperature = self.calibration["temperature"] if calibrated else 1.0

    def predict(self, cleaned_texts, batch_size=None, max_length=MAX_LENGTH):
        texts = list(cleaned_texts)
        mean = np.mean([member.predict(texts, batch_size, max_length) for member in self.members],
                       axis=0, dtype=np.float32)
        return mean if self.temperature == 1.0 else with_temperature(mean, self.temperature)


def load_predictor(model_dirs, backend="torch", device="auto", int8=False, local_rank=0,
                   precision="auto", calibrated=True):
    """A predictor of the checkpoint in model_dirs, or of the ensemble of a list of them: .labels,
    and .predict(cleaned_texts) giving an (n, 6) numpy array of probabilities in input order,
    calibrated unless calibrated=False (.temperature, .calibration: ewect/calibration.py).
    local_rank: the GPU of this process under torchrun; precision: see add_precision_arg."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    predictor = TorchPredictor if backend == "torch" else OnnxPredictor
    folders = [model_dirs] if isinstance(model_dirs, (str, os.PathLike)) else list(model_dirs)
    if len(folders) == 1:
        return predictor(folders[0], device, int8, local_rank, precision, calibrated)
    return EnsemblePredictor([predictor(folder, device, int8, local_rank, precision, False)
                              for folder in folders], calibrated)
