"""Field of view of the LC25000 training tiles: microns per pixel estimated from nuclear sizes.

``python bench/fov.py`` → ``bench/results/fov.md`` and ``fov.json``. Needs ``../shared/data`` (or
``$HISTODASH_SHARED_DATA``).

Method. Nuclei are segmented the same way in the 224 px LC25000 tiles and in level-0 tiles of the
CMU-1 slide (0.499 µm/px, stated by the slide): haematoxylin density by colour deconvolution
(Ruifrok & Johnston's fixed H&E matrix, :mod:`engine.stain_augment`), Otsu threshold per tile, a
3×3 opening, connected components of 20–2000 px, equivalent diameter ``2·sqrt(area/π)``. Two
estimates:

1. *relative*: ``0.499 × median diameter on CMU-1 (px) / median diameter on LC25000 (px)`` — assumes
   the nuclei of the two tissues are of similar size on average (skin epidermis/dermis vs lung);
2. *absolute*: small round nuclei (the 20th percentile of the diameters on the benign lung tiles,
   where lymphocytes and alveolar cells dominate the small end) taken as 6 µm.

3. *red cells*: red blood cells (many in the capillaries and alveoli of the benign lung tiles) are
   segmented by colour (R − G > 110, R > 170, B < R − 60, 3×3 opening), compact blobs kept (bounding
   box aspect 0.6–1.6, fill > 0.6, area ≥ 20 px), and their median equivalent diameter taken as 7.5 µm.

The estimate used is the mean of the red-cell and small-nucleus estimates, which agree; the
relative one is reported but not used (the CMU-1 skin segmentation is dominated by small, thin
dermal nuclei and fragments, so it says as much about the tissues as about the scale). All are rough
(±30 %): cell sizes differ between tissues, sections cut cells off-centre and the segmentation
merges touching cells. The card states the estimate and this method.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.stain_augment import HED_FROM_RGB  # noqa: E402

DATA = Path(os.environ.get("HISTODASH_SHARED_DATA", ROOT.parent / "shared" / "data"))
CMU_MPP = 0.499
SMALL_NUCLEUS_UM = 6.0
RED_CELL_UM = 7.5


def red_cell_diameters(rgb: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    a = rgb.astype(np.int32)
    mask = (a[..., 0] - a[..., 1] > 110) & (a[..., 0] > 170) & (a[..., 2] < a[..., 0] - 60)
    labels, n = ndimage.label(ndimage.binary_opening(mask))
    if n == 0:
        return np.empty(0)
    areas = np.bincount(labels.ravel())[1:]
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if areas[i] >= 20 and 0.6 < h / w < 1.6 and areas[i] / (h * w) > 0.6:
            out.append(2 * np.sqrt(areas[i] / np.pi))
    return np.asarray(out)


def otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w = np.cumsum(hist)
    w2 = w[-1] - w
    m = np.cumsum(hist * centres)
    mu1 = m / np.maximum(w, 1)
    mu2 = (m[-1] - m) / np.maximum(w2, 1)
    between = w * w2 * (mu1 - mu2) ** 2
    return float(centres[int(np.argmax(between))])


def nuclear_diameters(rgb: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    od = -np.log(np.maximum(rgb.astype(np.float64) / 255.0, 1 / 255))
    h = (od @ HED_FROM_RGB)[..., 0]
    if h.max() - h.min() < 1e-6:
        return np.empty(0)
    mask = h > max(otsu(h.ravel()), 0.15)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.empty(0)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[(areas >= 20) & (areas <= 2000)]
    return 2 * np.sqrt(areas / np.pi)


def main() -> int:
    import openslide
    import pandas as pd

    from engine.imageio import read_image

    lc = DATA / "lc25000-lung-224"
    if not lc.is_dir():
        print(f"skipped: {lc} is absent", file=sys.stderr)
        return 0
    df = pd.read_csv(lc / "labels.csv")
    per_class = {}
    for cls, sub in df.groupby("tissue_class"):
        d = np.concatenate([nuclear_diameters(read_image(lc / f)) for f in sub["filename"].iloc[::12][:120]])
        per_class[cls] = d
    lc_all = np.concatenate(list(per_class.values()))
    slide = openslide.OpenSlide(str(DATA / "wsi" / "CMU-1-Small-Region.svs"))
    w, h = slide.dimensions
    cmu = []
    for y in range(0, h - 512, 512):
        for x in range(0, w - 512, 512):
            rgb = np.asarray(slide.read_region((x, y), 0, (512, 512)).convert("RGB"))
            if (rgb.min(axis=2) < 200).mean() > 0.5:
                cmu.append(nuclear_diameters(rgb))
    cmu_all = np.concatenate(cmu)
    relative = CMU_MPP * float(np.median(cmu_all)) / float(np.median(lc_all))
    small = float(np.percentile(per_class["lung_n"], 20))
    absolute = SMALL_NUCLEUS_UM / small
    benign = df[df["tissue_class"] == "lung_n"]["filename"].iloc[::6][:250]
    red = np.concatenate([red_cell_diameters(read_image(lc / f)) for f in benign])
    red_estimate = RED_CELL_UM / float(np.median(red))
    estimate = round((red_estimate + absolute) / 2, 2)
    result = {
        "lc25000_median_diameter_px": round(float(np.median(lc_all)), 2), "lc25000_nuclei": int(lc_all.size),
        "lc25000_median_by_class_px": {k: round(float(np.median(v)), 2) for k, v in per_class.items()},
        "cmu_median_diameter_px": round(float(np.median(cmu_all)), 2), "cmu_nuclei": int(cmu_all.size), "cmu_mpp": CMU_MPP,
        "relative_estimate_um_per_px": round(relative, 3), "lung_n_p20_diameter_px": round(small, 2),
        "absolute_estimate_um_per_px": round(absolute, 3), "red_cells": int(red.size),
        "red_cell_median_diameter_px": round(float(np.median(red)), 2), "red_cell_estimate_um_per_px": round(red_estimate, 3),
        "estimate_um_per_px": estimate,
        "field_of_view_um": round(estimate * 224), "method": " ".join((__doc__ or "").split("\n\n")[1:4]).replace("\n", " "),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fov.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Field of view of the LC25000 tiles (bench/fov.py)", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.items() if k != "method"]
    lines += ["", result["method"], ""]
    (out / "fov.md").write_text("\n".join(lines))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
