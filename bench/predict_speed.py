"""Prediction throughput over usual_test_labeled (5,000 posts, cleaned): this project's prediction
against the published repo's, same model, same posts, in one process.

    python -m bench.predict_speed --device cuda --single             # GPU, all 5,000 posts
    python -m bench.predict_speed --device cpu --limit 640 --int8 --single   # 2-core CPU, ~3 min
    python -m bench.predict_speed --device cpu --limit 1000 --int8 --onnx --batch_size 32
    python -m bench.predict_speed --model_dir workspace/wb/best --device cpu --int8   # + scores
    python -m bench.predict_speed --device cpu --num_layers 2 --hidden_size 128 --limit 200 \
        --int8 --single                                                     # smoke test, seconds

(a)  project: posts tokenized in one call (ewect.data.encode), then ewect.prediction.predict_logits:
     batches sorted by length and padded to their own longest post, inference_mode, bf16 autocast
     on GPUs and CPUs that have it (--precision: a row each; the first is the reference).
(a') --int8, CPU only: the same after ewect.prediction.quantize_int8 (dynamic int8 Linear layers).
(c)  --onnx, CPU: export.py's fp32 and int8 ONNX files of the same model run by
     ewect.prediction.OnnxPredictor (onnxruntime, tokenizers; batches sorted as in (a)).
(b)  baseline, the published repo's style: a Dataset that tokenizes and pads every post to 140 on
     access, batches in file order, no_grad, fp32 on CPU / fp16 autocast on GPU, .cpu() per batch.

Timed: from cleaned texts to logits on the CPU, tokenization included; model loading, int8
conversion and one warm-up batch per path are not. Without --model_dir the model is randomly
initialised (the compute of bert-base-chinese; no network here), so instead of accuracy the
script reports how often the paths agree on the label and the largest probability difference.
With --model_dir (a checkpoint from train.py) it also reports accuracy and macro-F1 of each path
(meaningful on all 5,000 posts: about 20 minutes on a 2-core CPU).
--single times labelling one post of median length, model loaded, with the project's path.
The output is Markdown, to paste into bench/RESULTS.md.
"""
import argparse
import functools
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.common import (DEFAULT_DATA_DIR, DEFAULT_VOCAB, VOCAB_HELP, PaddedPostDataset, Timer,
                          current_rss_mib, describe_machine, load_posts, peak_memory_mib,
                          print_ratio, print_table, published_attention, require_vocab,
                          reset_peak_memory, result)
from ewect.config import ID2LABEL, MAX_LENGTH, PRECISIONS
from ewect.data import encode, pad_multiple, padded_width, sorted_batches
from ewect.errors import HelpFormatter, run_cli
from ewect.metrics import classification_scores
from ewect.modeling import (AMP_DTYPES, build_model, load_checkpoint,
                            prediction_precision, resolve_device)
from ewect.prediction import predict_logits, quantize_int8


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    p.add_argument("--model_dir", default=None,
                   help="trained checkpoint (train.py's best/); None: a random model")
    p.add_argument("--num_layers", type=int, default=12,
                   help="BERT layers of the random model (12: bert-base)")
    p.add_argument("--hidden_size", type=int, default=768,
                   help="BERT hidden size of the random model (768: bert-base)")
    p.add_argument("--vocab", default=DEFAULT_VOCAB,
                   help=VOCAB_HELP + ", for the random model")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="folder with the raw SMP2020-EWECT files (usual_test_labeled.txt is used)")
    p.add_argument("--batch_size", type=int, default=64, help="posts per batch, both paths")
    p.add_argument("--limit", type=int, default=None, help="use only the first N posts; None: all 5,000")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS,
                   help="autocast precision of the project's path (a), a row for each; auto is "
                        "what test.py and inference.py use (bf16 on CPUs with native bf16)")
    p.add_argument("--int8", action="store_true",
                   help="also time (a') the project's path with dynamic int8 quantization (CPU)")
    p.add_argument("--onnx", action="store_true",
                   help="also time (c) the model exported by export.py, fp32 and int8 (CPU)")
    p.add_argument("--single", action="store_true",
                   help="also time labelling one post with the project's path")
    p.add_argument("--single_runs", type=int, default=20, help="timed runs for --single (median)")
    p.add_argument("--seed", type=int, default=42, help="seed for the random model's weights")
    args = p.parse_args()
    if args.batch_size < 1 or args.single_runs < 1 or (args.limit is not None and args.limit < 1):
        p.error("--batch_size, --single_runs and --limit must be at least 1")
    return args


