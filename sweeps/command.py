"""The one error path of every command line (`mist-bench ...`, `python -m sweeps.run`, `python -m analysis.report`).

An expected failure (a bad config, missing or corrupt data, an output path that cannot be written, a bad tracking
URI or storage, a bad option value, a run whose loss diverged) ends as ONE line on stderr, `mist-bench: error: <message>`, and exit status 2;
`--debug` re-raises it to show the traceback. Anything else is a bug and keeps its traceback.

    return run_command(lambda: do_the_work(args), debug=args.debug)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from mist_core.config import ConfigError
from sweeps.tracking import TrackingError, redact_uri

__all__ = ["CommandError", "Parser", "run_command", "one_line", "positive_int", "writable_file", "PROG", "EXIT_ERROR"]

PROG = "mist-bench"
EXIT_ERROR = 2  # argparse's status for a usage error: every expected failure uses it


class CommandError(Exception):
    """An expected failure of a command that is neither a config nor a data error; the message names the option."""


# expected errors of modules too heavy to import for this (torch, MLflow): they can only have been raised once
# their module was imported, so they are looked up among the imported modules
LAZY_ERRORS = (("mist_core.data.errors", "DataError"),          # data missing or corrupt, named
               ("mlflow.exceptions", "MlflowException"))        # an unknown URI scheme, an unreachable server


def _expected() -> tuple[type[BaseException], ...]:
    lazy = tuple(getattr(sys.modules[m], name) for m, name in LAZY_ERRORS if m in sys.modules)
    # FloatingPointError: a run whose loss went non-finite (the Trainer names the method, the loss and the step)
    return (ConfigError, TrackingError, CommandError, OSError, FloatingPointError) + lazy


def one_line(message: str) -> str:
    """A multi-line message (a config error lists each bad field on its own line) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    rest = [line.removeprefix("- ") for line in lines[1:]]
    return " ".join([lines[0], "; ".join(rest)]) if rest else lines[0]


def error_line(message: str) -> str:
    # a message may quote --tracking-uri or --storage, credential included
    return f"{PROG}: error: {one_line(redact_uri(message))}"


def run_command(fn: Callable[[], int | None], debug: bool = False) -> int:
    """fn()'s exit status (None = 0); an expected failure printed as one line, status 2 (re-raised when `debug`)."""
    try:
        return fn() or 0
    except BrokenPipeError:  # the reader left (`mist-bench methods | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail
        return 1
    except _expected() as e:
        if debug:
            raise
        print(error_line(str(e) or type(e).__name__), file=sys.stderr)
        return EXIT_ERROR


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`mist-bench: error: argument --n: ...`) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(error_line(f"{message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """`path`, once it is known that it can be written (its folder may be missing: the writer creates it); a
    CommandError naming `option` and the path if not (a regular file in the way, no permission, a folder of that
    name). Looking only, before any work starts: a refused command leaves no folder behind."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CommandError(f"{option} {p}: is a folder, not a file")
    existing = p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{option} {p}: cannot create its folder, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing != p.parent:
            raise CommandError(f"{option} {p}: no permission to create its folder {p.parent}")
        raise CommandError(f"{option} {p}: not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise CommandError(f"{option} {p}: not writable")
    return p
