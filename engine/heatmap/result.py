"""The scores of one slide: :class:`HeatmapResult`, a value object that nothing changes after it is made.

Its arrays are read-only and its ``params``/``timings`` are read-only mappings, so a result handed
to a page, a cache or another process is exactly the one the engine computed; a changed copy is made
with :func:`dataclasses.replace`. Files (CSV, GeoJSON, summary, manifest, PNG) are written by
:mod:`engine.heatmap.exporters`; the methods here are short forms of those functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.heatmap.grid import TileGrid


class ReadOnlyDict(dict):
    """A ``dict`` that refuses changes (still JSON-serialisable and picklable like a dict)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a HeatmapResult is read-only: make a changed copy with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return (ReadOnlyDict, (dict(self),))


def frozen(mapping: Mapping[str, Any] | None = None, **more) -> ReadOnlyDict:
    """A read-only copy of ``mapping`` (+ ``more``), nested mappings included."""
    items = {**(mapping or {}), **more}
    return ReadOnlyDict({k: frozen(v) if isinstance(v, Mapping) else v for k, v in items.items()})


_ARRAYS = ("x", "y", "tissue", "probabilities", "scores", "cached")


def builtin_columns(classes) -> set[str]:
    """The columns every tiles.csv has; any other numeric one is a per-tile extra (``HeatmapResult.columns``)."""
    return {"x", "y", "width", "height", "score", "tissue", "cached", *(f"p_{c}" for c in classes)}


@dataclass(frozen=True, eq=False)
class HeatmapResult:
    """Scores of the tissue tiles of one slide (arrays aligned: one entry per scored tile).

    The arrays given are made read-only (the result owns them). ``params`` and ``timings`` should be
    read-only mappings (:func:`frozen`); the engine always builds them so.
    """

    grid: TileGrid
    x: np.ndarray
    y: np.ndarray
    tissue: np.ndarray
    probabilities: np.ndarray  # (n, n_classes)
    scores: np.ndarray
    cached: np.ndarray
    classes: tuple[str, ...]
    model_id: str
    model_sha256: str
    threshold: float
    slide_name: str
    slide_hash: str
    params: Mapping[str, Any] = field(default_factory=frozen)
    timings: Mapping[str, Any] = field(default_factory=frozen)
    complete: bool = True
    #: more per-tile columns, ``name -> array`` aligned with ``x`` (a model's ``in_domain``, ``domain_score``,
    #: ``uncertainty``; a cohort's ``cluster``): :meth:`to_frame` and the files carry them, so the viewer offers each
    #: numeric one as a layer
    columns: Mapping[str, np.ndarray] = field(default_factory=frozen)

    def __post_init__(self):
        n = len(self.x)
        for name in _ARRAYS:
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"HeatmapResult.{name} must be a numpy array, not {type(arr).__name__}.")
            if len(arr) != n:
                raise ValueError(f"HeatmapResult.{name} has {len(arr)} entries for {n} tiles.")
            arr.setflags(write=False)
        clash = set(self.columns) & builtin_columns(self.classes)
        if clash:
            raise ValueError(f"HeatmapResult.columns may not be named {sorted(clash)} (built-in columns).")
        for name, arr in self.columns.items():
            if not isinstance(arr, np.ndarray) or len(arr) != n:
                raise ValueError(f"HeatmapResult.columns['{name}'] must be a numpy array with one entry per tile ({n}).")
            arr.setflags(write=False)
        if not isinstance(self.columns, ReadOnlyDict):
            object.__setattr__(self, "columns", ReadOnlyDict(self.columns))

    @property
    def n_tiles(self) -> int:
        return int(len(self.scores))

    @property
    def in_domain_fraction(self) -> float | None:
        """Share of the scored tiles inside the model's out-of-domain threshold (None: the model has no detector)."""
        flags = self.columns.get("in_domain")
        return float(np.mean(flags)) if flags is not None and len(flags) else None

    def to_frame(self) -> pd.DataFrame:
        """``x, y`` (level 0), ``width, height`` (level 0), ``score``, ``p_<class>``…, ``tissue``, ``cached``, then :attr:`columns`."""
        data = {"x": self.x, "y": self.y, "width": np.full(len(self.x), self.grid.tile0), "height": np.full(len(self.x), self.grid.tile0), "score": self.scores}
        for i, c in enumerate(self.classes):
            data[f"p_{c}"] = self.probabilities[:, i] if len(self.probabilities) else np.zeros(0)
        data["tissue"] = self.tissue
        data["cached"] = self.cached
        data.update(self.columns)
        return pd.DataFrame(data)

    def top_k(self, k: int = 12) -> pd.DataFrame:
        return self.to_frame().sort_values("score", ascending=False, kind="stable").head(k)

    def score_grid(self, values: np.ndarray | None = None) -> np.ndarray:
        """``(n_rows, n_cols)`` grid of per-tile values (default: scores), NaN where not scored."""
        grid = np.full((self.grid.n_rows, self.grid.n_cols), np.nan)
        if len(self.x):
            r, c = self.grid.index_of(self.x, self.y)
            grid[r, c] = self.scores if values is None else values
        return grid

    def anonymised(self) -> HeatmapResult:
        """The same result with the slide's name replaced by a stable pseudonym (``slide-<8 hex>``, see
        :func:`engine.privacy.pseudonym`): its CSV, GeoJSON, summary and manifest then carry no name."""
        from engine.privacy import pseudonym

        return replace(self, slide_name=pseudonym(self.slide_name, "slide"))

    # -- exports (engine.heatmap.exporters)

    def to_csv(self, path=None) -> str | None:
        from engine.heatmap import exporters

        return exporters.tiles_csv(self, path)

    def summary(self, threshold: float | None = None, top_k: int = 10) -> dict:
        """Slide-level statistics of the tissue tiles' scores (:func:`engine.heatmap.exporters.summary`)."""
        from engine.heatmap import exporters

        return exporters.summary(self, threshold, top_k)

    def to_geojson(self, threshold: float | None = None) -> dict:
        from engine.heatmap import exporters

        return exporters.geojson(self, threshold)

    def manifest(self) -> dict:
        from engine.heatmap import exporters

        return exporters.manifest(self)

    def files(self, *, thumbnail: np.ndarray | None = None, threshold: float | None = None, png: bytes | None = None) -> dict[str, bytes]:
        from engine.heatmap import exporters

        return exporters.result_files(self, thumbnail=thumbnail, threshold=threshold, png=png)

    def save(self, out_dir: Path | str, *, thumbnail: np.ndarray | None = None, threshold: float | None = None) -> dict[str, Path]:
        from engine.heatmap import exporters

        return exporters.save(self, out_dir, thumbnail=thumbnail, threshold=threshold)

    def export_files(self, *, thumbnail: np.ndarray | None = None, threshold: float | None = None, anonymise: bool = False, png: bytes | None = None) -> dict[str, bytes]:
        from engine.heatmap import exporters

        return exporters.export_files(self, thumbnail=thumbnail, threshold=threshold, anonymise=anonymise, png=png)

    @classmethod
    def load(cls, out_dir: Path | str) -> HeatmapResult:
        """Read back a result written by :meth:`save` (the page shows finished jobs this way)."""
        from engine.heatmap import exporters

        return exporters.load(out_dir)
