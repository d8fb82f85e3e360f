"""The web demo (app.py), as a user meets it: served on a local port, called over HTTP with
gradio_client, and driven in a real headless browser (skipped where Chromium or Playwright is
absent; .ci/run installs both)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pandas as pd
import pytest

from conftest import ROOT, assert_clean_error, free_port, run_main
from ewect.cleaning import clean_text
from ewect.config import LABELS

gradio_client = pytest.importorskip("gradio_client")
CHROMIUM = shutil.which("chromium")
# Without the background-networking flags Chromium's own connections fail on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_TIMEOUT = 120  # seconds: importing torch and gradio on a busy 2-core machine


def wait_until_serving(url, process, log):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not serve {url} within {STARTUP_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained / "best"


@pytest.fixture(scope="module")
def app_url(model_dir, tmp_path_factory):
    """URL of app.py serving the tiny checkpoint on a free local port; stopped afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py", "--model_dir", str(model_dir),
                                    "--device", "cpu", "--port", str(port)],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            assert process.wait(timeout=10) == 0, log.read_text()  # a clean stop on SIGTERM
        except subprocess.TimeoutExpired:
            process.kill()
            raise


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client.Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def expected_labels(model_dir):
    """The label the checkpoint gives each post, computed here without the app."""
    from ewect.prediction import load_predictor

    predictor = load_predictor(model_dir, device="cpu")
    return lambda posts: [LABELS[i] for i in predictor.predict(
        [clean_text(p) for p in posts]).argmax(1)]


def test_missing_checkpoint_stops_before_serving(tmp_path):
    assert_clean_error(run_main("app.py", "--model_dir", tmp_path / "none", "--port",
                                free_port()), "no checkpoint here")


def test_a_port_out_of_range_is_one_error_line(tmp_path):
    result = run_main("app.py", "--model_dir", tmp_path, "--port", 70000)
    assert result.returncode == 2 and "70000 is not a port (1 to 65535)" in result.stderr