def project_predict(model, tokenizer, texts, batch_size, device, amp_dtype=None):
    """Logits of every text by the project's path, from the raw strings."""
    ids = encode(tokenizer, texts, MAX_LENGTH)
    return predict_logits(model, ids, batch_size, device, amp_dtype)


def baseline_predict(model, tokenizer, texts, batch_size, device):
    """Logits of every text the published way: padded to 140, file order, a .cpu() per batch."""
    loader = DataLoader(PaddedPostDataset(texts, None, tokenizer), batch_size=batch_size)
    results = []
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                results.append(model(**batch).logits.float().cpu())
    return torch.cat(results)


def run_path(name, predict, model, tokenizer, texts, lengths, batch_size, device, padded_to=None):
    """Time one path over all texts after a one-batch warm-up; (result row, logits)."""
    predict(model, tokenizer, texts[:batch_size], batch_size, device)  # kernels, allocator, threads
    peak_reset = reset_peak_memory(device)
    with Timer(device) as timer:
        logits = predict(model, tokenizer, texts, batch_size, device)
    if padded_to:  # every post padded to the same length
        positions = padded_to * len(texts)
    else:  # predict_logits pads each sorted batch to its own longest post (GPU: rounded up)
        positions = sum(len(b) * padded_width([lengths[i] for i in b], pad_multiple(device.type))
                        for b in sorted_batches(lengths, batch_size))
    row = result(name, len(texts), timer.seconds, sum(lengths), positions,
                 peak_memory_mib(device), peak_reset)
    return row, logits


def onnx_predict(predictor, tokenizer, texts, batch_size, device):
    """Logits of every text by the onnx backend, from the raw strings."""
    return torch.from_numpy(predictor.logits(predictor.encode(texts, MAX_LENGTH), batch_size))


def export_onnx(model, tokenizer):
    """(fp32, int8) OnnxPredictors of the model, exported by export.py into a temporary folder."""
    import tempfile

    import export
    from ewect.modeling import save_checkpoint
    from ewect.prediction import ONNX_DIR, ONNX_FILES, OnnxPredictor

    folder = Path(tempfile.mkdtemp(prefix="predict_speed_"))
    save_checkpoint(model, tokenizer, folder / "model")
    (folder / "model" / ONNX_DIR).mkdir()
    fp32_path = folder / "model" / ONNX_DIR / ONNX_FILES[False]
    export.export_fp32(model, tokenizer, fp32_path)
    export.export_int8(fp32_path, folder / "model" / ONNX_DIR / ONNX_FILES[True])
    return [OnnxPredictor(folder / "model", "cpu", int8) for int8 in (False, True)]


def compare(label, logits, reference):
    """Label agreement and the largest probability difference of two paths."""
    probs, ref = logits.softmax(-1), reference.softmax(-1)
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    print(f"{label}: same label for {agree:.2%} of posts, max |probability difference| "
          f"{(probs - ref).abs().max().item():.2e}")


def time_single(model, tokenizer, text, device, runs, amp_dtype=None):
    """Median and best seconds to label one post: tokenize, predict, pick the label."""
    def label_one():
        logits = predict_logits(model, encode(tokenizer, [text], MAX_LENGTH), 1, device,
                                amp_dtype)
        return ID2LABEL[int(logits.argmax(-1))]  # logits are on the CPU: the GPU has finished

    for _ in range(3):  # warm-up, untimed
        label_one()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        label_one()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds)


def load_model(args, device):
    """(model, tokenizer, description): the checkpoint, or a random model of the given shape."""
    if args.model_dir:
        model, tokenizer = load_checkpoint(args.model_dir, device)
        return model, tokenizer, f"checkpoint {args.model_dir}"
    torch.manual_seed(args.seed)
    model, tokenizer = build_model("bert-base-chinese", from_scratch=True, vocab=args.vocab,
                                   num_layers=args.num_layers, hidden_size=args.hidden_size)
    return model.to(device).eval(), tokenizer, \
        f"random, {args.num_layers} layers, hidden {args.hidden_size}"


