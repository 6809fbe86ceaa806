"""``python -m engine survival TABLE --time COL --event COL --group COL [--json]``: survival statistics of a cohort table."""

from __future__ import annotations

import argparse
import json
import math
import sys

from engine.survival.compare import WEIGHTINGS, logrank_test
from engine.survival.cox import group_hazard_ratios
from engine.survival.data import TIME_UNITS, prepare_cohort, read_table
from engine.survival.km import kaplan_meier


def _num(v):
    return None if v is None or not math.isfinite(v) else float(v)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "survival", help="Kaplan–Meier medians, log-rank test and hazard ratios of a cohort table",
        description="Kaplan–Meier medians (95 %% CI, log-log), the k-group log-rank test and Cox hazard ratios of "
                    "each group against the first, for a CSV/TSV cohort table.")
    p.add_argument("table", metavar="TABLE", help="CSV, TSV or Excel file, one row per patient")
    p.add_argument("--time", required=True, help="column of follow-up times")
    p.add_argument("--event", required=True, help="column of events (0/1, 1/2 as R, true/false, dead/alive, …)")
    p.add_argument("--group", required=True, help="column of groups (first group in sorted order = reference)")
    p.add_argument("--test", default="logrank", choices=list(WEIGHTINGS), help="weighting of the log-rank test")
    p.add_argument("--time-unit", default="days", choices=list(TIME_UNITS), help="unit of the time column (labels only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a text report")
    p.set_defaults(func=run)


def compute(args: argparse.Namespace) -> tuple[dict, str]:
    df = read_table(args.table)
    cohort = prepare_cohort(df, args.time, args.event, args.group, time_unit=args.time_unit)
    km = kaplan_meier(cohort)
    test = logrank_test(cohort, weighting=args.test)
    hr = group_hazard_ratios(cohort)
    ref = cohort.group_order[0]
    hrs = []
    for g, (_, row) in zip(cohort.group_order[1:], hr.summary.iterrows(), strict=True):
        hrs.append({"group": g, "reference": ref, "hr": _num(row["hr"]), "ci": [_num(row["hr_lower"]), _num(row["hr_upper"])],
                    "p": _num(row["p"])})
    out = {"groups": [c.to_dict() for c in km.curves], "logrank": test.to_dict(), "hazard_ratios": hrs}
    return out, f"{cohort.summary()}; test: {test.test_name}"


def _fmt(v) -> str:
    return "NA" if v is None else f"{v:g}"


def run(args: argparse.Namespace) -> int:
    out, note = compute(args)
    print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'group':<20} {'n':>5} {'events':>6} {'median':>8}  95% CI")
    for g in out["groups"]:
        lo, hi = g["median_ci"]
        print(f"{g['name']:<20} {g['n']:>5} {g['events']:>6} {_fmt(g['median']):>8}  [{_fmt(lo)}, {_fmt(hi)}]")
    lr = out["logrank"]
    print(f"\nchi2 = {lr['chi2']:.4f} on {lr['df']} df, p = {lr['p']:.4g}")
    for h in out["hazard_ratios"]:
        print(f"HR {h['group']} vs {h['reference']}: {h['hr']:.3f} (95% CI {_fmt(h['ci'][0])}–{_fmt(h['ci'][1])}), p = {h['p']:.4g}")
    return 0
