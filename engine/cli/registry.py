"""``python -m engine models``: list the registered models."""

from __future__ import annotations

import argparse
import json

from engine.registry import Registry


def _cmd_models(args: argparse.Namespace) -> int:
    registry = Registry(args.models_dir)
    cards = registry.cards()
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
    else:
        if not cards:
            print(f"no models in {registry.root}")
        for c in cards:
            m = c.headline_metrics()
            metric = ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float))
            print(f"{c.id}\t{c.architecture}\t{c.input_px}px\tclasses={','.join(c.classes)}\tthreshold={c.threshold:.3f}\t{metric}")
    for folder, problem in registry.problems().items():
        print(f"warning: {folder}: {problem}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--models-dir", default=None, help="models folder (default: $HISTODASH_MODELS_DIR or ./models)")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_cmd_models)
