"""``python -m engine jobs list|show|cancel``: the background jobs (training, slide heatmaps)."""

from __future__ import annotations

import argparse
import json
import time

from engine.errors import InvalidInputError
from engine.jobs import LocalProcessRunner, describe_progress, get_runner


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _cmd_jobs(args: argparse.Namespace) -> int:
    runner = LocalProcessRunner(args.jobs_dir) if args.jobs_dir else get_runner()
    if args.action == "list":
        recs = runner.list(kind=args.kind)
        if args.json:
            print(json.dumps([r.to_dict() for r in recs], indent=1, default=str))
            return 0
        if not recs:
            print("no jobs")
        for r in recs:
            model = (r.result or {}).get("model_id", "")
            print(f"{r.id}\t{r.state}\t{_fmt_time(r.created)}\t{describe_progress(r)}\t{model or (r.error or '')[:80]}")
        return 0
    if not args.id:
        raise InvalidInputError(f"`jobs {args.action}` needs a job id.")
    if args.action == "show":
        rec = runner.get(args.id)
        if args.json:
            print(json.dumps(rec.to_dict(), indent=1, default=str))
            return 0
        print(f"id:       {rec.id}\nkind:     {rec.kind}\nstate:    {rec.state}\npid:      {rec.pid}")
        print(f"created:  {_fmt_time(rec.created)}\nstarted:  {_fmt_time(rec.started)}\nfinished: {_fmt_time(rec.finished)}")
        print(f"progress: {describe_progress(rec)}")
        if rec.error:
            print(f"error:    {rec.error}")
        if rec.result:
            print("result:   " + json.dumps({k: v for k, v in rec.result.items() if not isinstance(v, (list, dict))}, default=str))
        print(f"log:      {rec.log_path}\n--- last {args.lines} log lines ---")
        print(runner.log_tail(rec.id, args.lines))
        return 0
    if args.action == "cancel":
        runner.cancel(args.id, force=args.force)
        rec = runner.get(args.id)
        print(f"{rec.id}\t{rec.state}" + ("\tcancel requested" if rec.active else ""))
        return 0
    raise InvalidInputError(f"Unknown action '{args.action}'.")  # pragma: no cover - argparse restricts choices


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list, show or cancel background jobs (training, slide heatmaps)")
    p.add_argument("action", choices=["list", "show", "cancel"])
    p.add_argument("id", nargs="?", help="job id (show, cancel)")
    p.add_argument("--kind", default=None, help="only jobs of this kind (list)")
    p.add_argument("--lines", type=int, default=30, help="log lines to show (show)")
    p.add_argument("--force", action="store_true", help="cancel: also terminate the worker process")
    p.add_argument("--json", action="store_true")
    p.add_argument("--jobs-dir", default=None, help="jobs folder (default: $HISTODASH_JOBS_DIR)")
    p.set_defaults(func=_cmd_jobs)
