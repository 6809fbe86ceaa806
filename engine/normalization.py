"""Stain normalisation bound to the model card.

A model trained on Macenko-normalised tiles carries its target (stain vectors and maximum
concentrations) in its folder (``stain_reference.json``, sha256 on the card, values repeated on the
card). Everything that feeds tiles to a model asks :func:`normalizer_for_card` for *exactly* that
normaliser, and :func:`choice_warning` for the words to show when a user picks something else.
A model trained without normalisation gets None: tiles go in as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from engine.errors import IncompatibleModelError

REFERENCE_FILE = "stain_reference.json"
#: what a page or the CLI may ask for: the card's setting, or an explicit override
CHOICES = ("card", "none", "macenko", "vahadane")


def reference_payload(normalizer, source: str) -> dict:
    """The bundle's content for a fitted (or default-target) normaliser."""
    return {"method": normalizer.method, "stain_matrix": np.round(np.asarray(normalizer.target_stain_matrix, float), 6).tolist(),
            "max_concentrations": np.round(np.asarray(normalizer.target_max_concentrations, float), 6).tolist(), "source": source}


def write_reference(folder: Path, normalizer, source: str) -> dict:
    """Write ``stain_reference.json`` into a model folder; returns the card's ``normalization_reference`` entry."""
    payload = reference_payload(normalizer, source)
    raw = (json.dumps(payload, indent=2) + "\n").encode()
    (Path(folder) / REFERENCE_FILE).write_bytes(raw)
    return {"file": REFERENCE_FILE, "sha256": hashlib.sha256(raw).hexdigest(), **payload}


def build_normalizer(method: str, stain_matrix=None, max_concentrations=None):
    """A normaliser of ``method`` with the given target (None: the published Macenko target)."""
    from engine.stain import get_normalizer

    normalizer = get_normalizer(method)
    if stain_matrix is not None:
        normalizer.stain_matrix_ = np.asarray(stain_matrix, dtype=np.float64)
        normalizer.max_concentrations_ = np.asarray(max_concentrations, dtype=np.float64)
    return normalizer


def normalizer_for_card(card):
    """The normaliser the card prescribes (its bundled reference, sha256-checked), or None for ``normalization: none``."""
    method = (card.normalization or "none").lower()
    if method == "none":
        return None
    ref = card.normalization_reference or {}
    if not ref:
        return build_normalizer(method)  # an older or imported card naming a method without a reference: its default target
    stain_matrix, maxima = ref.get("stain_matrix"), ref.get("max_concentrations")
    if ref.get("file") and card.folder is not None:
        path = Path(card.folder) / ref["file"]
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IncompatibleModelError(f"Model '{card.id}': its stain-normalisation reference '{ref['file']}' is missing.", path=str(path)) from exc
        if ref.get("sha256") and hashlib.sha256(raw).hexdigest() != ref["sha256"]:
            raise IncompatibleModelError(f"Model '{card.id}': its stain-normalisation reference does not match the card (sha256).",
                                         "Restore the file or retrain the model.", path=str(path))
        data = json.loads(raw)
        stain_matrix, maxima = data["stain_matrix"], data["max_concentrations"]
    return build_normalizer(method, stain_matrix, maxima)


def describe(card) -> str:
    """The card's normalisation in words, e.g. ``Macenko (reference: …)`` or ``none``."""
    method = (card.normalization or "none").lower()
    if method == "none":
        return "none"
    source = (card.normalization_reference or {}).get("source") or "the published Macenko target"
    return f"{method.capitalize()} to {source}"


def resolve(card, choice: str | None):
    """``(normaliser or None, warning or None)`` for a user's choice.

    ``card`` (or None), or the card's own method: the card's normaliser with its bundled reference, no
    warning. Anything else: that normaliser (default target) and a warning naming the card's setting.
    """
    choice = (choice or "card").lower()
    if choice not in CHOICES:
        raise IncompatibleModelError(f"Unknown stain normalisation '{choice}'.", f"Choose one of: {', '.join(CHOICES)}.")
    if choice in ("card", (card.normalization or "none").lower()):
        return normalizer_for_card(card), None
    return (None if choice == "none" else build_normalizer(choice)), choice_warning(card, choice)


def choice_warning(card, choice: str | None) -> str | None:
    """Words for a normalisation choice that differs from the card's (None when it is the card's)."""
    method = (card.normalization or "none").lower()
    choice = (choice or "card").lower()
    if choice in ("card", method):
        return None
    check = (card.extra or {}).get("normalization_check") or {}
    mine, other = check.get("card") or {}, check.get("other") or {}
    consequence = ""
    if other.get("setting") == choice and other.get("accuracy_multiclass") is not None and mine.get("accuracy_multiclass") is not None:
        consequence = (f" Measured on its held-out tiles: accuracy {other['accuracy_multiclass']:.2f} with '{choice}' against "
                       f"{mine['accuracy_multiclass']:.2f} with the card's setting.")
    return (f"Stain normalisation '{choice}' differs from this model's card, which prescribes {describe(card)}: "
            f"the model was not trained on such tiles, so its scores may be wrong.{consequence}")
