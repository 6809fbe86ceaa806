"""Stain (colour) normalisation of H&E tiles: Macenko (default, fast) and Vahadane (via staintools).

Scikit-learn / TIAToolbox style: parameters are keyword arguments stored by ``__init__``;
``fit(reference_rgb)`` learns the target (``stain_matrix_``, ``max_concentrations_``) and returns
``self``; ``transform(rgb)`` maps a uint8 ``(H, W, 3)`` RGB tile to a uint8 RGB tile of the same
shape. A normaliser that was never fitted uses the published Macenko target
(:data:`MACENKO_REFERENCE_STAIN_MATRIX`, :data:`MACENKO_REFERENCE_MAX_CONCENTRATIONS`).
:func:`get_normalizer` builds one by name.

The Macenko steps are those of reference study 1 (SCCNet, whose code is the classic
StainTools-1 / ``normalizeStaining`` Macenko with a per-pixel NNLS), with the same results:

1. **Brightness.** ``p`` = the ``brightness_percentile`` (90) percentile of *all channel values*
   of the tile (``np.percentile(rgb, 90)``, linear interpolation). The tile is rescaled
   ``I' = uint8(clip(I * 255 / p, 0, 255))`` (truncated, like ``astype(uint8)``). This is the
   source intensity ``Io = p``, up to the uint8 quantisation of ``I'``. ``None`` skips the step.
2. **Optical density.** ``OD = -ln(max(I', 1) / 255)`` per channel.
3. **Tissue.** Pixels with ``OD > beta`` (0.15) in *any* channel. Fewer than
   ``min_tissue_fraction`` (1 %) of the pixels or fewer than ``min_tissue_pixels`` (100): the tile
   is left unchanged (``fit`` raises :class:`~engine.errors.InvalidInputError`). 1 % matches step
   6: with less tissue the 99th percentile of the concentrations lies in the background.
4. **Stain vectors.** Eigenvectors of the covariance of the tissue ODs; the two largest span a
   plane (each signed so that its red component is >= 0); the angles of the tissue ODs in that
   plane; the vectors at the ``alpha`` (1) and ``100 - alpha`` (99) angle percentiles, normalised.
   Haematoxylin is the one with the larger red OD: column 0 of the ``(3, 2)`` stain matrix.
5. **Concentrations.** Exact non-negative least squares for *every* pixel (background included)
   with :func:`nnls_two_stains` (same result as ``scipy.optimize.nnls``).
6. **Scaling.** Each stain's concentrations are multiplied by
   ``target_max / source_max``, where ``max`` is the ``concentration_percentile`` (99) percentile
   of that stain's concentrations over all pixels. A ``source_max`` not above ``beta`` means the
   stain is absent (or the tile is nearly all background): the tile is left unchanged.
7. **Recombination.** ``uint8(255 * exp(-C @ S_target.T))`` (truncated; output ``Io`` = 255).

Speed (512 × 512 tile, one core; measured by ``bench/macenko.py``, ``bench/results/macenko.md``
has the numbers with their spread): ``transform`` looks every channel value up once in a float32
OD table, then makes four sweeps over blocks of 32k pixels whose float32 temporaries stay in the
core's cache (a fresh whole-tile array costs more in page faults than the arithmetic on it): OD
moments of the tissue (float32 products of 512 values, added in float64), stain angles, the exact
two-stain NNLS, recombination. The ODs and concentrations live in one contiguous array per block
(a strided view as ``out=`` or as a matrix operand makes NumPy copy it twice), tissue as float
factors (no boolean mask is cast or combined). Per-pixel projections are small matrix products
that OpenBLAS runs on the calling thread; tail percentiles come from a subsample's threshold checked by counting (all
values are used when the check fails, so the result never depends on the subsample); the
brightness percentile is found by counting, not by a histogram of every value. ``fit`` keeps the
float64 path (joint histograms for the covariance, every pixel's concentrations). The tests
compare ``transform`` with the per-pixel ``scipy.optimize.nnls`` oracle of
:mod:`engine.stain_reference` and with its plain vectorised NumPy version (every pixel within 1/255).

A tile that cannot be normalised (too little tissue, black, a single colour, one stain absent) is
returned unchanged, never as an exception or NaN: :meth:`StainNormalizer.transform_with_info`
says why in a :class:`NormalizationResult`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from engine.cache import make_key
from engine.errors import InvalidInputError, MissingDependencyError

__all__ = [
    "MACENKO_REFERENCE_MAX_CONCENTRATIONS",
    "MACENKO_REFERENCE_STAIN_MATRIX",
    "MacenkoNormalizer",
    "MissingDependencyError",
    "NormalizationResult",
    "StainNormalizer",
    "VahadaneNormalizer",
    "get_normalizer",
    "nnls_two_stains",
]

#: Published Macenko reference stain vectors (columns: haematoxylin, eosin; rows: R, G, B OD),
#: as used by Macenko et al.'s reference implementations (``HERef``).
MACENKO_REFERENCE_STAIN_MATRIX = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_REFERENCE_STAIN_MATRIX.setflags(write=False)
#: Published Macenko reference maximum concentrations (``maxCRef``: haematoxylin, eosin).
MACENKO_REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])
MACENKO_REFERENCE_MAX_CONCENTRATIONS.setflags(write=False)

# Bumped whenever a change alters the output for the same parameters (it is part of cache_key()).
_ALGORITHM_VERSION = 1
# Stain vectors closer than this (sine of the angle between them) cannot be told apart.
_MIN_STAIN_SINE = 1e-3


@dataclass(frozen=True, eq=False)
class NormalizationResult:
    """What :meth:`StainNormalizer.transform_with_info` did to one tile.

    Attributes:
        image: The normalised tile, or a copy of the input when ``normalized`` is False
            (uint8, same shape as the input).
        normalized: Whether the colours were changed.
        reason: Why the tile was left unchanged (plain language), or None.
        tissue_fraction: Fraction of pixels counted as tissue (optical density above ``beta``
            after brightness standardisation), in [0, 1].
    """

    image: np.ndarray
    normalized: bool
    reason: str | None
    tissue_fraction: float


class _Unusable(Exception):
    """Internal: this image cannot be decomposed into two stains (the message says why)."""


@dataclass
class _Prepared:
    """Internal: an input tile after brightness standardisation and tissue detection (``fit``'s float64 path).

    The stain estimators read a tile through :meth:`standardized`, :meth:`covariance` and
    :meth:`angle_percentiles`, which the transform's :class:`_FastTile` provides too.
    """

    shape: tuple[int, ...]
    planes: np.ndarray  # (3, P) uint8: the input's R, G, B values (not standardised), one row each
    standard_lut: np.ndarray  # (256,) uint8: input value -> brightness-standardised value
    od_lut: np.ndarray  # (256,) float64: input value -> optical density of its standardised value
    tissue: np.ndarray  # (P,) bool
    tissue_pixels: int

    @property
    def tissue_fraction(self) -> float:
        return self.tissue_pixels / self.planes.shape[1]

    def standardized(self) -> np.ndarray:
        """The brightness-standardised uint8 ``(H, W, 3)`` tile (a new array)."""
        return np.ascontiguousarray(self.standard_lut.take(self.planes).T).reshape(self.shape)

    def _tissue_values(self) -> np.ndarray:
        if not hasattr(self, "_rgb"):
            self._rgb = np.compress(self.tissue, self.planes, axis=1)  # (3, n) tissue pixels' values
        return self._rgb

    def covariance(self) -> np.ndarray:
        """Covariance (as ``np.cov``, ddof=1) of the tissue ODs, from the joint histograms of the channel values."""
        r, g, b = self._tissue_values()
        od_lut, n = self.od_lut, self.tissue_pixels
        joint = [np.bincount((u.astype(np.uint16) << 8) | v, minlength=65536).reshape(256, 256) for u, v in ((r, g), (r, b), (g, b))]
        marginals = [joint[0].sum(axis=1), joint[0].sum(axis=0), joint[1].sum(axis=0)]  # R, G, B
        centred = [od_lut - (m @ od_lut) / n for m in marginals]
        cov = np.empty((3, 3))
        for i in range(3):
            cov[i, i] = marginals[i] @ centred[i] ** 2
        for (i, j), h in zip(((0, 1), (0, 2), (1, 2)), joint, strict=True):
            cov[i, j] = cov[j, i] = np.einsum("a,ab,b->", centred[i], h, centred[j])  # no BLAS
        return cov / (n - 1)

    def angle_percentiles(self, plane: np.ndarray, qs: list[float]) -> list[float]:
        """The ``qs`` percentiles of the tissue ODs' angles ``arctan2(y, x)`` in ``plane`` (float64)."""
        r, g, b = self._tissue_values()
        luts = self.od_lut[None, :, None] * plane[:, None, :]  # (channel, value, axis): projections by lookup
        x = luts[0, :, 0].take(r) + luts[1, :, 0].take(g) + luts[2, :, 0].take(b)
        y = luts[0, :, 1].take(r) + luts[1, :, 1].take(g) + luts[2, :, 1].take(b)
        if x.min() > 0:  # the usual case: the angle arctan2(y, x) is arctan(y / x), which is monotone
            return _percentiles(y / x, qs, monotone=np.arctan)
        return _percentiles(np.arctan2(y, x), qs)


def nnls_two_stains(od: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for every pixel with two stains, vectorised.

    For each row ``y`` of ``od`` solves ``min ||stain_matrix @ c - y||`` subject to ``c >= 0``: the
    unconstrained least-squares solution where both of its coefficients are >= 0, otherwise the
    better of the two single-stain non-negative projections (zero when neither stain has a
    positive projection). This is the exact optimum of the convex problem and agrees with
    ``scipy.optimize.nnls`` to rounding (about 1e-15 relative).

    Args:
        od: ``(N, 3)`` optical densities; float32 or float64 (the computation keeps that dtype;
            anything else is converted to float64).
        stain_matrix: ``(3, 2)`` stain vectors as columns, linearly independent.

    Returns:
        ``(N, 2)`` non-negative concentrations, dtype of ``od``.

    Raises:
        InvalidInputError: If the shapes are wrong or the two stain vectors are parallel.
    """
    od = np.asarray(od)
    if od.dtype not in (np.float32, np.float64):
        od = od.astype(np.float64)
    stains = np.asarray(stain_matrix, dtype=np.float64)
    if od.ndim != 2 or od.shape[1] != 3 or stains.shape != (3, 2):
        raise InvalidInputError(f"nnls_two_stains needs od of shape (N, 3) and stains (3, 2), got {od.shape} and {stains.shape}.")
    c0, c1 = _nnls_planar(od.T, stains)
    return np.stack([c0, c1], axis=1)


def _nnls_planar(od: np.ndarray, stains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nnls_two_stains` on ``(3, N)`` optical densities (rows R, G, B): the two concentration rows.

    Elementwise arithmetic only (no BLAS call, whose threads thrash on a busy 2-core machine).
    """
    s = stains.tolist()  # Python floats keep float32 arrays float32
    g11 = s[0][0] ** 2 + s[1][0] ** 2 + s[2][0] ** 2  # Gram matrix of the stain vectors
    g22 = s[0][1] ** 2 + s[1][1] ** 2 + s[2][1] ** 2
    g12 = s[0][0] * s[0][1] + s[1][0] * s[1][1] + s[2][0] * s[2][1]
    det = g11 * g22 - g12 * g12
    if not det > 1e-12 * g11 * g22:
        raise InvalidInputError("nnls_two_stains needs two linearly independent stain vectors.")
    # d_k = s_k . y for every pixel, then the unconstrained solution (G^-1 d).
    d0 = od[0] * s[0][0] + od[1] * s[1][0] + od[2] * s[2][0]
    d1 = od[0] * s[0][1] + od[1] * s[1][1] + od[2] * s[2][1]
    c0 = d0 * (g22 / det) - d1 * (g12 / det)
    c1 = d1 * (g11 / det) - d0 * (g12 / det)
    infeasible = np.flatnonzero((c0 < 0) | (c1 < 0))  # a few % of a tile's pixels
    if infeasible.size:
        p0 = np.maximum(d0[infeasible], 0)
        p1 = np.maximum(d1[infeasible], 0)
        # Residual reduction of the projection on stain k alone is max(d_k, 0)^2 / g_kk: keep the larger.
        first = p0 * p0 * g22 >= p1 * p1 * g11
        c0[infeasible] = np.where(first, p0 / g11, 0)
        c1[infeasible] = np.where(first, 0, p1 / g22)
    return c0, c1


def _interpolate(lo: float, hi: float, gamma: float) -> float:
    """NumPy's linear interpolation between two order statistics (``numpy.lib._function_base_impl._lerp``)."""
    diff = hi - lo
    return hi - diff * (1 - gamma) if gamma >= 0.5 else lo + diff * gamma


def _value_counts(values: np.ndarray) -> np.ndarray:
    """``np.bincount(values, minlength=256)`` of a contiguous uint8 array, faster by counting byte pairs."""
    if values.size % 2:
        return np.bincount(values, minlength=256)
    pairs = np.bincount(values.view(np.uint16), minlength=65536).reshape(256, 256)
    return pairs.sum(axis=0) + pairs.sum(axis=1)  # both bytes of each pair, whatever the byte order


def _percentile_of_uint8(counts: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) of uint8 values given their 256-bin histogram.

    Reproduces NumPy's arithmetic bit for bit (virtual index ``(n - 1) * (q / 100)``, NumPy's
    two-sided linear interpolation), which matters because the result divides pixel values that
    are then truncated to integers.
    """
    n = int(counts.sum())
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        return float(np.flatnonzero(counts)[-1])
    below = math.floor(virtual)
    cumulative = np.cumsum(counts)
    lo, hi = np.searchsorted(cumulative, [below, below + 1], side="right")  # values at sorted positions
    return _interpolate(float(lo), float(hi), virtual - below)


def _percentiles(x: np.ndarray, qs: list[float], monotone=None) -> list[float]:
    """``np.percentile(x, qs)`` (linear method) of a 1-D float array without NaN, faster in the tails.

    The two order statistics around each virtual index are found by partitioning only the values
    beyond a threshold read from a sorted 1-in-16 sample (checked by counting; the whole array is
    partitioned when the check fails), so a 1st or 99th percentile costs a fraction of a full
    partition. ``monotone`` (a non-decreasing function, e.g. ``np.arctan``) is applied to the
    order statistics before NumPy's interpolation, in float64: the percentiles of ``monotone(x)``.
    """
    n = x.size
    sample = np.sort(x[::16]) if n > 8192 else None
    results = []
    for q in qs:
        virtual = (n - 1) * (q / 100)
        below = min(math.floor(virtual), n - 2) if n > 1 else 0
        candidates, offset = x, 0
        if sample is not None:
            m = sample.size
            if below < n // 2:  # lower tail: the smallest values, up to a threshold
                threshold = sample[min(m - 1, (below + 2) * m // n + 16 + m // 100)]
                kept = x[x <= threshold]
                if kept.size >= below + 2:
                    candidates = kept
            else:  # upper tail: the largest values, down to a threshold
                threshold = sample[max(0, m - 1 - ((n - below) * m // n + 16 + m // 100))]
                kept = x[x >= threshold]
                if n - kept.size <= below:
                    candidates, offset = kept, n - kept.size
        k = below - offset
        part = np.partition(candidates, k)  # one kth: see _order_pair
        lo = part[k]
        hi = part[k + 1:].min() if k + 1 < candidates.size else lo
        if monotone is not None:
            lo, hi = monotone(lo), monotone(hi)
        results.append(float(hi) if virtual >= n - 1 else _interpolate(float(lo), float(hi), virtual - below))
    return results


def _as_rgb_uint8(rgb: Any, what: str) -> np.ndarray:
    """Validate an RGB tile: a uint8 ``(H, W, 3)`` array with at least one pixel."""
    image = np.asarray(rgb)
    if image.ndim == 2:
        raise InvalidInputError(
            f"The {what} is a greyscale (2-D) image of shape {image.shape}; stain normalisation needs the three colour channels of an H&E tile.",
            "Load the tile as RGB (for example PIL's Image.open(path).convert('RGB'), or engine.imageio.read_image).",
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"The {what} must be an RGB image of shape (height, width, 3); got shape {image.shape}.",
            "Drop an alpha channel (PIL: .convert('RGB')) or load the tile with engine.imageio.read_image.",
        )
    if image.dtype != np.uint8:
        raise InvalidInputError(
            f"The {what} must have dtype uint8 (0-255); got {image.dtype}.",
            "Convert it first, e.g. np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1].",
        )
    if image.size == 0:
        raise InvalidInputError(f"The {what} has no pixels (shape {image.shape}).")
    return image


class StainNormalizer:
    """Base of the stain normalisers: everything except the stain-vector estimation.

    Subclasses implement :meth:`_estimate_stain_matrix` (and declare their parameters as keyword
    arguments of ``__init__``, scikit-learn style); brightness standardisation, tissue detection,
    NNLS concentrations, scaling and recombination are shared. See the module docstring for the steps.

    Args:
        brightness_percentile: Percentile of the tile's channel values rescaled to 255 before
            anything else (step 1); None to skip.
        beta: Optical-density threshold: a pixel is tissue when some channel's OD exceeds it.
        concentration_percentile: Percentile of each stain's concentrations taken as its maximum.
        min_tissue_fraction: Smallest fraction of tissue pixels for a tile to be normalised.
        min_tissue_pixels: Smallest number of tissue pixels for a tile to be normalised.

    Attributes:
        stain_matrix_: ``(3, 2)`` target stain vectors (columns H, E), set by :meth:`fit`.
        max_concentrations_: ``(2,)`` target maximum concentrations, set by :meth:`fit`.
    """

    #: Name used by :func:`get_normalizer` and in :meth:`cache_key`.
    method: ClassVar[str] = ""

    def __init__(
        self,
        *,
        brightness_percentile: float | None = 90.0,
        beta: float = 0.15,
        concentration_percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
    ):
        self.brightness_percentile = brightness_percentile
        self.beta = beta
        self.concentration_percentile = concentration_percentile
        self.min_tissue_fraction = min_tissue_fraction
        self.min_tissue_pixels = min_tissue_pixels

    # -- scikit-learn conventions ------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters and their current values (``type(self)(**get_params())`` is a clone)."""
        names = [p.name for p in inspect.signature(type(self).__init__).parameters.values() if p.kind == p.KEYWORD_ONLY]
        return {name: getattr(self, name) for name in sorted(names)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called (otherwise the published Macenko target is used)."""
        return hasattr(self, "stain_matrix_")

    @property
    def target_stain_matrix(self) -> np.ndarray:
        """``stain_matrix_`` once fitted, else :data:`MACENKO_REFERENCE_STAIN_MATRIX`."""
        return getattr(self, "stain_matrix_", MACENKO_REFERENCE_STAIN_MATRIX)

    @property
    def target_max_concentrations(self) -> np.ndarray:
        """``max_concentrations_`` once fitted, else :data:`MACENKO_REFERENCE_MAX_CONCENTRATIONS`."""
        return getattr(self, "max_concentrations_", MACENKO_REFERENCE_MAX_CONCENTRATIONS)

    def cache_key(self) -> str:
        """A stable key for caches: same key ⇔ same parameters and target (rounded to 1e-6).

        Independent of the process and of object identity, so it can be part of a diskcache key
        (see :func:`engine.cache.make_key`).
        """
        def rounded(a: np.ndarray) -> list:
            return (np.round(np.asarray(a, dtype=np.float64), 6) + 0.0).tolist()  # + 0.0: no "-0.0"

        return make_key(
            "stain-normalizer",
            self.method,
            _ALGORITHM_VERSION,
            self.get_params(),
            rounded(self.target_stain_matrix),
            rounded(self.target_max_concentrations),
        )

    # -- public API ---------------------------------------------------------------------------

    def fit(self, reference_rgb: np.ndarray) -> Self:
        """Learn the target stain vectors and maximum concentrations from a reference tile.

        Args:
            reference_rgb: uint8 ``(H, W, 3)`` RGB reference tile with plenty of stained tissue.

        Returns:
            self.

        Raises:
            InvalidInputError: If the parameters or the image are invalid, or the reference
                cannot be decomposed (too little tissue, a single colour, a stain absent).
        """
        self._check_params()
        image = _as_rgb_uint8(reference_rgb, "reference image")
        try:
            stains, maxima = self._decompose(self._prepare(image))
        except _Unusable as exc:
            raise InvalidInputError(
                f"Cannot fit the stain normaliser to this reference image: {exc}.",
                "Choose a reference tile with plenty of well-stained H&E tissue.",
            ) from None
        self.stain_matrix_ = stains
        self.max_concentrations_ = maxima
        return self

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """Normalise a tile's colours to the target (the tile itself, copied, if it cannot be normalised).

        Args:
            rgb: uint8 ``(H, W, 3)`` RGB tile.

        Returns:
            uint8 ``(H, W, 3)`` RGB tile.

        Raises:
            InvalidInputError: If the parameters or the image are invalid (wrong dtype or shape).
        """
        return self.transform_with_info(rgb).image

    def transform_with_info(self, rgb: np.ndarray) -> NormalizationResult:
        """Like :meth:`transform`, but also says whether the tile was normalised and why not.

        Args:
            rgb: uint8 ``(H, W, 3)`` RGB tile.

        Returns:
            The result; ``normalized`` is False (and ``image`` a copy of the input) for a tile
            with too little tissue, a black or single-coloured tile, or one with a stain absent.

        Raises:
            InvalidInputError: If the parameters or the image are invalid (wrong dtype or shape).
        """
        self._check_params()
        image = np.ascontiguousarray(_as_rgb_uint8(rgb, "image"))
        tile = None
        try:
            tile = _FastTile(image, self)
            tile.scan(moments=self._needs_moments)
            self._check_tissue(tile)
            stains = self._checked_stains(tile)
            c, maxima = tile.concentrations(stains, self.concentration_percentile)
            self._check_maxima(maxima)
        except _Unusable as exc:
            fraction = tile.tissue_fraction if tile is not None else 0.0
            return NormalizationResult(image.copy(), False, str(exc), fraction)
        # Step 7: scale, recombine with the target stains, back to RGB (truncated, as astype does).
        ratio = np.asarray(self.target_max_concentrations, dtype=np.float64) / maxima
        weights = -(np.asarray(self.target_stain_matrix, dtype=np.float64) * ratio)  # (3, 2): -S_target[c, k] * ratio[k]
        return NormalizationResult(tile.recombine(c, weights), True, None, tile.tissue_fraction)

    # -- steps ---------------------------------------------------------------------------------

    def _check_params(self) -> None:
        p = self.brightness_percentile
        checks = [
            (p is None or (isinstance(p, (int, float)) and 0 < p <= 100), "brightness_percentile must be None or in (0, 100]"),
            (isinstance(self.beta, (int, float)) and self.beta >= 0, "beta must be a number >= 0"),
            (isinstance(self.concentration_percentile, (int, float)) and 0 < self.concentration_percentile <= 100,
             "concentration_percentile must be in (0, 100]"),
            (isinstance(self.min_tissue_fraction, (int, float)) and 0 <= self.min_tissue_fraction <= 1,
             "min_tissue_fraction must be in [0, 1]"),
            (isinstance(self.min_tissue_pixels, (int, np.integer)) and self.min_tissue_pixels >= 2,
             "min_tissue_pixels must be an integer >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"Invalid {type(self).__name__} parameter: {message} ({self!r}).")

    def _prepare(self, image: np.ndarray) -> _Prepared:
        """Steps 1-3: brightness lookup table, OD lookup table, tissue mask (raises _Unusable for a black tile)."""
        planes = np.ascontiguousarray(image.reshape(-1, 3).T)  # (3, P)
        values = np.arange(256, dtype=np.uint8)
        if self.brightness_percentile is None:
            standard = values
        else:
            p = _percentile_of_uint8(_value_counts(planes.ravel()), self.brightness_percentile)
            if p <= 0:
                raise _Unusable(f"the image is black (the {self.brightness_percentile:g}th percentile of its intensities is 0)")
            standard = np.clip(values * 255.0 / p, 0, 255).astype(np.uint8)
        od_lut = -np.log(np.maximum(standard, 1) / 255)
        # OD decreases with the value, so "some channel's OD > beta" is "the darkest channel's OD > beta".
        darkest = np.minimum(np.minimum(planes[0], planes[1]), planes[2])
        tissue = (od_lut > self.beta).take(darkest)
        return _Prepared(image.shape, planes, standard, od_lut, tissue, int(np.count_nonzero(tissue)))

    #: Whether the stain estimator reads :meth:`_FastTile.covariance` (the transform's sweep 1 then sums OD moments).
    _needs_moments: ClassVar[bool] = False

    def _check_tissue(self, prepared: _Prepared | _FastTile) -> None:
        """Step 3's check: raise _Unusable when too little of the tile is tissue."""
        count = prepared.tissue_pixels
        if prepared.tissue_fraction < self.min_tissue_fraction or count < self.min_tissue_pixels:
            raise _Unusable(
                f"too little tissue: {prepared.tissue_fraction:.2%} of the pixels ({count}) have an optical density "
                f"above beta={self.beta:g}; at least {self.min_tissue_fraction:.2%} and {self.min_tissue_pixels} pixels are needed"
            )

    def _checked_stains(self, prepared: _Prepared | _FastTile) -> np.ndarray:
        """Step 4: the estimator's stain matrix, or _Unusable when its two vectors cannot be told apart."""
        stains = self._estimate_stain_matrix(prepared)
        if not np.all(np.isfinite(stains)) or np.linalg.norm(np.cross(stains[:, 0], stains[:, 1])) < _MIN_STAIN_SINE:
            raise _Unusable("the two stain vectors cannot be told apart (the tissue has a single colour)")
        return stains

    def _check_maxima(self, maxima: np.ndarray) -> None:
        """Step 6's check: a stain whose maximum is fainter than the tissue threshold is background noise.

        Scaling it up to the target would paint the tile (for instance a tile with ~1 % tissue, whose
        99th percentile falls in the background).
        """
        faint = [name for name, m in zip(("haematoxylin", "eosin"), maxima, strict=True) if not m > self.beta]
        if faint:
            raise _Unusable(
                f"{' and '.join(faint)} is absent or too faint (its {self.concentration_percentile:g}th-percentile concentration "
                f"over all pixels is not above beta={self.beta:g})"
            )

    def _decompose(self, prepared: _Prepared) -> tuple[np.ndarray, np.ndarray]:
        """``fit``'s steps 3 to 6 in float64: stain matrix (3, 2) and maxima (2,)."""
        self._check_tissue(prepared)
        stains = self._checked_stains(prepared)
        od = prepared.od_lut.take(prepared.planes)  # (3, P)
        concentrations = _nnls_planar(od, stains)
        maxima = np.array([_percentiles(c, [self.concentration_percentile])[0] for c in concentrations])
        self._check_maxima(maxima)
        return stains, maxima

    def _estimate_stain_matrix(self, prepared: _Prepared | _FastTile) -> np.ndarray:
        """Return the ``(3, 2)`` unit stain vectors (haematoxylin first) of a prepared tile.

        Raises:
            _Unusable: If the tile cannot give two stain vectors.
        """
        raise NotImplementedError


# -- the transform's fast path: float32, in blocks of pixels that stay in the core's cache ---------
#
# ``transform`` runs the steps of the module docstring in four sweeps over blocks of ``_BLOCK``
# pixels (tissue and OD moments; stain angles; concentrations; recombination), so every float32
# temporary is a few hundred KB and stays in the core's cache instead of streaming whole-tile
# arrays through memory (a fresh 1 MB array costs more in page faults than the arithmetic on it).
# Tail percentiles are found by collecting, block by block, only the values beyond a threshold read
# from a subsample, then checked by counting: when the check fails the exact value is found from
# all values, so the subsample changes the speed, never the result.

# Pixels per block. The per-pixel projections are small matrix products ((2, 3) @ (3, k) and
# (k, 2) @ (2, 3)): OpenBLAS runs a product with M*N*K <= 262,144 on the calling thread only (its
# GEMM_MULTITHREAD_THRESHOLD), so at 32k pixels no BLAS thread is woken (they thrash on a busy
# 2-core machine).
_BLOCK = 32768
# The OD moments are float32 products of chunks of this many pixels, added up in float64 (about
# 1e-7 relative; one product of a whole block rounds about 50 times more).
_MOMENT_CHUNK = 512
_SAMPLE_STEP = 16  # subsample: every 16th pixel
_MIN_SAMPLE = 256  # fewer subsampled values than this: no thresholds, collect all values
_LOG_255 = math.log(255.0)


def _percentile_of_uint8_values(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) of a contiguous 1-D uint8 array, bit for bit.

    Finds the two order statistics by counting (``count_nonzero(values <= v)``, a vectorised
    compare), starting from a value read off a subsample's histogram: usually two or three counts
    instead of a histogram of every value.
    """
    n = values.size
    virtual = (n - 1) * (q / 100)
    below = min(math.floor(virtual), n - 1)
    step = max(1, n // 16384)
    step += (step % 3 == 0)  # never a multiple of 3: the subsample must hold all three channels
    sample = np.cumsum(np.bincount(values[::step], minlength=256))
    guess = min(255, int(np.searchsorted(sample, below * sample[-1] / n, side="right")))

    def smallest_with_more_than(k: int, v: int) -> tuple[int, int]:
        """The smallest value ``v`` with more than ``k`` values <= ``v``, and that count."""
        count = int(np.count_nonzero(values <= v))
        if count > k:
            while v > 0:
                fewer = int(np.count_nonzero(values <= v - 1))
                if fewer <= k:
                    break
                v, count = v - 1, fewer
            return v, count
        while count <= k:
            v += 1
            count = int(np.count_nonzero(values <= v))
        return v, count

    lo, count = smallest_with_more_than(below, guess)
    if virtual >= n - 1:
        return float(lo)
    hi = lo if count > below + 1 else smallest_with_more_than(below + 1, lo + 1)[0]
    return _interpolate(float(lo), float(hi), virtual - below)


class _Tails:
    """Exact order statistics ``sorted(V)[k], sorted(V)[k + 1]`` of values produced block by block.

    ``V`` (``n`` values, NaN never counted) arrives in blocks through :meth:`add`; only the values
    beyond each position's threshold (an order statistic of a subsample of ``V``, with a margin) are
    kept. :meth:`result` checks by counting that both order statistics are among the kept values
    and returns None for a position where they are not (the caller then uses all values).
    """

    def __init__(self, sample: np.ndarray, n: int, positions: list[int]):
        sample = sample[~np.isnan(sample)]
        m = sample.size
        self.n, self.positions, self.sides, self.kept = n, positions, [], []
        ranks = []  # the rank in the subsample of each position's threshold
        for k in positions:
            if m < _MIN_SAMPLE:
                side, rank = "all", None
            elif k < n // 2:
                side, rank = "low", min(m - 1, (k + 2) * m // n + 16 + m // 100)
            else:
                side, rank = "high", max(0, m - 1 - ((n - k) * m // n + 16 + m // 100))
            self.sides.append(side)
            ranks.append(rank)
            self.kept.append([])
        # one partition per order statistic (NumPy's partition with several kth takes a path ~6x slower)
        self.thresholds = [None if r is None else np.partition(sample, r)[r] for r in ranks]

    def add(self, block: np.ndarray, where: np.ndarray | None = None) -> None:
        """Keep the values of ``block`` beyond each threshold (only those where ``where`` is True, if given)."""
        for side, threshold, kept in zip(self.sides, self.thresholds, self.kept, strict=True):
            if side == "all":
                kept.append(block[~np.isnan(block) if where is None else where])
                continue
            selected = block <= threshold if side == "low" else block >= threshold
            if where is not None:
                selected &= where
            kept.append(block.compress(selected))  # compress: faster than boolean indexing

    def result(self) -> list[tuple[float, float] | None]:
        out = []
        for k, side, kept in zip(self.positions, self.sides, self.kept, strict=True):
            values = np.concatenate(kept) if kept else np.empty(0)
            offset = self.n - values.size if side == "high" else 0
            j = k - offset
            k1 = min(k + 1, self.n - 1)
            if not (0 <= j and k1 - offset < values.size):
                out.append(None)
                continue
            out.append(_order_pair(values, j, k1 - offset))
        return out


def _order_pair(values: np.ndarray, j: int, j1: int) -> tuple[float, float]:
    """``(sorted(values)[j], sorted(values)[j1])`` for ``j1`` in ``{j, j + 1}``: one single-kth partition and a minimum.

    (``np.partition`` with two kth values takes a path several times slower than with one.)
    """
    part = np.partition(values, j)
    hi = part[j] if j1 == j else part[j + 1:].min()
    return float(part[j]), float(hi)


def _percentile_positions(n: int, q: float) -> tuple[int, float, bool]:
    """NumPy's linear method: (index below, fraction, at the top) of the ``q`` percentile of ``n`` values."""
    virtual = (n - 1) * (q / 100)
    below = min(math.floor(virtual), n - 2) if n > 1 else 0
    return below, virtual - below, virtual >= n - 1


def _interpolated(pair: tuple[float, float], fraction: float, top: bool, monotone=None) -> float:
    lo, hi = pair
    if monotone is not None:
        lo, hi = float(monotone(np.float64(lo))), float(monotone(np.float64(hi)))
    return hi if top else _interpolate(lo, hi, fraction)


class _FastTile:
    """The transform's working state for one contiguous uint8 tile (see the comment above)."""

    def __init__(self, image: np.ndarray, normalizer: StainNormalizer):
        self.shape = image.shape
        self.pixels = image.reshape(-1, 3)
        self.n_pixels = self.pixels.shape[0]
        self.blocks = [slice(s, min(s + _BLOCK, self.n_pixels)) for s in range(0, self.n_pixels, _BLOCK)]
        values = np.arange(256, dtype=np.uint8)
        if normalizer.brightness_percentile is None:
            self.standard_lut = values
        else:
            p = _percentile_of_uint8_values(image.reshape(-1), normalizer.brightness_percentile)
            if p <= 0:
                raise _Unusable(f"the image is black (the {normalizer.brightness_percentile:g}th percentile of its intensities is 0)")
            self.standard_lut = np.clip(values * 255.0 / p, 0, 255).astype(np.uint8)
        od_lut = -np.log(np.maximum(self.standard_lut, 1) / 255)
        self.od_lut = od_lut
        self.od32 = od_lut.astype(np.float32)
        # A channel value is tissue when its OD (float64) is above beta. OD does not increase with the
        # value, so that is "value <= T" for the largest such T, and in float32 "OD >= OD32[T]" (distinct
        # standardised values have ODs at least ln(255/254) apart, far beyond float32 rounding).
        tissue_values = np.flatnonzero(od_lut > normalizer.beta)
        self.tissue_od = self.od32[tissue_values[-1]] if tissue_values.size else np.float32(np.inf)
        self.tissue_pixels = 0
        self.moments = None

    @property
    def tissue_fraction(self) -> float:
        return self.tissue_pixels / self.n_pixels

    def standardized(self) -> np.ndarray:
        """The brightness-standardised uint8 ``(H, W, 3)`` tile (a new array)."""
        return self.standard_lut.take(self.pixels).reshape(self.shape)

    def od(self, rows: slice) -> np.ndarray:
        """``(3, k)`` float32 optical densities of the pixels ``rows``, one of :attr:`blocks` (:meth:`scan` computes them)."""
        return self.od_blocks[rows.start]

    def tissue(self, rows: slice) -> np.ndarray:
        """``(k,)`` bool: which of the pixels ``rows`` are tissue (:meth:`scan` computes them)."""
        return self.tissue_weight[rows] != 0

    @property
    def tissue_all(self) -> np.ndarray:
        """``(P,)`` bool: which pixels are tissue."""
        return self.tissue_weight != 0

    def scan(self, moments: bool) -> None:
        """Sweep 1: ODs and tissue of every pixel, and (``moments``) the sums of the tissue ODs and OD products in float64.

        Tissue is kept as two float32 factors per pixel, ``tissue_weight`` (1 or 0: the moments
        weight the ODs by it) and ``tissue_nan`` (1 or NaN: a non-tissue pixel's stain angle becomes
        NaN, which no tail threshold selects), so no sweep casts or combines boolean masks.
        """
        n = self.n_pixels
        self.od_blocks = {}  # block start -> (3, k) ODs: a contiguous array per block (take into a strided view copies twice)
        self.tissue_weight = np.empty(n, np.float32)
        self.tissue_nan = np.empty(n, np.float32)
        count, moment_sums = 0, np.zeros((4, 3))
        weighted = np.empty((4, min(_BLOCK, n)), np.float32)  # rows 0-2: tissue ODs (0 elsewhere); row 3: the tissue weight
        for rows in self.blocks:
            # the one lookup of every value, block by block (its intp copy of the indices stays in cache; "clip": no bounds check)
            od = self.od_blocks[rows.start] = self.od32.take(self.pixels[rows].T, mode="clip")
            weight, nan = self._tissue_factors(od, self.tissue_weight[rows], self.tissue_nan[rows])
            count += int(weight.sum())  # exact: float32 holds integers up to 2**24
            if moments:
                k = weight.size
                w = weighted[:, :k]
                np.multiply(od, weight, out=w[:3])
                w[3] = weight
                # float32 products of chunks of 512 pixels ((4, 512) @ (512, 3): products and sums of the
                # tissue ODs), added up in float64: rounding stays ~1e-7 relative
                size = _MOMENT_CHUNK if k % _MOMENT_CHUNK == 0 else k
                moment_sums += np.matmul(w.reshape(4, -1, size).transpose(1, 0, 2), od.reshape(3, -1, size).transpose(1, 2, 0)).sum(
                    axis=0, dtype=np.float64
                )
        self.tissue_pixels = count
        # every _SAMPLE_STEP-th pixel, looked up again from the uint8 tile (cheaper than a strided copy of the ODs)
        self.sample_od = self.od32.take(self.pixels[::_SAMPLE_STEP].T, mode="clip")
        self.sample_nan = self._tissue_factors(self.sample_od)[1]
        if moments:
            products = moment_sums[:3]
            self.moments = (moment_sums[3].copy(), (products + products.T) / 2)

    def _tissue_factors(self, od: np.ndarray, weight: np.ndarray | None = None, nan: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tissue of ``(3, k)`` ODs as float32 factors: weight (1.0 tissue, 0.0 not) and nan (1.0 tissue, NaN not)."""
        darkest = np.maximum(od[0], od[1])
        np.maximum(darkest, od[2], out=darkest)
        if weight is None:
            weight = np.empty(darkest.size, np.float32)
        np.greater_equal(darkest, self.tissue_od, out=weight, casting="unsafe")
        with np.errstate(invalid="ignore"):
            nan = np.divide(weight, weight, out=nan)  # 1 / 1 = 1, 0 / 0 = NaN
        return weight, nan

    def covariance(self) -> np.ndarray:
        """Covariance (ddof=1) of the tissue ODs, from :meth:`scan`'s moments."""
        sums, products = self.moments
        n = self.tissue_pixels
        mean = sums / n
        return (products - n * np.outer(mean, mean)) / (n - 1)

    def angle_percentiles(self, plane: np.ndarray, qs: list[float]) -> list[float]:
        """Sweep 2: the ``qs`` percentiles of the tissue ODs' angles ``arctan2(y, x)`` in ``plane``."""
        n = self.tissue_pixels
        pt = np.ascontiguousarray(plane.T, dtype=np.float32)  # (2, 3), contiguous (see recombine)
        if not np.all(plane[:, 0] > 0):  # x could be <= 0: angles from arctan2, over all tissue pixels
            return self._angle_percentiles_general(plane, qs)

        def slopes(od: np.ndarray, nan: np.ndarray) -> np.ndarray:  # y / x: x > 0 for tissue pixels, NaN for the others
            x, y = pt @ od  # (2, 3) @ (3, k): see _BLOCK on this product
            x *= nan
            y /= x
            return y

        places = [_percentile_positions(n, q) for q in qs]
        with np.errstate(divide="ignore", invalid="ignore"):
            tails = _Tails(slopes(self.sample_od, self.sample_nan), n, [below for below, _, _ in places])
            for rows in self.blocks:
                tails.add(slopes(self.od(rows), self.tissue_nan[rows]))  # NaN (non-tissue) is never kept
        pairs = tails.result()
        if any(pair is None for pair in pairs):
            return self._angle_percentiles_general(plane, qs)
        # arctan is increasing: the percentiles of the angles are arctan of the slopes' order statistics
        return [_interpolated(pair, f, top, np.arctan) for pair, (_, f, top) in zip(pairs, places, strict=True)]

    def _angle_percentiles_general(self, plane: np.ndarray, qs: list[float]) -> list[float]:
        angles = []
        for rows in self.blocks:
            t = self.od(rows)[:, self.tissue(rows)].astype(np.float64)
            xy = plane.T @ t
            angles.append(np.arctan2(xy[1], xy[0]))
        return _percentiles(np.concatenate(angles), qs)

    def concentrations(self, stains: np.ndarray, q: float) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Sweep 3: exact NNLS concentrations (block start -> ``(2, k)`` float32, contiguous) and each stain's ``q`` percentile."""
        s = np.asarray(stains, dtype=np.float64)
        gram = s.T @ s
        if not np.linalg.det(gram) > 1e-12 * gram[0, 0] * gram[1, 1]:
            raise InvalidInputError("nnls_two_stains needs two linearly independent stain vectors.")
        solve = (np.linalg.inv(gram) @ s.T).astype(np.float32)  # (2, 3): the unconstrained solution
        project = np.ascontiguousarray(s.T, dtype=np.float32)  # (2, 3): d_k = s_k . y
        g11, g22 = float(gram[0, 0]), float(gram[1, 1])
        single_fit = np.array([[g22], [g11]], np.float32)  # p_k^2 * g_jj compares the residual reductions p_k^2 / g_kk
        inverse_gram = np.array([[1 / g11], [1 / g22]], np.float32)

        def solve_block(od: np.ndarray) -> np.ndarray:
            c = solve @ od  # (2, 3) @ (3, k): the unconstrained solutions
            c0, c1 = c
            infeasible = np.flatnonzero(np.minimum(c0, c1) < 0)  # a few % of the pixels
            if infeasible.size:
                p = project @ od.take(infeasible, axis=1)  # take: several times faster than od[:, infeasible]
                np.maximum(p, 0, out=p)
                # residual reduction of the fit on stain k alone is max(d_k, 0)^2 / g_kk: keep the larger
                reduction = p * p * single_fit
                first = reduction[0] >= reduction[1]
                p *= inverse_gram  # p >= 0 and finite: p * first is np.where(first, p, 0)
                c0[infeasible] = p[0] * first
                c1[infeasible] = p[1] * ~first
            return c

        sample = solve_block(self.sample_od)
        below, fraction, top = _percentile_positions(self.n_pixels, q)
        tails = [_Tails(sample[k], self.n_pixels, [below]) for k in range(2)]
        c = {}
        for rows in self.blocks:
            block = c[rows.start] = solve_block(self.od(rows))
            tails[0].add(block[0])
            tails[1].add(block[1])
        maxima = []
        for k in range(2):
            pair = tails[k].result()[0]
            if pair is None:
                maxima.append(_percentiles(np.concatenate([block[k] for block in c.values()]), [q])[0])
            else:
                maxima.append(_interpolated(pair, fraction, top))
        return c, np.array(maxima)

    def recombine(self, c: dict[int, np.ndarray], weights: np.ndarray) -> np.ndarray:
        """Sweep 4: ``uint8(255 * exp(weights @ c))`` per pixel and channel (truncated, as ``astype`` does)."""
        wt = np.ascontiguousarray(weights.T, dtype=np.float32)  # (2, 3), contiguous: a transposed operand is several times slower
        clip = bool(np.any(weights > 0))  # a target with negative entries could exceed 255
        out = np.empty((self.n_pixels, 3), np.uint8)
        for rows in self.blocks:
            od = c[rows.start].T @ wt  # (k, 2) @ (2, 3): pixel-major, the layout of the output
            np.exp(od, out=od)
            od *= 255
            if clip:
                np.minimum(od, 255, out=od)
            out[rows] = od
        return out.reshape(self.shape)


def _order_h_first(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """Unit stain vectors as columns, haematoxylin (the larger red optical density) first."""
    matrix = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    return matrix / np.linalg.norm(matrix, axis=0)


class MacenkoNormalizer(StainNormalizer):
    """Macenko et al. (2009) normalisation, as in reference study 1, fast and vectorised.

    Args:
        alpha: Angle percentiles ``alpha`` and ``100 - alpha`` give the two stain vectors.
        brightness_percentile: See :class:`StainNormalizer`.
        beta: See :class:`StainNormalizer`.
        concentration_percentile: See :class:`StainNormalizer`.
        min_tissue_fraction: See :class:`StainNormalizer`.
        min_tissue_pixels: See :class:`StainNormalizer`.

    Example:
        >>> normalizer = MacenkoNormalizer().fit(reference)   # doctest: +SKIP
        >>> normalizer.transform(tile).shape == tile.shape    # doctest: +SKIP
        True
    """

    method: ClassVar[str] = "macenko"
    _needs_moments: ClassVar[bool] = True

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        brightness_percentile: float | None = 90.0,
        beta: float = 0.15,
        concentration_percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
    ):
        super().__init__(
            brightness_percentile=brightness_percentile,
            beta=beta,
            concentration_percentile=concentration_percentile,
            min_tissue_fraction=min_tissue_fraction,
            min_tissue_pixels=min_tissue_pixels,
        )
        self.alpha = alpha

    def _check_params(self) -> None:
        super()._check_params()
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha < 50):
            raise InvalidInputError(f"Invalid MacenkoNormalizer parameter: alpha must be in [0, 50) ({self!r}).")

    def _estimate_stain_matrix(self, prepared: _Prepared | _FastTile) -> np.ndarray:
        eigenvalues, eigenvectors = np.linalg.eigh(prepared.covariance())
        if not eigenvalues[1] > 1e-12 * max(eigenvalues[2], 1e-300):
            raise _Unusable("the two stain vectors cannot be told apart (the tissue has a single colour)")
        plane = eigenvectors[:, [2, 1]]
        plane[:, plane[0] < 0] *= -1
        low, high = prepared.angle_percentiles(plane, [self.alpha, 100 - self.alpha])
        v_low = plane @ np.array([np.cos(low), np.sin(low)])
        v_high = plane @ np.array([np.cos(high), np.sin(high)])
        return _order_h_first(v_low, v_high)


class VahadaneNormalizer(StainNormalizer):
    """Vahadane et al. (2016) stain vectors (sparse dictionary learning, from staintools).

    Only the stain-vector estimation differs from :class:`MacenkoNormalizer`: it calls
    ``staintools``' ``VahadaneStainExtractor`` (spams dictionary learning) on the
    brightness-standardised tile; concentrations are still exact NNLS. staintools and spams are
    optional dependencies, imported on first use. staintools' own tissue mask (LAB luminosity
    below ``luminosity_threshold``) must also be non-empty, else the tile is left unchanged.

    Args:
        luminosity_threshold: staintools' tissue threshold on LAB luminosity in [0, 1].
        regularizer: Sparsity regulariser of the dictionary learning.
        brightness_percentile: See :class:`StainNormalizer`.
        beta: See :class:`StainNormalizer`.
        concentration_percentile: See :class:`StainNormalizer`.
        min_tissue_fraction: See :class:`StainNormalizer`.
        min_tissue_pixels: See :class:`StainNormalizer`.

    Raises:
        MissingDependencyError: From fit/transform, when staintools (or spams, OpenCV) is missing.
    """

    method: ClassVar[str] = "vahadane"

    def __init__(
        self,
        *,
        luminosity_threshold: float = 0.8,
        regularizer: float = 0.1,
        brightness_percentile: float | None = 90.0,
        beta: float = 0.15,
        concentration_percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
    ):
        super().__init__(
            brightness_percentile=brightness_percentile,
            beta=beta,
            concentration_percentile=concentration_percentile,
            min_tissue_fraction=min_tissue_fraction,
            min_tissue_pixels=min_tissue_pixels,
        )
        self.luminosity_threshold = luminosity_threshold
        self.regularizer = regularizer

    def _estimate_stain_matrix(self, prepared: _Prepared | _FastTile) -> np.ndarray:
        extractor, tissue_mask_exception = _import_staintools_vahadane()
        standardized = prepared.standardized()  # a new array: staintools writes into it
        try:
            rows = extractor.get_stain_matrix(
                standardized, luminosity_threshold=self.luminosity_threshold, regularizer=self.regularizer
            )
        except tissue_mask_exception:
            raise _Unusable(
                f"staintools found no tissue (no pixel with luminosity below {self.luminosity_threshold:g})"
            ) from None
        return _order_h_first(rows[0], rows[1])


def _import_staintools_vahadane():
    """staintools' Vahadane extractor and TissueMaskException, or MissingDependencyError."""
    try:
        from staintools.miscellaneous.exceptions import TissueMaskException
        from staintools.stain_extraction.vahadane_stain_extractor import VahadaneStainExtractor
    except ImportError as exc:
        raise MissingDependencyError(
            f"Vahadane stain normalisation needs the optional package staintools ({exc}).",
            "Install it with: pip install staintools==2.1.2 spams-bin==2.6.14 opencv-python "
            "(or use the default method 'macenko').",
        ) from exc
    return VahadaneStainExtractor, TissueMaskException


_METHODS: dict[str, type[StainNormalizer]] = {"macenko": MacenkoNormalizer, "vahadane": VahadaneNormalizer}


def get_normalizer(method: str = "macenko", reference: np.ndarray | None = None) -> StainNormalizer:
    """Build a stain normaliser by name, fitted to ``reference`` when one is given.

    Args:
        method: ``"macenko"`` (default) or ``"vahadane"`` (case-insensitive).
        reference: uint8 ``(H, W, 3)`` RGB reference tile, or None for the published Macenko target.

    Returns:
        A :class:`StainNormalizer` with default parameters.

    Raises:
        InvalidInputError: If the method is unknown or the reference unusable.
        MissingDependencyError: For ``"vahadane"`` with a reference when staintools is missing.
    """
    key = str(method).strip().lower()
    if key not in _METHODS:
        raise InvalidInputError(f"Unknown stain normalisation method {method!r}.", f"Choose one of: {', '.join(_METHODS)}.")
    normalizer = _METHODS[key]()
    return normalizer if reference is None else normalizer.fit(reference)
