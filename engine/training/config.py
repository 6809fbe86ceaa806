"""Training configuration: one schema for the page form, YAML files and the CLI.

The smallest valid configuration::

    data: ../shared/data/lc25000-lung-224
    architecture: small_cnn
    epochs: 1

Everything else has a default (:data:`SCHEMA` lists every key with its default and meaning;
``python -m engine train --print-defaults`` prints a full YAML file). :func:`load_config` reads a
YAML file, :func:`parse_config` a dict; both return a frozen :class:`TrainConfig` or raise
:class:`~engine.errors.InvalidInputError` naming the offending key (unknown keys are refused with a
"did you mean" hint, so a typo never silently trains with a default).

This module imports neither TensorFlow nor Keras: the dashboard page uses it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError
from engine.forward import TTA_VIEWS  # NumPy only: checking a configuration still needs no TensorFlow

#: Architectures of :mod:`engine.architectures` with their natural input size (kept in sync by a test;
#: duplicated here so that the page need not import Keras).
ARCHITECTURES: dict[str, int] = {
    "small_cnn": 96,
    "lung_cnn": 144,
    "lung_cnn_ms": 144,
    "resnet50_head": 512,
    "inceptionv3_head": 299,
    "efficientnetb0_head": 224,
}
ARCHITECTURE_LABELS = {
    "small_cnn": "Small CNN",
    "lung_cnn": "Lung CNN",
    "lung_cnn_ms": "Lung CNN, multi-scale features (as the default model)",
    "resnet50_head": "ResNet50 with a classification head",
    "inceptionv3_head": "InceptionV3 with a classification head",
    "efficientnetb0_head": "EfficientNetB0 with a classification head",
}
#: architectures that can be trained as an ensemble (``ensemble:``), and the most members one may have
ENSEMBLE_ARCHITECTURES = ("lung_cnn", "lung_cnn_ms")
MAX_MEMBERS = 8
MIN_INPUT_PX = {"inceptionv3_head": 75, "resnet50_head": 32, "efficientnetb0_head": 32}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
NORMALIZATIONS = ("none", "macenko")
SPLIT_METHODS = ("holdout", "kfold")
MIXED_PRECISION = ("auto", "on", "off")
LR_SCHEDULES = ("plateau", "cosine")
CALIBRATIONS = ("temperature", "none")
DOMAIN_METHODS = ("mahalanobis", "mahalanobis-blocks", "none")
#: card fields a configuration may set (``card:`` mapping); everything else on the card is measured by the pipeline
CARD_FIELDS = ("version", "class_descriptions", "labels", "score_name", "intended_use", "limitations", "training_data_note",
               "mpp_method", "reproduce")


@dataclass(frozen=True)
class Augmentation:
    """On-the-fly augmentation of training tiles (never of validation/test, never saved in the model)."""

    flip: bool = True  # random horizontal and vertical flips
    rotate90: bool = True  # random multiples of 90° (lossless)
    rotation: float = 0.0  # extra random rotation, as a fraction of a full turn (0.25 = up to ±90°)
    zoom: float = 0.1  # random zoom in/out up to this fraction
    shift: float = 0.1  # random translation up to this fraction of the side
    color_jitter: float = 0.05  # brightness/contrast/saturation/hue jitter strength (0 = off)
    hed_sigma: float = 0.0  # stain-space jitter (Tellez 2019): each H, E, DAB density scaled by U(1 - s, 1 + s) (0 = off; 0.05 "HED-light")
    hed_bias: float = 0.0  # stain-space jitter: each H, E, DAB density shifted by U(-b, b) (natural-log optical density)
    hed_vector: float = 0.0  # stain-space jitter: s.d. of noise on the stain vectors the densities are recombined with (stain hues vary)
    cutmix: float = 0.0  # CutMix (Yun et al. 2019): share of batches in which a random box of every tile is pasted from another tile of the batch, labels mixed by area (0 = off)

    @property
    def any(self) -> bool:
        return bool(self.flip or self.rotate90 or self.rotation or self.zoom or self.shift or self.color_jitter or self.hed_sigma or self.hed_bias or self.hed_vector
                    or self.cutmix)

    @property
    def colour(self) -> bool:
        return bool(self.color_jitter or self.hed_sigma or self.hed_bias or self.hed_vector)

    @property
    def stain(self) -> bool:
        return bool(self.hed_sigma or self.hed_bias or self.hed_vector)


@dataclass(frozen=True)
class Split:
    """How tiles are split, always by group (patient/slide) when the dataset has one."""

    method: str = "holdout"  # holdout: train/validation/test; kfold: stratified group k-fold
    val: float = 0.15
    test: float = 0.15
    folds: int = 5


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Field comments are the documentation of the YAML keys."""

    data: str  # folder of class subfolders, CSV manifest (path,label[,patient|group]) or .zip of class folders
    architecture: str = "small_cnn"
    input_px: int | None = None  # default: the architecture's natural size (small_cnn 96)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0  # adamw only
    lr_schedule: str = "plateau"  # plateau: reduce on validation-loss plateau; cosine: linear warm-up then cosine decay to 1% over all epochs
    warmup_epochs: float = 0.0  # cosine only: epochs of linear warm-up from a tenth of the learning rate
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0 = off); calibration corrects the confidence afterwards
    min_epochs: int = 0  # early stopping never stops before this epoch
    dropout: float | None = None  # default: the architecture's own
    bn_momentum: float | None = 0.9  # BatchNorm moving-average momentum while training (0.9 keeps up in short runs; null: the architecture's own, usually 0.99)
    ema_decay: float = 0.0  # exponential moving average of the weights per batch (0 = off; 0.995 ≈ the last 200 batches): validation, checkpoint and saved model use the average
    bn_reestimate: int = 0  # precise BatchNorm: before every validation and for the saved model, the BN statistics are re-estimated on this many un-augmented training tiles (0 = off)
    init_from: str | None = None  # id of a registered model to fine-tune from (weights copied by layer name)
    freeze_backbone: bool = False  # heads on keras.applications backbones only
    label_column: str = "label"  # manifest: column with the class
    path_column: str | None = None  # manifest: column with the file (default: path, filename, file or image)
    group_column: str | None = None  # manifest: patient/slide column (default: patient, group, patient_id or slide)
    classes: tuple[str, ...] = ()  # default: sorted class names found in the data
    positive_classes: tuple[str, ...] = ()  # whose summed probability is the score (default: the last class)
    augmentation: Augmentation = field(default_factory=Augmentation)
    normalization: str = "none"  # none | macenko (applied before resizing, as at inference); the card binds prediction to it
    normalization_reference: str | None = None  # macenko: reference tile whose stains are the target (default: the published Macenko target); bundled with the model
    calibration: str = "temperature"  # temperature: temperature scaling fitted on validation, applied at prediction; none
    domain: str = "mahalanobis"  # out-of-domain flag from the penultimate features (fitted on training tiles); mahalanobis-blocks: one covariance per concatenated depth, each depth weighted equally (engine.domain); none
    domain_pass_rate: float = 0.98  # share of validation tiles inside the out-of-domain threshold
    mc_samples: int = 30  # Monte Carlo dropout samples for the per-tile uncertainty (0 = off)
    ensemble: int = 1  # members (lung_cnn, lung_cnn_ms): networks trained one after another, each with its own initialisation and data order, merged into one model whose logits are the mean of theirs
    tta: int = 1  # test-time augmentation for evaluation and prediction: 1 (off), 4 (90° rotations) or 8 (and mirrored); features averaged
    stain_test: bool = False  # also score the test tiles re-stained like another lab (engine.stain_augment.restain) and with the other normalisation
    mpp: float | None = None  # microns per pixel of the training tiles as given (before resizing), if known or estimated
    card: dict = field(default_factory=dict)  # extra card fields: version, class_descriptions, labels, score_name, intended_use, limitations, training_data_note, mpp_method, reproduce
    class_weights: Any = "balanced"  # balanced | none | {class: weight}
    split: Split = field(default_factory=Split)
    early_stopping_patience: int = 5  # epochs without val_loss improvement (0 = off); best weights are kept
    reduce_lr_patience: int = 2  # epochs without improvement before the learning rate is multiplied by reduce_lr_factor (0 = off)
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 1e-6
    mixed_precision: str = "auto"  # auto: mixed_float16 only when a GPU is visible
    seed: int = 42  # seeds weights, split, shuffling and augmentation (parallel input: close, not bit-identical, runs)
    max_images: int | None = None  # use at most this many images (stratified random subset; for quick trials)
    workers: int = 2  # parallel decode/preprocess threads
    model_id: str | None = None  # id of the registered model (default: <architecture>-<date>-<time>)
    name: str = ""  # human-readable model name for the card

    # -- derived
    @property
    def px(self) -> int:
        return int(self.input_px or ARCHITECTURES[self.architecture])

    def to_dict(self) -> dict:
        data = asdict(self)
        data["classes"], data["positive_classes"] = list(self.classes), list(self.positive_classes)
        data["card"] = dict(self.card)
        return data

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)


