"""One kind of error for all a user can get wrong, reported in one line, never a traceback."""
import argparse
import math
import os
import sys


class UserError(Exception):
    """Bad input, paths or settings: the message says what is wrong and where."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with each flag's default, and the script's summary and examples as written."""

    def _get_help_string(self, action):
        # A default of None is said in the help text itself ("default: --dataset's best/"), or
        # is off; "(default: None)" after it would only contradict it.
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def script_help(doc, show_defaults=True):
    """ArgumentParser's description and epilog from a script's docstring: its first paragraph
    (what the script does) and its first indented block (the commands to run it), so the
    commands are written once, in the docstring."""
    summary, *paragraphs = doc.split("\n\n")
    examples = next((p for p in paragraphs if p.startswith("    ")), None)
    # allow_abbrev off: the shell wrappers read flags such as --dataset from the command line,
    # and an abbreviation (--data) would pass them by.
    return {"description": summary, "epilog": examples and f"examples:\n{examples}",
            "allow_abbrev": False,
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


def non_negative_int(text):
    """argparse type for counts where 0 means none or off."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_float(text):
    """argparse type for rates, norms and temperatures: a finite number above 0."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def non_negative_float(text):
    """argparse type for weights and epochs where 0 means none or off."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number from 0 up, not {text}")
    return value


def dropout_probability(text):
    """argparse type for --dropout: a probability below 1 (at 1 nothing would pass)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to below 1, not {text}")
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
