"""Docs that cannot rot: every command in the shell code blocks of README.md and docs/*.md that
runs one of the repo's scripts names a script that exists and passes only flags and values its
parser takes (checked against the script's own parse_args; nothing else of it runs), every
relative link resolves, and each script's --help says what it does and shows commands that work."""
import argparse
import contextlib
import functools
import itertools
import io
import os
import re
import shlex
import sys
from collections import namedtuple
from unittest import mock
from urllib.parse import unquote

import pytest

from conftest import ROOT, load_script
from ewect.config import DATASETS
from ewect.errors import script_help

DOCS = ["README.md", *sorted(path.relative_to(ROOT).as_posix()
                             for path in (ROOT / "docs").glob("*.md"))]
USER_SCRIPTS = ["train.py", "test.py", "inference.py", "pretrain.py", "clean_data.py", "export.py",
                "app.py"]
# What a shell wrapper runs with its arguments, after how many arguments of its own come first.
SH_FORWARDS = {"train.sh": ("train.py", 0), "test.sh": ("test.py", 0),
               "pretrain.sh": ("pretrain.py", 0), "train_folds.sh": ("train.py", 2),
               "train_offline.sh": ("train.py", 0)}
SHELL_FENCES = {"", "sh", "bash", "shell", "console", "zsh"}
FENCE = re.compile(r"\s*(`{3,}|~{3,})\s*([\w+-]*)")
PYTHONS, SHELLS = {"python", "python3"}, {"sh", "bash"}
SHELL_KEYWORDS = {"do", "then", "else", "time", "exec", "{", "!"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
# A value the shell or the reader fills in: $seed, $HOME, *.txt, posts?.txt, …, ...
PLACEHOLDER = re.compile(r"[$*?]|…|\.\.\.")
BENCH_MODULE = re.compile(r"bench\.(\w+)")  # python -m bench.NAME runs bench/NAME.py
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?[^)]*\)")

Command = namedtuple("Command", "line text script args")


def block_lines(markdown):
    """(line number, line, language) of each line of the Markdown: language is the info string
    of the fenced code block the line is in ('' for a bare fence), None outside blocks."""
    fence = language = None
    for number, line in enumerate(markdown.splitlines(), 1):
        marker = FENCE.match(line)
        if fence is None and marker:
            fence, language = marker[1], marker[2].lower()
        elif fence and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = None
        else:
            yield number, line, language if fence else None


def shell_lines(markdown):
    """(line number, text) of the lines in shell code blocks, a line ending in a backslash
    joined to the next under the first one's number."""
    start, pending = None, ""
    for number, line, language in block_lines(markdown):
        if language not in SHELL_FENCES:
            continue
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        start, pending = None, ""


