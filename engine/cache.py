"""On-disk cache of inference results (diskcache), shared by the dashboard, the CLI and jobs.

Keys are built from what determines a result — the model's weights sha256, the preprocessing
parameters and the hash of the tile's pixels — so a renamed file still hits and a retrained model
never gets stale answers. The cache is bounded (``HISTODASH_CACHE_SIZE_GB``, default 2 GB, least
recently stored evicted first). A cache folder that cannot be opened, or whose database is corrupt,
degrades to "no cache" with a warning: inference still works, only slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import get_settings

log = logging.getLogger(__name__)

_MISSING = object()


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    size_bytes: int
    limit_bytes: int
    enabled: bool
    directory: str
    warning: str | None = None

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (model weights, slides without a quickhash): the one file hasher."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def make_key(*parts: Any) -> str:
    """A stable string key from JSON-serialisable parts (dicts are sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """A diskcache-backed key/value store that never raises on its own failures.

    Args:
        directory: cache folder (default: settings' ``cache_dir``).
        size_limit: bytes (default: settings' ``cache_size_bytes``).
    """

    def __init__(self, directory: str | Path | None = None, size_limit: int | None = None):
        settings = get_settings()
        self.directory = Path(directory) if directory is not None else settings.cache_dir
        self.size_limit = int(size_limit if size_limit is not None else settings.cache_size_bytes)
        self.hits = 0
        self.misses = 0
        self.warning: str | None = None
        self._lock = threading.Lock()
        self._cache = self._open()

    def _open(self):
        try:
            import diskcache

            self.directory.mkdir(parents=True, exist_ok=True)
            cache = diskcache.Cache(str(self.directory), size_limit=self.size_limit, eviction_policy="least-recently-stored")
            cache.get("__probe__")  # touch the database now, so corruption shows here
            return cache
        except Exception as err:  # noqa: BLE001 - any failure → run uncached
            self._disable(f"the inference cache at '{self.directory}' cannot be used ({type(err).__name__}: {err}); results will not be cached")
            return None

    def _disable(self, message: str) -> None:
        log.warning(message)
        self.warning = message
        self._cache = None

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = _MISSING
        if self._cache is not None:
            try:
                value = self._cache.get(key, default=_MISSING)
            except Exception as err:  # noqa: BLE001
                self._disable(f"the inference cache failed while reading ({type(err).__name__}: {err}); continuing without it")
        with self._lock:
            if value is _MISSING:
                self.misses += 1
                return default
            self.hits += 1
            return value

    def set(self, key: str, value: Any) -> None:
        if self._cache is None:
            return
        try:
            self._cache.set(key, value)
        except Exception as err:  # noqa: BLE001
            self._disable(f"the inference cache failed while writing ({type(err).__name__}: {err}); continuing without it")

    def stats(self) -> CacheStats:
        entries = size = 0
        if self._cache is not None:
            try:
                entries, size = len(self._cache), int(self._cache.volume())
            except Exception as err:  # noqa: BLE001
                self._disable(f"the inference cache cannot be read ({err})")
        return CacheStats(self.hits, self.misses, entries, size, self.size_limit, self.enabled, str(self.directory), self.warning)

    def clear(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


_shared: dict[str, ResultCache] = {}
_shared_lock = threading.Lock()


def shared_cache() -> ResultCache:
    """One :class:`ResultCache` per cache folder per process."""
    directory = str(get_settings().cache_dir)
    with _shared_lock:
        if directory not in _shared:
            _shared[directory] = ResultCache(directory)
        return _shared[directory]
