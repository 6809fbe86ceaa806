"""``python -m engine train CONFIG.yaml`` (a training job) and ``python -m engine train-default`` (the shipped model).

Both submit the same ``train`` job (:func:`engine.training.run.run_job`) and stream its log to stderr;
``train-default`` runs the committed ``models/lc25000-lung-cnn/train.yaml`` and writes the model into
that folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engine.errors import InvalidInputError, JobError
from engine.jobs import get_runner
from engine.training import default
from engine.training.config import TrainConfig, defaults_yaml, load_config, safe_yaml
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
    cfg = default.with_overrides(load_config(args.config), _parse_overrides(args.set))
    return _submit_and_follow(cfg, args)


def _cmd_default(args: argparse.Namespace) -> int:
    cfg = default.default_config(args.config, data=args.data, overrides=_parse_overrides(args.set))
    out = Path(args.out).expanduser() if args.out else Path(args.config).resolve().parent
    return _submit_and_follow(cfg, args, out_dir=out)


def _submit_and_follow(cfg: TrainConfig, args: argparse.Namespace, *, out_dir: Path | None = None) -> int:
    """Check the submission, submit a ``train`` job, stream its log to stderr until it ends; print the model id.

    With ``out_dir`` (train-default) the model folder is replaced on purpose, so its id is not refused as taken.
    """
    runner = get_runner()
    if out_dir is None:
        cfg, _ = check_submission(cfg, runner=runner)  # data path, model id, dataset: refused now, not after the job started
    else:
        checked, _ = check_submission(cfg.with_(model_id=None), runner=runner)
        cfg = checked.with_(model_id=cfg.model_id)
    params = cfg.to_dict() | ({"out_dir": str(Path(out_dir).resolve())} if out_dir is not None else {})
    job_id = runner.submit("train", params, owner=os.environ.get("USER"))
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
    for m in result.get("metrics", [])[:3]:
        print(f"{m['split']}: " + ", ".join(f"{k} {m[k]}" for k in ("auc", "accuracy_multiclass", "f1", "accuracy", "ece", "in_domain_fraction")
                                             if m.get(k) is not None), file=sys.stderr)
    quality = result.get("quality") or {}
    if quality.get("status") == "failed":
        print(f"warning: the model FAILED the quality check ({'; '.join(quality.get('reasons', []))}); it is registered but never selected by default",
              file=sys.stderr)
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


def _add_follow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. --set epochs=3 --set augmentation.zoom=0")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once (follow with `python -m engine jobs show ID`)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the job's log")


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and register a tile model from a YAML configuration (runs as a background job)")
    p.add_argument("config", nargs="?", help="YAML configuration (minimal: data, architecture, epochs)")
    _add_follow_options(p)
    p.add_argument("--print-defaults", action="store_true", help="print a configuration with every default and exit")
    p.set_defaults(func=_cmd_train)


def add_default_parser(subparsers) -> None:
    p = subparsers.add_parser("train-default", help="retrain the default LC25000 lung model from its committed configuration",
                              description=default.__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(default.DEFAULT_CONFIG), help="training configuration (default: models/lc25000-lung-cnn/train.yaml)")
    p.add_argument("--data", default=None, help="the lc25000-lung-224 folder (default: $HISTODASH_SHARED_DATA/lc25000-lung-224, else the config's)")
    p.add_argument("--out", default=None, help="model folder to write (default: the configuration's folder)")
    _add_follow_options(p)
    p.set_defaults(func=_cmd_default)
