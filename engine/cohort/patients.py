"""Slides → patients → the patient table: mapping, aggregation of several slides, the clinical join.

>>> ids = map_by_pattern(["TCGA-AB-1234-01.svs", …], r"^(TCGA-\\w\\w-\\w{4})")   # regex, first group = id
>>> ids = map_by_table(names, mapping_frame, slide_column="slide", patient_column="patient_id")
>>> table, messages = patient_table(slides, ids, k=50, how="mean")
>>> joined, messages = join_clinical(table, clinical, "patient_id")

A patient's row holds ``n_slides``, ``n_tiles``, the slide-score summaries (``mean_score``,
``median_score``, ``max_score``, ``fraction_over_threshold``, ``top_k_mean``) and ``cluster_<k>``, the
proportions of its tiles in each phenotype cluster (they sum to 1). ``how="mean"`` averages the
per-slide values (each slide counts once); ``how="tiles"`` pools the tiles of all its slides (each tile
counts once). Messages name what did not match (slides without a patient id, patients without a
clinical row and the reverse); nothing matching at all is an error.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from engine.errors import InvalidInputError

AGGREGATIONS = {"mean": "mean of the slides (each slide counts once)", "tiles": "tile-weighted (all tiles pooled)"}
SCORE_COLUMNS = ("mean_score", "median_score", "max_score", "fraction_over_threshold", "top_k_mean")


def _listed(items, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(f"'{i}'" for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise InvalidInputError(f"The patient pattern {pattern!r} is not a valid regular expression ({exc}).") from exc
    if rx.groups < 1:
        raise InvalidInputError(f"The patient pattern {pattern!r} has no group.",
                                r"Put the patient id in parentheses, e.g. ^(TCGA-\w\w-\w{4}) or ^(P\d+)_.")
    return rx


def map_by_pattern(names: list[str], pattern: str) -> dict[str, str | None]:
    """Patient id of each slide: the first group of ``pattern`` searched in the slide's file name (None: no match)."""
    rx = compile_pattern(pattern)
    out = {}
    for name in names:
        m = rx.search(PurePosixPath(name).name)
        out[name] = m.group(1) if m and m.group(1) else None
    return out


def map_by_table(names: list[str], table: pd.DataFrame, slide_column: str, patient_column: str) -> dict[str, str | None]:
    """Patient id of each slide from a table's column of slide names (matched as relative path, file name or stem)."""
    for col in (slide_column, patient_column):
        if col not in table.columns:
            raise InvalidInputError(f"The mapping table has no column '{col}'.", f"Its columns: {', '.join(map(str, table.columns))}.")
    lookup: dict[str, str] = {}
    for slide, patient in zip(table[slide_column].astype(str).str.strip(), table[patient_column]):
        if pd.isna(patient):
            continue
        for key in {slide, PurePosixPath(slide).name, PurePosixPath(slide).stem}:
            lookup.setdefault(key, str(patient).strip())
    out = {}
    for name in names:
        p = PurePosixPath(name)
        out[name] = lookup.get(name) or lookup.get(p.name) or lookup.get(p.stem)
    return out


def mapping_messages(ids: dict[str, str | None]) -> list[str]:
    """Messages about slides without a patient; an error when no slide has one."""
    missing = [n for n, p in ids.items() if p is None]
    if ids and len(missing) == len(ids):
        raise InvalidInputError(f"No slide could be mapped to a patient ({_listed(missing)}).",
                                "Check the patient pattern (its first group is the id) or the mapping column.")
    return [f"{len(missing)} slide(s) have no patient id and are left out: {_listed(missing)}."] if missing else []


def slide_summary(scores: np.ndarray, labels: np.ndarray | None, k: int, threshold: float, top_k: int = 10) -> dict:
    """One slide's score summaries and cluster counts (``cluster_counts``) from its tiles."""
    s = np.asarray(scores, np.float64)
    n = len(s)
    t = min(int(top_k), n)
    out = {
        "n_tiles": n, "mean_score": float(s.mean()) if n else np.nan, "median_score": float(np.median(s)) if n else np.nan,
        "max_score": float(s.max()) if n else np.nan, "fraction_over_threshold": float((s >= threshold).mean()) if n else np.nan,
        "top_k_mean": float(np.sort(s)[::-1][:t].mean()) if t else np.nan,
    }
    out["cluster_counts"] = np.bincount(np.asarray(labels, np.int64), minlength=k) if labels is not None and k else np.zeros(k, np.int64)
    return out