def simple_commands(line):
    """The words of each command on a shell line: split at ; && || | &, comments and
    redirections (> FILE, 2>&1) dropped."""
    lexer = shlex.shlex(re.sub(r"(?<!\S)\d(?=[<>])", "", line), posix=True,
                        punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: words as they stand
        tokens = line.split("#")[0].split()
    words, redirected = [], False
    for token in tokens:
        if redirected:
            redirected = False
        elif not token.strip("();<>|&"):  # an operator
            redirected = "<" in token or ">" in token
            if not redirected and words:
                yield words
                words = []
        else:
            words.append(token)
    if words:
        yield words


def without_keywords(words):
    """A command's words without the shell keywords before it (`do` in `for ...; do python ...`)."""
    while words and words[0] in SHELL_KEYWORDS:
        words = words[1:]
    return words


def script_call(words):
    """(script, its arguments) when the command runs a script by its path (python, torchrun,
    python -m torch.distributed.run, sh, bash) or a benchmark as a module (python -m bench.NAME:
    bench/NAME.py), else None."""
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    program, *rest = words
    if program in PYTHONS and rest[:2] == ["-m", "torch.distributed.run"]:
        program, rest = "torchrun", rest[2:]
    if program == "torchrun":  # the launcher's own options come before the script
        at = next((i for i, word in enumerate(rest) if word.endswith(".py")), None)
    elif program in PYTHONS | SHELLS:  # the first word that is not an option
        at = next((i for i, word in enumerate(rest) if not word.startswith("-")), None)
        if at is not None and rest[at - 1:at] == ["-m"]:
            benchmark = BENCH_MODULE.fullmatch(rest[at])
            if program in PYTHONS and benchmark:
                return f"bench/{benchmark[1]}.py", rest[at + 1:]
            return None  # python -m pytest
    else:
        return None
    if at is None or not rest[at].endswith((".py", ".sh")):
        return None
    return rest[at], rest[at + 1:]


def documented_commands(markdown):
    """The calls of scripts in the Markdown's shell code blocks."""
    for number, line in shell_lines(markdown):
        for words in map(without_keywords, simple_commands(line)):
            if call := script_call(words):
                yield Command(number, " ".join(words), *call)


@functools.cache
def script_module(script):
    return load_script(script)


def shell_options(path):
    """The options a shell script takes itself: the labels of its `case` branches."""
    code = "\n".join(line.split("#")[0] for line in path.read_text("utf-8").splitlines())
    return {option for label in re.findall(r"(--[\w-]+(?:\s*\|\s*--[\w-]+)*)\s*\)", code)
            for option in re.split(r"\s*\|\s*", label)}


def tolerant_parse_args(allowed):
    """ArgumentParser.parse_args, but leftover words that are placeholders or in `allowed`
    (a wrapper's own options) are no error."""
    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras := [word for word in extras if not PLACEHOLDER.search(word)
                      and word.split("=")[0] not in allowed]:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace
    return parse_args


GET_VALUE, CHECK_VALUE = argparse.ArgumentParser._get_value, argparse.ArgumentParser._check_value


def get_value(self, action, text):
    """A placeholder value is not converted: it stays as written, or for a flag that converts
    its value, the default stands in (the checks after parsing compare numbers)."""
    if PLACEHOLDER.search(text):
        return text if action.type is None else action.default
    return GET_VALUE(self, action, text)


def check_value(self, action, value):
    if not (isinstance(value, str) and PLACEHOLDER.search(value)):
        CHECK_VALUE(self, action, value)


def parse_error(script, args, allowed=()):
    """The error line the script's parse_args gives for these arguments, or None. Only
    parse_args runs; placeholder values are not checked, their flags are. A script without a
    parse_args (some in bench/ parse in main) is not checked."""
    parse_args = getattr(script_module(script), "parse_args", None)
    if parse_args is None:
        return None
    stderr = io.StringIO()
    with (mock.patch.object(sys, "argv", [script, *args]),
          mock.patch.object(argparse.ArgumentParser, "parse_args", tolerant_parse_args(allowed)),
          mock.patch.object(argparse.ArgumentParser, "_get_value", get_value),
          mock.patch.object(argparse.ArgumentParser, "_check_value", check_value),
          contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr)):
        try:
            parse_args()
        except SystemExit as exit_:
            if exit_.code:
                return stderr.getvalue().strip().splitlines()[-1]
    return None


def command_error(script, args):
    """Why this call of a repo script would stop at its command line, or None."""
    path = ROOT / script
    if not path.is_file():
        return f"{script}: no such script in the repo"
    if path.suffix == ".py":
        return parse_error(script, args)
    own = shell_options(path)
    forward = SH_FORWARDS.get(os.path.normpath(script))
    if forward:
        target, leading = forward
        return parse_error(target, args[leading:], allowed=own)
    unknown = [arg for arg in args if arg.startswith("-") and arg.split("=")[0] not in own]
    return f"{script} has no option {', '.join(unknown)}" if unknown else None


def broken_links(markdown, folder):
    """(line number, target) of each relative link or image whose file is missing."""
    prose = "\n".join("" if language is not None else re.sub(r"`[^`\n]*`", "", line)
                      for _, line, language in block_lines(markdown))
    for link in LINK.finditer(prose):
        target = link[1]
        path = unquote(target.split("#")[0])
        if path and not re.match(r"[a-z][\w+.-]*:", target) and not (folder / path).exists():
            yield prose.count("\n", 0, link.start()) + 1, target


