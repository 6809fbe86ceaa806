"""Command-line interface: ``python -m engine <command> …``.

:data:`COMMANDS` is the whole list: command name → ``"module:function"``, where the function takes
argparse's sub-parsers, adds the sub-parser of that name and sets its ``func`` (a callable taking the
parsed ``argparse.Namespace`` and returning an exit code). Argument parsing lives here, in
``engine/cli/<area>.py``; the library modules it calls know nothing of argparse.

A command module that fails to import, or a function that does not add its command, is an error
(raised at start-up, with the module named): a command never vanishes silently. User errors
(:class:`engine.errors.HistoDashError`) are printed as one clear line on stderr with exit code 2,
never as a traceback; a cancel (``Ctrl-C``) exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine.errors import HistoDashError

#: command → "module:function that adds its sub-parser", in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "predict": "engine.cli.predict:add_parser",
    "models": "engine.cli.registry:add_parser",
    "gradcam": "engine.cli.gradcam:add_parser",
    "heatmap": "engine.cli.heatmap:add_parser",
    "cohort": "engine.cli.cohort:add_cohort_parser",
    "cohort-scores": "engine.cli.cohort:add_parser",
    "survival": "engine.cli.survival:add_parser",
    "train": "engine.cli.training:add_train_parser",
    "jobs": "engine.cli.jobs:add_parser",
    "train-default": "engine.cli.training:add_default_parser",
    "hash-password": "engine.cli.auth:add_parser",
}


class CommandTableError(RuntimeError):
    """A :data:`COMMANDS` entry is broken (a bug in HistoDash, not a user error)."""


def _adder(target: str):
    module_name, sep, func_name = target.partition(":")
    if not sep:
        raise CommandTableError(f"COMMANDS entry '{target}' is not 'module:function'.")
    module = importlib.import_module(module_name)  # an ImportError here propagates: a broken command is loud
    try:
        return getattr(module, func_name)
    except AttributeError as exc:
        raise CommandTableError(f"{module_name} has no function '{func_name}' (COMMANDS).") from exc


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``python -m engine`` parser with every command of ``commands`` (default :data:`COMMANDS`)."""
    from engine.cli.common import OneLineParser

    parser = OneLineParser(prog="python -m engine", description="HistoDash engine command line.")  # sub-parsers inherit its class
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and debug information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in (COMMANDS if commands is None else commands).items():
        _adder(target)(sub)
        if name not in sub.choices:
            raise CommandTableError(f"{target} did not add the command '{name}'.")
        if not callable(sub.choices[name].get_default("func")):
            raise CommandTableError(f"The command '{name}' ({target}) sets no func.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except HistoDashError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
