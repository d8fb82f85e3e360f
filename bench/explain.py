"""Explanations measured (inference.py --explain, ewect/explain.py): how faithful each method is,
and what it costs.

    python export.py --model_dir workspace/offline/wb/best          # for the onnx timing
    python -m bench.explain --model_dir workspace/offline/wb/best   # ~5 min on a 2-core CPU
    python -m bench.explain --model_dir M --posts 100 --no_timing   # a quick look

Faithfulness (ERASER, DeYoung et al. 2020) on --posts usual_test posts of at least 8 pieces
(the first ones of the file), each explained toward the label the model gave it:
  comprehensiveness@k  p(label | post) - p(label | post with its k top pieces deleted)
  sufficiency@k        p(label | only its k top pieces kept)
for k = 1, 3, 5. Methods: Integrated Gradients at several step counts and baselines (with the
completeness error: |sum of the scores - (p(post) - p(baseline))|), occlusion with three
replacements (both as ewect/explain.py runs them), the last layer's attention from [CLS] (mean
of the heads) as a baseline explanation, and k random pieces (mean of 5 draws). "x random" is
comprehensiveness@3 over the random pieces'.
Timing: seconds per post explained one at a time and in bulk (--posts posts), per backend, beside
labelling the same posts without explanations; the whole inference.py command for one post, and
for usual_test's 5,000 posts with and without --explain.
Markdown, for RESULTS.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.common import DEFAULT_DATA_DIR, REPO_ROOT, describe_machine, load_posts
from ewect.explain import IntegratedGradients, Occlusion, label_probability, tokenize
from ewect.prediction import load_predictor

KS = (1, 3, 5)
MIN_PIECES = 8
RANDOM_DRAWS = 5
# (name, steps, baseline token) of Integrated Gradients; (name, the token a piece becomes, None:
# deleted) of occlusion
IG_VARIANTS = (("ig, 16 steps, [MASK] baseline", 16, "mask"), ("ig, 16 steps, [PAD]", 16, "pad"),
               ("ig, 2 steps, [MASK]", 2, "mask"), ("ig, 4 steps, [MASK]", 4, "mask"),
               ("ig, 8 steps, [MASK]", 8, "mask"), ("ig, 32 steps, [MASK]", 32, "mask"))
OCCLUSION_VARIANTS = (("occlusion, [MASK]", "mask"), ("occlusion, [PAD]", "pad"),
                      ("occlusion, deleted", None))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="a checkpoint folder (train.py's best/)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="the six raw files")
    p.add_argument("--posts", type=int, default=500, help="usual_test posts explained")
    p.add_argument("--no_timing", action="store_true", help="faithfulness only")
    return p.parse_args()


def attention_scores(model_dir, posts):
    """The last layer's attention from [CLS] to each token (mean of the heads), per piece."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, attn_implementation="eager").eval()
    scores = []
    with torch.inference_mode():
        for post in posts:
            out = model(input_ids=torch.tensor([post.ids]), output_attentions=True)
            weights = out.attentions[-1][0, :, 0, :].mean(0).numpy()
            scores.append([weights[group].sum() for group in post.groups])
    return scores


def faithfulness(predictor, posts, targets, scores_of, rng):
    """{k: (comprehensiveness, sufficiency)} of rankings; scores_of(post index) gives a post's
    piece scores, or None for random pieces."""
    def p_of(id_lists, owners):
        return label_probability(predictor.logits(id_lists, 64), targets[owners],
                                 predictor.temperature)

    full = p_of([post.ids for post in posts], np.arange(len(posts)))
    results = {}
    for k in KS:
        deleted, kept, owners = [], [], []
        for index, post in enumerate(posts):
            scores = scores_of(index)
            draws = ([rng.choice(len(post.groups), k, replace=False) for _ in range(RANDOM_DRAWS)]
                     if scores is None else [np.argsort(-np.asarray(scores), kind="stable")[:k]])
            for top in draws:
                deleted.append(post.without(top))
                kept.append(post.only(top))
                owners.append(index)
        owners = np.array(owners)
        results[k] = (float(np.mean(full[owners] - p_of(deleted, owners))),
                      float(np.mean(p_of(kept, owners))))
    return results


def timed(function, repeats=1):
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def timing_rows(args, texts, targets):
    """(backend, method, s/post one at a time, s/post in bulk, labelling's s/post in bulk)."""
    rows = []
    for backend, int8 in (("torch", False), ("torch", True), ("onnx", False), ("onnx", True)):
        if backend == "onnx" and not os.path.isdir(os.path.join(args.model_dir, "onnx")):
            continue
        from ewect.explain import make_explainer

        predictor = load_predictor(args.model_dir, backend, "cpu", int8)
        explainer = make_explainer(predictor)
        one = timed(lambda: explainer.explain(texts[:1], targets[:1]), 5)
        bulk = timed(lambda: explainer.explain(texts, targets)) / len(texts)
        label = timed(lambda: predictor.predict(texts)) / len(texts)
        rows.append((f"{backend}{' int8' if int8 else ''}", explainer.method, one, bulk, label))
    return rows


