"""The project's default model, through the one training pipeline (``python -m engine train-default``).

A shortcut for ``python -m engine train models/lc25000-lung-cnn/train.yaml`` that writes the model
into that folder (replacing the previous model; the committed ``train.yaml`` stays) instead of a new
registry folder. It submits the same ``train`` job as the Training page and ``python -m engine
train`` (:func:`engine.training.run.run_job`), so the default model is built by the tested code path.

The data path defaults to ``Settings.shared_data / "lc25000-lung-224"`` (``$HISTODASH_SHARED_DATA``)
when that folder exists, else to the configuration's own ``data`` (relative to the file).
"""

from __future__ import annotations

from pathlib import Path

from engine.config import REPO_ROOT, get_settings

MODEL_ID = "lc25000-lung-cnn"
DEFAULT_CONFIG = REPO_ROOT / "models" / MODEL_ID / "train.yaml"
REPRODUCE = "python -m engine train-default"


def default_data() -> Path | None:
    """The LC25000 folder of the shared data, when present."""
    path = get_settings().shared_data / "lc25000-lung-224"
    return path if path.is_dir() else None


def with_overrides(cfg, overrides: dict):
    """``cfg`` with ``overrides`` applied; nested mappings (``augmentation``, ``split``, ``card``) merge into the file's sections."""
    from engine.training.config import parse_config

    if not overrides:
        return cfg
    merged = cfg.to_dict()
    for k, v in overrides.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return parse_config(merged)


def default_config(config: Path | str = DEFAULT_CONFIG, *, data: Path | str | None = None, overrides: dict | None = None):
    """The default model's configuration (data resolved as the module docstring says)."""
    from engine.training.config import load_config

    cfg = load_config(config)
    overrides = dict(overrides or {})
    folder = Path(data) if data else default_data()
    if folder is not None:
        folder = Path(folder).expanduser().resolve()
        overrides["data"] = str(folder / "labels.csv" if folder.is_dir() else folder)
    return with_overrides(cfg, overrides)