def main():
    args = parse_args()
    device = resolve_device(args.device)
    print(describe_machine(device))
    if (args.int8 or args.onnx) and device.type != "cpu":
        print("--int8, --onnx: skipped; they run on the CPU only (--device cpu)")
        args.int8 = args.onnx = False

    if not args.model_dir:
        args.vocab = require_vocab(args.vocab)
    texts, golds = load_posts(args.data_dir, "usual_test_labeled.txt", drop_empty=False,
                              limit=args.limit)
    model, tokenizer, description = load_model(args, device)
    lengths = [len(x) for x in encode(tokenizer, texts, MAX_LENGTH)]  # for counting only
    precisions = list(dict.fromkeys(prediction_precision(name, device) for name in args.precision))
    print(f"model: {description}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters; data: usual_test_labeled, {len(texts)} posts; batch size {args.batch_size}")
    baseline_precision = "fp16" if device.type == "cuda" else "fp32"
    print(f"precision: (a) {', '.join(precisions)}; (b) {baseline_precision}")
    reset_peak_memory(device)  # trims the heap, so the floor printed is the one the paths start on
    print(f"process RSS before the paths: {current_rss_mib():.0f} MiB")

    runs = {}
    for precision in precisions:  # the first is (a), the one every other path is compared with
        name = f"(a) project {precision}"
        runs[name] = run_path(name, functools.partial(project_predict,
                                                      amp_dtype=AMP_DTYPES[precision]),
                              model, tokenizer, texts, lengths, args.batch_size, device)
    int8_model = None
    if args.int8:
        start = time.perf_counter()
        int8_model = quantize_int8(model)  # a quantized copy; the fp32 model is kept for (b)
        print(f"int8 conversion: {time.perf_counter() - start:.1f} s (not timed below)")
        runs["(a') project int8"] = run_path("(a') project int8", project_predict, int8_model,
                                             tokenizer, texts, lengths, args.batch_size, device)
    if args.onnx:
        start = time.perf_counter()
        onnx_fp32, onnx_int8 = export_onnx(model, tokenizer)
        print(f"onnx export: {time.perf_counter() - start:.1f} s (not timed below)")
        for name, predictor in (("(c) onnx", onnx_fp32), ("(c') onnx int8", onnx_int8)):
            runs[name] = run_path(name, onnx_predict, predictor, tokenizer, texts, lengths,
                                  args.batch_size, device)
    with published_attention():
        runs["(b) baseline"] = run_path("(b) baseline", baseline_predict, model, tokenizer,
                                        texts, lengths, args.batch_size, device,
                                        padded_to=MAX_LENGTH)

    print()
    print_table([row for row, _ in runs.values()], "posts")
    print()
    baseline_row, baseline_logits = runs["(b) baseline"]
    project_logits = runs[f"(a) project {precisions[0]}"][1]
    for name, (row, _) in runs.items():
        if name != "(b) baseline":
            print_ratio(f"speed-up {name} / (b), posts/s", row, baseline_row)
    # Dynamic padding must not change the answer: (a) and (b) differ only by float rounding
    # (and by the precision: bf16 vs fp16 on a GPU, bf16 vs fp32 on a CPU with native bf16).
    compare(f"(a) {precisions[0]} vs (b)", project_logits, baseline_logits)
    for precision in precisions[1:]:
        compare(f"(a) {precision} vs (a) {precisions[0]}",
                runs[f"(a) project {precision}"][1], project_logits)
    if args.int8:
        compare("(a') int8 vs (a)", runs["(a') project int8"][1], project_logits)
    if args.onnx:
        compare("(c) onnx vs (a)", runs["(c) onnx"][1], project_logits)
        compare("(c') onnx int8 vs (a)", runs["(c') onnx int8"][1], project_logits)
    if args.model_dir:
        for name, (_, logits) in runs.items():
            s = classification_scores(golds, logits.argmax(-1).numpy())
            print(f"{name}: usual_test accuracy {s['acc']:.4f}, macro-F1 {s['macro_f1']:.4f}")

    if args.single:
        median_post = sorted(range(len(texts)), key=lengths.__getitem__)[len(texts) // 2]
        text = texts[median_post]
        print()
        for name, single_model, amp_dtype in (
                (f"(a) project {precisions[0]}", model, AMP_DTYPES[precisions[0]]),
                ("(a') project int8", int8_model, None)):
            if single_model is not None:
                median, best = time_single(single_model, tokenizer, text, device, args.single_runs,
                                           amp_dtype)
                print(f"{name}, one post of {lengths[median_post]} "
                      f"tokens: median {median * 1000:.1f} ms, best {best * 1000:.1f} ms "
                      f"over {args.single_runs} runs")


if __name__ == "__main__":
    run_cli(main)