_NESTED = {"augmentation": Augmentation, "split": Split}


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(name: str, value: Any, kind: type, *, where: str) -> Any:
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.lower() in ("true", "yes", "on")
        raise InvalidInputError(f"{where}{name}: expected true or false, got {value!r}.")
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer()) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise InvalidInputError(f"{where}{name}: expected a whole number, got {value!r}.")
        return int(value)
    if kind is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(f"{where}{name}: expected a number, got {value!r}.") from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InvalidInputError(f"{where}{name}: expected text, got {value!r}.")
        return str(value)
    return value


_TYPES: dict[str, type] = {
    "data": str, "architecture": str, "input_px": int, "epochs": int, "batch_size": int, "learning_rate": float, "optimizer": str,
    "weight_decay": float, "dropout": float, "bn_momentum": float, "ema_decay": float, "bn_reestimate": int, "init_from": str, "freeze_backbone": bool, "label_column": str, "path_column": str,
    "group_column": str, "normalization": str, "early_stopping_patience": int, "reduce_lr_patience": int, "reduce_lr_factor": float,
    "min_learning_rate": float, "mixed_precision": str, "seed": int, "max_images": int, "workers": int, "model_id": str, "name": str,
    "lr_schedule": str, "warmup_epochs": float, "label_smoothing": float, "min_epochs": int, "normalization_reference": str,
    "calibration": str, "domain": str, "domain_pass_rate": float, "mc_samples": int, "ensemble": int, "tta": int, "stain_test": bool, "mpp": float,
    # nested
    "flip": bool, "rotate90": bool, "rotation": float, "zoom": float, "shift": float, "color_jitter": float, "hed_sigma": float, "hed_bias": float, "hed_vector": float, "cutmix": float,
    "method": str, "val": float, "test": float, "folds": int,
}


