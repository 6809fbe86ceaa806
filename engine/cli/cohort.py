"""``python -m engine cohort-scores SLIDE_DIR --out slides.csv``: one row of scores per slide of a folder."""

from __future__ import annotations

import argparse
import sys

from engine.cli.heatmap import add_tiling_arguments, tiling_kwargs
from engine.heatmap.cohort import cohort_scores


def _cmd_cohort(args: argparse.Namespace) -> int:
    frame = cohort_scores(args.slide_dir, **tiling_kwargs(args))
    frame.to_csv(args.out, index=False)
    if not args.quiet:
        bad = int(frame["error"].notna().sum())
        print(f"{len(frame)} slides scored ({bad} with errors); wrote {args.out}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cohort-scores", help="score every slide of a folder into one table (input of the survival page)")
    c.add_argument("slide_dir", metavar="SLIDE_DIR")
    c.add_argument("--out", required=True, help="CSV file to write")
    add_tiling_arguments(c)
    c.set_defaults(func=_cmd_cohort)
