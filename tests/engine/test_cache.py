"""The inference cache: hits and misses counted, corrupt or unusable caches degrade to uncached."""

import os

from engine.cache import ResultCache, make_key


def test_hit_and_miss_counts(tmp_path):
    cache = ResultCache(tmp_path / "c")
    assert cache.get("k") is None
    cache.set("k", {"probabilities": [0.1, 0.9]})
    assert cache.get("k") == {"probabilities": [0.1, 0.9]}
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.enabled) == (1, 1, 1, True)
    assert stats.hit_rate == 0.5


def test_values_persist_across_instances(tmp_path):
    ResultCache(tmp_path / "c").set("k", 42)
    assert ResultCache(tmp_path / "c").get("k") == 42


def test_corrupt_database_degrades_with_warning(tmp_path, caplog):
    folder = tmp_path / "c"
    ResultCache(folder).set("k", 1)
    (folder / "cache.db").write_bytes(b"this is not sqlite" * 100)
    cache = ResultCache(folder)
    assert not cache.enabled
    assert "cannot be used" in cache.warning
    assert cache.get("k") is None  # works, uncached
    cache.set("k", 2)
    assert cache.get("k") is None
    assert cache.stats().misses == 2


def test_unwritable_location_degrades(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = ResultCache(blocker / "cache")
    assert not cache.enabled and cache.stats().warning


def test_size_limit_is_applied(tmp_path):
    cache = ResultCache(tmp_path / "c", size_limit=200_000)
    for i in range(200):
        cache.set(f"k{i}", os.urandom(5_000))
    assert cache.stats().size_bytes <= 400_000  # diskcache culls to the limit (plus its small overhead)
    assert cache.stats().entries < 200


def test_make_key_is_order_insensitive_for_dicts():
    assert make_key("a", {"x": 1, "y": 2}) == make_key("a", {"y": 2, "x": 1})
    assert make_key("a", {"x": 1}) != make_key("a", {"x": 2})
