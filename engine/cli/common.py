"""What several commands share: the model options, and progress/status lines on a terminal's stderr."""

from __future__ import annotations

import argparse
import sys


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