def _str_list(name: str, value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{name}: expected a list of class names, got {value!r}.")
    return tuple(str(v) for v in value)


def _nested(name: str, value: Any, cls: type) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if value is False and cls is Augmentation:
        return Augmentation(flip=False, rotate90=False, rotation=0.0, zoom=0.0, shift=0.0, color_jitter=0.0, hed_sigma=0.0, hed_bias=0.0, hed_vector=0.0, cutmix=0.0)
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name}: expected a mapping of settings, got {value!r}.")
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, v in value.items():
        if key not in known:
            raise InvalidInputError(f"Unknown setting '{name}.{key}'.{_suggest(key, known)} Known: {', '.join(sorted(known))}.")
        kwargs[key] = _coerce(key, v, _TYPES[key], where=f"{name}.")
    return cls(**kwargs)


def _card_fields(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"card: expected a mapping of card fields, got {value!r}.")
    unknown = [k for k in value if k not in CARD_FIELDS]
    if unknown:
        raise InvalidInputError(f"Unknown card field 'card.{unknown[0]}'.{_suggest(unknown[0], CARD_FIELDS)}",
                                f"A configuration may set: {', '.join(CARD_FIELDS)} (the rest of the card is measured).")
    return dict(value)


def parse_config(data: dict | TrainConfig, *, base_dir: Path | str | None = None) -> TrainConfig:
    """Validate a configuration mapping; relative ``data`` paths are resolved against ``base_dir``."""
    if isinstance(data, TrainConfig):
        data = data.to_dict()
    if not isinstance(data, dict):
        raise InvalidInputError(f"A training configuration must be a mapping of settings, got {type(data).__name__}.")
    known = {f.name for f in fields(TrainConfig)}
    unknown = [k for k in data if k not in known]
    if unknown:
        key = unknown[0]
        raise InvalidInputError(f"Unknown setting '{key}'.{_suggest(key, known)}", f"Known settings: {', '.join(sorted(known))}.")
    if not data.get("data"):
        raise InvalidInputError("The configuration needs 'data': a folder of class subfolders, a CSV manifest or a .zip of tiles.")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NESTED:
            kwargs[key] = _nested(key, value, _NESTED[key])
        elif key in ("classes", "positive_classes"):
            kwargs[key] = _str_list(key, value)
        elif key == "class_weights":
            kwargs[key] = value
        elif key == "card":
            kwargs[key] = _card_fields(value)
        else:
            kwargs[key] = _coerce(key, value, _TYPES[key], where="")
    path = Path(str(kwargs["data"])).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    kwargs["data"] = str(path)
    ref = kwargs.get("normalization_reference")
    if ref and base_dir is not None and not Path(ref).expanduser().is_absolute():
        kwargs["normalization_reference"] = str(Path(base_dir) / Path(ref).expanduser())
    cfg = TrainConfig(**kwargs)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Range and choice checks (the data themselves are checked by :mod:`engine.training.datasets`)."""
    def bad(msg: str, hint: str | None = None):
        raise InvalidInputError(msg, hint)

    if cfg.architecture not in ARCHITECTURES:
        bad(f"Unknown architecture '{cfg.architecture}'.{_suggest(cfg.architecture, ARCHITECTURES)}", f"Choose one of: {', '.join(ARCHITECTURES)}.")
    if cfg.input_px is not None and not (MIN_INPUT_PX.get(cfg.architecture, 16) <= cfg.input_px <= 1024):
        bad(f"input_px {cfg.input_px} is out of range for {cfg.architecture} ({MIN_INPUT_PX.get(cfg.architecture, 16)}–1024).")
    if not 1 <= cfg.epochs <= 10_000:
        bad(f"epochs must be at least 1 (got {cfg.epochs}).")
    if not 1 <= cfg.batch_size <= 4096:
        bad(f"batch_size must be between 1 and 4096 (got {cfg.batch_size}).")
    if not 0 < cfg.learning_rate < 10:
        bad(f"learning_rate must be a positive number below 10 (got {cfg.learning_rate}).")
    if cfg.optimizer not in OPTIMIZERS:
        bad(f"Unknown optimizer '{cfg.optimizer}'.", f"Choose one of: {', '.join(OPTIMIZERS)}.")
    if cfg.weight_decay < 0:
        bad("weight_decay cannot be negative.")
    if cfg.bn_momentum is not None and not 0 <= cfg.bn_momentum < 1:
        bad(f"bn_momentum must be in [0, 1) (got {cfg.bn_momentum}).")
    if not 0 <= cfg.ema_decay < 1:
        bad(f"ema_decay must be in [0, 1) (got {cfg.ema_decay}); 0 turns the weight average off.")
    if not 0 <= cfg.bn_reestimate <= 100_000:
        bad(f"bn_reestimate must be a number of tiles between 0 and 100000 (got {cfg.bn_reestimate}); 0 turns it off.")
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        bad(f"dropout must be in [0, 1) (got {cfg.dropout}).")
    if cfg.normalization not in NORMALIZATIONS:
        bad(f"Unknown normalization '{cfg.normalization}'.", f"Choose one of: {', '.join(NORMALIZATIONS)}.")
    if cfg.normalization_reference and cfg.normalization == "none":
        bad("normalization_reference is set but normalization is none.", "Set normalization: macenko, or drop the reference.")
    if cfg.lr_schedule not in LR_SCHEDULES:
        bad(f"Unknown lr_schedule '{cfg.lr_schedule}'.", f"Choose one of: {', '.join(LR_SCHEDULES)}.")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        bad(f"warmup_epochs must be at least 0 and below epochs ({cfg.epochs}), got {cfg.warmup_epochs}.")
    if not 0 <= cfg.label_smoothing < 0.5:
        bad(f"label_smoothing must be in [0, 0.5) (got {cfg.label_smoothing}).")
    if cfg.min_epochs < 0:
        bad("min_epochs cannot be negative.")
    if cfg.calibration not in CALIBRATIONS:
        bad(f"Unknown calibration '{cfg.calibration}'.", f"Choose one of: {', '.join(CALIBRATIONS)}.")
    if cfg.domain not in DOMAIN_METHODS:
        bad(f"Unknown domain method '{cfg.domain}'.", f"Choose one of: {', '.join(DOMAIN_METHODS)}.")
    if not 0.5 <= cfg.domain_pass_rate < 1:
        bad(f"domain_pass_rate must be in [0.5, 1) (got {cfg.domain_pass_rate}).")
    if not 1 <= cfg.ensemble <= MAX_MEMBERS:
        bad(f"ensemble must be a number of members between 1 and {MAX_MEMBERS} (got {cfg.ensemble}).", "1 trains a single network.")
    if cfg.ensemble > 1 and cfg.architecture not in ENSEMBLE_ARCHITECTURES:
        bad(f"ensemble: {cfg.ensemble} needs one of the architectures {', '.join(ENSEMBLE_ARCHITECTURES)} (got {cfg.architecture}).")
    if cfg.ensemble > 1 and cfg.init_from:
        bad("ensemble and init_from cannot be combined (which member would the registered weights go to?).")
    if cfg.tta not in TTA_VIEWS:
        bad(f"tta must be one of {', '.join(map(str, TTA_VIEWS))} views (got {cfg.tta}).", "1 turns test-time augmentation off.")
    if not 0 <= cfg.mc_samples <= 1000:
        bad(f"mc_samples must be between 0 and 1000 (got {cfg.mc_samples}).")
    if cfg.mpp is not None and not 0.01 <= cfg.mpp <= 100:
        bad(f"mpp {cfg.mpp} µm/px is not a plausible resolution (0.01–100).")
    if cfg.mixed_precision not in MIXED_PRECISION:
        bad(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got '{cfg.mixed_precision}').")
    if cfg.early_stopping_patience < 0 or cfg.reduce_lr_patience < 0:
        bad("Patience values cannot be negative (0 turns the callback off).")
    if not 0 < cfg.reduce_lr_factor < 1:
        bad(f"reduce_lr_factor must be between 0 and 1 (got {cfg.reduce_lr_factor}).")
    if cfg.max_images is not None and cfg.max_images < 4:
        bad(f"max_images must be at least 4 (got {cfg.max_images}).")
    if not 1 <= cfg.workers <= 64:
        bad(f"workers must be between 1 and 64 (got {cfg.workers}).")
    if cfg.model_id is not None:
        if not cfg.model_id or not all(c.isalnum() or c in "-_." for c in cfg.model_id) or cfg.model_id.startswith("."):
            bad(f"'{cfg.model_id}' is not a valid model id.", "Use letters, digits, '-', '_' and '.'.")
    a = cfg.augmentation
    for key in ("rotation", "zoom", "shift", "color_jitter", "hed_sigma", "hed_bias", "hed_vector", "cutmix"):
        v = getattr(a, key)
        if not 0 <= v <= 1:
            bad(f"augmentation.{key} must be between 0 and 1 (got {v}).")
    s = cfg.split
    if s.method not in SPLIT_METHODS:
        bad(f"Unknown split method '{s.method}'.", "Use holdout (train/validation/test) or kfold (stratified group k-fold).")
    if s.method == "holdout" and not (0 < s.val < 1 and 0 <= s.test < 1 and s.val + s.test < 0.9):
        bad(f"split.val ({s.val}) and split.test ({s.test}) must be fractions leaving at least 10% for training.")
    if s.method == "kfold" and not 2 <= s.folds <= 20:
        bad(f"split.folds must be between 2 and 20 (got {s.folds}).")
    cw = cfg.class_weights
    if not (cw in (None, "none", "balanced") or (isinstance(cw, dict) and cw and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in cw.values()))):
        bad(f"class_weights must be 'balanced', 'none' or a mapping class → positive weight (got {cw!r}).")
    if set(cfg.positive_classes) and cfg.classes and not set(cfg.positive_classes) <= set(cfg.classes):
        bad(f"positive_classes {sorted(set(cfg.positive_classes) - set(cfg.classes))} are not among classes {list(cfg.classes)}.")


MAX_YAML_BYTES = 64 * 1024  # a training configuration is a few dozen lines


def safe_yaml(text: str, name: str = "configuration"):
    """Parse YAML with PyYAML's safe loader, refusing aliases (``*a``: a "billion laughs" bomb expands them) and
    texts over :data:`MAX_YAML_BYTES`. Errors are :class:`InvalidInputError` naming ``name``."""
    import yaml

    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise InvalidInputError(f"'{name}' is over {MAX_YAML_BYTES // 1024} KB, the limit for a training configuration.",
                                "A configuration is a few dozen lines: see python -m engine train --print-defaults.")

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise InvalidInputError(f"'{name}' uses a YAML alias ('*{event.anchor}', line {event.start_mark.line + 1}); aliases are not accepted.",
                                        "Write each value out in full.")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"'{name}' is not valid YAML ({str(exc).splitlines()[0]}).") from exc
    except RecursionError as exc:
        raise InvalidInputError(f"'{name}' is nested too deeply to be a training configuration.") from exc


def load_config(path: Path | str, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a YAML configuration file; relative ``data`` paths are relative to the file."""
    path = Path(path).expanduser()
    try:
        if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
            safe_yaml("x" * (MAX_YAML_BYTES + 1), path.name)  # the size message, without reading the file
        text = path.read_text()
    except FileNotFoundError as exc:
        raise InvalidInputError(f"Configuration file '{path}' does not exist.", path=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"Configuration file '{path}' cannot be read ({exc}).", path=str(path)) from exc
    data = safe_yaml(text, path.name)
    if data is None:
        raise InvalidInputError(f"'{path.name}' is empty.", "At least 'data: PATH' is needed.", path=str(path))
    if not isinstance(data, dict):
        raise InvalidInputError(f"'{path.name}' must be a mapping of settings (key: value), not a {type(data).__name__}.", path=str(path))
    data = {**data, **(overrides or {})}
    return parse_config(data, base_dir=path.parent)


def defaults_yaml(data: str = "PATH/TO/TILES") -> str:
    """A complete configuration with every default, for ``--print-defaults`` and the docs."""
    return TrainConfig(data=data).to_yaml()