COMMANDS = [(doc, command) for doc in DOCS
            for command in documented_commands((ROOT / doc).read_text("utf-8"))]


@pytest.mark.parametrize("doc,command", COMMANDS,
                         ids=[f"{doc}:{command.line}" for doc, command in COMMANDS])
def test_documented_command_takes_its_flags(doc, command):
    error = command_error(command.script, command.args)
    assert error is None, f"{doc} line {command.line}: `{command.text}`: {error}"


def test_the_docs_show_how_to_train_test_and_predict():
    """The collector finds the README's commands at all (else the test above checks nothing)."""
    assert {"train.py", "test.py", "inference.py"} <= {command.script for _, command in COMMANDS}


def test_the_docs_benchmark_commands_are_checked():
    """`python -m bench.NAME` in the docs is read as bench/NAME.py, so its flags are checked too."""
    assert {"bench/recipes.py", "bench/pretrain_ablation.py"} <= {
        command.script for _, command in COMMANDS}


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = ROOT / doc
    broken = [f"{doc} line {line}: ({target})"
              for line, target in broken_links(path.read_text("utf-8"), path.parent)]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def errors_in(markdown):
    return [(command.text, command_error(command.script, command.args))
            for command in documented_commands(markdown)]


def test_a_renamed_flag_is_caught():
    markdown = ("Train:\n\n```sh\npython train.py --epochs 3\n"
                "python train.py --no_such_flag 1   # a flag train.py lacks\n```\n")
    (good, good_error), (bad, bad_error) = errors_in(markdown)
    assert good == "python train.py --epochs 3" and good_error is None
    assert bad == "python train.py --no_such_flag 1"
    assert "unrecognized arguments: --no_such_flag 1" in bad_error


def test_bad_values_wrappers_and_missing_scripts_are_caught():
    markdown = "\n".join([
        "```bash",
        "python train.py --dataset viruss",
        "python inference.py --input_file posts.txt --chunk_size",
        "NGPU=2 sh train.sh --no_such_flag && sh test.sh --dataset virus",
        "sh train_folds.sh 5 workspace/folds --epochs 2 --no_such_flag",
        "bash bench/gpu_check.sh --dry-run cuda_tests; bash bench/gpu_check.sh --no-such-mode",
        "sh no_such_script.sh",
        "python -m bench.recipes --model_name D --lr 5e-4 --no_such_flag; python -m bench.nothing",
        "```",
        "```python",
        "# python train.py --no_such_flag  (Python code: not a shell command)",
        "```"])
    errors = errors_in(markdown)
    assert [text for text, _ in errors] == [
        "python train.py --dataset viruss",
        "python inference.py --input_file posts.txt --chunk_size",
        "NGPU=2 sh train.sh --no_such_flag", "sh test.sh --dataset virus",
        "sh train_folds.sh 5 workspace/folds --epochs 2 --no_such_flag",
        "bash bench/gpu_check.sh --dry-run cuda_tests", "bash bench/gpu_check.sh --no-such-mode",
        "sh no_such_script.sh", "python -m bench.recipes --model_name D --lr 5e-4 --no_such_flag",
        "python -m bench.nothing"]
    messages = [error for _, error in errors]
    assert "invalid choice: 'viruss'" in messages[0]
    assert "--chunk_size: expected one argument" in messages[1]
    assert "unrecognized arguments: --no_such_flag" in messages[2]
    assert messages[3] is None and messages[5] is None
    assert "unrecognized arguments: --no_such_flag" in messages[4]
    assert "--no-such-mode" in messages[6]
    assert "no such script" in messages[7]
    assert "unrecognized arguments: --no_such_flag" in messages[8]
    assert messages[9] == "bench/nothing.py: no such script in the repo"


