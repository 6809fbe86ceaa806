"""Command-line interface: ``python -m engine <command> …``.

Each command lives in the module that owns the computation; a module takes part by defining
``register(subparsers)`` which adds its sub-parser and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code). User errors (:class:`engine.errors.HistoDashError`)
are printed as one clear line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine.errors import HistoDashError

# Modules that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "engine.predict",
    "engine.registry",
    "engine.gradcam",
    "engine.heatmap",
    "engine.survival",
    "engine.training.run",
    "engine.jobs",
    "engine.training.default",
    "engine.auth",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="HistoDash engine command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and debug information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command module not written yet: leave it out
                continue
            raise
        if hasattr(module, "register"):
            module.register(sub)
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
