"""``python -m engine train-default``: the project's default model, through the one training pipeline.

A shortcut for ``python -m engine train models/lc25000-lung-cnn/train.yaml`` that writes the model
into that folder (replacing the previous model; the committed ``train.yaml`` stays) instead of a new
registry folder. It submits the same ``train`` job as the Training page and ``python -m engine
train`` (:func:`engine.training.run.run_job`), so the default model is built by the tested code path.

The data path defaults to ``$HISTODASH_SHARED_DATA/lc25000-lung-224`` when that variable is set, else
to the configuration's own ``data`` (relative to the file: the repository's ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engine.config import REPO_ROOT

MODEL_ID = "lc25000-lung-cnn"
DEFAULT_CONFIG = REPO_ROOT / "models" / MODEL_ID / "train.yaml"
REPRODUCE = "python -m engine train-default"


def default_data() -> str | None:
    shared = os.environ.get("HISTODASH_SHARED_DATA")
    return str(Path(shared) / "lc25000-lung-224") if shared else None


def _cmd(args: argparse.Namespace) -> int:
    from engine.training.config import load_config
    from engine.training.run import parse_overrides, submit_and_follow

    overrides = parse_overrides(args.set)
    data = args.data or default_data()
    if data:
        overrides["data"] = str(Path(data).expanduser().resolve())
    cfg = load_config(args.config, overrides=None)
    cfg = cfg_with(cfg, overrides)
    out = Path(args.out).expanduser() if args.out else Path(args.config).resolve().parent
    return submit_and_follow(cfg, args, out_dir=out)


def cfg_with(cfg, overrides: dict):
    from engine.training.config import parse_config

    if not overrides:
        return cfg
    merged = cfg.to_dict()
    for k, v in overrides.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return parse_config(merged)


def register(subparsers) -> None:
    p = subparsers.add_parser("train-default", help="retrain the default LC25000 lung model from its committed configuration",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training configuration (default: models/lc25000-lung-cnn/train.yaml)")
    p.add_argument("--data", default=None, help="the lc25000-lung-224 folder (default: $HISTODASH_SHARED_DATA/lc25000-lung-224, else the config's)")
    p.add_argument("--out", default=None, help="model folder to write (default: the configuration's folder)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. --set epochs=3")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the job's log")
    p.set_defaults(func=_cmd)
