"""Per-slide tile embeddings beside the result cache: compressed ``.npz`` files named by a cache-style key.

>>> store = EmbeddingStore()                      # <cache dir>/embeddings/
>>> store.save_part(key, 0, 256, probabilities, embeddings)   # as chunks come back
>>> store.complete(key, n_tiles=600)              # all parts → one <key>.npz (parts removed)
>>> store.load(key)["embeddings"]                 # (n_tiles, dim) float16

The key (:func:`slide_key`) is built like the tile cache's keys from what determines the result: the
slide's content hash, the tiling, the positions of the tissue tiles, the scoring and feature models'
sha256, the feature layer and the preprocessing. So a renamed slide still hits and a retrained model
never gets stale features. Parts make an interrupted cohort resume chunk by chunk. The folder must
be on the head's local disk, like the cache (the head alone reads and writes it).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np

from engine.cache import make_key
from engine.config import get_settings

NAMESPACE = "cohort-slide/v1"


def slide_key(slide_hash: str, grid: dict, x: np.ndarray, y: np.ndarray, score_sha: str, feature_sha: str, preprocessing: dict) -> str:
    positions = hashlib.sha256(np.asarray(x, np.int64).tobytes() + b"|" + np.asarray(y, np.int64).tobytes()).hexdigest()
    geometry = {k: grid[k] for k in ("tile0", "stride0", "level", "read_px", "input_px")}
    return make_key(NAMESPACE, slide_hash, geometry, positions, score_sha, feature_sha, preprocessing)


def _save(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(3)}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


class EmbeddingStore:
    """Slide records (probabilities + embeddings of every tissue tile) under ``root`` (default ``<cache dir>/embeddings``)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else get_settings().cache_dir / "embeddings"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def part_path(self, key: str, start: int, end: int) -> Path:
        return self.root / key[:2] / f"{key}.part-{int(start)}-{int(end)}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def has_part(self, key: str, start: int, end: int) -> bool:
        return self.has(key) or self.part_path(key, start, end).exists()

    def load(self, key: str) -> dict | None:
        """``{"probabilities", "embeddings"}`` of a complete slide, or None (missing or unreadable: scored again)."""
        try:
            with np.load(self.path(key)) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError):
            return None

    def save_part(self, key: str, start: int, end: int, probabilities: np.ndarray, embeddings: np.ndarray, **extras: np.ndarray) -> None:
        """Tiles ``start:end``; ``extras``: more per-tile arrays (the forward pass's ``in_domain``, ``domain_score``…)."""
        _save(self.part_path(key, start, end), probabilities=np.asarray(probabilities, np.float32), embeddings=np.asarray(embeddings, np.float16),
              **{name: np.asarray(values) for name, values in extras.items()})

    def complete(self, key: str, n_tiles: int, chunk: int) -> dict:
        """Merge the parts ``0:chunk, chunk:2·chunk, …`` of a slide of ``n_tiles`` tiles into its record; returns it."""
        arrays: list[dict] = []
        parts = []
        for start in range(0, n_tiles, chunk):
            p = self.part_path(key, start, min(start + chunk, n_tiles))
            with np.load(p) as data:
                arrays.append({k: data[k] for k in data.files})
            parts.append(p)
        names = set.intersection(*(set(a) for a in arrays)) if arrays else {"probabilities", "embeddings"}  # an extra only if every part has it
        record = {k: np.concatenate([a[k] for a in arrays]) for k in sorted(names)}
        _save(self.path(key), **record)
        for p in parts:
            p.unlink(missing_ok=True)
        return record
