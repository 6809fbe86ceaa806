"""Tissue detection: Otsu on a low-resolution level, morphological clean-up, per-tile tissue fraction.

>>> from engine.tissue import TissueMasker
>>> mask = TissueMasker().fit(slide).mask_     # a TissueMask at thumbnail scale (fit returns the masker)
>>> mask.fraction_in((x0, y0, w0, h0))          # share of a level-0 rectangle that is tissue
>>> TissueMasker().thumbnail_mask(rgb, sx, sy)  # the mask of a thumbnail already in hand

Tissue is darker and more saturated than glass. A pixel is tissue where its grey level is below
Otsu's threshold (computed on the thumbnail) *and* below ``max_grey`` (so an empty slide, whose Otsu
threshold falls in the noise of the glass, gives no tissue), or its saturation is above
``min_saturation``. A thumbnail of one colour (black, grey or white: nothing differs from the
background) has no tissue at all. Then closing, small-object and small-hole removal (scikit-image).
Fractions are exact area integrals over the mask pixels a level-0 rectangle covers (partial pixels
weighted), so tiles, mask and heatmap share one coordinate system.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_TISSUE = 0.5


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and its scale: mask pixel (r, c) covers level-0 ``[c*sx, (c+1)*sx) × [r*sy, (r+1)*sy)``."""

    mask: np.ndarray
    scale_x: float
    scale_y: float
    threshold: float

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _integral(self) -> np.ndarray:
        cached = getattr(self, "_sat", None)
        if cached is None:
            sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
            sat[1:, 1:] = np.cumsum(np.cumsum(self.mask, 0, dtype=np.float64), 1)
            object.__setattr__(self, "_sat", sat)
            cached = sat
        return cached

    def fractions(self, x0: np.ndarray, y0: np.ndarray, w0: float, h0: float) -> np.ndarray:
        """Tissue fraction of level-0 rectangles ``[x0, x0+w0) × [y0, y0+h0)`` (vectorised, area-weighted)."""
        x0 = np.asarray(x0, np.float64)
        y0 = np.asarray(y0, np.float64)
        sat = self._integral()
        H, W = self.mask.shape

        def area(xs, ys):
            # integral of the mask over [0, xs) × [0, ys) in mask pixels, bilinear in the partial pixel
            xs = np.clip(xs, 0, W)
            ys = np.clip(ys, 0, H)
            xi, yi = np.floor(xs).astype(int), np.floor(ys).astype(int)
            fx, fy = xs - xi, ys - yi
            xi1, yi1 = np.minimum(xi + 1, W), np.minimum(yi + 1, H)
            a = sat[yi, xi]
            b = sat[yi, xi1]
            c = sat[yi1, xi]
            d = sat[yi1, xi1]
            return a + fx * (b - a) + fy * (c - a) + fx * fy * (d - b - c + a)

        xa, xb = x0 / self.scale_x, (x0 + w0) / self.scale_x
        ya, yb = y0 / self.scale_y, (y0 + h0) / self.scale_y
        total = area(xb, yb) - area(xa, yb) - area(xb, ya) + area(xa, ya)
        cells = (w0 / self.scale_x) * (h0 / self.scale_y)
        return np.clip(total / cells, 0.0, 1.0)

    def fraction_in(self, rect: tuple[float, float, float, float]) -> float:
        x, y, w, h = rect
        return float(self.fractions(np.array([x]), np.array([y]), w, h)[0])


def binary_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """``skimage.morphology.closing(mask, disk(radius))`` of a boolean mask, the same pixels, ~30x faster.

    Dilation then erosion by the disk, each as an OR / AND of shifted views of the mask padded by
    reflection (scikit-image's default border, ``mode="reflect"``; NumPy calls it "symmetric").
    scikit-image runs a general grey-level filter; on a 1024 px thumbnail that was ~20 ms of every
    heatmap's fixed cost.
    """
    from skimage.morphology import disk

    footprint = disk(radius).astype(bool)
    offsets = [(dy, dx) for dy in range(2 * radius + 1) for dx in range(2 * radius + 1) if footprint[dy, dx]]
    h, w = mask.shape

    def sweep(m: np.ndarray, dilate: bool) -> np.ndarray:
        padded = np.pad(m, radius, mode="symmetric")
        out = np.zeros_like(m) if dilate else np.ones_like(m)
        for dy, dx in offsets:
            view = padded[dy : dy + h, dx : dx + w]
            if dilate:
                out |= view
            else:
                out &= view
        return out

    return sweep(sweep(np.asarray(mask, bool), True), False)


