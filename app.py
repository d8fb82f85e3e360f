"""Web demo: label a Weibo post, or a file of posts, in the browser (Gradio).

    python app.py --model_dir workspace/wb/best                 # then open http://127.0.0.1:7860
    python app.py --model_dir workspace/wb/best --port 8000 --device cpu
    python app.py --host 0.0.0.0                                # reachable from the local network
    python app.py --model_dir runA/best runB/best               # an ensemble: mean probabilities

Type a post (or pick an example) to see its label and the six probabilities, then its
characters highlighted by how much they raised or lowered the label's probability
(ewect/explain.py). Upload a file of up to MAX_FILE_POSTS posts (one per line, an SMP2020-EWECT
JSON array, JSON Lines, or CSV/TSV/Excel with a `content` column; inference.py labels larger
files) for a table and a CSV to download, with a progress bar meanwhile; posts are still
answered while a file is labelled. A file's emotion shares are drawn as a bar chart with 95%
intervals, with the warning when the correction may not hold (as inference.py --summary gives
them; ewect/shares.py). Posts are cleaned exactly as the training data was. The label is the
argmax, or with decision offsets (--decision, as in test.py) the argmax of log p + offset; the
probabilities shown are calibrated by the checkpoint's temperature (calibration.json), which
changes no label. The app serves on --host only; a public gradio.live link is made only with
--share.
"""
import argparse
import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path

from ewect.config import BEST_DIR, LABELS
from ewect.decision import add_decision_arg
from ewect.errors import UserError, positive_int, run_cli, script_help
from ewect.prediction import add_precision_arg

EXAMPLES = [  # one post per label, in LABELS order
    "周末去看海，好快乐～",
    "你是个什么东西，垃圾",
    "外婆走了，再也吃不到她做的饭了",
    "半夜一个人在家，听到门外有脚步声，好害怕",
    "天哪，他居然向我求婚了？！",
    "明天上午九点在三楼会议室开会",
]
# A file is labelled in one request: 5,000 posts take bert-base about 4 minutes on a 2-core CPU
# (21 posts/s). More belong to inference.py, which streams them and can resume.
MAX_FILE_POSTS = 5000
MAX_FILE_SIZE = "10mb"  # gradio refuses larger uploads before they are read
POST_CONCURRENCY = 2  # posts labelled at once; 1, 2 and 4 alike on 2 cores (bench/RESULTS.md)
PROGRESS_EVERY = 64  # posts labelled between two progress updates: seconds of bert-base on a CPU


def parse_args():
    p = argparse.ArgumentParser(**script_help(__doc__))
    p.add_argument("--model_dir", nargs="+", default=[BEST_DIR],
                   help="checkpoint folder written by train.py; several: their ensemble")
    add_decision_arg(p)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="onnx needs a model exported by export.py")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    add_precision_arg(p, has_int8=False)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on; 0.0.0.0 opens the demo to the local network")
    p.add_argument("--port", type=port_number, default=7860, help="port to serve on")
    p.add_argument("--share", action="store_true",
                   help="also make a public gradio.live link (anyone with it can use the demo)")
    return p.parse_args()


def port_number(text):
    """argparse type: a TCP port, 1 to 65535."""
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1 to 65535)")
    return port


def read_file_posts(path):
    """[(id, text)] of an uploaded file, read as inference.py reads files: one post per line, an
    SMP2020-EWECT JSON array, JSON Lines, or CSV, TSV or Excel with a `content` column (and an
    optional `id`). A file of more than MAX_FILE_POSTS posts is refused; line-based files are
    read no further, JSON arrays and Excel files are read whole (within MAX_FILE_SIZE)."""
    from ewect.data import read_posts

    posts = list(itertools.islice(read_posts(path), MAX_FILE_POSTS + 1))
    if len(posts) > MAX_FILE_POSTS:
        raise UserError(f"{path}: more than {MAX_FILE_POSTS:,} posts, the most the demo labels at "
                        f"once; label this file with `python inference.py --input_file {path}`")
    return posts


