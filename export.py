"""Export a trained checkpoint to ONNX for light, fast CPU prediction (--backend onnx).

    python export.py                                  # workspace/wb/best → workspace/wb/best/onnx
    python export.py --model_dir DIR --check_posts 200
    python export.py --model_dir runA/best runB/best      # each member of an ensemble
    python inference.py --input '好开心' --backend onnx --int8

Writes DIR/onnx/model.onnx (fp32) and DIR/onnx/model.int8.onnx (onnxruntime's dynamic int8
quantization of the weights), both with dynamic batch and sequence axes, inputs input_ids and
attention_mask, output logits. The torch model is traced by the TorchScript exporter
(dynamo=False): it needs only the onnx package, where the dynamo exporter also needs onnxscript,
and BERT has no data-dependent control flow that tracing would miss once the dummy batch has
padding. Then both files are checked against torch on --check_file: the largest logit difference
(fp32: must be below 1e-3) and how often the int8 model agrees with torch on the label (printed,
not judged: quantization changes some labels by design; its accuracy cost is measured in
bench/RESULTS.md). They are written into a temporary folder and replace DIR/onnx only once the
fp32 check passes, so a failed export leaves the previous one as it was.
"""
import argparse
import logging
import os
import tempfile
import warnings
from pathlib import Path

from ewect.config import BEST_DIR, EVAL_FILE, MAX_LENGTH
from ewect.errors import UserError, first_line, positive_int, run_cli, script_help
from ewect.prediction import ONNX_DIR, ONNX_FILES

FIXTURE_EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures",
                            "raw", "usual_eval_labeled.txt")
OPSET = 17


def parse_args(argv=None):
    p = argparse.ArgumentParser(**script_help(__doc__))
    p.add_argument("--model_dir", nargs="+", default=[BEST_DIR],
                   help="checkpoint folders written by train.py, each exported into its onnx/")
    p.add_argument("--check_file", default=EVAL_FILE,
                   help="labelled SMP2020-EWECT file to check the export on; the repo's "
                        "fixture when this default is absent")
    p.add_argument("--check_posts", type=positive_int, default=500,
                   help="posts of --check_file to check on (torch and both exports run them)")
    return p.parse_args(argv)


def require(package):
    try:
        __import__(package)
    except ImportError:
        raise UserError(f"export needs the {package} package: pip install -r requirements.txt"
                        ) from None


def logits_only(model):
    """The model with a forward that returns the logits tensor alone, the output ONNX names."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsOnly().eval()


def export_fp32(model, tokenizer, path):
    import torch

    # Padding in the dummy batch, so the traced graph keeps the attention-mask path; made by the
    # model's own tokenizer, so every id is in its vocabulary.
    batch = tokenizer(["好", ""], padding=True, return_tensors="pt")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    dynamic = {0: "batch", 1: "sequence"}
    torch.onnx.export(logits_only(model), (input_ids, attention_mask), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic,
                                    "logits": {0: "batch"}},
                      opset_version=OPSET, dynamo=False)


def export_int8(fp32_path, int8_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)


def check_texts(check_file, limit):
    from ewect.data import clean_records, read_records

    if not os.path.isfile(check_file):
        if check_file != EVAL_FILE:  # a file the user named: a typo must not pass for a check
            raise UserError(f"--check_file {check_file}: no such file")
        print(f"{check_file} not found; checking on the repo's fixture")
        check_file = FIXTURE_EVAL
    # the check needs only texts: a record unusable for training (say, a repeated id) is skipped
    records = clean_records(read_records(check_file, require_label=False, skip_bad_records=True),
                            drop_empty=False)
    return check_file, [r.content for r in records[:limit]]


def check(model_dir, onnx_dir, model, tokenizer, texts):
    """Max |logit difference| and label agreement of each export in onnx_dir against torch."""
    from ewect.data import encode
    from ewect.prediction import OnnxPredictor, predict_logits

    reference = predict_logits(model, encode(tokenizer, texts, MAX_LENGTH), 32).numpy()
    for int8 in (False, True):
        onnx_model = OnnxPredictor(model_dir, "cpu", int8, onnx_dir=onnx_dir)
        logits = onnx_model.logits(onnx_model.encode(texts, MAX_LENGTH), 32)
        difference = abs(logits - reference).max()
        agreement = (logits.argmax(-1) == reference.argmax(-1)).mean()
        print(f"{ONNX_FILES[int8]:<16} max |logit difference| vs torch {difference:.2e}, "
              f"same label {agreement:.2%} of {len(texts)} posts")
        if not int8 and difference >= 1e-3:
            raise UserError(f"{ONNX_FILES[int8]}: logits differ from torch by {difference:.2e}")


def write_exports(model, tokenizer, folder):
    fp32_path, int8_path = folder / ONNX_FILES[False], folder / ONNX_FILES[True]
    try:
        with warnings.catch_warnings():  # the tracer's and deprecation warnings: checked below
            warnings.simplefilter("ignore")
            export_fp32(model, tokenizer, fp32_path)
        logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing"
        export_int8(fp32_path, int8_path)
    except Exception as err:  # the exporters fail in many library-specific ways
        raise UserError(f"cannot export ({first_line(err)})") from None


def move_files(source, folder):
    for path in Path(source).iterdir():
        os.replace(path, Path(folder) / path.name)


def export(model_dir, check_file, texts):
    """Write and check model_dir's two ONNX files in a temporary folder, then swap them in."""
    from ewect.modeling import load_checkpoint, save_atomically

    model, tokenizer = load_checkpoint(model_dir, "cpu")
    out = Path(model_dir) / ONNX_DIR
    try:
        with tempfile.TemporaryDirectory(prefix=f"{ONNX_DIR}.new", dir=model_dir) as new:
            write_exports(model, tokenizer, Path(new))
            print(f"checking the export against torch on {check_file}")
            check(model_dir, new, model, tokenizer, texts)
            save_atomically(out, lambda folder: move_files(new, folder))
    except UserError as err:
        raise UserError(f"{model_dir}: {err}; {out} is left as it was") from None
    print("wrote " + ", ".join(f"{out / name} ({(out / name).stat().st_size / 2**20:.0f} MiB)"
                               for name in ONNX_FILES.values()))


def main(argv=None):
    args = parse_args(argv)
    for package in ("onnx", "onnxruntime"):
        require(package)
    check_file, texts = check_texts(args.check_file, args.check_posts)  # before any export
    for model_dir in args.model_dir:
        export(model_dir, check_file, texts)


if __name__ == "__main__":
    run_cli(main)
