"""Shared test fixtures. Everything runs on the CPU with a tiny randomly initialised BERT.

The hand-made fixture in tests/fixtures/raw stands in for the data, so the suite passes on a fresh
clone; with ../shared beside the repo, the real vocabulary is used and the real-data tests run.
"""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from ewect.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_RAW = ROOT / "tests" / "fixtures" / "raw"
SHARED = ROOT.parent / "shared"
SHARED_VOCAB = SHARED / "models" / "bert-base-chinese-vocab" / "vocab.txt"
SHARED_RAW = SHARED / "data" / "smp2020-ewect" / "raw"
requires_shared_data = pytest.mark.skipif(not SHARED_RAW.is_dir(),
                                          reason="real data not found at ../shared")


def pytest_addoption(parser):
    parser.addoption("--fail-on-skip", action="store_true",
                     help="fail the run when a selected test skipped or none ran (the GPU check: "
                          "a CUDA test that skipped proved nothing)")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--fail-on-skip") or exitstatus != 0:
        return
    stats = session.config.pluginmanager.get_plugin("terminalreporter").stats
    unproven = [kind for kind in ("skipped", "xfailed", "xpassed") if stats.get(kind)]
    if unproven or not stats.get("passed"):
        print(f"\n--fail-on-skip: {len(stats.get('passed', []))} passed, "
              + ", ".join(f"{len(stats[kind])} {kind}" for kind in unproven)
              + ": failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(*args, timeout=300, **kwargs):
    """Run one of the repo's scripts as a user would, from the repo root."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def load_script(name):
    """One of the repo's scripts as a module, by file name (`import test` could find the standard
    library's test package)."""
    spec = importlib.util.spec_from_file_location(Path(name).stem + "_script", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(name, *args):
    """Run a script's main in this process, through run_cli as its `__main__` does, with its
    command line and output captured: the same result as run_script without the ~4 s of starting
    Python and importing torch. An exception that run_cli lets through (a traceback for the user)
    fails the test."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = [name, *map(str, args)]
    with (mock.patch.object(sys, "argv", argv), contextlib.chdir(ROOT),
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
        try:
            run_cli(load_script(name).main)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def assert_clean_error(result, *fragments):
    """Exit status 2 and a message that starts with 'error:'; never a traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(scope="session")
def vocab(tmp_path_factory):
    """bert-base-chinese's vocabulary, or on a fresh clone one made of the fixture's characters."""
    if SHARED_VOCAB.is_file():
        return str(SHARED_VOCAB)
    chars = set()
    for path in FIXTURE_RAW.iterdir():
        chars.update("".join(r["content"] for r in json.loads(path.read_text("utf-8"))))
    chars.update("abcdefghijklmnopqrstuvwxyz0123456789!?,.:[]")
    chars = sorted(c for c in chars if c.strip())
    # Word pieces, as in bert-base-chinese: "hello" is h ##e ##l ##l ##o, so whole-word masking
    # meets the `##` branch here too.
    pieces = [f"##{c}" for c in chars if c.isascii() and c.isalnum()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + pieces
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def clean_dir(tmp_path_factory):
    """The fixture, cleaned by clean_data.py."""
    out = tmp_path_factory.mktemp("clean")
    result = run_script("clean_data.py", "--raw_dir", FIXTURE_RAW, "--out_dir", out)
    assert result.returncode == 0, result.stderr
    return out


def tiny_train_args(clean_dir, vocab, output_dir, *extra):
    """train.py arguments for a 2-layer, hidden-32 BERT on the fixture (6 steps an epoch)."""
    return ["--from_scratch", "--vocab", vocab, "--num_layers", "2", "--hidden_size", "32",
            "--batch_size", "8", "--epochs", "2", "--lr", "1e-3", "--log_every", "2",
            "--device", "cpu", "--train_file", str(clean_dir / "usual_train.txt"),
            "--eval_file", str(clean_dir / "usual_eval_labeled.txt"),
            "--output_dir", str(output_dir), *map(str, extra)]


def pretrained_folder(path, vocab, layers=2, dtype=None):
    """A tiny saved masked-LM BERT, like a downloaded bert-base-chinese (in `dtype`, if given)."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizer

    from ewect.modeling import bert_config

    tokenizer = BertTokenizer(vocab)
    torch.manual_seed(0)
    BertForMaskedLM(bert_config(len(tokenizer), layers, 32)).to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def from_folder_args(clean_dir, vocab, out, folder, *extra):
    """tiny_train_args that fine-tune the pretrained `folder` at the default lr."""
    args = tiny_train_args(clean_dir, vocab, out, *extra)
    del args[:3]  # --from_scratch --vocab VOCAB: a pretrained model instead
    lr = args.index("--lr")
    del args[lr:lr + 2]  # the fine-tuning default, 1e-5, which rounds away in bf16 weights
    return ["--model_name", str(folder), *args]


@pytest.fixture(scope="session")
def trained(clean_dir, vocab, tmp_path_factory):
    """Output folder of one tiny training run (in-process, to save the start-up time)."""
    import train

    out = tmp_path_factory.mktemp("wb")
    train.main(tiny_train_args(clean_dir, vocab, out))
    return out
