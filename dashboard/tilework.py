"""The work behind the Tile prediction and Grad-CAM pages, run in ``dashboard.background`` worker threads.

No Streamlit calls here (these run off the script thread); one engine call per user action. Models and
explainers are loaded once per process and shared by every session (``engine.registry`` keeps loaded
models; :func:`explainer` keeps one ``Explainer`` per model file, keyed by its sha256).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from engine.imageio import read_image
from engine.limits import inference_slot, wait_message
from engine.registry import ModelCard

_explainer_lock = threading.Lock()


def score_text(card: ModelCard) -> str:
    """The card's score name with its positive classes, said once ("p(a + b)", not "p(a + b) (a + b)")."""
    classes = " + ".join(card.positive_classes) or card.classes[-1]
    name = card.score_name or "score"
    return name if classes in name else f"{name} ({classes})"


def _waiting(task):
    def on_wait(place: int) -> None:
        task.note(f"{wait_message(place)} (other users' work is running)")
    return on_wait


# ----------------------------------------------------------------------------------------- prediction
def make_normalizer(card: ModelCard, method: str, reference: np.ndarray | None):
    """The normaliser of a choice: ``card`` (the card's, with its bundled reference), ``none`` (None), ``macenko`` /
    ``vahadane`` fitted to ``reference`` or, without one, as :func:`engine.normalization.resolve` gives it."""
    if reference is not None and method in ("macenko", "vahadane"):
        from engine.stain import get_normalizer

        return get_normalizer(method, reference)
    from engine.normalization import resolve

    return resolve(card, method)[0]


def predict_tiles(task, card: ModelCard, tiles: list, *, method: str, reference: np.ndarray | None) -> dict:
    """Predict ``tiles`` (``state.TileRecord``s) with the stain normalisation ``method`` (``card`` by default: the model
    card's); the page's saved result (user's names, never server paths). Another choice than the card's comes back as
    ``result.normalization_warning``."""
    from engine.predict import TilePredictor

    task.note("loading the model")
    reference = reference if method in ("macenko", "vahadane") else None
    predictor = TilePredictor(card, normalizer=method if reference is None else make_normalizer(card, method, reference))
    normalize = predictor.normalizer is not None
    with inference_slot(on_wait=_waiting(task)):  # one global limit on heavy inference across all users
        task.note("loading the model (once per server process)")
        predictor.model  # noqa: B018 - loaded here, so the wait is named on the page
        task.note("predicting")
        result = predictor.predict_paths([t.path for t in tiles], progress=task.progress)
    names = {t.path: t.name for t in tiles}
    frame = result.to_frame()
    frame["path"] = frame["path"].map(lambda p: names.get(p, p))
    stored = {t.path: Path(t.path).name for t in tiles}  # messages name the user's file, not the stored copy
    frame["error"] = [e if not isinstance(e, str) else e.replace(f"'{stored[p]}'", f"'{names[p]}'") for p, e in zip(result.to_frame()["path"], frame["error"])]
    return {"card_id": card.id, "result": result, "frame": frame, "paths": [t.path for t in tiles], "tiles": [t.sha256 for t in tiles],
            "normalize": normalize, "method": method, "reference": reference}


def export_frame(view: pd.DataFrame, result, threshold: float, *, normalized: bool) -> pd.DataFrame:
    """The table as shown and downloaded: the model id and threshold on every row; no column that is all empty
    (``normalized`` without stain normalisation, ``error`` when every tile was read, ``in_domain`` / ``domain_score`` /
    ``uncertainty`` for a model whose card has no detector or dropout)."""
    from engine.forward import EXTRA_FIELDS

    out = view.copy()
    if not normalized:
        out = out.drop(columns=["normalized"], errors="ignore")
    for column in ("error", *EXTRA_FIELDS):
        if column in out and out[column].isna().all():
            out = out.drop(columns=[column])
    out.insert(1, "model_id", result.model_id)
    out.insert(out.columns.get_loc("label"), "threshold", round(float(threshold), 4))
    return out


# ----------------------------------------------------------------------------------------- Grad-CAM
_explainers: dict[tuple, object] = {}
_explain_locks: dict[int, threading.Lock] = {}  # one map at a time per Explainer (its tap models are built lazily)
MAX_EXPLAINERS = 4


def _explainer_key(card: ModelCard) -> tuple:
    from engine.config import get_settings

    return (card.weights_sha256, str(card.folder), card.classes, card.positive_classes, card.input_px, str(get_settings().cache_dir))


def explainer(card: ModelCard):
    """One Explainer per model file (keyed by the weights' sha256) and cache folder per process, shared by every
    session; the Keras model itself is loaded once per process by ``engine.registry``."""
    from engine.gradcam import Explainer

    key = _explainer_key(card)
    with _explainer_lock:
        found = _explainers.get(key)
        if found is None:
            if len(_explainers) >= MAX_EXPLAINERS:
                _explainers.pop(next(iter(_explainers)))
            found = _explainers[key] = Explainer.from_card(card)
            _explain_locks.setdefault(id(found), threading.Lock())
        return found


def loaded_explainer(card: ModelCard):
    """The shared Explainer when this process has already built it, else None (the page loads it in the background)."""
    key = _explainer_key(card)
    with _explainer_lock:
        return _explainers.get(key)


def load_explainer(task, card: ModelCard):
    task.note("loading the model (once per server process)")
    return explainer(card)


def _explain(ex, rgb, **kwargs):
    with _explain_locks.setdefault(id(ex), threading.Lock()):
        return ex.explain(rgb, **kwargs)


def explain_tile(task, card: ModelCard, rgb: np.ndarray, name: str, path: str, *, method: str, layer: str | None, target: str) -> dict:
    """One saliency map; the page's saved result."""
    task.note("loading the model")
    ex = explainer(card)
    with inference_slot(on_wait=_waiting(task)):
        task.note("computing")
        result = _explain(ex, rgb, method=method, layer=layer, target=target, name=name)
    return {"result": result, "path": path, "name": name, "card_id": card.id, "token": uuid.uuid4().hex}


def explain_gallery(task, card: ModelCard, rows: list[tuple[str, str]], *, method: str, layer: str | None, target: str) -> list[dict]:
    """Saliency maps of ``rows`` = [(name, tile file)], with progress and cancel between tiles."""
    ex = explainer(card)
    items = []
    task.progress(0, len(rows))
    with inference_slot(on_wait=_waiting(task)):
        for i, (name, path) in enumerate(rows):
            res = _explain(ex, read_image(path, name=name), method=method, layer=layer, target=target, name=name)
            items.append({"name": name, "path": path, "result": res, "token": uuid.uuid4().hex})
            task.progress(i + 1, len(rows))
    return items
