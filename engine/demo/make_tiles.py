"""Cut the bundled example tiles from the bundled demo slide: ``python -m engine.demo.make_tiles``.

``engine/demo/slides/CMU-1-Small-Region.svs`` is OpenSlide's freely redistributable test slide
(Carnegie Mellon University, CC0; H&E, 2220 × 2967 px at 0.499 µm/px). This script cuts
:data:`N_TILES` tiles of :data:`TILE_PX` px at level 0 from the grid cells with the most tissue (the
same Otsu tissue mask the slide pages use), spread over the slide, and writes them as
``engine/demo/tiles/cmu1-<x>-<y>.jpg``: the example tiles of the Upload page. The result is
deterministic, so rerunning it rewrites the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SLIDE = HERE / "slides" / "CMU-1-Small-Region.svs"
OUT = HERE / "tiles"
TILE_PX = 256
N_TILES = 6
MIN_DISTANCE_PX = 2 * TILE_PX


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels that look like stained tissue rather than glass: saturation above 0.08 and not near-white."""
    img = rgb.astype(np.float32) / 255.0
    mx, mn = img.max(axis=2), img.min(axis=2)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return float(((saturation > 0.08) & (mx < 0.92)).mean())


def pick_tiles(slide, n: int = N_TILES, px: int = TILE_PX) -> list[tuple[int, int]]:
    """Top-left corners of the ``n`` grid cells with the most tissue, at least MIN_DISTANCE_PX apart."""
    width, height = slide.dimensions
    scored = []
    for y in range(0, height - px + 1, px):
        for x in range(0, width - px + 1, px):
            rgb = np.asarray(slide.read_region((x, y), 0, (px, px)).convert("RGB"))
            scored.append((round(tissue_fraction(rgb), 4), -y, -x))
    chosen: list[tuple[int, int]] = []
    for _, ny, nx in sorted(scored, reverse=True):
        x, y = -nx, -ny
        if all(max(abs(x - a), abs(y - b)) >= MIN_DISTANCE_PX for a, b in chosen):
            chosen.append((x, y))
        if len(chosen) == n:
            break
    return sorted(chosen, key=lambda p: (p[1], p[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write the tiles to (default: engine/demo/tiles)")
    args = parser.parse_args(argv)
    import openslide

    args.out.mkdir(parents=True, exist_ok=True)
    with openslide.OpenSlide(str(SLIDE)) as slide:
        for x, y in pick_tiles(slide):
            tile = slide.read_region((x, y), 0, (TILE_PX, TILE_PX)).convert("RGB")
            path = args.out / f"cmu1-{x}-{y}.jpg"
            tile.save(path, format="JPEG", quality=90)
            print(f"{path.name}: tissue {tissue_fraction(np.asarray(tile)):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
