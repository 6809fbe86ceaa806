"""Scores of a folder of slides, one row per slide: :func:`cohort_scores` (input of the survival page)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from engine.errors import Cancelled, HistoDashError, InvalidInputError
from engine.heatmap.job import compute_heatmap
from engine.progress import Progress, Status, report, say


def cohort_scores(slide_dir: str | Path, *, progress: Progress | None = None, status: Status | None = None, **kwargs) -> pd.DataFrame:
    """One row per slide of a folder (recursive): summary statistics, or the error that stopped it.

    ``kwargs`` go to :func:`~engine.heatmap.job.compute_heatmap` for every slide. ``progress(done, total)``
    counts slides; ``status`` names the slide just finished. A slide that fails with a user-facing error
    becomes a row with its ``error``; a cancel stops the whole run.
    """
    from engine.slides import SlideLibrary

    library = SlideLibrary(Path(slide_dir))
    entries = list(library.walk())
    if not entries:
        raise InvalidInputError(f"No slides found in '{slide_dir}'.")
    rows = []
    for i, entry in enumerate(entries):
        row = {"slide": entry.relpath}
        try:
            result, _ = compute_heatmap(library.resolve(entry.relpath), **kwargs)
            summary = result.summary()
            row.update({k: v for k, v in summary.items() if k not in ("slide",)})
            row["error"] = None
        except Cancelled:
            raise
        except HistoDashError as err:
            row["error"] = str(err)
        rows.append(row)
        say(status, f"scored {entry.relpath}")
        report(progress, i + 1, len(entries))
    return pd.DataFrame(rows)
