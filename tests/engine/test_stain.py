"""Stain normalisation (engine.stain) against independent references.

Oracles, each with an explicit tolerance:
* ``engine.stain_reference``: the same Macenko steps written plainly, one ``scipy.optimize.nnls`` call
  per pixel (reference study 1's approach). Colours must agree within 1/255 on every pixel.
* ``scipy.optimize.nnls`` itself for the vectorised two-stain NNLS kernel (1e-10).
* ``numpy.percentile`` for the percentile shortcuts (bit for bit where it matters).
* staintools' Macenko stain extractor with its own defaults (luminosity tissue mask, no brightness
  standardisation): stain vectors with cosine similarity >= 0.95 (measured on the 7 SCCNet tiles:
  haematoxylin >= 0.9998, eosin >= 0.971).
Real-data tests use ../shared/data/sccnet-tiles and skip with a reason when it is absent.
"""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import nnls

from engine import stain_reference as reference
from engine.errors import HistoDashError, InvalidInputError
from engine.imageio import read_image
from engine.stain import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAIN_MATRIX,
    MacenkoNormalizer,
    MissingDependencyError,
    NormalizationResult,
    StainNormalizer,
    VahadaneNormalizer,
    _FastTile,
    _percentile_of_uint8,
    _percentile_of_uint8_values,
    _percentiles,
    _Tails,
    get_normalizer,
    nnls_two_stains,
)
from tests.conftest import SHARED_DATA, shared_path

SCCNET_TILES = sorted(p.name for p in (SHARED_DATA / "sccnet-tiles").glob("*.jpg")) or ["Norm_tile.jpg"]


def sccnet_tile(name: str) -> np.ndarray:
    """A real 512 px SCCNet tile (the calling test is skipped when ../shared/data/sccnet-tiles is absent)."""
    return read_image(shared_path("sccnet-tiles") / name)


# -- synthetic tiles (made at test time) ----------------------------------------------------------