def command_seconds(model_dir, *flags, repeats=3):
    """The whole `inference.py --model_dir M --device cpu FLAGS` command, best of `repeats`."""
    command = [sys.executable, "inference.py", "--model_dir", model_dir, "--device", "cpu",
               *flags]
    return min(timed(lambda: subprocess.run(command, cwd=REPO_ROOT, check=True,
                                            capture_output=True)) for _ in range(repeats))


def bulk_seconds(args, *flags):
    """inference.py over usual_test (5,000 posts) into a JSON Lines file, once."""
    with tempfile.TemporaryDirectory() as folder:
        return command_seconds(args.model_dir, "--input_file",
                               os.path.join(args.data_dir, "usual_test_labeled.txt"), "--json",
                               "--output", os.path.join(folder, "out.jsonl"), *flags, repeats=1)


def main():
    args = parse_args()
    torch.manual_seed(0)
    texts, _ = load_posts(args.data_dir, "usual_test_labeled.txt", drop_empty=True)
    predictor = load_predictor(args.model_dir, "torch", "cpu", precision="fp32")
    tokenizer = predictor.tokenizer
    posts = [post for post in tokenize(tokenizer, texts) if len(post.groups) >= MIN_PIECES]
    posts = posts[:args.posts]
    texts = ["".join(post.pieces) for post in posts]
    targets = predictor.predict(texts).argmax(-1)
    rankings, deltas = {}, {}
    token = {"mask": tokenizer.mask_token_id, "pad": predictor.pad_id, None: None}
    for name, steps, baseline in IG_VARIANTS:
        method = IntegratedGradients(predictor.model, tokenizer, predictor.device,
                                     predictor.temperature, steps)
        method.baseline_id = token[baseline]
        method.tolerance = float("inf")  # this many steps for every post, none redone
        explanations = method.explain_tokenized(posts, targets)
        rankings[name] = [e.scores for e in explanations]
        deltas[name] = np.abs([e.delta for e in explanations])
    as_run = "ig as --explain runs it (16 steps, more where the sum misses by 0.01)"
    explanations = IntegratedGradients(predictor.model, tokenizer, predictor.device,
                                       predictor.temperature).explain_tokenized(posts, targets)
    rankings[as_run] = [e.scores for e in explanations]
    deltas[as_run] = np.abs([e.delta for e in explanations])
    for name, replacement in OCCLUSION_VARIANTS:
        rankings[name] = [e.scores for e in Occlusion(
            tokenizer, predictor.logits, predictor.temperature, 64, token[replacement]
        ).explain_tokenized(posts, targets)]
    rankings["attention (last layer, [CLS])"] = attention_scores(args.model_dir, posts)
    rankings["random pieces"] = None
    rng = np.random.default_rng(0)
    results = {name: faithfulness(predictor, posts, targets,
                                  (lambda i, s=scores: None if s is None else s[i]), rng)
               for name, scores in rankings.items()}
    print(describe_machine(torch.device("cpu")))
    print(f"model: {args.model_dir}; {len(posts)} usual_test posts of {MIN_PIECES}+ pieces, "
          f"mean {np.mean([len(p.groups) for p in posts]):.1f} pieces\n")
    print("| method | " + " | ".join(f"compr.@{k}" for k in KS) + " | x random | "
          + " | ".join(f"suff.@{k}" for k in KS) + " | completeness error, mean / max |")
    print("|---" * (2 * len(KS) + 3) + "|")
    random3 = results["random pieces"][3][0]
    for name, result in results.items():
        error = (f"{deltas[name].mean():.4f} / {deltas[name].max():.3f}" if name in deltas
                 else "")
        print(f"| {name} | " + " | ".join(f"{result[k][0]:.3f}" for k in KS)
              + f" | {result[3][0] / random3:.1f}x | "
              + " | ".join(f"{result[k][1]:.3f}" for k in KS) + f" | {error} |")
    if args.no_timing:
        return
    print("\n| backend | method | one post, s | bulk, s/post | labelling, s/post | bulk x "
          "labelling |\n|---|---|---|---|---|---|")
    for backend, method, one, bulk, label in timing_rows(args, texts, targets):
        print(f"| {backend} | {method} | {one:.3f} | {bulk:.4f} | {label:.5f} | "
              f"{bulk / label:.0f}x |")
    post = ["--input", "你是个什么东西，垃圾"]
    print("\nwhole command, one post (best of 3): " + ", ".join(
        f"{name} {command_seconds(args.model_dir, *post, *flags):.2f} s" for name, flags in (
            ("torch", []), ("torch --explain", ["--explain"]),
            ("onnx", ["--backend", "onnx"]), ("onnx --explain", ["--backend", "onnx",
                                                                 "--explain"]))
        if "onnx" not in flags or os.path.isdir(os.path.join(args.model_dir, "onnx"))))
    plain, explained = bulk_seconds(args), bulk_seconds(args, "--explain")
    print(f"whole command, usual_test's 5,000 posts, torch: {plain:.1f} s, with --explain "
          f"{explained:.1f} s ({explained / plain:.1f}x)")


if __name__ == "__main__":
    main()