def test_taken_port_is_one_error_line(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_clean_error(run_main("app.py", "--model_dir", model_dir, "--device", "cpu",
                                    "--port", port), f"--port {port}: cannot serve there")


def test_text_over_http(client, expected_labels):
    post = "你是个什么东西，垃圾 @someone http://t.cn/abc"
    result = client.predict(post, api_name="/classify_text")
    assert result["label"] == expected_labels([post])[0]
    probabilities = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert set(probabilities) == set(LABELS)
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
    with pytest.raises(gradio_client.exceptions.AppError, match="Type a post first"):
        client.predict("   ", api_name="/classify_text")


POSTS = ["周末去看海，好快乐～", "網速慢得要死，煩死了", "明天上午九点开会"]


@pytest.mark.parametrize("name, content, ids", [
    ("posts.txt", POSTS[0] + "\n\n" + "\n".join(POSTS[1:]) + "\n", [1, 3, 4]),
    ("posts.json", json.dumps([{"id": 7 + i, "content": p} for i, p in enumerate(POSTS)],
                              ensure_ascii=False), [7, 8, 9]),
    ("posts.csv", "id,content\n" + "".join(f"p{i},{p}\n" for i, p in enumerate(POSTS)),
     ["p0", "p1", "p2"]),
], ids=["lines", "json", "csv"])
def test_file_over_http(client, expected_labels, tmp_path, name, content, ids):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    table, csv_path, chart, note = client.predict(gradio_client.handle_file(str(path)),
                                                  api_name="/classify_file")
    assert chart and "only 3 posts: too few for a correction" in note
    shown = pd.DataFrame(table["data"], columns=table["headers"])
    downloaded = pd.read_csv(csv_path, dtype={"id": str})
    with open(csv_path, "rb") as f:  # the BOM that makes Excel read the Chinese as UTF-8
        assert f.read(3) == b"\xef\xbb\xbf"
    for frame in shown, downloaded:
        assert list(frame.columns) == ["id", "text", "label", *LABELS]
        assert list(frame["id"].astype(str)) == [str(i) for i in ids]
        assert list(frame["text"]) == [clean_text(p) for p in POSTS]
        assert list(frame["label"]) == expected_labels(POSTS)
        assert frame[list(LABELS)].sum(axis=1).tolist() == pytest.approx([1] * 3, abs=1e-3)


def test_file_over_the_cap_points_to_inference(client, tmp_path):
    import app

    path = tmp_path / "posts.txt"
    path.write_text("好开心\n" * (app.MAX_FILE_POSTS + 1), encoding="utf-8")
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(gradio_client.handle_file(str(path)), api_name="/classify_file")
    message = str(err.value)
    assert message.startswith(f"posts.txt: more than {app.MAX_FILE_POSTS:,} posts"), message
    assert "python inference.py --input_file posts.txt" in message, message


def test_bad_file_is_a_clear_message(client, tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text("id,text\n1,你好\n", encoding="utf-8")
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(gradio_client.handle_file(str(path)), api_name="/classify_file")
    assert str(err.value).startswith("posts.csv: no 'content' column"), str(err.value)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_browser_types_a_post_and_sees_the_label(app_url, expected_labels):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    post = POSTS[1]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(app_url)
            page.get_by_label("Post").first.fill(post)
            page.get_by_role("button", name="Classify", exact=True).click()
            label = page.get_by_test_id("label-output-value")
            label.wait_for(timeout=30_000)
            assert label.inner_text().strip() == expected_labels([post])[0]
            # then the post, cleaned, piece by piece in the highlighted explanation (the
            # textbox's value is not in the page's text)
            page.wait_for_function(
                "text => document.body.innerText.replace(/\\s+/g, '').includes(text)",
                arg="".join(clean_text(post).split()), timeout=30_000)
        finally:
            browser.close()


def test_decision_offsets_decide_the_label_shown(model_dir, tmp_path):
    import numpy as np

    import app
    from ewect.config import LABEL2ID
    from ewect.explain import make_explainer
    from ewect.prediction import load_predictor

    predictor = load_predictor(model_dir, device="cpu")
    fear = np.array([50.0 if label == "fear" else 0.0 for label in LABELS])
    demo = app.build_demo(predictor, fear)
    functions = {fn.api_name: fn.fn for fn in demo.fns.values()}
    shown = functions["classify_text"](POSTS[0])
    assert shown["label"] == "fear"
    probabilities = {c["label"]: c["confidence"] for c in shown["confidences"]}
    model = predictor.predict([clean_text(POSTS[0])])[0]
    assert [probabilities[label] for label in LABELS] == pytest.approx(model.tolist())
    path = tmp_path / "posts.txt"
    path.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    table = functions["classify_file"](str(path))[0]
    assert list(table["label"]) == ["fear"] * len(POSTS)
    # the explanation is of the label shown, fear, each score over the largest
    why = functions["explain_text"](POSTS[0])
    explained = make_explainer(predictor).explain([clean_text(POSTS[0])], [LABEL2ID["fear"]])[0]
    assert "".join(piece for piece, _ in why) == clean_text(POSTS[0]) == "".join(explained.pieces)
    largest = max(abs(score) for score in explained.scores)
    assert [value for _, value in why] == pytest.approx(
        [score / largest for score in explained.scores])


def test_file_results_are_removed_when_the_next_replaces_them(model_dir, tmp_path):
    import app
    from ewect.prediction import load_predictor

    demo = app.build_demo(load_predictor(model_dir, device="cpu"))
    classify_file = {fn.api_name: fn.fn for fn in demo.fns.values()}["classify_file"]
    path = tmp_path / "posts.txt"
    path.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    first, second = (classify_file(str(path))[1] for _ in range(2))
    assert not os.path.exists(first) and os.path.exists(second)


class GatedPredictor:
    """The checkpoint's predictor, but a file's posts wait until `release` is set."""

    def __init__(self, predictor):
        self.predictor, self.labels = predictor, predictor.labels
        self.temperature, self.calibration = predictor.temperature, predictor.calibration
        self.file_started, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):  # the rest (the explainer's model, tokenizer) as it is
        return getattr(self.predictor, name)

    def predict(self, texts):
        if len(texts) > 1:
            self.file_started.set()
            self.release.wait(timeout=30)
        return self.predictor.predict(texts)


def test_post_is_answered_while_a_file_is_labelled(model_dir, tmp_path, monkeypatch):
    import app
    from ewect.prediction import load_predictor

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    predictor = GatedPredictor(load_predictor(model_dir, device="cpu"))
    demo = app.build_demo(predictor)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                ssr_mode=False)
    client = None
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        path = tmp_path / "posts.txt"
        path.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
        file_job = client.submit(gradio_client.handle_file(str(path)), api_name="/classify_file")
        assert predictor.file_started.wait(timeout=10)
        post = client.submit(POSTS[0], api_name="/classify_text").result(timeout=10)
        assert post["label"] in LABELS and not file_job.done()
        deadline = time.time() + 10  # the progress message travels on its own
        while not file_job.status().progress_data and time.time() < deadline:
            time.sleep(0.1)
        progress = file_job.status().progress_data
        assert progress and progress[0].unit == "posts" and progress[0].length == len(POSTS)
        predictor.release.set()
        table = file_job.result(timeout=10)[0]
        assert len(table["data"]) == len(POSTS)
    finally:
        predictor.release.set()
        if client:
            client.close()
        demo.close()


def test_a_file_shows_its_emotion_shares_with_intervals_and_the_warning(model_dir, tmp_path):
    import numpy as np

    import app
    from ewect.prediction import load_predictor

    path = tmp_path / "posts.txt"
    path.write_text("\n".join(POSTS * 40) + "\n", encoding="utf-8")  # enough for a correction
    predictor = load_predictor(model_dir, device="cpu")
    classify_file = {fn.api_name: fn.fn for fn in app.build_demo(predictor).fns.values()
                     }["classify_file"]
    table, _, chart, note = classify_file(str(path))
    bars = chart.axes[0].patches
    assert [bar.get_x() + bar.get_width() / 2 for bar in bars] == list(range(len(LABELS)))
    heights = np.array([bar.get_height() for bar in bars])
    assert heights.sum() == pytest.approx(1, abs=1e-3)
    assert "shares by" in chart.axes[0].get_title() and "120 posts" in chart.axes[0].get_title()
    assert len(chart.axes[0].lines) + len(chart.axes[0].collections) > 0  # the interval bars
    assert note == "" or note.startswith("**Warning:**")
    shutil.copytree(model_dir, tmp_path / "uncalibrated")
    (tmp_path / "uncalibrated" / "calibration.json").unlink()
    plain = app.build_demo(load_predictor(tmp_path / "uncalibrated", device="cpu"))
    _, _, chart, note = {fn.api_name: fn.fn for fn in plain.fns.values()}["classify_file"](
        str(path))
    assert chart is None and "python calibrate.py" in note