def test_loops_continuations_and_placeholders_are_read_as_the_shell_would():
    markdown = "\n".join([
        "```",
        "for seed in 42 43; do",
        "    python train.py --lr 5e-4 --seed $seed \\",
        "        --output_dir workspace/seed$seed; done  # two runs",
        "torchrun --nproc_per_node=4 inference.py --input_file posts.txt --output labels.tsv",
        "python -m torch.distributed.run --standalone --nproc_per_node=2 pretrain.py --resume",
        "python inference.py --input_file data/*.txt --json > labels.jsonl 2>&1",
        "python pretrain.py --model_name … --epochs ...",
        "python -m pytest -q && pip install -r requirements.txt",
        "python3 -m bench.recipes --model_name $DIR --lr 5e-4 --rows plain fgm",
        "```"])
    commands = list(documented_commands(markdown))
    assert [(c.line, c.script, c.args) for c in commands] == [
        (3, "train.py", ["--lr", "5e-4", "--seed", "$seed", "--output_dir", "workspace/seed$seed"]),
        (5, "inference.py", ["--input_file", "posts.txt", "--output", "labels.tsv"]),
        (6, "pretrain.py", ["--resume"]),
        (7, "inference.py", ["--input_file", "data/*.txt", "--json"]),
        (8, "pretrain.py", ["--model_name", "…", "--epochs", "..."]),
        (10, "bench/recipes.py",
         ["--model_name", "$DIR", "--lr", "5e-4", "--rows", "plain", "fgm"])]
    assert [command_error(c.script, c.args) for c in commands] == [None] * 6
    renamed = "```\nfor seed in 42 43; do python train.py --seeds $seed; done\n```"
    assert "unrecognized arguments: --seeds" in errors_in(renamed)[0][1]


def test_broken_links_are_found(tmp_path):
    for name in ["data/README.md", "docs/shot.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    markdown = ("See [the data](data/README.md#format), ![demo](docs/shot.png), "
                "[the site](https://example.com/x.md), [above](#data),\n"
                "a [missing page](docs/gone.md) and ![a lost\nimage](docs/lost.png).\n"
                "```\n[not a link](nowhere.md)\n```\n")
    assert list(broken_links(markdown, tmp_path)) == [(2, "docs/gone.md"), (2, "docs/lost.png")]


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_help_says_what_the_script_does_and_how_to_run_it(script):
    module = script_module(script)
    out = io.StringIO()
    with (mock.patch.object(sys, "argv", [script, "--help"]), contextlib.redirect_stdout(out),
          pytest.raises(SystemExit)):
        module.parse_args()
    shown = out.getvalue()
    summary = " ".join(module.__doc__.split("\n\n")[0].split())
    assert summary in " ".join(shown.split())
    examples = [line.strip() for line in module.__doc__.splitlines()
                if line.startswith(f"    python {script}")]
    assert examples and set(examples) <= {line.strip() for line in shown.splitlines()}, shown
    assert "(default: None)" not in shown  # a flag with no default says so in its own words


BENCH_SCRIPTS = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "bench").glob("*.py")
                       if "def parse_args" in path.read_text("utf-8"))


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_bench_help_shows_no_default_it_does_not_have(script):
    out = io.StringIO()
    with (mock.patch.object(sys, "argv", [script, "--help"]), contextlib.redirect_stdout(out),
          pytest.raises(SystemExit)):
        script_module(script).parse_args()
    assert "(default: None)" not in out.getvalue()  # required flags said "(default: None)"


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_help_examples_take_their_flags(script):
    """The commands of a script's docstring, which its --help shows, are checked as the docs'."""
    examples = script_help(script_module(script).__doc__)["epilog"]
    errors = [f"{script} docstring: `{command.text}`: {error}"
              for command in documented_commands(f"```\n{examples}\n```")
              if (error := command_error(command.script, command.args))]
    assert not errors, "\n".join(errors)


# Flags that place a run without changing what it trains, with how many values they take; and
# the environment settings that place a run (the rest, train_offline.sh's LAYERS say, decide it).
SAME_RUN_FLAGS = {"--output_dir": 1, "--device": 1, "--overwrite_output_dir": 0}
SAME_RUN_SETTINGS = {"OUT", "NGPU", "CUDA_VISIBLE_DEVICES"}


