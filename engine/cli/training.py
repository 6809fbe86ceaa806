"""``python -m engine train CONFIG.yaml`` (a training job) and ``python -m engine train-default`` (the shipped model)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from engine.errors import InvalidInputError, JobError
from engine.jobs import get_runner
from engine.training import default
from engine.training.config import defaults_yaml, load_config, parse_config, safe_yaml
from engine.training.submit import check_submission


def _parse_overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--set expects KEY=VALUE, got '{pair}'.")
        target = out
        parts = key.split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = safe_yaml(value, f"--set {key}")
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    if args.print_defaults:
        print(defaults_yaml(args.config or "PATH/TO/TILES"), end="")
        return 0
    if not args.config:
        raise InvalidInputError("Give a configuration file: python -m engine train CONFIG.yaml (see --print-defaults).")
    overrides = _parse_overrides(args.set)
    cfg = load_config(args.config, overrides=None)
    if overrides:  # nested keys (augmentation.zoom=0) merge into the file's sections
        merged = cfg.to_dict()
        for k, v in overrides.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        cfg = parse_config(merged)
    runner = get_runner()
    cfg, _ = check_submission(cfg, runner=runner)  # data path, model id, dataset: refused now, not after the job started
    job_id = runner.submit("train", cfg.to_dict(), owner=os.environ.get("USER"))
    print(f"job {job_id} submitted", file=sys.stderr)
    if args.detach:
        print(job_id)
        return 0
    seen = 0
    try:
        while True:
            rec = runner.get(job_id)
            if not args.quiet:
                seen = _follow(rec.log_path, seen)
            if not rec.active:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        runner.cancel(job_id)
        print(f"\ncancel requested for {job_id}", file=sys.stderr)
        rec = runner.wait(job_id, timeout=60)
    if rec.state != "succeeded":
        raise JobError(f"Training job {job_id} {rec.state}" + (f": {rec.error}" if rec.error else "."),
                       f"See its log: python -m engine jobs show {job_id}")
    result = rec.result or {}
    for m in result.get("metrics", [])[:2]:
        print(f"{m['split']}: " + ", ".join(f"{k} {m[k]}" for k in ("auc", "f1", "accuracy", "precision", "recall") if m.get(k) is not None), file=sys.stderr)
    print(result["model_id"])
    return 0


def _follow(log_path: str, offset: int) -> int:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    if chunk:
        sys.stderr.write(chunk.decode("utf-8", "replace"))
        sys.stderr.flush()
    return offset + len(chunk)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and register a tile model from a YAML configuration (runs as a background job)")
    p.add_argument("config", nargs="?", help="YAML configuration (minimal: data, architecture, epochs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. --set epochs=3 --set augmentation.zoom=0")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once (follow with `python -m engine jobs show ID`)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the job's log")
    p.add_argument("--print-defaults", action="store_true", help="print a configuration with every default and exit")
    p.set_defaults(func=_cmd_train)


def add_default_parser(subparsers) -> None:
    p = subparsers.add_parser("train-default", help="train the default LC25000 lung model (CPU, ~15-20 min)",
                              description=default.__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the lc25000-lung-224 folder (labels.csv + images/)")
    p.add_argument("--out", required=True, help="output model folder, e.g. models/lc25000-lung-cnn")
    p.add_argument("--epochs", type=int, default=default.DEFAULTS["epochs"])
    p.add_argument("--input-px", type=int, default=default.DEFAULTS["input_px"])
    p.add_argument("--seed", type=int, default=default.DEFAULTS["seed"])
    p.add_argument("--architecture", default=default.DEFAULTS["architecture"])
    p.add_argument("--batch-size", type=int, default=default.DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=default.DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=default.DEFAULTS["weight_decay"])
    p.add_argument("--label-smoothing", type=float, default=default.DEFAULTS["label_smoothing"])
    p.add_argument("--dropout", type=float, default=default.DEFAULTS["dropout"])
    p.add_argument("--width", type=int, default=default.DEFAULTS["width"], help="base filter count of lung_cnn")
    p.add_argument("--val-frac", type=float, default=default.DEFAULTS["val_frac"])
    p.add_argument("--test-frac", type=float, default=default.DEFAULTS["test_frac"])
    p.add_argument("--patience", type=int, default=default.DEFAULTS["patience"], help="early-stopping patience (epochs)")
    p.add_argument("--min-epochs", type=int, default=None,
                   help="never stop early before this epoch (default: half of --epochs; the validation loss is noisy "
                        "while the learning rate is high)")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow threads (default: min(cores, 4))")
    p.set_defaults(func=default.train)