def synthetic_he(seed: int = 0, size: int = 64, tissue_fraction: float = 0.8, io: float = 240.0) -> np.ndarray:
    """An H&E-like uint8 tile: background plus nuclei (mostly haematoxylin) and stroma (mostly eosin)."""
    rng = np.random.default_rng(seed)
    n = size * size
    stains = MACENKO_REFERENCE_STAIN_MATRIX + rng.normal(0, 0.03, (3, 2))
    stains /= np.linalg.norm(stains, axis=0)
    conc = np.zeros((n, 2))
    tissue = rng.random(n) < tissue_fraction
    nuclei = tissue & (rng.random(n) < 0.35)
    conc[nuclei] = rng.gamma(4, 0.3, (nuclei.sum(), 2)) * [1.0, 0.25]
    stroma = tissue & ~nuclei
    conc[stroma] = rng.gamma(4, 0.2, (stroma.sum(), 2)) * [0.2, 1.0]
    rgb = io * np.exp(-conc @ stains.T) + rng.normal(0, 2, (n, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(size, size, 3)


def with_tissue_patch(fraction: float, size: int = 100, seed: int = 3) -> np.ndarray:
    """A near-white tile with a square of synthetic tissue covering about ``fraction`` of it."""
    rng = np.random.default_rng(seed)
    tile = np.clip(rng.normal(246, 1.5, (size, size, 3)), 0, 255).astype(np.uint8)
    side = max(1, round(size * fraction**0.5))
    tile[:side, :side] = synthetic_he(seed, side, tissue_fraction=1.0)
    return tile


@pytest.fixture
def strict():
    """Any warning (Python or NumPy floating point) becomes an error inside the block."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        yield


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# -- NNLS kernel vs scipy.optimize.nnls ----------------------------------------------------------------


def random_stains(rng) -> np.ndarray:
    while True:
        stains = rng.random((3, 2)) + 0.02
        stains /= np.linalg.norm(stains, axis=0)
        if np.linalg.norm(np.cross(stains[:, 0], stains[:, 1])) > 0.2:  # stains at least ~12 degrees apart
            return stains


def test_nnls_matches_scipy_on_random_pixels():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        stains = random_stains(rng)
        od = rng.normal(0, 1, (300, 3)) * rng.choice([1e-3, 1.0, 3.0], (300, 1)) + rng.random((300, 1))
        expected = np.array([nnls(stains, y)[0] for y in od])
        got = nnls_two_stains(od, stains)
        assert got.dtype == np.float64 and got.shape == (300, 2)
        worst = max(worst, np.abs(got - expected).max())
    assert worst <= 1e-10, worst  # measured about 3e-13


def test_nnls_matches_scipy_on_edge_cases():
    stains = np.array(MACENKO_REFERENCE_STAIN_MATRIX)
    h, e = stains[:, 0], stains[:, 1]
    ortho = np.cross(h, e)
    od = np.array(
        [
            np.zeros(3),  # background: zero
            h, e, 2 * h + 3 * e,  # exact combinations
            -h, -e, -(h + e),  # nothing non-negative: zero
            h - 0.5 * e, e - 0.5 * h,  # one coefficient negative unconstrained
            ortho, -ortho, ortho + 0.1 * h,  # orthogonal to both stains
            h + 1e-9 * e, h - 1e-9 * e,  # on the boundary of the cone
            [1e-9, 0, 0], [0, 0, 5.0], [5.0, 0, 0], [1e3, 2e3, 1e3],  # tiny and large values
        ]
    )
    expected = np.array([nnls(stains, y)[0] for y in od])
    np.testing.assert_allclose(nnls_two_stains(od, stains), expected, rtol=0, atol=1e-10)
    assert np.all(nnls_two_stains(od, stains) >= 0)


def test_nnls_float32_keeps_dtype_and_is_close():
    rng = np.random.default_rng(1)
    stains = random_stains(rng)
    od = rng.random((1000, 3)) * 2
    got = nnls_two_stains(od.astype(np.float32), stains)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, nnls_two_stains(od, stains), rtol=0, atol=1e-5)


def test_nnls_rejects_bad_shapes_and_parallel_stains():
    with pytest.raises(InvalidInputError, match=r"shape \(N, 3\)"):
        nnls_two_stains(np.zeros((4, 2)), MACENKO_REFERENCE_STAIN_MATRIX)
    with pytest.raises(InvalidInputError, match="linearly independent"):
        nnls_two_stains(np.zeros((4, 3)), np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))


# -- percentile shortcuts vs numpy.percentile ---------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 1000, 50_001, 262_144])
def test_uint8_percentile_equals_numpy_bit_for_bit(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 256, n, dtype=np.uint8) if n < 1000 else rng.integers(180, 256, n, dtype=np.uint8)
    counts = np.bincount(values, minlength=256)
    for q in [0, 1, 33.3, 50, 90, 99, 99.9, 100]:
        assert _percentile_of_uint8(counts, q) == np.percentile(values, q), q


@pytest.mark.parametrize("n", [1, 2, 5, 8193, 100_000, 262_144])
def test_float_percentiles_equal_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    x[: n // 3] = np.round(x[: n // 3], 1)  # plenty of ties
    qs = [0, 1, 50, 99, 100]
    assert _percentiles(x, qs) == list(np.percentile(x, qs))
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(_percentiles(x32, [1, 99]), np.percentile(x32, [1, 99]), rtol=1e-6)
    np.testing.assert_allclose(_percentiles(x, [1, 99], monotone=np.arctan), np.percentile(np.arctan(x), [1, 99]), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 1000, 50_001, 786_432])
def test_uint8_percentile_by_counting_equals_numpy_bit_for_bit(n):
    rng = np.random.default_rng(n)
    for values in (rng.integers(0, 256, n, dtype=np.uint8), rng.integers(180, 256, n, dtype=np.uint8),
                   np.repeat(rng.integers(0, 256, 3, dtype=np.uint8), -(-n // 3))[:n]):  # few distinct values: long runs
        for q in [0, 1, 33.3, 50, 90, 99, 99.9, 100]:
            assert _percentile_of_uint8_values(values, q) == np.percentile(values, q), (q, n)


@pytest.mark.parametrize("n", [5, 300, 20_000, 100_000])
def test_tails_give_numpy_order_statistics_or_say_they_cannot(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    x[rng.random(n) < 0.2] = np.nan  # not counted (non-tissue pixels)
    x[: n // 4] = np.round(x[: n // 4], 1)  # ties
    valid = np.sort(x[~np.isnan(x)])
    m = valid.size
    positions = [0, m // 100, m // 2, m - 1 - m // 100, m - 2]
    for sample in (x[::16], x):  # subsample thresholds; the whole array as its own sample
        tails = _Tails(sample, m, positions)
        for block in np.array_split(x, 7):
            tails.add(block)
        for k, pair in zip(positions, tails.result(), strict=True):
            assert pair == (valid[k], valid[min(k + 1, m - 1)]), k
    # a sample from another distribution gives thresholds that miss: the result says so (None), never a wrong value
    tails = _Tails(rng.normal(5, 0.01, 4096).astype(np.float32), m, positions)
    tails.add(x)
    results = tails.result()
    assert any(r is None for r in results)
    for k, pair in zip(positions, results, strict=True):
        assert pair is None or pair == (valid[k], valid[min(k + 1, m - 1)])


def test_general_angle_path_equals_numpy():
    tile = _FastTile(synthetic_he(4, size=96), MacenkoNormalizer())
    tile.scan(moments=False)
    rng = np.random.default_rng(4)
    plane = np.linalg.qr(rng.normal(size=(3, 2)))[0]
    plane[0, 0] = -abs(plane[0, 0])  # a negative component: x can be <= 0, arctan2 over all tissue pixels
    od = tile.od_lut.take(tile.pixels.T)[:, tile.tissue_all]
    expected = np.percentile(np.arctan2(plane[:, 1] @ od, plane[:, 0] @ od), [1, 99])
    np.testing.assert_allclose(tile.angle_percentiles(plane, [1, 99]), expected, rtol=0, atol=1e-6)


# -- Macenko vs the plain per-pixel reference (synthetic, fast) -----------------------------------


def test_unfitted_uses_published_target_and_matches_reference():
    normalizer = MacenkoNormalizer()
    assert not normalizer.is_fitted and not hasattr(normalizer, "stain_matrix_")
    np.testing.assert_array_equal(normalizer.target_stain_matrix, [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
    np.testing.assert_array_equal(normalizer.target_max_concentrations, [1.9705, 1.0308])
    tile = synthetic_he(1)
    expected = reference.normalize(tile, MACENKO_REFERENCE_STAIN_MATRIX, MACENKO_REFERENCE_MAX_CONCENTRATIONS)
    got = normalizer.transform(tile)
    assert got.dtype == np.uint8 and got.shape == tile.shape
    assert max_abs_diff(got, expected) <= 1


def test_fit_transform_matches_reference_on_synthetic_tiles():
    target = synthetic_he(10, io=250)
    normalizer = MacenkoNormalizer().fit(target)
    stains, maxima = reference.fit(target)
    np.testing.assert_allclose(normalizer.stain_matrix_, stains, rtol=0, atol=1e-10)
    np.testing.assert_allclose(normalizer.max_concentrations_, maxima, rtol=1e-10)
    assert normalizer.stain_matrix_[0, 0] > normalizer.stain_matrix_[0, 1]  # haematoxylin first: more red OD
    for seed, size in ((11, 64), (12, 63)):  # an odd number of values too
        tile = synthetic_he(seed, size, io=225)
        assert max_abs_diff(normalizer.transform(tile), reference.normalize(tile, stains, maxima)) <= 1


def test_non_contiguous_input_gives_the_same_result():
    tile = synthetic_he(2, size=96)
    view = tile[::2, 1::2]
    np.testing.assert_array_equal(MacenkoNormalizer().transform(view), MacenkoNormalizer().transform(view.copy()))


def test_transform_with_info_of_a_normal_tile():
    result = MacenkoNormalizer().transform_with_info(synthetic_he(3, tissue_fraction=0.7))
    assert isinstance(result, NormalizationResult)
    assert result.normalized and result.reason is None
    assert 0.6 < result.tissue_fraction < 0.8
    with pytest.raises(AttributeError):
        result.normalized = False  # frozen


# -- tiles that cannot be normalised: unchanged, flagged, no warning -----------------------------------


@pytest.mark.parametrize(
    ("name", "tile", "reason"),
    [
        ("all white", np.full((64, 64, 3), 255, np.uint8), "too little tissue"),
        ("uniform grey", np.full((64, 64, 3), 128, np.uint8), "too little tissue"),
        ("uniform colour", np.full((64, 64, 3), (200, 100, 150), np.uint8), "single"),
        ("all black", np.zeros((64, 64, 3), np.uint8), "black"),
        ("one pixel", np.full((1, 1, 3), (90, 40, 120), np.uint8), "too little tissue"),
        ("0.5% tissue", with_tissue_patch(0.005), "too little tissue"),
        ("1.5% tissue", with_tissue_patch(0.015), "absent"),  # 99th percentile of concentrations is background
    ],
)
def test_unusable_tile_is_returned_unchanged_with_a_flag(name, tile, reason, strict):
    normalizer = MacenkoNormalizer()
    result = normalizer.transform_with_info(tile)
    assert not result.normalized, name
    assert reason in result.reason
    np.testing.assert_array_equal(result.image, tile)
    assert result.image is not tile  # a copy: the caller's array is never shared
    assert 0.0 <= result.tissue_fraction <= 1.0
    np.testing.assert_array_equal(normalizer.transform(tile), tile)


def test_tile_with_a_little_tissue_is_normalised(strict):
    tile = with_tissue_patch(0.10)
    result = MacenkoNormalizer().transform_with_info(tile)
    assert result.normalized and 0.05 < result.tissue_fraction < 0.15
    expected = reference.normalize(tile, MACENKO_REFERENCE_STAIN_MATRIX, MACENKO_REFERENCE_MAX_CONCENTRATIONS)
    assert max_abs_diff(result.image, expected) <= 1


def two_colour_tile() -> np.ndarray:
    tile = np.zeros((32, 32, 3), np.uint8)
    tile[:16] = (120, 60, 160)
    tile[16:] = (230, 140, 190)
    return tile


def single_stain_tile() -> np.ndarray:
    """Haematoxylin only; uint8 rounding makes the ODs not quite collinear, so Macenko still finds two vectors."""
    conc = np.random.default_rng(4).gamma(3, 0.3, (64 * 64, 1))
    return (240 * np.exp(-conc * MACENKO_REFERENCE_STAIN_MATRIX[:, 0])).astype(np.uint8).reshape(64, 64, 3)


@pytest.mark.parametrize("make", [two_colour_tile, single_stain_tile])
def test_odd_tiles_give_uint8_without_warning(make, strict):
    tile = make()
    result = MacenkoNormalizer().transform_with_info(tile)  # normalised or not: never NaN, never a warning
    assert result.image.dtype == np.uint8 and result.image.shape == tile.shape


def test_thresholds_are_parameters():
    tile = with_tissue_patch(0.10)
    assert not MacenkoNormalizer(min_tissue_fraction=0.2).transform_with_info(tile).normalized
    assert not MacenkoNormalizer(min_tissue_pixels=5000).transform_with_info(tile).normalized
    assert not MacenkoNormalizer(beta=3.0).transform_with_info(tile).normalized


def test_fit_on_too_little_tissue_raises():
    with pytest.raises(InvalidInputError, match="Cannot fit the stain normaliser.*too little tissue"):
        MacenkoNormalizer().fit(np.full((64, 64, 3), 250, np.uint8))
    with pytest.raises(InvalidInputError, match="Cannot fit.*single"):
        MacenkoNormalizer().fit(np.full((64, 64, 3), (200, 100, 150), np.uint8))
    with pytest.raises(InvalidInputError, match="reference tile with plenty"):  # the hint
        get_normalizer("macenko", with_tissue_patch(0.005))


# -- input and parameter validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8), np.uint8), "greyscale"),  # 2-D grey: refused, not guessed (load tiles as RGB)
        (np.zeros((8, 8, 4), np.uint8), r"shape \(height, width, 3\)"),  # RGBA
        (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(height, width, 3\)"),
        (np.zeros((8, 8, 3), np.float64), "dtype uint8"),
        (np.zeros((8, 8, 3), np.uint16), "dtype uint8"),
        (np.zeros((0, 8, 3), np.uint8), "no pixels"),
        ([[1, 2, 3]], r"shape"),
    ],
)
def test_invalid_images_raise(image, match):
    with pytest.raises(InvalidInputError, match=match):
        MacenkoNormalizer().transform(image)
    with pytest.raises(InvalidInputError, match=match):
        MacenkoNormalizer().fit(image)


@pytest.mark.parametrize(
    "params",
    [dict(beta=-1), dict(alpha=50), dict(brightness_percentile=0), dict(concentration_percentile=101), dict(min_tissue_fraction=2), dict(min_tissue_pixels=1.5)],
)
def test_invalid_parameters_raise_on_use(params):
    normalizer = MacenkoNormalizer(**params)  # no logic in __init__
    with pytest.raises(InvalidInputError, match="Invalid MacenkoNormalizer parameter"):
        normalizer.transform(synthetic_he(0))


def test_brightness_standardisation_can_be_switched_off():
    tile = synthetic_he(5, io=200)
    assert not np.array_equal(MacenkoNormalizer(brightness_percentile=None).transform(tile), MacenkoNormalizer().transform(tile))


# -- parameters, cache key, factory -----------------------------------------------------------------


def test_params_clone_repr_and_cache_key():
    normalizer = MacenkoNormalizer(alpha=2.0)
    params = normalizer.get_params()
    assert params == dict(alpha=2.0, beta=0.15, brightness_percentile=90.0, concentration_percentile=99.0, min_tissue_fraction=0.01, min_tissue_pixels=100)
    clone = MacenkoNormalizer(**params)
    assert clone.cache_key() == normalizer.cache_key()
    assert "alpha=2.0" in repr(normalizer)
    assert MacenkoNormalizer().cache_key() != normalizer.cache_key()
    assert VahadaneNormalizer().cache_key() != MacenkoNormalizer().cache_key()
    unfitted = MacenkoNormalizer().cache_key()
    fitted = MacenkoNormalizer().fit(synthetic_he(6))
    assert fitted.cache_key() != unfitted
    assert fitted.cache_key() == MacenkoNormalizer().fit(synthetic_he(6)).cache_key()
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.cache_key() == fitted.cache_key()
    tile = synthetic_he(7)
    np.testing.assert_array_equal(restored.transform(tile), fitted.transform(tile))


def test_get_normalizer():
    assert isinstance(get_normalizer(), MacenkoNormalizer)
    assert isinstance(get_normalizer(" Vahadane "), VahadaneNormalizer)
    fitted = get_normalizer("macenko", synthetic_he(8))
    assert fitted.is_fitted
    with pytest.raises(InvalidInputError, match="Unknown stain normalisation method 'reinhard'"):
        get_normalizer("reinhard")


def test_base_class_needs_a_stain_extractor():
    with pytest.raises(NotImplementedError):
        StainNormalizer().transform(synthetic_he(0))


# -- real SCCNet tiles vs the per-pixel reference -----------------------------------------------------


@pytest.fixture(scope="module")
def sccnet_target():
    """Our normaliser and the plain reference, both fitted to the study's reference tile (Norm_tile.jpg)."""
    rgb = sccnet_tile("Norm_tile.jpg")
    return MacenkoNormalizer().fit(rgb), reference.fit(rgb)


@pytest.mark.slow  # about 1.5 s a tile: one scipy nnls call per pixel in the reference
@pytest.mark.parametrize("name", SCCNET_TILES)
def test_real_tiles_match_per_pixel_reference(name, sccnet_target):
    rgb = sccnet_tile(name)
    normalizer, (stains, maxima) = sccnet_target
    np.testing.assert_allclose(normalizer.stain_matrix_, stains, rtol=0, atol=1e-10)
    np.testing.assert_allclose(normalizer.max_concentrations_, maxima, rtol=1e-10)
    expected = reference.normalize(rgb, stains, maxima)
    result = normalizer.transform_with_info(rgb)
    assert result.normalized and result.tissue_fraction > 0.5
    diff = np.abs(result.image.astype(np.int16) - expected)
    assert diff.max() <= 1, f"{name}: max |difference| {diff.max()} / 255"
    assert (diff > 0).mean() < 1e-3  # measured: at most a few dozen pixels differ by 1 (float32 rounding)


@pytest.mark.parametrize("name", SCCNET_TILES)
def test_fast_path_matches_plain_vectorised_baseline(name, sccnet_target):
    """The float32 blocked transform against the plain float64 vectorised NumPy baseline of the benchmark."""
    rgb = sccnet_tile(name)
    normalizer, (stains, maxima) = sccnet_target
    expected = reference.normalize_vectorized(rgb, stains, maxima)
    diff = np.abs(normalizer.transform(rgb).astype(np.int16) - expected)
    assert diff.max() <= 1, f"{name}: max |difference| {diff.max()} / 255"
    assert (diff > 0).mean() < 1e-3  # measured: below 5e-5 of the values differ by 1 (float32 rounding)


def test_plain_vectorised_baseline_equals_per_pixel_reference():
    """The benchmark's baseline is the same method as the per-pixel oracle (checked on a small tile: the oracle is slow)."""
    tile = synthetic_he(5, size=48)
    stains, maxima = reference.fit(synthetic_he(6, size=48, io=250))
    np.testing.assert_array_equal(reference.normalize_vectorized(tile, stains, maxima), reference.normalize(tile, stains, maxima))
    standardized = reference.standardize_brightness(tile)
    s = reference.stain_matrix(standardized)
    np.testing.assert_allclose(reference.concentrations_vectorized(standardized, s), reference.concentrations(standardized, s), rtol=0, atol=1e-12)


def test_transform_is_the_same_without_subsample_thresholds(monkeypatch, sccnet_target):
    """The subsample only speeds the tail percentiles up: collecting every value gives the same tile."""
    import engine.stain as stain

    normalizer, _ = sccnet_target
    rgb = sccnet_tile("met1_x_0_y_0.jpg")
    fast = normalizer.transform(rgb)
    monkeypatch.setattr(stain, "_MIN_SAMPLE", 10**9)  # no thresholds: every value is kept and partitioned
    np.testing.assert_array_equal(normalizer.transform(rgb), fast)
    monkeypatch.setattr(stain, "_BLOCK", 1000)  # blocks of another size (and a short last one): float32 sums round differently
    diff = np.abs(normalizer.transform(rgb).astype(np.int16) - fast)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# -- staintools as a second oracle, and the Vahadane option ----------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


@pytest.mark.parametrize("name", SCCNET_TILES)
def test_stain_vectors_agree_with_staintools_macenko(name):
    staintools = pytest.importorskip("staintools", reason="staintools is a test dependency (requirements-test.txt)")
    rgb = sccnet_tile(name)
    theirs = staintools.MacenkoStainExtractor.get_stain_matrix(rgb.copy()).T  # (3, 2), H first; it writes into its input
    ours = MacenkoNormalizer().fit(rgb).stain_matrix_
    similarity = cosine(ours, theirs)
    assert np.all(similarity >= 0.95), similarity


@pytest.mark.slow  # spams dictionary learning: about 1 s per tile
def test_vahadane_normalises_a_real_tile():
    pytest.importorskip("staintools", reason="staintools is a test dependency (requirements-test.txt)")
    target = sccnet_tile("Norm_tile.jpg")
    tile = sccnet_tile("met1_x_0_y_0.jpg")
    normalizer = get_normalizer("vahadane", target)
    assert np.all(cosine(normalizer.stain_matrix_, MacenkoNormalizer().fit(target).stain_matrix_) >= 0.95)
    result = normalizer.transform_with_info(tile)
    assert result.normalized and result.image.dtype == np.uint8 and result.image.shape == tile.shape
    assert not np.array_equal(result.image, tile)


def test_vahadane_leaves_tile_unchanged_when_staintools_finds_no_tissue():
    pytest.importorskip("staintools", reason="staintools is a test dependency (requirements-test.txt)")
    rng = np.random.default_rng(1)
    pale = np.stack([np.full((64, 64), 255), rng.integers(190, 215, (64, 64)), rng.integers(240, 256, (64, 64))], -1).astype(np.uint8)
    result = VahadaneNormalizer().transform_with_info(pale)  # OD > beta in green, but LAB luminosity > 0.8 everywhere
    assert not result.normalized and "staintools found no tissue" in result.reason
    np.testing.assert_array_equal(result.image, pale)
    assert not VahadaneNormalizer().transform_with_info(np.full((32, 32, 3), 255, np.uint8)).normalized


def test_vahadane_without_staintools_says_how_to_install(monkeypatch):
    for module in [m for m in sys.modules if m == "staintools" or m.startswith("staintools.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "staintools", None)  # `import staintools` now fails
    with pytest.raises(MissingDependencyError, match="staintools") as info:
        VahadaneNormalizer().transform(synthetic_he(0))
    assert isinstance(info.value, HistoDashError) and "pip install staintools" in info.value.hint
