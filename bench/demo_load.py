"""The web demo under load: one-post latency with N clients at once, and the server's memory.

    python -m bench.demo_load --model_dir workspace/demo_model/last --clients 8 --requests 25
    python -m bench.demo_load --model_dir workspace/demo_model/last --file_posts 5000   # + a file

Starts app.py on a free port of 127.0.0.1 (the only address this script ever contacts) with
--model_dir, waits until it serves, then runs --clients threads, each its own gradio_client
Client, each sending --requests one-post requests back to back (the demo's example posts, in
turn). Latency is one request's round trip as the client sees it, queueing included. With
--file_posts K one more client labels a file of K posts over and over meanwhile, as a user of the
File tab would. Everything stops by itself after --time_limit seconds: a request not answered by
then counts as an error. Prints p50 and p99 latency, requests per second, errors, and the app's
resident memory (VmRSS, and its peak VmHWM, from /proc/PID/status) before and after the load.
"""
import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from app import EXAMPLES  # imports neither torch nor gradio
from ewect.errors import HelpFormatter, UserError, positive_int, run_cli

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model_dir", nargs="+", required=True,
                   help="checkpoint folder(s) for app.py, as its --model_dir")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="app.py's --device")
    p.add_argument("--clients", type=positive_int, default=8, help="clients sending at once")
    p.add_argument("--requests", type=positive_int, default=25, help="one-post requests per client")
    p.add_argument("--file_posts", type=int, default=0,
                   help="posts in a file that one more client labels meanwhile; 0: no file")
    p.add_argument("--time_limit", type=positive_int, default=300,
                   help="seconds of load at most; unanswered requests then count as errors")
    p.add_argument("--startup_timeout", type=positive_int, default=180,
                   help="seconds to wait for app.py to serve")
    return p.parse_args()


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def memory_mib(pid):
    """(VmRSS, VmHWM) of a process in MiB, read from /proc (no psutil here)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))


def start_app(args, log):
    """app.py serving --model_dir on a free local port: (process, url)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model_dir", *args.model_dir, "--device", args.device,
         "--host", HOST, "--port", str(port)], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}/"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:  # its last line says why (app.py's `error: ...`)
            last_line = Path(log.name).read_text().strip().splitlines()[-1]
            raise UserError(f"app.py exited with {process.returncode}: "
                            + last_line.removeprefix("error: "))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise UserError(f"app.py did not serve within --startup_timeout {args.startup_timeout} s")


def send_posts(url, requests, deadline, latencies, errors):
    """One client: `requests` one-post requests back to back; a round trip each in latencies."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    for i in range(requests):
        if time.monotonic() > deadline:
            errors.append("not sent: --time_limit reached")
            continue
        start = time.perf_counter()
        try:
            client.submit(EXAMPLES[i % len(EXAMPLES)], api_name="/classify_text").result(
                timeout=max(deadline - time.monotonic(), 0.1))
            latencies.append(time.perf_counter() - start)
        except Exception as err:  # any failure is a result here: counted and shown, not raised
            errors.append(f"{type(err).__name__}: {err}")
    client.close()


def label_files(url, path, stop, deadline, files_done, errors):
    """One client labelling the same file again and again until the post clients are done."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            client.submit(handle_file(path), api_name="/classify_file").result(
                timeout=max(deadline - time.monotonic(), 0.1))
            files_done.append(1)
        except Exception as err:
            errors.append(f"file: {type(err).__name__}: {err}")
    client.close()


def percentile(values, q):
    """The nearest-rank percentile: the smallest value with q% of them at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def run_load(args, url, work):
    latencies, errors, files_done, stop = [], [], [], threading.Event()
    deadline = time.monotonic() + args.time_limit
    file_client = None
    if args.file_posts:
        path = work / "posts.txt"
        path.write_text("".join(EXAMPLES[i % len(EXAMPLES)] + "\n" for i in range(args.file_posts)),
                        encoding="utf-8")
        file_client = threading.Thread(target=label_files,
                                       args=(url, str(path), stop, deadline, files_done, errors))
        file_client.start()
    clients = [threading.Thread(target=send_posts,
                                args=(url, args.requests, deadline, latencies, errors))
               for _ in range(args.clients)]
    start = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    seconds = time.perf_counter() - start
    stop.set()
    if file_client:
        file_client.join()
    return latencies, errors, len(files_done), seconds


def main():
    args = parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with tempfile.TemporaryDirectory(prefix="demo-load-") as work:
        with open(Path(work) / "app.log", "w") as log:
            process, url = start_app(args, log)
        try:
            rss_before, _ = memory_mib(process.pid)
            latencies, errors, files_done, seconds = run_load(args, url, Path(work))
            rss_after, rss_peak = memory_mib(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"`python -m bench.demo_load {' '.join(sys.argv[1:])}`\n")
    print("| clients | requests | file posts (files labelled) | p50 s | p99 s | requests/s "
          "| errors | app RSS before MiB | after MiB | peak MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    p50, p99 = ((f"{percentile(latencies, q):.3f}" for q in (50, 99)) if latencies
                else ("-", "-"))
    requests = args.clients * args.requests
    unanswered = requests - len(latencies)  # counts a client that could not even connect, too
    print(f"| {args.clients} | {requests} | {args.file_posts} ({files_done}) | {p50} | {p99} "
          f"| {len(latencies) / seconds:.1f} | {unanswered} | {rss_before:.0f} "
          f"| {rss_after:.0f} | {rss_peak:.0f} |")
    for error in sorted(set(errors))[:5]:
        print(f"error: {error}", file=sys.stderr)
    if unanswered or errors:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
