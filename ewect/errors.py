"""One kind of error for all a user can get wrong, reported in one line, never a traceback."""
import argparse
import os
import sys


class UserError(Exception):
    """Bad input, paths or settings: the message says what is wrong and where."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with each flag's default, and the script's summary and examples as written."""


def script_help(doc, show_defaults=True):
    """ArgumentParser's description and epilog from a script's docstring: its first paragraph
    (what the script does) and its first indented block (the commands to run it), so the
    commands are written once, in the docstring."""
    summary, *paragraphs = doc.split("\n\n")
    examples = next((p for p in paragraphs if p.startswith("    ")), None)
    return {"description": summary, "epilog": examples and f"examples:\n{examples}",
            "formatter_class": HelpFormatter if show_defaults
            else argparse.RawDescriptionHelpFormatter}


def first_line(err):
    """The first line of an exception's message, for a one-line report."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def positive_int(text):
    """argparse type for counts and sizes: an integer of at least 1."""
    value = int(text)  # argparse turns a ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seed(text):
    """argparse type for --seed: what every random generator here takes, 0 to 2**32 - 1."""
    value = int(text)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2 ** 32 - 1}, not {value}")
    return value


def run_cli(main):
    """Run a script's main(); a UserError becomes 'error: …' on stderr and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