@dataclass
class TissueMasker:
    """Otsu tissue detection (scikit-learn style: parameters in the constructor, ``fit`` does the work).

    ``fit(slide)`` returns the masker itself with the fitted mask in ``mask_`` (a :class:`TissueMask`)
    and Otsu's threshold in ``threshold_``. :meth:`thumbnail_mask` and :meth:`slide_mask` return a
    mask without changing the masker (safe to share between threads).

    Args:
        max_side: the thumbnail's larger side in pixels (the mask's resolution).
        max_grey: grey level (0–1) above which a pixel is glass whatever Otsu says.
        min_saturation: saturation (0–1) above which a pixel is tissue (pale eosin).
        closing_um / min_object_px: clean-up sizes in thumbnail pixels.
        uniform_std: a thumbnail whose every colour channel varies less than this (standard deviation, 0–1)
            is one colour — a black, grey or white slide — and has no tissue.
    """

    max_side: int = 1024
    max_grey: float = 0.90
    min_saturation: float = 0.07
    closing_radius: int = 2
    min_object_px: int = 64
    min_hole_px: int = 64
    uniform_std: float = 0.02  # colour spread (0–1) below which a thumbnail is one colour: no tissue

    def thumbnail_mask(self, rgb: np.ndarray, scale_x: float = 1.0, scale_y: float | None = None) -> TissueMask:
        """The tissue mask of an RGB thumbnail whose pixel covers ``scale_x × scale_y`` level-0 pixels."""
        from skimage import filters, morphology

        arr = np.asarray(rgb, dtype=np.uint8)
        # grey (ITU-R 601-2 luma, as skimage's rgb2gray) and HSV saturation, in float32 without the full HSV
        grey = (arr[..., 0] * np.float32(0.2125 / 255) + arr[..., 1] * np.float32(0.7154 / 255) + arr[..., 2] * np.float32(0.0721 / 255))
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        hi = np.maximum(np.maximum(r, g), b)  # not arr.max(axis=2): a 3-long inner loop per pixel is ~50x slower
        lo = np.minimum(np.minimum(r, g), b)
        hsv_s = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1).astype(np.float32), np.float32(0))
        if arr.size == 0 or self._uniform(arr):
            # one colour (black, grey, white or any other): nothing stands out from the background, so no tissue
            return TissueMask(np.zeros(grey.shape, bool), float(scale_x), float(scale_x if scale_y is None else scale_y), 1.0)
        t = float(filters.threshold_otsu(grey))
        dark = (grey < min(t, self.max_grey))
        coloured = (hsv_s > self.min_saturation) & (grey < 0.97)
        mask = dark | coloured
        if self.closing_radius > 0:
            mask = binary_closing(mask, self.closing_radius)
        if self.min_object_px > 0:
            mask = morphology.remove_small_objects(mask, max_size=self.min_object_px)
        if self.min_hole_px > 0:
            mask = morphology.remove_small_holes(mask, max_size=self.min_hole_px)
        return TissueMask(mask.astype(bool), float(scale_x), float(scale_x if scale_y is None else scale_y), t)

    def _uniform(self, rgb: np.ndarray) -> bool:
        """True when the image is one colour up to compression noise (every channel's spread, 0–1, below ``uniform_std``)."""
        step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 262144)))
        sample = rgb[::step, ::step].reshape(-1, 3).astype(np.float32) / 255.0
        return float(sample.std(axis=0).max()) < self.uniform_std

    def slide_mask(self, slide) -> TissueMask:
        """The tissue mask of ``slide`` (an :class:`engine.slides.Slide`), detected on its thumbnail."""
        rgb, _ = slide.get_thumbnail(self.max_side)
        w0, h0 = slide.dimensions
        return self.thumbnail_mask(rgb, w0 / rgb.shape[1], h0 / rgb.shape[0])

    def fit(self, slide) -> TissueMasker:
        """Detect tissue on a thumbnail of ``slide``; sets ``mask_`` and ``threshold_`` and returns ``self``."""
        self.mask_ = self.slide_mask(slide)
        self.threshold_ = self.mask_.threshold
        return self

    def cache_key(self) -> dict:
        return {"method": "otsu-v2", **{k: getattr(self, k) for k in ("max_side", "max_grey", "min_saturation", "closing_radius", "min_object_px", "min_hole_px", "uniform_std")}}

