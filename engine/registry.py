"""Model registry: one folder per model under the models directory, each with weights and a card.

A model folder holds ``card.json`` (the card: id, classes, positive classes, input size, microns
per pixel, normalisation, threshold, metrics, weights sha256, how to reproduce) and the weights file
it names (``model.keras``). :class:`Registry` lists and loads them; loading checks the weights'
sha256 against the card and the model's input/output shapes against the card, and always uses
Keras safe mode (no ``Lambda`` layers, no arbitrary code). Loaded models are kept once per process.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.cache import sha256_file
from engine.config import get_settings
from engine.errors import IncompatibleModelError, InvalidInputError, ModelNotFoundError, storage_errors
from engine.forward import TTA_VIEWS

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
REQUIRED_KEYS = ("id", "task", "architecture", "classes", "input_px", "threshold", "weights_file", "weights_sha256")


#: legacy metric names (cards written before the typed schema) → the schema's names
_LEGACY_METRIC_KEYS = {"auc_malignant": "auc", "accuracy_3class": "accuracy_multiclass", "accuracy_binary_at_threshold": "accuracy",
                       "f1_at_threshold": "f1", "n_malignant": "n_positive", "_confusion": "confusion"}


@dataclass(frozen=True)
class SplitMetrics:
    """Metrics of a model on one split (the one metric schema of every card).

    ``score`` is the summed probability of the positive classes; ``auc``, ``f1``, ``accuracy``
    (binary, at ``threshold``), ``precision`` and ``recall`` are about "positive class or not";
    ``accuracy_multiclass`` and ``balanced_accuracy`` about the arg-max class. ``ece`` is the top-label
    expected calibration error (10 bins) of the probabilities as predicted (after the card's
    calibration), ``ece_uncalibrated`` before it. ``in_domain_fraction``: share of the tiles inside the
    out-of-domain threshold. Unknown keys are kept in ``extra``.
    """

    split: str
    n: int
    description: str = ""
    n_positive: int | None = None
    auc: float | None = None
    f1: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    threshold: float | None = None
    accuracy_multiclass: float | None = None
    balanced_accuracy: float | None = None
    ece: float | None = None
    ece_uncalibrated: float | None = None
    in_domain_fraction: float | None = None
    predicted_fraction_max: float | None = None
    confusion: tuple | None = None
    confusion_binary: tuple | None = None
    cv_sd: dict | None = None
    extra: dict = field(default_factory=dict, compare=False)

    _FLOATS = ("auc", "f1", "accuracy", "precision", "recall", "threshold", "accuracy_multiclass", "balanced_accuracy", "ece",
               "ece_uncalibrated", "in_domain_fraction", "predicted_fraction_max")

    @classmethod
    def from_dict(cls, data: dict) -> SplitMetrics:
        if not isinstance(data, dict) or "split" not in data:
            raise IncompatibleModelError(f"A metrics entry of a model card has no 'split': {str(data)[:120]}")
        data = {_LEGACY_METRIC_KEYS.get(k, k): v for k, v in data.items()}
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: v for k, v in data.items() if k in known}
        try:
            kw["n"] = int(data.get("n") or 0)
            if kw.get("n_positive") is not None:
                kw["n_positive"] = int(kw["n_positive"])
            for k in cls._FLOATS:
                if kw.get(k) is not None:
                    kw[k] = float(kw[k])
        except (TypeError, ValueError) as exc:
            raise IncompatibleModelError(f"Metrics of split '{data.get('split')}' on a model card are not numbers ({exc}).") from exc
        for k in ("confusion", "confusion_binary"):
            if kw.get(k) is not None:
                kw[k] = tuple(tuple(int(v) for v in row) for row in kw[k])
        kw["split"] = str(kw["split"])
        return cls(**kw, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        for k in ("confusion", "confusion_binary"):
            if k in out:
                out[k] = [list(row) for row in out[k]]
        out.update(self.extra)
        return out

    def get(self, key: str, default=None):
        """Read a metric by name (schema fields first, then ``extra``)."""
        if key in self.__dataclass_fields__ and key != "extra":
            value = getattr(self, key)
            return default if value is None else value
        return self.extra.get(key, default)

    def summary(self) -> dict[str, float]:
        """The headline numbers, for one-line summaries."""
        keys = ("auc", "accuracy_multiclass", "accuracy", "f1", "ece", "in_domain_fraction")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


#: quality-check states of a card (``card.quality["status"]``)
QUALITY_PASSED, QUALITY_FAILED = "passed", "failed"


@dataclass(frozen=True)
class ModelCard:
    """A model's card (``card.json``). Unknown keys are kept in ``extra``.

    Beyond the identity and input fields: ``metrics`` (typed :class:`SplitMetrics`), ``calibration``
    (``{"method": "temperature", "temperature": T, ...}``), ``domain`` (out-of-domain detector: file,
    sha256, threshold, ...), ``uncertainty`` (``{"method": "mc-dropout", "samples": T, "rate": r}``), ``tta``
    (``{"views": 4, ...}``: features averaged over the tile's rotations),
    ``normalization_reference`` (the bundled target of the card's stain normalisation) and ``quality``
    (``{"status": "passed" | "failed", "reasons": [...]}``).
    """

    id: str
    task: str
    architecture: str
    classes: tuple[str, ...]
    input_px: int
    threshold: float
    weights_file: str
    weights_sha256: str
    positive_classes: tuple[str, ...] = ()
    name: str = ""
    version: str = "1"
    score_name: str = "score"
    mpp: float | None = None
    mpp_method: str = ""
    normalization: str = "none"
    normalization_reference: dict | None = None
    threshold_method: str = ""
    metrics: tuple[SplitMetrics, ...] = ()
    calibration: dict = field(default_factory=dict)
    domain: dict = field(default_factory=dict)
    uncertainty: dict = field(default_factory=dict)
    tta: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    training_data: str = ""
    reproduce: str = ""
    intended_use: str = ""
    limitations: str = ""
    class_descriptions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict, compare=False)
    folder: Path | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> ModelCard:
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise IncompatibleModelError(f"Model card in '{folder}' lacks {', '.join(missing)}.", path=str(folder))
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "folder")}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["classes"] = tuple(data["classes"])
        kwargs["positive_classes"] = tuple(data.get("positive_classes") or ())
        kwargs["metrics"] = tuple(SplitMetrics.from_dict(m) for m in (data.get("metrics") or ()))
        kwargs["input_px"] = int(data["input_px"])
        kwargs["threshold"] = float(data["threshold"])
        if data.get("mpp") is not None:
            kwargs["mpp"] = float(data["mpp"])
        for key in ("calibration", "domain", "uncertainty", "tta", "quality"):
            kwargs[key] = dict(data.get(key) or {})
        card = cls(**kwargs, extra={k: v for k, v in data.items() if k not in known}, folder=folder)
        card.validate()
        return card

    def validate(self) -> None:
        if len(self.classes) < 2:
            raise IncompatibleModelError(f"Model '{self.id}' card lists fewer than two classes.")
        unknown = set(self.positive_classes) - set(self.classes)
        if unknown:
            raise IncompatibleModelError(f"Model '{self.id}' card: positive classes {sorted(unknown)} are not among its classes.")
        if not 0.0 <= self.threshold <= 1.0:
            raise IncompatibleModelError(f"Model '{self.id}' card: threshold {self.threshold} is not in [0, 1].")
        if self.input_px < 8:
            raise IncompatibleModelError(f"Model '{self.id}' card: input_px {self.input_px} is too small.")
        t = self.calibration.get("temperature", 1.0)
        if not (isinstance(t, (int, float)) and 0 < t < 1000):
            raise IncompatibleModelError(f"Model '{self.id}' card: calibration temperature {t!r} is not a positive number.")
        if self.normalization not in ("none", "macenko", "vahadane"):
            raise IncompatibleModelError(f"Model '{self.id}' card: unknown stain normalisation '{self.normalization}'.")
        if self.tta.get("views", 1) not in TTA_VIEWS:
            raise IncompatibleModelError(f"Model '{self.id}' card: test-time augmentation with {self.tta.get('views')!r} views; "
                                         f"use {', '.join(map(str, TTA_VIEWS[:-1]))} or {TTA_VIEWS[-1]}.")

    @property
    def positive_indices(self) -> tuple[int, ...]:
        """Indices of the classes whose probabilities add up to the score (default: the last class)."""
        if self.positive_classes:
            return tuple(self.classes.index(c) for c in self.positive_classes)
        return (len(self.classes) - 1,)

    @property
    def weights_path(self) -> Path:
        if self.folder is None:
            raise ModelNotFoundError(f"Model '{self.id}' has no folder.")
        return self.folder / self.weights_file

    @property
    def temperature(self) -> float:
        """The calibration temperature prediction applies (1.0: uncalibrated)."""
        return float(self.calibration.get("temperature", 1.0)) if self.calibration.get("method", "temperature") == "temperature" else 1.0

    @property
    def tta_views(self) -> int:
        """Views per tile of the card's test-time augmentation (1: none; see :mod:`engine.forward`)."""
        return int(self.tta.get("views", 1))

    @property
    def quality_failed(self) -> bool:
        """Whether the training pipeline's quality check failed (such a model is never selected by default)."""
        return self.quality.get("status") == QUALITY_FAILED

    @property
    def quality_reason(self) -> str:
        return "; ".join(str(r) for r in self.quality.get("reasons") or ())

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("extra", "folder", "metrics")}
        data["classes"], data["positive_classes"] = list(self.classes), list(self.positive_classes)
        data["metrics"] = [m.to_dict() for m in self.metrics]
        data.update(self.extra)
        return data

    def metric(self, split: str) -> SplitMetrics | None:
        return next((m for m in self.metrics if m.split == split), None)

    def headline_metrics(self) -> dict:
        """The headline metrics (floats) of the test split (or the first listed), for summaries."""
        m = self.metric("test") or (self.metrics[0] if self.metrics else None)
        return {"split": m.split, "n": m.n, **m.summary()} if m is not None else {}


def read_card(folder: Path) -> ModelCard:
    card_path = folder / CARD_FILE
    try:
        data = json.loads(card_path.read_text())
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"No {CARD_FILE} in '{folder.name}'.", path=str(folder)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IncompatibleModelError(f"The card of '{folder.name}' is not valid JSON ({exc}).", path=str(folder)) from exc
    return ModelCard.from_dict(data, folder=folder)


class Registry:
    """The models in one folder. ``Registry()`` uses the configured models directory."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else get_settings().models_dir

    def cards(self) -> list[ModelCard]:
        """All valid cards, sorted by id; broken folders are logged and skipped (see :meth:`problems`)."""
        return [c for c in self._scan() if isinstance(c, ModelCard)]

    def problems(self) -> dict[str, str]:
        """Folders that look like models but whose card cannot be read: ``{folder: message}``."""
        return {item[0]: item[1] for item in self._scan() if isinstance(item, tuple)}

    def _scan(self) -> list:
        out: list = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CARD_FILE).exists()):
            try:
                out.append(read_card(folder))
            except Exception as err:  # noqa: BLE001 - one broken card must not hide the others
                log.warning("skipping model folder %s: %s", folder, err)
                out.append((folder.name, str(err)))
        return out

    def ids(self) -> list[str]:
        return [c.id for c in self.cards()]

    def get(self, model_id: str | None = None) -> ModelCard:
        """The card of ``model_id`` (default: the configured default model, else the first one)."""
        cards = self.cards()
        if not cards:
            raise ModelNotFoundError(f"No models are registered in '{self.root}'.", "Train one on the Training page or copy a model folder there.")
        if model_id is None:  # the configured default, else the first model that passed its quality check
            wanted = get_settings().default_model
            usable = [c for c in cards if not c.quality_failed] or cards
            return next((c for c in usable if c.id == wanted), usable[0])
        for card in cards:
            if card.id == model_id:
                return card
        raise ModelNotFoundError(f"No model with id '{model_id}'. Registered: {', '.join(c.id for c in cards)}.")

    def load(self, model_id: str | None = None):
        """``(card, keras_model)``; the weights' sha256 and the shapes are checked against the card."""
        card = self.get(model_id)
        return card, load_model_for_card(card)


_load_lock = threading.Lock()


def load_model_for_card(card: ModelCard):
    """Load (once per process) and check the Keras model a card describes."""
    path = card.weights_path
    if not path.exists():
        raise ModelNotFoundError(f"Model '{card.id}': weights file '{card.weights_file}' is missing.", path=str(path))
    stat = path.stat()
    with _load_lock:
        return _load_checked(str(path), stat.st_mtime_ns, stat.st_size, card.weights_sha256, card.input_px, len(card.classes))


@functools.lru_cache(maxsize=8)
def _load_checked(path: str, _mtime: int, _size: int, sha256: str, input_px: int, n_classes: int):
    actual = sha256_file(Path(path))
    if actual != sha256:
        raise IncompatibleModelError(
            f"The weights of '{Path(path).parent.name}' do not match their card (sha256 {actual[:12]}… ≠ {sha256[:12]}…).",
            "The file was changed or damaged: restore it, or re-register the model with its new hash.",
            path=path,
        )
    model = load_keras_file(path)
    check_shapes(model, input_px, n_classes, name=Path(path).parent.name)
    return model


def load_keras_file(path: str | Path):
    """Load a ``.keras`` file in safe mode; unsafe or unreadable files raise :class:`IncompatibleModelError`."""
    from engine.privacy import strip_server_paths  # Keras quotes the full server path in its errors
    from engine.runtime import keras

    path = Path(path)
    if path.suffix != ".keras":
        raise IncompatibleModelError(f"'{path.name}' is not a .keras model file.", "Save models with model.save('name.keras').", path=str(path))
    try:
        return keras().models.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        text = str(exc)
        if "Lambda" in text or "safe_mode" in text or "unsafe" in text.lower():
            raise IncompatibleModelError(
                f"'{path.name}' contains code (a Lambda layer or custom object) and was refused for safety.",
                "Rebuild the model from built-in Keras layers only.",
                path=str(path),
            ) from exc
        raise IncompatibleModelError(f"'{path.name}' cannot be loaded as a Keras model ({strip_server_paths(text)[:300]}).", path=str(path)) from exc
    except Exception as exc:  # noqa: BLE001 - zip/h5 errors, TypeError for unknown classes, …
        detail = strip_server_paths(str(exc))[:300]
        raise IncompatibleModelError(f"'{path.name}' cannot be loaded as a Keras model ({type(exc).__name__}: {detail}).", path=str(path)) from exc


def check_shapes(model, input_px: int, n_classes: int, *, name: str = "model") -> None:
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise IncompatibleModelError(f"'{name}' takes input of shape {model.input_shape}; HistoDash needs (px, px, 3) RGB tiles.")
    if shape[1] not in (None, input_px) or shape[2] not in (None, input_px):
        raise IncompatibleModelError(f"'{name}' takes {shape[1]}×{shape[2]} tiles but its card says {input_px} px.")
    out = model.output_shape
    units = out[-1] if isinstance(out, tuple) else None
    expected = {n_classes} | ({1} if n_classes == 2 else set())
    if units not in expected:
        raise IncompatibleModelError(f"'{name}' outputs {units} values but its card lists {n_classes} classes.")


def validate_model_id(model_id: str) -> str:
    if not model_id or "/" in model_id or "\\" in model_id or model_id.startswith("."):
        raise InvalidInputError(f"'{model_id}' is not a valid model id (letters, digits, '-', '_').")
    return model_id


# ----------------------------------------------------------------------------- importing untrusted models

#: what a ``.keras`` archive may hold
KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")
#: Keras' own serialisation markers (not classes)
KERAS_MARKERS = ("__keras_tensor__", "__tensor__", "__numpy__", "__tuple__")
#: layers that carry Python code
CODE_CLASSES = ("Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda")
MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_KERAS_UNCOMPRESSED = 4 * 1024**3
MAX_CONFIG_DEPTH = 100  # nesting of config.json ([ and {); Keras' own configs stay under ~30 (a nested model adds ~8)
MAX_PARAMETERS = 200_000_000  # weights in model.weights.h5 (ResNet50: 25.6 M), counted from its dataset shapes
#: sizing fields of a layer's config and their largest accepted value (checked before anything is built)
MAX_LAYER_SIZES = {"units": 65_536, "filters": 65_536, "input_dim": 10_000_000, "output_dim": 65_536, "kernel_size": 256,
                   "pool_size": 256, "size": 64, "num_heads": 1024, "key_dim": 65_536, "embed_dim": 65_536}
MAX_INPUT_SIDE = 8192  # an Input's spatial dimensions
NUMERIC_CHECK_TILES = 4  # synthetic tissue-like tiles run through an imported model

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _refuse(message: str, hint: str = "Export the model with model.save('name.keras') from built-in Keras layers only.") -> IncompatibleModelError:
    return IncompatibleModelError(message, hint)


def _keras_object_problem(node: dict) -> str | None:
    """Why one serialised Keras object is not acceptable (None when it is a known built-in)."""
    import importlib

    class_name = str(node.get("class_name"))
    module = node.get("module")
    if class_name in CODE_CLASSES:
        return f"a {'Lambda' if 'ambda' in class_name else class_name} layer (Python code inside the model)"
    if class_name in KERAS_MARKERS and module is None:
        return None
    if class_name.startswith("__"):
        return f"a serialised object of kind '{class_name}'"
    if not isinstance(module, str) or not (module == "keras" or module.startswith("keras.")):
        return f"a custom or unknown object '{module}.{class_name}' (only built-in Keras objects are accepted)"
    registered = node.get("registered_name")
    if isinstance(registered, str) and ">" in registered:
        return f"a custom registered object '{registered}'"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return f"an object from an unknown Keras module '{module}'"
    if class_name == "function":  # a built-in function by name, e.g. an activation
        name = node.get("config")
        return None if isinstance(name, str) and callable(getattr(mod, name, None)) else f"an unknown function '{module}.{name}'"
    if not isinstance(getattr(mod, class_name, None), type):
        return f"an unknown class '{module}.{class_name}'"
    return None


def inspect_keras_archive(raw: bytes, name: str = "model.keras") -> dict:
    """Check a ``.keras`` file's structure and config *without loading it*; returns its config.

    Refused (:class:`IncompatibleModelError`): anything that is not a zip with Keras' members, legacy
    HDF5 or pickled models, SavedModel folders, Lambda layers, custom or unknown classes. Nothing is
    unpickled or executed: only ``config.json`` is parsed (as JSON).
    """
    if not raw:
        raise _refuse(f"'{name}' is empty (0 bytes).")
    if raw.startswith(_HDF5_MAGIC) or name.lower().endswith((".h5", ".hdf5")):
        raise _refuse(
            f"'{name}' is a legacy Keras 2 HDF5 file: it cannot be imported here.",
            "HDF5 weights can only be loaded by layer name into one of HistoDash's named architectures "
            "(engine.architectures.load_legacy_h5_by_name, by an administrator), or re-saved as .keras with Keras 3.",
        )
    if raw[:1] == b"\x80" or name.lower().endswith((".pkl", ".pickle", ".joblib", ".pt", ".pth")):
        raise _refuse(f"'{name}' looks like a pickled model: pickles can run code when loaded and are never opened.")
    io_bytes = io.BytesIO(raw)
    if not zipfile.is_zipfile(io_bytes):
        raise _refuse(f"'{name}' is not a Keras model file (a .keras file is a zip archive).")
    try:
        with zipfile.ZipFile(io_bytes) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if any(n.endswith("saved_model.pb") for n in names):
                raise _refuse(f"'{name}' holds a TensorFlow SavedModel: SavedModels can run graph code and are not imported.", "Re-save the model with Keras 3 as .keras.")
            unexpected = [n for n in names if n not in KERAS_MEMBERS and not n.startswith("assets/")]
            if "config.json" not in names or "model.weights.h5" not in names or unexpected:
                extra = f" (unexpected: {', '.join(unexpected[:5])})" if unexpected else ""
                raise _refuse(f"'{name}' is a zip archive but not a Keras 3 model file{extra}.")
            if any(".." in n.split("/") or n.startswith("/") for n in names):
                raise _refuse(f"'{name}' has members that point outside the archive.")
            if sum(i.file_size for i in infos) > MAX_KERAS_UNCOMPRESSED or zf.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise _refuse(f"'{name}' expands to an unreasonable size.")
            config_text = zf.read("config.json")
    except IncompatibleModelError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
        raise _refuse(f"'{name}' is a damaged zip archive ({type(exc).__name__}).") from exc
    depth = json_depth(config_text)
    if depth > MAX_CONFIG_DEPTH:
        raise _refuse(f"'{name}' has a config.json nested {depth} levels deep, over the limit of {MAX_CONFIG_DEPTH}: refused before parsing it.")
    try:
        config = json.loads(config_text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _refuse(f"'{name}' has an unreadable config.json ({type(exc).__name__}).") from exc
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                problem = _keras_object_problem(node)
                if problem:
                    raise _refuse(f"'{name}' was refused: it contains {problem}. Models with code or custom objects are not imported, for safety.")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if not isinstance(config, dict) or "class_name" not in config:
        raise _refuse(f"'{name}' has no model in its config.json.")
    _check_layer_sizes(config, name)
    return config


def json_depth(text: bytes | str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text, without parsing it (strings are blanked out first)."""
    import numpy as np

    raw = text.encode() if isinstance(text, str) else bytes(text)
    raw = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', raw)
    arr = np.frombuffer(raw, np.uint8)
    step = (np.isin(arr, (ord("["), ord("{")))).astype(np.int64) - (np.isin(arr, (ord("]"), ord("}")))).astype(np.int64)
    return int(np.cumsum(step).max(initial=0))


def _check_layer_sizes(config: dict, name: str) -> None:
    """Every sizing field of every layer within :data:`MAX_LAYER_SIZES`, every Input side within MAX_INPUT_SIDE."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        layer = node.get("config") if isinstance(node.get("config"), dict) and "class_name" in node else None
        if layer is not None:
            for key, limit in MAX_LAYER_SIZES.items():
                values = layer.get(key)
                values = values if isinstance(values, (list, tuple)) else [values]
                for v in values:
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit:
                        raise _refuse(f"'{name}' was refused: layer '{layer.get('name', node.get('class_name'))}' has {key} = {v:,}, "
                                      f"over the limit of {limit:,} (it would exhaust the server's memory when built).")
            shape = layer.get("batch_shape") or layer.get("batch_input_shape") or layer.get("shape")
            if node.get("class_name") == "InputLayer" and isinstance(shape, (list, tuple)):
                sides = [d for d in shape[1:-1] if isinstance(d, int)]
                if any(d > MAX_INPUT_SIDE for d in sides):
                    raise _refuse(f"'{name}' was refused: its input is {shape}, larger than {MAX_INPUT_SIDE} px a side.")
        stack.extend(node.values())


def count_weights(h5_bytes: bytes, name: str) -> int:
    """Number of weights stored in a ``model.weights.h5`` (from dataset shapes; no array is read)."""
    import h5py

    total = 0

    def visit(_key, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            n = 1
            for d in obj.shape:
                n *= int(d)
            total += n

    try:
        with h5py.File(io.BytesIO(h5_bytes), "r") as f:
            f.visititems(visit)
    except Exception as exc:  # noqa: BLE001 - a damaged weights file
        raise _refuse(f"'{name}' has a damaged weights file ({type(exc).__name__}).") from exc
    return total


def check_parameters(raw: bytes, name: str) -> int:
    """The weights a ``.keras`` file stores, refused over :data:`MAX_PARAMETERS` (checked before the model is built)."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        n = count_weights(zf.read("model.weights.h5"), name)
    if n > MAX_PARAMETERS:
        raise _refuse(f"'{name}' stores {n:,} weights, over the limit of {MAX_PARAMETERS:,}.")
    return n


def synthetic_tissue_tiles(px: int, n: int = NUMERIC_CHECK_TILES, seed: int = 15):
    """``n`` H&E-like RGB tiles (pink stroma, purple nuclei, white gaps), float32 0–255, for numeric checks of a model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px]
    tiles = []
    for _ in range(n):
        img = np.empty((px, px, 3), np.float32)
        img[...] = (230, 150, 200)  # eosin
        for _ in range(max(3, px // 8)):  # nuclei
            cy, cx, r = rng.integers(0, px), rng.integers(0, px), rng.integers(2, max(3, px // 10))
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 40, 150)
        gap = (yy - rng.integers(0, px)) ** 2 + (xx - rng.integers(0, px)) ** 2 < (px // 6) ** 2
        img[gap] = (245, 245, 245)  # glass
        tiles.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255))
    return np.stack(tiles).astype(np.float32)


def check_outputs(model, input_px: int, n_classes: int, name: str) -> None:
    """Run synthetic tissue tiles (and a blank one): outputs must be finite probabilities (in [0, 1], summing to 1)."""
    import numpy as np

    x = np.concatenate([synthetic_tissue_tiles(input_px), np.full((1, input_px, input_px, 3), 255.0, np.float32)])
    out = np.asarray(model(x, training=False), dtype=np.float64)
    out = out.reshape(len(x), -1)
    if not np.all(np.isfinite(out)):
        raise _refuse(f"'{name}' gives non-finite outputs (NaN or infinite) on synthetic tissue tiles.",
                      "Check the model's last layers and its weights; a model that gives NaN cannot be scored.")
    if out.min() < -1e-6 or out.max() > 1 + 1e-6:
        raise _refuse(f"'{name}' gives outputs outside 0–1 (from {out.min():.3g} to {out.max():.3g}) on synthetic tissue tiles: they are not probabilities.",
                      "End the model with a softmax (several classes) or a sigmoid (one unit).")
    if out.shape[1] == n_classes and n_classes > 1:
        sums = out.sum(axis=1)
        if np.abs(sums - 1).max() > 1e-3:
            raise _refuse(f"'{name}' gives class probabilities that do not sum to 1 (e.g. {sums[np.argmax(np.abs(sums - 1))]:.4g}) on synthetic tissue tiles.",
                          "End the model with a softmax layer.")


def _name_list(value) -> list[str]:
    """A form field of names, as a list or as comma-separated text: stripped, blanks dropped."""
    items = value.split(",") if isinstance(value, str) else (value or [])
    return [str(c).strip() for c in items if str(c).strip()]


def card_from_fields(fields: dict, sha256: str, *, file_name: str = "") -> dict:
    """A complete card from the import form's fields (validated; raises InvalidInputError / IncompatibleModelError)."""
    model_id = str(fields.get("id") or "").strip()
    if not MODEL_ID_RE.fullmatch(model_id):
        raise InvalidInputError(f"'{model_id}' is not a valid model id: 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    classes = _name_list(fields.get("classes"))
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise InvalidInputError("List at least two classes, each once, in the order of the model's outputs.")
    positive = _name_list(fields.get("positive_classes"))
    try:
        input_px = int(fields.get("input_px"))
        threshold = float(fields.get("threshold", 0.5))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("Input size and threshold must be numbers.") from exc
    if not 8 <= input_px <= 4096:
        raise InvalidInputError(f"Input size {input_px} px must be between 8 and 4096.")
    mpp = fields.get("mpp")
    if mpp in ("", 0, 0.0):
        mpp = None
    if mpp is not None:
        try:
            mpp = float(mpp)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"Microns per pixel '{mpp}' is not a number.") from exc
        if not 0.01 <= mpp <= 100:
            raise InvalidInputError(f"{mpp} µm/px is not a plausible resolution (0.01–100).")
    card = {
        "id": model_id, "name": str(fields.get("name") or model_id), "task": "tile-classification", "architecture": "imported",
        "classes": classes, "positive_classes": positive, "score_name": f"p({' + '.join(positive) or classes[-1]})",
        "input_px": input_px, "mpp": mpp, "normalization": str(fields.get("normalization") or "none"), "threshold": threshold,
        "threshold_method": str(fields.get("threshold_method") or "stated by the importer"), "metrics": [],
        "training_data": str(fields.get("training_data") or "not stated (imported model)"),
        "intended_use": str(fields.get("intended_use") or ""), "limitations": "Imported through the Models page; not validated by HistoDash.",
        "weights_file": "model.keras", "weights_sha256": sha256,
        "imported": {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file": Path(file_name).name if file_name else None},
    }
    ModelCard.from_dict(card)  # positive ⊆ classes, threshold in [0, 1]
    return card


def import_model(raw: bytes, card_fields: dict, models_dir: Path | str | None = None, *, file_name: str = "model.keras") -> ModelCard:
    """Import an untrusted ``.keras`` upload as a new registered model; returns its card.

    Steps: refuse non-Keras files and inspect ``config.json`` (:func:`inspect_keras_archive`), validate
    the card fields, bound the config's nesting and layer sizes and the stored weights' count before
    anything is built, load in Keras safe mode from a hidden staging folder, check the input shape
    against the declared px and the outputs against the classes, run synthetic tissue tiles through it
    (finite probabilities summing to 1: :func:`check_outputs`), write
    ``model.keras`` + ``card.json`` (with the sha256) and move the folder into place. On any failure
    nothing is left in the models folder.
    """
    root = Path(models_dir) if models_dir is not None else get_settings().models_dir
    config = inspect_keras_archive(raw, file_name)
    check_parameters(raw, file_name)
    sha = hashlib.sha256(raw).hexdigest()
    card = card_from_fields(card_fields, sha, file_name=file_name)
    final = root / card["id"]
    if final.exists() or card["id"] in Registry(root).ids():
        raise InvalidInputError(f"A model with id '{card['id']}' is already registered.", "Choose another id.")
    staging = root / f".incoming-{secrets.token_hex(6)}"
    action = f"the model '{card['id']}' could not be saved"  # a full or read-only models folder: a message, nothing left
    with storage_errors(action):
        root.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    try:
        weights = staging / "model.keras"
        with storage_errors(action):
            weights.write_bytes(raw)
        model = load_keras_file(weights)
        check_shapes(model, card["input_px"], len(card["classes"]), name=file_name)
        if model.count_params() > MAX_PARAMETERS:
            raise _refuse(f"'{file_name}' has {model.count_params():,} parameters, over the limit of {MAX_PARAMETERS:,}.")
        check_outputs(model, card["input_px"], len(card["classes"]), file_name)
        card["keras_config_class"] = config.get("class_name")
        tmp = staging / f".{CARD_FILE}.tmp"
        with storage_errors(action):
            tmp.write_text(json.dumps(card, indent=2))
            os.replace(tmp, staging / CARD_FILE)
        try:
            os.rename(staging, final)
        except OSError as exc:
            raise InvalidInputError(f"A model with id '{card['id']}' is already registered.", "Choose another id.") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("imported model %s (sha256 %s)", card["id"], sha[:12])
    return read_card(final)
