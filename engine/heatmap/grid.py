"""Where the tiles of a slide are and how they are read: :class:`TileGrid` (level-0 coordinates throughout).

A tile is the level-0 square ``[x, x + tile0) × [y, y + tile0)``, read at ``level`` as ``read_px``
pixels and resized to the model's ``input_px``. Tiles step by ``stride0`` (``< tile0``: overlap).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.errors import InvalidInputError, TooLargeError
from engine.slides import Slide

MAX_TILES = 4_000_000  # tiles per slide (a 100,000² px slide in 96-px tiles at 0.5 µm/px: ~1.1 M); bounds every per-tile array
MIN_TILE0 = 8  # level-0 pixels a tile must span (an absurd slide µm/px made grids of 1-px tiles)
MPP_RANGE = (0.01, 100.0)  # plausible microns per pixel of a slide or a model


@dataclass(frozen=True)
class TileGrid:
    """Where tiles are and how they are read. All positions and sizes in level-0 pixels.

    Attributes:
        width0, height0: slide level-0 size.
        tile0: tile side at level 0; stride0: step between tiles at level 0 (``< tile0`` = overlap).
        level: pyramid level read; level_downsample: its downsample; read_px: side read at that level.
        input_px: model input side (tiles are resized to it).
        mpp: level-0 µm/px used (None when unknown); target_mpp: the model's µm/px (None = by level).
    """

    width0: int
    height0: int
    tile0: int
    stride0: int
    level: int
    level_downsample: float
    read_px: int
    input_px: int
    mpp: float | None = None
    target_mpp: float | None = None

    def __post_init__(self):
        if self.tile0 < 1 or self.stride0 < 1 or self.read_px < 1:
            raise InvalidInputError(f"Invalid tiling: tile {self.tile0}, stride {self.stride0}, read {self.read_px} px.")

    @property
    def n_cols(self) -> int:
        return 0 if self.width0 < self.tile0 else (self.width0 - self.tile0) // self.stride0 + 1

    @property
    def n_rows(self) -> int:
        return 0 if self.height0 < self.tile0 else (self.height0 - self.tile0) // self.stride0 + 1

    @property
    def n_tiles(self) -> int:
        return self.n_cols * self.n_rows

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 top-left ``(x, y)`` of every tile, row by row."""
        cols = np.arange(self.n_cols, dtype=np.int64) * self.stride0
        rows = np.arange(self.n_rows, dtype=np.int64) * self.stride0
        yy, xx = np.meshgrid(rows, cols, indexing="ij")
        return xx.ravel(), yy.ravel()

    def index_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid ``(row, col)`` of tiles with level-0 top-left ``(x, y)``."""
        return np.asarray(y) // self.stride0, np.asarray(x) // self.stride0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_slide(
        cls, slide: Slide, input_px: int, *, model_mpp: float | None = None, level: int | None = None,
        tile_px: int | None = None, stride_fraction: float = 1.0, use_mpp: bool = True,
    ) -> TileGrid:
        """Tiles for ``slide``: at the model's µm/px when both it and the slide's are known, else at ``level``.

        Args:
            input_px: model input side (``card.input_px``).
            model_mpp: the model card's µm/px (None: unknown).
            level: pyramid level to tile when not tiling by µm/px (default 0).
            tile_px: tile side at ``level`` when tiling by level (default ``input_px``).
            stride_fraction: stride as a fraction of the tile (1 = no overlap, 0.5 = half overlap).
        """
        if hasattr(input_px, "input_px"):  # a ModelCard
            card = input_px
            input_px, model_mpp = card.input_px, card.mpp if model_mpp is None else model_mpp
        if not 0.05 <= float(stride_fraction) <= 1.0:
            raise InvalidInputError(f"Stride fraction {stride_fraction} must be between 0.05 and 1.")
        w0, h0 = slide.dimensions
        slide_mpp = slide.mpp
        if use_mpp and model_mpp and slide_mpp:
            target_ds = float(model_mpp) / slide_mpp
            tile0 = max(1, round(int(input_px) * target_ds))
            lvl = slide.get_best_level_for_downsample(target_ds)
            ds = slide.level_downsamples[lvl]
            read_px = max(1, round(tile0 / ds))
        else:
            lvl = 0 if level is None else int(level)
            if not 0 <= lvl < slide.level_count:
                raise InvalidInputError(f"Level {lvl} does not exist ({slide.level_count} levels).")
            ds = slide.level_downsamples[lvl]
            read_px = int(tile_px or input_px)
            tile0 = max(1, round(read_px * ds))
            model_mpp = None
        stride0 = max(1, round(tile0 * float(stride_fraction)))
        if tile0 > max(w0, h0):
            raise InvalidInputError(f"Tiles of {tile0} level-0 px are larger than the slide ({w0}×{h0}).", "Choose a lower level or smaller tiles.")
        _check_size(slide, w0, h0, tile0, stride0, read_px, lvl, slide_mpp, model_mpp)
        return cls(w0, h0, int(tile0), int(stride0), lvl, float(ds), int(read_px), int(input_px), slide_mpp, model_mpp)


def _check_size(slide: Slide, w0: int, h0: int, tile0: int, stride0: int, read_px: int, level: int,
                slide_mpp: float | None, model_mpp: float | None) -> None:
    """Refuse a tiling before any per-tile array is allocated: tiles too small to mean anything, or too many.

    The message names what caused it: the slide's and the model's µm/px, or the level and tile size.
    """
    name = getattr(getattr(slide, "path", None), "name", "the slide")
    by_mpp = model_mpp is not None and slide_mpp is not None
    cause = (f"the slide's {slide_mpp:g} µm/px and the model's {model_mpp:g} µm/px ({read_px}-px reads of {tile0} level-0 px)" if by_mpp
             else f"{read_px}-px tiles at level {level} ({tile0} level-0 px)")
    hint = ("Check the slide's µm/px (enter the right value by hand if the file's is wrong)." if by_mpp
            else "Choose a larger tile or a lower-resolution level.")
    for label, value in (("slide", slide_mpp), ("model", model_mpp)):
        if value is not None and not MPP_RANGE[0] <= float(value) <= MPP_RANGE[1]:
            raise InvalidInputError(f"'{name}': the {label}'s {float(value):g} µm/px is not a plausible resolution "
                                    f"({MPP_RANGE[0]:g}–{MPP_RANGE[1]:g} µm/px).", hint)
    if tile0 < MIN_TILE0:
        raise InvalidInputError(f"'{name}': with {cause}, a tile spans only {tile0} slide pixel(s), under {MIN_TILE0}.", hint)
    n = (0 if w0 < tile0 else (w0 - tile0) // stride0 + 1) * (0 if h0 < tile0 else (h0 - tile0) // stride0 + 1)
    if n > MAX_TILES:
        raise TooLargeError(f"'{name}': tiling its {w0:,}×{h0:,} px with {cause} and stride {stride0} gives {n:,} tiles, "
                            f"over the limit of {MAX_TILES:,} per slide.", hint)