def value_of(args, flag, default=None):
    """The value of `--flag VALUE` or `--flag=VALUE` in args."""
    for at, word in enumerate(args):
        if word == flag and at + 1 < len(args):
            return args[at + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return default


def run_folder(command):
    """(the folder a training command writes its run to, what decides the run), or None for a
    command that writes no run."""
    script, args = os.path.basename(command.script), command.args
    env = dict(word.split("=", 1)
               for word in itertools.takewhile(ENV_ASSIGNMENT.match, command.text.split()))
    if script in ("train.py", "train.sh"):
        dataset = value_of(args, "--dataset", "usual")
        default = DATASETS[dataset]["output_dir"] if dataset in DATASETS else f"wb_{dataset}"
        folder = value_of(args, "--output_dir", f"workspace/{default}")
    elif script in ("pretrain.py", "pretrain.sh"):
        folder = value_of(args, "--output_dir", "workspace/mlm")
    elif script == "train_folds.sh":
        folder = args[1]
    elif script == "train_offline.sh":  # its fine-tuning run, into OUT/wb
        out = env.get("OUT", "workspace/offline" + ("_best" if "--best" in args else ""))
        folder = f"{out}/wb"
    else:
        return None
    recipe = [f"{name}={value}" for name, value in sorted(env.items())
              if name not in SAME_RUN_SETTINGS]
    skip = 0
    for at, word in enumerate(args):
        if skip:
            skip -= 1
        elif word.split("=")[0] in SAME_RUN_FLAGS:
            skip = 0 if "=" in word else SAME_RUN_FLAGS[word]
        elif word == "--model_name" and args[at + 1:at + 2] and os.path.basename(
                args[at + 1]) == "bert-base-chinese":  # the default model, from a local copy
            skip = 1
        else:
            recipe.append(word)
    return os.path.normpath(folder), (script.split(".")[0], tuple(recipe))


def runs_sharing_a_folder(commands):
    """'folder: the runs' for each folder that two different documented runs write to; a
    command with --resume goes on with the run in its folder, whatever it is."""
    runs = {}
    for where, command in commands:
        if "--resume" not in command.args and (found := run_folder(command)):
            folder, recipe = found
            runs.setdefault(folder, {}).setdefault(recipe, []).append(where)
    return [f"{folder}: " + "; ".join(f"`{' '.join(recipe[1])}` ({', '.join(where)})"
                                      for recipe, where in recipes.items())
            for folder, recipes in runs.items() if len(recipes) > 1]


def test_documented_runs_each_have_their_own_folder():
    """Following one page's commands after another's must not meet a folder that holds another
    run (train.py refuses it): two documented runs into one folder are the same run."""
    shared = runs_sharing_a_folder((f"{doc}:{command.line}", command) for doc, command in COMMANDS)
    assert not shared, "documented runs sharing a folder:\n" + "\n".join(shared)


def test_two_runs_into_one_folder_are_caught():
    markdown = "\n".join([
        "```sh",
        "sh train.sh && sh train.sh --resume --device cpu    # one run, continued",
        "python train.py --model_name ~/bert-base-chinese   # the same run, a local copy",
        "python train.py --adversarial fgm                   # another run, the same folder",
        "python train.py --dataset virus --output_dir=workspace/v && python train.py --dataset $D",
        "python train.py --output_dir workspace/v --lr 1e-4",
        "sh train_offline.sh; LAYERS=4 sh train_offline.sh; OUT=x sh train_offline.sh",
        "python pretrain.py --from_scratch --output_dir x/wb",
        "```"])
    commands = [(str(command.line), command) for command in documented_commands(markdown)]
    assert runs_sharing_a_folder(commands) == [
        "workspace/wb: `` (2, 3); `--adversarial fgm` (4)",
        "workspace/v: `--dataset virus` (5); `--lr 1e-4` (6)",
        "workspace/offline/wb: `` (7); `LAYERS=4` (7)",
        "x/wb: `` (7); `--from_scratch` (8)"]
    assert runs_sharing_a_folder(commands[:3]) == []


# Scores (0.7053) and amounts with a unit (39 s, 3,299 posts/s, 2.94x, 142 MiB, 0.52–0.58 s) in the
# docs' prose and in their shell blocks' comments. An amount is recorded where the results give the
# same number with the same unit (s or seconds, min or minutes, h or hours), alone or in a range,
# or the number in a table row (a column's header carries its unit).
NUMBER = r"\d[\d,]*(?:\.\d+)?"
UNIT_NAMES = {"s": "s|seconds?", "seconds": "s|seconds?", "min": "min|minutes?",
              "minutes": "min|minutes?", "h": "h|hours?", "hours": "h|hours?"}
MEASURED = re.compile(rf"(?<![\w.,/-])(?:(?P<score>0\.\d{{3,}})(?![\d\w])|(?P<first>{NUMBER})"
                      rf"(?:[–-](?P<second>{NUMBER}))? ?(?P<unit>x|ms|s|seconds|min|minutes|h|hours"
                      r"|MiB|GiB|KB|MB|posts/s)(?![\w/]))")
# Where measurements are recorded: RESULTS, and the page bench/frontier.py writes.
RESULT_FILES = ["bench/RESULTS.md", "docs/frontier.md"]


def recorded(number, unit, results):
    """Whether the results give this number (with this unit, for an amount)."""
    alone = rf"(?<![\d.,]){re.escape(number)}(?!\d|[.,]\d)"
    if unit is None:
        return re.search(alone, results) is not None
    units = UNIT_NAMES.get(unit, re.escape(unit))
    ranged = rf"(?<![\d.,])(?:{NUMBER}[–-])?{re.escape(number)}(?:[–-]{NUMBER})? ?(?:{units})(?!\w)"
    in_table = rf"(?m)^\|.*{alone}"
    return re.search(ranged, results) is not None or re.search(in_table, results) is not None


def unrecorded_numbers(markdown, results):
    """The measured numbers of the Markdown (prose, and shell blocks' comments) that the results
    text never gives."""
    text = "\n".join(line if language is None else line.partition(" #")[2]
                     for _, line, language in block_lines(markdown)
                     if language is None or language in SHELL_FENCES)
    missing = set()
    for found in MEASURED.finditer(text):
        for number in filter(None, (found["score"], found["first"], found["second"])):
            if not recorded(number, found["unit"], results):
                missing.add(number + (f" {found['unit']}" if found["unit"] else ""))
    return sorted(missing)


@pytest.mark.parametrize("doc", DOCS)
def test_every_number_in_the_docs_is_recorded_in_results(doc):
    results = "\n".join((ROOT / name).read_text("utf-8") for name in RESULT_FILES)
    missing = unrecorded_numbers((ROOT / doc).read_text("utf-8"), results)
    assert not missing, f"{doc}: numbers with no source in {' or '.join(RESULT_FILES)}: {missing}"


def test_an_unrecorded_number_is_caught():
    results = ("usual_test macro-F1 0.7053, 39 seconds, 3,299 posts/s, 2.94x, 37,376 posts, "
               "4.4–4.8 s, 13 minutes, 41 posts\n| path | ms a step |\n| pad8 | 47.2 |\n")
    markdown = ("macro-F1 0.7053 in 39 s (3,299 posts/s, 2.94x), 4.4–4.8 s, 13 min, 47.2 ms; "
                "0.7054, 1,200 posts/s, 2.9x, 37 hours, 4.4–4.9 s, 39 min, 41 s\n"
                "```sh\npython train.py --lr 0.0001   # 0.7053, then 13 min, 12 s\n```\n"
                "```python\nx = 0.1234  # not a shell block\n```\n")
    assert unrecorded_numbers(markdown, results) == [
        "0.7054", "1,200 posts/s", "12 s", "2.9 x", "37 hours", "39 min", "4.9 s", "41 s"]