def patient_table(slides: list[dict], ids: dict[str, str | None], *, k: int, how: str = "mean", id_column: str = "patient_id",
                  threshold: float = 0.5, top_k: int = 10) -> pd.DataFrame:
    """One row per patient from per-slide records ``{"name", "scores", "labels"}`` (tile scores and cluster labels)."""
    if how not in AGGREGATIONS:
        raise InvalidInputError(f"Unknown aggregation '{how}'.", f"Choose one of: {', '.join(AGGREGATIONS)}.")
    groups: dict[str, list[dict]] = {}
    for rec in slides:
        pid = ids.get(rec["name"])
        if pid is not None:
            groups.setdefault(pid, []).append(rec)
    rows = []
    for pid, recs in groups.items():
        row = {id_column: pid, "n_slides": len(recs), "n_tiles": int(sum(len(r["scores"]) for r in recs))}
        if how == "tiles":
            scores = np.concatenate([np.asarray(r["scores"], np.float64) for r in recs])
            labels = np.concatenate([np.asarray(r["labels"], np.int64) for r in recs]) if k else None
            summ = slide_summary(scores, labels, k, threshold, top_k)
            row.update({c: summ[c] for c in SCORE_COLUMNS})
            props = summ["cluster_counts"] / max(1, summ["n_tiles"])
        else:
            summs = [slide_summary(r["scores"], r["labels"] if k else None, k, threshold, top_k) for r in recs]
            row.update({c: float(np.nanmean([s[c] for s in summs])) for c in SCORE_COLUMNS})
            props = np.mean([s["cluster_counts"] / max(1, s["n_tiles"]) for s in summs], axis=0) if k else np.zeros(0)
        row.update({f"cluster_{j}": float(props[j]) for j in range(k)})
        rows.append(row)
    columns = [id_column, "n_slides", "n_tiles", *SCORE_COLUMNS, *(f"cluster_{j}" for j in range(k))]
    return pd.DataFrame(rows, columns=columns).sort_values(id_column, kind="stable").reset_index(drop=True)


def join_clinical(table: pd.DataFrame, clinical: pd.DataFrame, id_column: str, *, table_id: str = "patient_id") -> tuple[pd.DataFrame, list[str]]:
    """The patients that have both slides and a clinical row, with the clinical columns appended; and messages."""
    if id_column not in clinical.columns:
        raise InvalidInputError(f"The clinical table has no column '{id_column}'.", f"Its columns: {', '.join(map(str, clinical.columns))}.")
    clinical = clinical.copy()
    clinical[id_column] = clinical[id_column].map(lambda v: None if pd.isna(v) else str(v).strip())
    clinical = clinical[clinical[id_column].notna()]
    messages = []
    dup = clinical[id_column][clinical[id_column].duplicated()].unique().tolist()
    if dup:
        messages.append(f"{len(dup)} patient id(s) appear more than once in the clinical table; their first row is used: {_listed(dup)}.")
        clinical = clinical.drop_duplicates(id_column, keep="first")
    have = set(table[table_id].astype(str))
    known = set(clinical[id_column])
    no_clinical = sorted(have - known)
    no_slides = sorted(known - have)
    if not have & known:
        raise InvalidInputError(
            f"No patient id of the slides ({_listed(sorted(have))}) is in the clinical table's column '{id_column}' ({_listed(sorted(known))}).",
            "Check the patient pattern / mapping and the id column (ids are compared as text).")
    if no_clinical:
        messages.append(f"{len(no_clinical)} patient(s) have slides but no clinical row and are left out: {_listed(no_clinical)}.")
    if no_slides:
        messages.append(f"{len(no_slides)} patient(s) of the clinical table have no slide: {_listed(no_slides)}.")
    extra = clinical.drop(columns=[c for c in clinical.columns if c in table.columns and c != id_column])
    left = table.assign(**{table_id: table[table_id].astype(str)})
    joined = left.merge(extra, left_on=table_id, right_on=id_column, how="inner")
    if id_column != table_id and id_column in joined.columns:
        joined = joined.drop(columns=[id_column])
    return joined.rename(columns={table_id: id_column}).reset_index(drop=True), messages


def discovery_patients(patients: list[str], fraction: float, seed: int = 0) -> set[str]:
    """A seeded share of the patients (at least one) whose tiles fit the clusterer; 1 = all."""
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"Discovery fraction {fraction} must be in (0, 1].")
    pts = sorted(set(patients))
    if fraction >= 1 or len(pts) <= 1:
        return set(pts)
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * len(pts))))
    return {pts[i] for i in rng.choice(len(pts), n, replace=False)}