def build_demo(predictor, offsets=None):
    import gradio as gr
    import numpy as np
    import pandas as pd

    from ewect.cleaning import clean_text
    from ewect.decision import decide
    from ewect.explain import METHOD_NAMES, make_explainer
    from ewect.shares import saved_reference, shares_figure, summarize

    reference = (saved_reference(predictor.calibration, predictor.temperature, offsets)
                 if predictor.calibration else None)
    try:
        explainer, no_explanations = make_explainer(predictor), None
    except UserError as err:  # an ensemble of several tokenizers: labels, without the why
        explainer, no_explanations = None, str(err)
    downloads = tempfile.TemporaryDirectory(prefix="ewect-demo-")  # removed when the app exits

    def classify_text(text):
        if not text or not text.strip():
            raise gr.Error("Type a post first.")
        cleaned = clean_text(text)
        if not cleaned:
            gr.Warning("Nothing was left of this post after cleaning.")
        row = predictor.predict([cleaned])[0]
        # Label's own form, passed as is (postprocess=False): the label shown is the decided one,
        # which with offsets need not be the most probable.
        label_id = decide(row[None], offsets, predictor.temperature)[0]
        return {"label": predictor.labels[label_id],
                "confidences": [{"label": predictor.labels[i], "confidence": float(row[i])}
                                for i in row.argsort()[::-1]]}

    def explain_text(text):
        """The cleaned post's pieces, each with its score over the largest one's (-1 to 1: the
        colour scale of gr.HighlightedText), toward the label classify_text gave it."""
        cleaned = clean_text(text or "")
        if not cleaned or explainer is None:
            return []
        row = predictor.predict([cleaned])[0]
        label_id = decide(row[None], offsets, predictor.temperature)[0]
        explanation = explainer.explain([cleaned], [label_id])[0]
        largest = max((abs(score) for score in explanation.scores), default=0.0) or 1.0
        return [(piece, score / largest) for piece, score in
                zip(explanation.pieces, explanation.scores)]

    def classify_file(path, progress=gr.Progress()):
        if path is None:
            raise gr.Error("Upload a file first.")
        try:
            posts = read_file_posts(path)
        except UserError as err:  # name the file as the user knows it, not its upload path
            raise gr.Error(str(err).replace(path, Path(path).name)) from None
        # The previous result's CSV: gradio has copied it to its own cache (deleted after an
        # hour) when it sent it, and one file is labelled at a time (concurrency_limit=1).
        for previous in Path(downloads.name).iterdir():
            shutil.rmtree(previous)
        texts = [clean_text(text) for _, text in posts]
        emptied = sum(not text for text in texts)
        if emptied:  # as for a typed post: their labels say nothing about them
            gr.Warning(f"{emptied} of {len(texts)} posts were empty after cleaning (only links, "
                       "mentions or spaces); they are labelled, but from no text.")
        probs = []
        for start in range(0, len(texts), PROGRESS_EVERY):
            progress((start, len(texts)), desc="Labelling", unit="posts")
            probs.append(predictor.predict(texts[start:start + PROGRESS_EVERY]))
        probs = np.concatenate(probs)
        decided = decide(probs, offsets, predictor.temperature)
        table = pd.DataFrame({"id": [post_id for post_id, _ in posts], "text": texts,
                              "label": [predictor.labels[i] for i in decided]})
        for column, label in enumerate(predictor.labels):
            table[label] = probs[:, column].astype(float).round(4)
        out = Path(tempfile.mkdtemp(dir=downloads.name)) / f"{Path(path).stem}_labels.csv"
        table.to_csv(out, index=False, encoding="utf-8-sig")  # the BOM: Excel reads it as UTF-8
        if reference is None:
            why = (getattr(predictor, "calibration_note", None)
                   or "the model has no calibration.json (`python calibrate.py --model_dir DIR`)")
            return table, str(out), None, f"No shares: {why}."
        summary = summarize(probs, decided, reference)
        note = f"**Warning:** {summary['warning']}" if summary["warning"] else ""
        return table, str(out), shares_figure(summary), note

    # Gradio's copies of uploads and downloads are deleted after an hour, and at exit.
    with gr.Blocks(title="Weibo emotion", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## Weibo emotion (SMP2020-EWECT)\n"
                    f"Labels a Chinese Weibo post as one of: {', '.join(LABELS)}.")
        with gr.Tab("Post"):
            text = gr.Textbox(label="Post", lines=3, placeholder="输入一条微博")
            button = gr.Button("Classify", variant="primary")
            probabilities = gr.Label(label="Emotion", num_top_classes=len(LABELS))
            why = gr.HighlightedText(
                label=f"Why: each character's part in the label ({METHOD_NAMES[explainer.method]}"
                      "; red raised its probability, purple lowered it)" if explainer else
                      f"No explanations: {no_explanations}",
                show_legend=False, show_inline_category=False)
            gr.Examples(EXAMPLES, inputs=text, label="One example per emotion")
            # Posts and files queue apart, so a long file never holds up a post; the label is
            # shown before its explanation is computed.
            gr.on([button.click, text.submit], classify_text, text, probabilities,
                  api_name="classify_text", postprocess=False, concurrency_id="posts",
                  concurrency_limit=POST_CONCURRENCY
                  ).success(explain_text, text, why, api_name="explain_text",
                            concurrency_id="posts")
        with gr.Tab("File"):
            upload = gr.File(label="Posts: one per line, SMP2020-EWECT JSON, JSON Lines, or "
                                   "CSV/TSV/Excel with a `content` column",
                             file_types=[".txt", ".json", ".jsonl", ".csv", ".tsv",
                                         ".xlsx"])
            file_button = gr.Button("Classify file", variant="primary")
            shares = gr.Plot(label="Emotion shares")
            shares_note = gr.Markdown()
            table = gr.Dataframe(label="Labels", interactive=False)
            download = gr.File(label="Download CSV")
            file_button.click(classify_file, upload, [table, download, shares, shares_note],
                              api_name="classify_file", concurrency_id="files",
                              concurrency_limit=1)
    return demo


def main():
    args = parse_args()
    from ewect.decision import choose_offsets
    from ewect.prediction import load_predictor

    offsets, source = choose_offsets(args.model_dir, args.decision)  # both fail before serving
    predictor = load_predictor(args.model_dir, args.backend, args.device,
                               precision=args.precision)
    if source:
        print(f"labels decided with the offsets in {source} (--decision none: plain argmax)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; works offline
    demo = build_demo(predictor, offsets)
    try:
        _, local_url, share_url = demo.launch(
            server_name=args.host, server_port=args.port, share=args.share,
            max_file_size=MAX_FILE_SIZE, ssr_mode=False, quiet=True, prevent_thread_lock=True)
    except OSError:  # port taken, or an address this machine does not have
        raise UserError(f"--host {args.host} --port {args.port}: cannot serve there, the port "
                        "is taken or the address is not this machine's; choose another") from None
    print(f"serving on {local_url}" + (f" and publicly on {share_url}" if share_url else "")
          + " (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C, cleaning up
    demo.block_thread()


if __name__ == "__main__":
    run_cli(main)
