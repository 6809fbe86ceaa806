"""What several commands share: the model options, and progress/status lines on a terminal's stderr."""

from __future__ import annotations

import argparse
import math
import sys


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are ONE line on stderr, ``error: …``, with exit code 2 (like every other user error)."""

    def error(self, message: str):  # argparse's default prints the whole usage first
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def number(kind: type = float, *, low: float | None = None, high: float | None = None, low_open: bool = False, what: str = "value"):
    """An argparse ``type`` accepting finite numbers of ``kind`` within ``[low, high]`` (``(low, high]`` with ``low_open``).

    NaN, infinities, negative or out-of-range values are refused with a message saying what is accepted.
    """
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'} ({what})") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number ({what})")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else (f"above {low:g}" if low_open else f"at least {low:g}")
            hi = "" if high is None else f"at most {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({what}: {' and '.join(x for x in (lo, hi) if x)})")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--models-dir`` (every command that runs a registered model)."""
    p.add_argument("--model", default=None, help="model id (default: the configured default model)")
    p.add_argument("--models-dir", default=None, help="models folder (default: $HISTODASH_MODELS_DIR or ./models)")


class ConsoleProgress:
    """``progress(done, total)`` and ``status(message)`` (the :mod:`engine.progress` contract) for a command.

    Lines are redrawn in place (``\\r``) on stderr when it is a terminal; nothing is printed when
    ``quiet``, or when stderr is a file (logs then hold only the final summary).

    Args:
        quiet: print nothing.
        unit: what ``done``/``total`` count (``"tiles"``).
        always_status: print status messages even when stderr is not a terminal (a queue wait the user should see).
    """

    def __init__(self, *, quiet: bool = False, unit: str = "tiles", always_status: bool = False):
        self.quiet = quiet
        self.unit = unit
        self.always_status = always_status

    def _tty(self) -> bool:
        return sys.stderr.isatty()

    def progress(self, done: int, total: int) -> None:
        if not self.quiet and self._tty():
            print(f"\r{done}/{total} {self.unit}", end="", file=sys.stderr, flush=True)

    def status(self, message: str) -> None:
        if not self.quiet and (self.always_status or self._tty()):
            print(f"\r{message}", end="", file=sys.stderr, flush=True)
