"""Cohort tables: reading, column mapping, event coercion and validation.

A :class:`Cohort` is the validated, analysis-ready form of a user's table: numeric non-negative
times, 0/1 events, string group labels (optional) and numeric covariates (optional), with the rows
that had missing values dropped and counted. Every problem a user can fix raises
:class:`engine.errors.InvalidInputError` with a message naming the column and what to change.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import CorruptFileError, InvalidInputError, TooLargeError, UnsupportedFormatError

# Words read as "event happened" / "censored" (compared lower-case, stripped).
EVENT_WORDS = frozenset(
    {"1", "1.0", "true", "t", "yes", "y", "dead", "death", "died", "deceased", "event", "relapse",
     "relapsed", "recurrence", "recurred", "progression", "progressed", "failure", "failed"}
)
CENSOR_WORDS = frozenset(
    {"0", "0.0", "false", "f", "no", "n", "alive", "living", "censored", "censor", "event-free",
     "no event", "none", "lost", "lost to follow-up"}
)
ACCEPTED_EVENTS_HINT = (
    "Use 0/1 (1 = event), 1/2 (R's survival convention: 1 = censored, 2 = event), true/false, "
    "yes/no, dead/alive or event/censored."
)

TIME_UNITS = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12.0, "years": 365.25}


def convert_time(values, from_unit: str, to_unit: str):
    """Convert times between ``days``, ``weeks``, ``months`` (365.25/12 days) and ``years`` (365.25 days)."""
    for unit in (from_unit, to_unit):
        if unit not in TIME_UNITS:
            raise InvalidInputError(f"Unknown time unit {unit!r}.", f"Use one of: {', '.join(TIME_UNITS)}.")
    return values * (TIME_UNITS[from_unit] / TIME_UNITS[to_unit])


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
MAX_ROWS = 1_000_000  # a cohort table with more rows is refused (read stops at the limit, no more is parsed)
MAX_GROUPS = 50  # more distinct values than this in a group column: refused (a patient id, a continuous value)
ENCODINGS = ("utf-8", "utf-16", "cp1252", "latin-1")  # what read_table may be told (None: detect)


def decode_text(data: bytes, name: str, encoding: str | None = None) -> tuple[str, str]:
    """Text of a delimited table and the encoding used: ``encoding``, or detected.

    Detection: a byte-order mark (UTF-8, UTF-16 LE/BE), UTF-16 without a mark (every other byte
    zero), then strict UTF-8, then Windows-1252 (what Excel on Windows writes as "CSV"), then
    Latin-1, which decodes any byte.
    """
    if encoding is not None:
        if encoding.lower() not in ENCODINGS:
            raise InvalidInputError(f"Unknown text encoding {encoding!r}.", f"Choose one of: {', '.join(ENCODINGS)}.")
        try:
            return data.decode("utf-8-sig" if encoding.lower() == "utf-8" else encoding), encoding.lower()
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"{name} cannot be read as {encoding} text (byte {exc.start}).",
                                   "Choose another encoding, or let HistoDash detect it.", path=name) from exc
    if data.startswith(b"\xef\xbb\xbf"):
        candidates = ["utf-8-sig"]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ["utf-16"]
    else:
        head = data[:4096]
        odd, even = head[1::2], head[0::2]
        if len(head) >= 4 and odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.1 * len(even):
            candidates = ["utf-16-le"]
        elif len(head) >= 4 and even.count(0) > 0.4 * len(even) and odd.count(0) < 0.1 * len(odd):
            candidates = ["utf-16-be"]
        else:
            candidates = ["utf-8", "cp1252", "latin-1"]
    for enc in candidates:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        shown = {"utf-8-sig": "utf-8", "utf-16-le": "utf-16", "utf-16-be": "utf-16"}.get(enc, enc)
        return text, shown
    raise CorruptFileError(f"{name} could not be read as text in any of: {', '.join(candidates)}.", path=name)


def read_table(source: str | Path | bytes | io.IOBase, name: str | None = None, *, encoding: str | None = None,
               max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """Read a cohort table from CSV, TSV/TXT or Excel (``.xlsx``, through openpyxl).

    ``source`` is a path, raw bytes or a binary file object (e.g. a Streamlit upload); ``name``
    gives the file name (and so the format) when ``source`` is not a path. Text tables may be
    UTF-8, UTF-16 or Windows-1252/Latin-1 (Excel's "CSV" on Windows): ``encoding=None`` detects it,
    and the one used is in ``frame.attrs["encoding"]``. More than ``max_rows`` rows, or two columns
    whose names are the same once stripped of spaces, are refused.
    """
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"No such file: {path.name}.", "Check the path.", path=str(source))
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        data = source.read()
        name = name or getattr(source, "name", None)
    name = name or "table.csv"
    suffix = Path(name).suffix.lower()
    if not data.strip():
        raise CorruptFileError(f"{name} is empty.", path=name)
    if suffix in {".xlsx", ".xlsm", ".xls"}:
        df, header = _read_excel(data, name, suffix, max_rows)
        df.attrs["encoding"] = "xlsx"
    else:
        if suffix not in {".csv", ".tsv", ".txt", ".tab", ""}:
            raise UnsupportedFormatError(f"{name}: unsupported table format {suffix!r}.",
                                         "Upload a CSV, TSV or Excel (.xlsx) file.", path=name)
        text, used = decode_text(data, name, encoding)
        if not text.strip():
            raise CorruptFileError(f"{name} is empty.", path=name)
        if "\x00" in text[:65536]:
            raise CorruptFileError(f"{name} could not be read as a delimited text table (it holds binary data).",
                                   "Check it is plain CSV/TSV text with one header row.", path=name)
        sep = "\t" if suffix in {".tsv", ".tab"} else _sniff_delimiter(text)
        try:
            header = pd.read_csv(io.StringIO(text), sep=sep, engine="python", header=None, nrows=1, dtype=str).iloc[0].tolist()
            df = pd.read_csv(io.StringIO(text), sep=sep, engine="python", nrows=max_rows + 1, na_values=["NA", "na", "N/A", ".", ""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, csv.Error, IndexError) as exc:
            raise CorruptFileError(f"{name} could not be read as a delimited text table ({exc}).",
                                   "Check it is plain CSV/TSV text with one header row.", path=name) from exc
        df.attrs["encoding"] = used
    if len(df) > max_rows:
        raise TooLargeError(f"{name} has more than {max_rows:,} rows, the limit for a cohort table.",
                            "Analyse a subset (e.g. one cohort or one period), or ask your administrator to raise the limit.",
                            path=name)
    if df.shape[1] < 2:
        raise InvalidInputError(f"{name} has only {df.shape[1]} column; a cohort needs at least time and event.",
                                "Check the delimiter (comma, semicolon or tab) and the header row.", path=name)
    return _clean_columns(df, name, header)


def _read_excel(data: bytes, name: str, suffix: str, max_rows: int) -> tuple[pd.DataFrame, list]:
    if suffix == ".xls":
        raise UnsupportedFormatError(f"{name} is an old Excel 97–2003 workbook (.xls).",
                                     "Save it as .xlsx (Excel workbook) or CSV and upload that.", path=name)
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise UnsupportedFormatError(
            f"{name}: Excel files cannot be read on this server (openpyxl is not installed).",
            "Save the sheet as CSV and upload that.", path=name) from None
    try:
        header = pd.read_excel(io.BytesIO(data), engine="openpyxl", header=None, nrows=1).iloc[0].tolist()
        return pd.read_excel(io.BytesIO(data), engine="openpyxl", nrows=max_rows + 1), header
    except Exception as exc:  # noqa: BLE001 - any parser failure is a broken file for the user
        raise CorruptFileError(f"{name} could not be read as an Excel workbook ({type(exc).__name__}).",
                               "Open it in Excel and save it again as .xlsx, or as CSV.", path=name) from exc


def _clean_columns(df: pd.DataFrame, name: str, header: list | None = None) -> pd.DataFrame:
    """Column names as text without surrounding spaces; two that are the same once stripped are refused.

    ``header`` is the header row as written (pandas renames a repeated ``x`` to ``x.1``, hiding it).
    """
    as_written = header if header is not None and len(header) == df.shape[1] else list(df.columns)
    counts: dict[str, int] = {}
    for c in as_written:
        if not _isna(c):
            counts[str(c).strip()] = counts.get(str(c).strip(), 0) + 1
    dup = [c for c, k in counts.items() if k > 1]
    if dup:
        raise InvalidInputError(f"{name} has {len(dup)} column name(s) that appear more than once, ignoring surrounding spaces "
                                f"(e.g. {dup[0]!r}, {counts[dup[0]]} times).",
                                "Give every column a different name in the header row.", path=name)
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _sniff_delimiter(text: str) -> str:
    """Comma, semicolon, tab, pipe or space (R's write.table), whichever the first lines use consistently (comma when none does).

    Only these are considered: pandas' own sniffing (``sep=None``) accepts any character, so a one-column
    table such as ``time\\n5\\n6`` was split on the letter ``t``.
    """
    sample = text[:65536]
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t| ").delimiter
    except csv.Error:
        return ","


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventCoding:
    """How the values of an event column were read: ``mapping`` original value -> 0/1."""

    mapping: Mapping[Any, int]
    description: str

    def to_dict(self) -> dict:
        return {"mapping": {str(k): int(v) for k, v in self.mapping.items()}, "description": self.description}


def _show(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def coerce_events(values: pd.Series | Sequence, column: str = "event") -> tuple[np.ndarray, EventCoding]:
    """Read an event column as 0/1 and say how.

    Accepted: numbers 0/1 (1 = event); numbers 1/2 (R ``survival`` convention: 1 = censored,
    2 = event); booleans; words such as true/false, yes/no, dead/alive, event/censored (any case).
    Missing values stay NaN (the caller drops those rows). Anything else raises
    :class:`InvalidInputError` listing the offending values.
    """
    s = pd.Series(values)
    present = s.dropna()
    if present.empty:
        return np.full(len(s), np.nan), EventCoding({}, "no values")
    if pd.api.types.is_bool_dtype(present):
        out = s.map({True: 1.0, False: 0.0}).to_numpy(dtype=float)
        return out, EventCoding({True: 1, False: 0}, "True → event, False → censored")
    numeric = pd.to_numeric(present, errors="coerce")
    if numeric.notna().all():
        levels = set(numeric.unique().tolist())
        if levels <= {0, 1}:
            mapping = {0: 0, 1: 1}
            desc = "0 → censored, 1 → event"
        elif levels <= {1, 2}:
            mapping = {1: 0, 2: 1}
            desc = "1 → censored, 2 → event (R survival convention, e.g. survival::lung)"
        else:
            bad = sorted(levels - {0, 1, 2})[:5]
            raise InvalidInputError(
                f"Event column {column!r} has values that cannot be read as event/censored: "
                f"{', '.join(_show(b) for b in bad)}.", ACCEPTED_EVENTS_HINT)
        out = pd.to_numeric(s, errors="coerce").map(mapping).to_numpy(dtype=float)
        return out, EventCoding({k: v for k, v in mapping.items() if k in levels}, desc)
    words = present.astype(str).str.strip().str.lower()
    mapping: dict[Any, int] = {}
    bad: list[str] = []
    for original, word in zip(present, words, strict=True):
        if original in mapping:
            continue
        if word in EVENT_WORDS:
            mapping[original] = 1
        elif word in CENSOR_WORDS:
            mapping[original] = 0
        elif _show(original) not in bad:
            bad.append(_show(original))
    if bad:
        raise InvalidInputError(
            f"Event column {column!r} has values that cannot be read as event/censored: {', '.join(bad[:5])}"
            f"{' …' if len(bad) > 5 else ''}.", ACCEPTED_EVENTS_HINT)
    out = s.map(lambda v: mapping.get(v, np.nan) if not _isna(v) else np.nan).to_numpy(dtype=float)
    ev = ", ".join(_show(k) for k, v in mapping.items() if v == 1)
    ce = ", ".join(_show(k) for k, v in mapping.items() if v == 0)
    desc = "; ".join(part for part in (f"{ev} → event" if ev else "", f"{ce} → censored" if ce else "") if part)
    return out, EventCoding(mapping, desc)


def _isna(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cohort:
    """A validated cohort: columns ``time``, ``event`` (0/1), optional ``group`` (str) and covariates.

    ``data`` keeps the user's covariate column names; ``time_col``/``event_col``/``group_col`` are the
    user's names of the mapped columns (for labels). ``n_dropped`` counts rows removed for missing
    values, ``dropped_by_column`` says which column had them.
    """

    data: pd.DataFrame
    time_col: str
    event_col: str
    group_col: str | None
    covariates: tuple[str, ...]
    event_coding: EventCoding
    time_unit: str = "days"
    n_input: int = 0
    n_dropped: int = 0
    dropped_by_column: Mapping[str, int] = field(default_factory=dict)
    group_order: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.data)

    @property
    def n_events(self) -> int:
        return int(self.data["event"].sum())

    def summary(self) -> str:
        """One line for the page and the CLI log: rows used, dropped, events, event mapping."""
        parts = [f"{self.n} patients, {self.n_events} events (event coding: {self.event_coding.description})"]
        if self.n_dropped:
            cols = ", ".join(f"{c}: {k}" for c, k in self.dropped_by_column.items() if k)
            parts.append(f"{self.n_dropped} of {self.n_input} rows dropped for missing values ({cols})")
        return "; ".join(parts)

    def groups(self) -> tuple[str, ...]:
        return self.group_order

    def to_frame(self) -> pd.DataFrame:
        return self.data.copy()

    def with_time_unit(self, unit: str) -> Cohort:
        """The same cohort with times converted to ``unit`` (days, weeks, months, years)."""
        if unit == self.time_unit:
            return self
        data = self.data.copy()
        data["time"] = convert_time(data["time"].to_numpy(float), self.time_unit, unit)
        return dataclasses.replace(self, data=data, time_unit=unit)


def _natural_order(labels: Iterable) -> list:
    labels = list(labels)
    try:
        return sorted(labels, key=float)
    except (TypeError, ValueError):
        return sorted(labels, key=str)


def _label(v) -> str:
    return _show(v) if not isinstance(v, str) else v.strip()


def _require_columns(df: pd.DataFrame, columns: Iterable[str | None]) -> None:
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        shown = ", ".join(map(str, list(df.columns)[:30]))
        raise InvalidInputError(
            f"Column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
            f"{'are' if len(missing) > 1 else 'is'} not in the table.",
            f"Pick from the table's columns: {shown}.")


def prepare_cohort(
    df: pd.DataFrame,
    time: str,
    event: str,
    group: str | None = None,
    covariates: Sequence[str] = (),
    *,
    time_unit: str = "days",
    group_order: Sequence[str] | None = None,
) -> Cohort:
    """Validate and map a table's columns into a :class:`Cohort`.

    Raises :class:`InvalidInputError` for missing columns, non-numeric or negative times, events that
    cannot be read as 0/1, non-numeric covariates and a table left empty after dropping rows with
    missing values.
    """
    if df is None or len(df) == 0:
        raise InvalidInputError("The table has no rows.", "Upload a table with one row per patient.")
    covariates = tuple(c for c in covariates if c not in (time, event))
    _require_columns(df, [time, event, group, *covariates])
    if time_unit not in TIME_UNITS:
        raise InvalidInputError(f"Unknown time unit {time_unit!r}.", f"Use one of: {', '.join(TIME_UNITS)}.")

    raw_t = df[time]
    if pd.api.types.is_bool_dtype(raw_t) or (raw_t.dtype == object and raw_t.map(lambda v: isinstance(v, (bool, np.bool_))).any()):
        raise InvalidInputError(
            f"Time column {time!r} holds true/false values, not times.",
            "Pick the column of follow-up times (numbers of days, months or years); true/false belongs in the event column.")
    t = pd.to_numeric(raw_t, errors="coerce")
    bad_t = t.isna() & raw_t.notna() & (raw_t.astype(str).str.strip() != "")
    if bad_t.any():
        i = int(np.flatnonzero(bad_t.to_numpy())[0])
        raise InvalidInputError(
            f"Time column {time!r} has {int(bad_t.sum())} non-numeric value(s), e.g. {raw_t.iloc[i]!r} in row {i + 1}.",
            "Times must be numbers in one unit (days, months or years) from diagnosis or study entry.")
    neg = t < 0
    if neg.any():
        i = int(np.flatnonzero(neg.to_numpy())[0])
        raise InvalidInputError(
            f"Time column {time!r} has {int(neg.sum())} negative value(s), e.g. {t.iloc[i]:g} in row {i + 1}.",
            "Survival times must be zero or positive; check the column or the start date used to compute it.")
    if np.isinf(t.to_numpy(dtype=float)).any():
        raise InvalidInputError(f"Time column {time!r} has infinite values.", "Replace them with the last follow-up time.")

    e, coding = coerce_events(df[event], column=event)
    out = pd.DataFrame({"time": t.to_numpy(dtype=float), "event": e}, index=df.index)
    if group is not None:
        g = df[group]
        n_levels = int(g.nunique(dropna=True))
        if n_levels > MAX_GROUPS:
            raise InvalidInputError(
                f"Group column {group!r} has {n_levels:,} different values, more than the limit of {MAX_GROUPS} groups"
                f"{' (one per row: is it a patient id?)' if n_levels >= 0.9 * len(df) else ''}.",
                "Pick a column with a few categories (e.g. treatment arm, grade), or split a continuous column into strata.")
        out["group"] = g.map(lambda v: np.nan if _isna(v) else _label(v)).astype(object)
    for c in covariates:
        raw = df[c]
        if pd.api.types.is_bool_dtype(raw):
            raw = raw.astype(float)
        x = pd.to_numeric(raw, errors="coerce")
        bad = x.isna() & raw.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InvalidInputError(
                f"Covariate {c!r} is not numeric (e.g. {raw.iloc[i]!r} in row {i + 1}).",
                "Use it as the group column instead, or code it as numbers (e.g. 0/1 indicators).")
        values = x.to_numpy(dtype=float)
        if np.isinf(values).any():
            i = int(np.flatnonzero(np.isinf(values))[0])
            raise InvalidInputError(
                f"Covariate {c!r} has {int(np.isinf(values).sum())} infinite value(s), e.g. {values[i]:g} in row {i + 1}.",
                "Replace them with a number (or leave the cell empty to drop the row).")
        out[c] = values

    dropped_by = {}
    for c_user, c_out in [(time, "time"), (event, "event"), (group, "group"), *[(c, c) for c in covariates]]:
        if c_user is not None:
            dropped_by[c_user] = int(out[c_out].isna().sum())
    keep = out.notna().all(axis=1)
    n_dropped = int((~keep).sum())
    out = out[keep].reset_index(drop=True)
    if out.empty:
        raise InvalidInputError(
            f"No rows left after dropping {n_dropped} rows with missing values "
            f"({', '.join(f'{k}: {v}' for k, v in dropped_by.items() if v)}).",
            "Choose columns that are filled in for most patients.")
    out["event"] = out["event"].astype(int)
    order: tuple[str, ...] = ()
    if group is not None:
        present = set(out["group"])
        if group_order:
            order = tuple(g for g in map(str, group_order) if g in present)
            order += tuple(_natural_order(present - set(order)))
        else:
            order = tuple(_natural_order(present))
    return Cohort(data=out, time_col=time, event_col=event, group_col=group, covariates=covariates,
                  event_coding=coding, time_unit=time_unit, n_input=len(df), n_dropped=n_dropped,
                  dropped_by_column=dropped_by, group_order=order)


def require_groups(cohort: Cohort, *, need_events: bool = True, what: str = "a test between groups") -> None:
    """Raise if a comparison of groups is impossible: no group column, one group, a group without events."""
    if cohort.group_col is None:
        raise InvalidInputError(f"No group column chosen: {what} needs one.", "Pick a group column or make strata from a score.")
    if len(cohort.group_order) < 2:
        only = cohort.group_order[0] if cohort.group_order else "none"
        raise InvalidInputError(
            f"Only one group ({only!r}) in column {cohort.group_col!r}: {what} needs at least two.",
            "Pick another group column, or split a continuous column into strata.")
    if need_events:
        ev = cohort.data.groupby("group")["event"].sum()
        empty = [g for g in cohort.group_order if ev.get(g, 0) == 0]
        if empty:
            raise InvalidInputError(
                f"Group{'s' if len(empty) > 1 else ''} {', '.join(repr(g) for g in empty)} of column "
                f"{cohort.group_col!r} {'have' if len(empty) > 1 else 'has'} no events: {what} cannot use "
                f"{'them' if len(empty) > 1 else 'it'}.",
                "Merge it with a neighbouring group, or drop it from the table.")


# --------------------------------------------------------------------------------------------------
# Demo cohorts (offline, from lifelines' bundled datasets)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoCohort:
    """A bundled clinical dataset with its suggested column mapping."""

    key: str
    title: str
    description: str
    time: str
    event: str
    group: str
    covariates: tuple[str, ...]
    time_unit: str
    features: tuple[str, ...]  # suggested risk-score features

    def load(self) -> pd.DataFrame:
        return load_demo(self.key)


DEMO_COHORTS: dict[str, DemoCohort] = {
    "lung": DemoCohort(
        key="lung", title="NCCTG advanced lung cancer (R survival::lung, n=228)",
        description=("North Central Cancer Treatment Group trial of patients with advanced lung cancer "
                     "(Loprinzi et al., J Clin Oncol 1994). time: days to death or last follow-up; status: "
                     "0 = censored, 1 = dead (R's survival::lung codes it 1/2; both are read); sex: 1 = male, 2 = female; ph.ecog: ECOG "
                     "performance score (0 = good … 3+); ph.karno/pat.karno: Karnofsky scores by physician/"
                     "patient; wt.loss: weight lost in the last six months (lb). Otherwise the same table as "
                     "R's survival::lung, which the tests check our numbers against."),
        time="time", event="status", group="sex", covariates=("age", "sex", "ph.ecog"),
        time_unit="days", features=("age", "ph.ecog", "ph.karno", "wt.loss")),
    "gbsg2": DemoCohort(
        key="gbsg2", title="German Breast Cancer Study Group 2 (GBSG2, n=686)",
        description=("Node-positive breast cancer trial (Schumacher et al., J Clin Oncol 1994). time: days "
                     "to recurrence or last follow-up; cens: 1 = recurrence; horTh: hormonal therapy; tgrade: "
                     "tumour grade I–III; pnodes: positive lymph nodes; progrec/estrec: progesterone/oestrogen "
                     "receptors (fmol). Suited to the discovery/validation risk-score demo."),
        time="time", event="cens", group="tgrade", covariates=("age", "tsize", "pnodes"),
        time_unit="days", features=("age", "tsize", "pnodes", "progrec", "estrec")),
}
DEFAULT_DEMO = "lung"


def load_demo(key: str = DEFAULT_DEMO) -> pd.DataFrame:
    """Load a demo cohort from lifelines' bundled datasets (no network)."""
    from lifelines import datasets

    if key == "lung":
        df = datasets.load_lung()
    elif key == "gbsg2":
        df = datasets.load_gbsg2()
    else:
        raise InvalidInputError(f"Unknown demo cohort {key!r}.", f"Choose one of: {', '.join(DEMO_COHORTS)}.")
    return df.reset_index(drop=True)


def split_discovery_validation(df: pd.DataFrame, fraction: float = 0.5, seed: int = 20240601,
                               stratify: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a table into discovery and validation cohorts, deterministically (seeded permutation).

    With ``stratify`` (e.g. the event column) each level is split separately so both cohorts get
    a similar share of events.
    """
    if not 0 < fraction < 1:
        raise InvalidInputError(f"Discovery fraction must be between 0 and 1, not {fraction}.")
    rng = np.random.default_rng(seed)
    idx = np.arange(len(df))
    disc: list[int] = []
    strata = [idx] if stratify is None else [idx[(df[stratify] == v).to_numpy()] for v in sorted(df[stratify].dropna().unique())]
    for s in strata:
        perm = rng.permutation(s)
        disc.extend(perm[: int(math.floor(len(s) * fraction + 0.5))].tolist())
    mask = np.zeros(len(df), bool)
    mask[disc] = True
    return df[mask].reset_index(drop=True), df[~mask].reset_index(drop=True)


def join_features(cohort_table: pd.DataFrame, features: pd.DataFrame, on: str, features_on: str | None = None, *,
                  id_chars: int | None = None, aggregate: bool = False) -> pd.DataFrame:
    """Join per-patient features (e.g. cluster proportions, or ``cohort-scores`` slide scores) onto a cohort table.

    Inner join on the patient id (compared as stripped text). ``id_chars`` keeps only the first N characters of
    the features table's ids (a TCGA slide name's first 12 are the patient barcode). Several rows per patient
    are an error unless ``aggregate`` is true, which averages their numeric columns (e.g. several slides).
    Raises if an id column is missing or no id matches.
    """
    features_on = features_on or on
    _require_columns(cohort_table, [on])
    if features_on not in features.columns:
        raise InvalidInputError(f"Id column {features_on!r} is not in the features table.",
                                f"Pick from its columns: {', '.join(map(str, features.columns[:30]))}.")
    right = features.copy()
    key = right[features_on].astype(str).str.strip()
    if id_chars:
        key = key.str[: int(id_chars)]
    right = right.drop(columns=[features_on])
    right["__key__"] = key
    if right["__key__"].duplicated().any():
        dup = right["__key__"][right["__key__"].duplicated()].unique()
        if not aggregate:
            raise InvalidInputError(
                f"The features table has {len(dup)} repeated patient id(s), e.g. {dup[0]!r}.",
                "Tick 'average several rows per patient' (e.g. several slides), or give one row per patient.")
        num = [c for c in right.columns if c != "__key__" and pd.api.types.is_numeric_dtype(right[c])]
        right = right.groupby("__key__", sort=False)[num].mean().reset_index()
    left = cohort_table.copy()
    left["__key__"] = left[on].astype(str).str.strip()
    clash = [c for c in right.columns if c in left.columns and c != "__key__"]
    right = right.rename(columns={c: f"{c}_feature" for c in clash})
    out = left.merge(right, on="__key__", how="inner").drop(columns="__key__")
    if out.empty:
        raise InvalidInputError(f"No patient id of column {on!r} matches the features table's {features_on!r}.",
                                "Check both tables use the same ids (same spelling, no prefixes).")
    return out
