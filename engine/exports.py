"""CSV files that are safe to open in a spreadsheet: one writer for every CSV the app and the CLI produce.

A cell whose text starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel,
LibreOffice and Google Sheets as a formula ("CSV injection", OWASP). HistoDash writes user-chosen
text into CSVs (tile and slide file names, group labels, column names), so every such cell, and every
column name, gets a leading ``'`` — the spreadsheet's own "this is text" mark. Numbers are left alone:
a negative number stays a number (only text is escaped).

>>> from engine.exports import safe_csv
>>> st.download_button("CSV", safe_csv(frame), file_name="predictions.csv")   # page
>>> safe_csv(frame, "out.csv")                                                  # CLI: also writes the file
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value):
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names are escaped (:func:`escape_cell`); numbers untouched."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
            out[column] = series.astype(object).map(escape_cell)
    out.columns = [escape_cell(str(c)) if isinstance(c, str) else c for c in out.columns]
    return out


def safe_csv(frame: pd.DataFrame, dest: str | Path | IO[str] | None = None, **to_csv) -> bytes:
    """The CSV of ``frame`` (UTF-8, CRLF rows, no index unless ``index=True``) with formula-like text escaped.

    Returns the bytes; with ``dest`` (a path or a text stream such as ``sys.stdout``) also writes them there.
    ``to_csv`` passes options to :meth:`pandas.DataFrame.to_csv` (e.g. ``float_format``).
    """
    to_csv.setdefault("index", False)
    to_csv.setdefault("lineterminator", "\r\n")  # RFC 4180; a cell holding a CR or LF is then quoted, not split
    text = safe_frame(frame).to_csv(**to_csv)
    if isinstance(dest, (str, Path)):
        Path(dest).write_text(text, encoding="utf-8")
    elif dest is not None:
        dest.write(text)
    return text.encode("utf-8")


def read_back(data: bytes) -> pd.DataFrame:
    """Parse a CSV written by :func:`safe_csv` the way a spreadsheet shows it (tests use this on every download)."""
    return pd.read_csv(io.BytesIO(data))
