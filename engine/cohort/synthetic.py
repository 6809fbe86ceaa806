"""Generated multi-level slides of known composition, built from labelled patches (LC25000 lung by default).

>>> patches = load_patches("../shared/data/lc25000-lung-224")              # {class: [paths]}
>>> truth = write_composition_slide("P07_s1.tiff", patches, {"lung_aca": 0.5, "lung_n": 0.25, "lung_scc": 0.25})
>>> truth["labels"]        # (rows, cols) class index of every patch cell, row by row

A slide is a ``rows × cols`` mosaic of whole patches (224 px each, so a tile grid of ``tile_px=224`` at
level 0 puts exactly one patch in each tile), with class counts from the composition by largest
remainder, placed in a seeded random order, each cell a different patch where the class has enough.
It is written with the shared pyramid writer (tiled JPEG pyramid OpenSlide reads as several levels).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import InvalidInputError
from engine.exports import safe_csv
from engine.synthetic import write_pyramid_tiff


def load_patches(folder: str | Path, column: str = "tissue_class") -> dict[str, list[Path]]:
    """``{class: sorted patch paths}`` from a folder with a ``labels.csv`` (``filename`` + ``column``)."""
    folder = Path(folder)
    labels = folder / "labels.csv"
    if not labels.exists():
        raise InvalidInputError(f"No labels.csv in '{folder.name}'.")
    out: dict[str, list[Path]] = {}
    with open(labels, newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row[column], []).append(folder / row["filename"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def class_counts(composition: dict[str, float], n: int) -> dict[str, int]:
    """Whole cell counts for ``n`` cells (largest remainder; the fractions are normalised to sum 1)."""
    total = float(sum(composition.values()))
    if total <= 0:
        raise InvalidInputError("A composition needs at least one positive fraction.")
    raw = {k: v / total * n for k, v in composition.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (raw[k] - counts[k], k), reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


#: µm/px of an LC25000 224 px patch: the default model card's estimate (``mpp_method``: cell sizes, bench/fov.py),
#: 1.52 µm/px at its 144 px input = 0.98 at 224 px. Mosaics written at this scale are tiled one patch per tile by
#: a model that tiles at its card's µm/px.
LC25000_MPP = 0.98


def write_composition_slide(path: str | Path, patches: dict[str, list[Path]], composition: dict[str, float], *, rows: int = 5, cols: int = 5,
                            patch_px: int = 224, seed: int = 0, levels: int = 3, mpp: float | None = LC25000_MPP) -> dict:
    """Write one mosaic slide; returns ``{"path", "classes", "labels" (rows, cols), "counts", "fractions", "patch_px"}``."""
    classes = sorted(patches)
    unknown = set(composition) - set(classes)
    if unknown:
        raise InvalidInputError(f"Unknown classes in the composition: {', '.join(sorted(unknown))}.")
    rng = np.random.default_rng(seed)
    n = rows * cols
    counts = class_counts(composition, n)
    cells = np.array([classes.index(c) for c in classes for _ in range(counts.get(c, 0))])
    rng.shuffle(cells)
    mosaic = np.empty((rows * patch_px, cols * patch_px, 3), np.uint8)
    for ci, cls in enumerate(classes):
        where = np.flatnonzero(cells == ci)
        if not len(where):
            continue
        pool = patches[cls]
        picks = rng.choice(len(pool), len(where), replace=len(where) > len(pool))
        for cell, pick in zip(where, picks):
            r, c = divmod(int(cell), cols)
            img = Image.open(pool[int(pick)]).convert("RGB")
            if img.size != (patch_px, patch_px):
                img = img.resize((patch_px, patch_px), Image.BILINEAR)
            mosaic[r * patch_px:(r + 1) * patch_px, c * patch_px:(c + 1) * patch_px] = np.asarray(img)

    def paint(x0, y0, w, h, ds):
        if ds == 1:
            return mosaic[y0:y0 + h, x0:x0 + w]
        block = mosaic[y0:y0 + h * ds, x0:x0 + w * ds].astype(np.float32)
        hh, ww = block.shape[0] // ds, block.shape[1] // ds
        out = block[: hh * ds, : ww * ds].reshape(hh, ds, ww, ds, 3).mean((1, 3))
        full = np.full((h, w, 3), 255, np.uint8)
        full[:hh, :ww] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return full

    write_pyramid_tiff(path, mosaic.shape[1], mosaic.shape[0], paint, levels=levels, mpp=mpp)
    labels = cells.reshape(rows, cols)
    return {"path": str(path), "classes": classes, "labels": labels, "counts": {c: int(counts.get(c, 0)) for c in classes},
            "fractions": {c: counts.get(c, 0) / n for c in classes}, "patch_px": patch_px}


def true_labels_at(truth: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The class index of the mosaic cell under each level-0 tile position (top-left corner)."""
    px = truth["patch_px"]
    return truth["labels"][np.asarray(y) // px, np.asarray(x) // px]


def composition_error(truth: list[dict], tiles: list[dict], n_classes: int) -> dict:
    """How well cluster proportions recover known compositions.

    Each cluster is named after the class most of its tiles (over all slides) truly are (majority
    vote); a slide's estimated class shares are the summed proportions of the clusters named after each
    class. Returns the mean and largest absolute error of those shares against the slides' true
    compositions (``mae``, ``max_error``, in proportion units, over slides × classes), the tile-level
    cluster purity (share of tiles in a cluster named after their own class) and the adjusted Rand index.

    Args:
        truth: per slide, :func:`write_composition_slide`'s result.
        tiles: per slide, ``{"x", "y", "cluster"}`` of its scored tiles.
    """
    from sklearn.metrics import adjusted_rand_score

    true = [true_labels_at(t, s["x"], s["y"]) for t, s in zip(truth, tiles)]
    clusters = [np.asarray(s["cluster"], np.int64) for s in tiles]
    all_true, all_cl = np.concatenate(true), np.concatenate(clusters)
    k = int(all_cl.max()) + 1
    votes = np.zeros((k, n_classes), np.int64)
    np.add.at(votes, (all_cl, all_true), 1)
    name = votes.argmax(1)
    errors = []
    for t, cl in zip(truth, clusters):
        est = np.bincount(name[cl], minlength=n_classes) / max(1, len(cl))
        actual = np.array([t["fractions"][c] for c in t["classes"]])
        errors.append(np.abs(est - actual))
    errors = np.array(errors)
    return {"mae": float(errors.mean()), "max_error": float(errors.max()), "purity": float((name[all_cl] == all_true).mean()),
            "ari": float(adjusted_rand_score(all_true, all_cl)), "n_tiles": int(len(all_cl)), "n_slides": len(truth)}


def write_cohort(folder: str | Path, patches: dict[str, list[Path]], n_patients: int, *, slides_per_patient: int = 1, rows: int = 4,
                 cols: int = 4, seed: int = 0, risk_class: str = "lung_scc", beta: float = 4.0, base_hazard: float = 1 / 700,
                 follow_up_days: float = 2500.0) -> dict:
    """A cohort of mosaic slides and a clinical table whose outcome depends on the slides' composition.

    Patient ``P<nnn>`` gets a composition drawn from a flat Dirichlet; its slides (``slides/P<nnn>_s<j>.tiff``)
    are mosaics of it. Survival time is exponential with hazard ``base_hazard · exp(beta · share of risk_class)``,
    censored at a uniform follow-up up to ``follow_up_days``; ``clinical.csv`` has ``patient_id, time, event, age``
    (age is noise). Returns ``{"slide_dir", "clinical", "truth" (per slide, sorted by name), "patients" (frame with the
    true shares, time and event)}``.
    """
    folder = Path(folder)
    slide_dir = folder / "slides"
    slide_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = sorted(patches)
    truth, rows_out = [], []
    for i in range(n_patients):
        pid = f"P{i:03d}"
        comp = dict(zip(classes, rng.dirichlet(np.ones(len(classes)))))
        for j in range(slides_per_patient):
            truth.append(write_composition_slide(slide_dir / f"{pid}_s{j + 1}.tiff", patches, comp, rows=rows, cols=cols,
                                                 seed=seed * 100_003 + i * 101 + j))
        share = float(np.mean([t["fractions"][risk_class] for t in truth[-slides_per_patient:]]))
        t_event = rng.exponential(1.0 / (base_hazard * np.exp(beta * share)))
        t_cens = rng.uniform(0.3, 1.0) * follow_up_days
        rows_out.append({"patient_id": pid, "time": round(float(min(t_event, t_cens)), 1), "event": int(t_event <= t_cens),
                         "age": int(rng.integers(40, 85)), **{f"true_{c}": float(np.mean([t["fractions"][c] for t in truth[-slides_per_patient:]]))
                                                              for c in classes}})
    import pandas as pd

    patients = pd.DataFrame(rows_out)
    clinical = folder / "clinical.csv"
    safe_csv(patients[["patient_id", "time", "event", "age"]], clinical)
    truth.sort(key=lambda t: Path(t["path"]).name)
    return {"slide_dir": str(slide_dir), "clinical": str(clinical), "truth": truth, "patients": patients}
