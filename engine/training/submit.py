"""What is checked when a training job is submitted, before it is queued (page and CLI share it).

A job that would fail on bad parameters fails here, at submit, with a message — not after it started:

* the configuration itself (:func:`engine.training.config.parse_config`: ranges, choices, class weights
  that are positive finite numbers);
* the data path: it must exist and be a folder, a CSV manifest or a .zip (``/dev/null`` is none of
  them). With ``roots`` (the pages), it must also lie inside one of them — the session's own uploads
  or the configured data roots (``HISTODASH_DATA_ROOTS``) — after resolving symbolic links, and never
  inside another session's workspace. Those messages never name server folders or paths. The CLI
  passes no ``roots``: its operator is on the server and may name any folder;
* the model id: not registered yet and not claimed by a queued or running training job;
* the dataset's structure (:func:`engine.training.datasets.discover`) and the positive classes.

>>> cfg, found = check_submission(config, roots=[workspace, *settings.data_roots])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.config import get_settings
from engine.errors import InvalidInputError
from engine.training.config import TrainConfig, parse_config
from engine.training.datasets import TileDataset, discover

DATA_SUFFIXES = (".csv", ".tsv", ".zip")
ROOTS_HINT = ("Upload a .zip of class folders on this page, or ask your administrator to add the folder to the data roots "
              "(HISTODASH_DATA_ROOTS).")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_data_path(data: str | Path, *, roots: Sequence[Path | str] | None = None) -> Path:
    """The dataset path, resolved; refused unless it is a folder, CSV or zip (and, with ``roots``, inside one of them)."""
    raw = str(data).strip()
    if not raw:
        raise InvalidInputError("No dataset given.", "Give a folder of class subfolders, a CSV manifest or a .zip.")
    path = Path(raw).expanduser()
    if roots is not None:
        resolved = path.resolve()
        allowed = [Path(r).expanduser().resolve() for r in roots]
        work = get_settings().work_dir.expanduser().resolve()
        own = [r for r in allowed if _inside(r, work)]  # the session's own workspace, under work_dir
        in_root = any(_inside(resolved, r) for r in allowed)
        in_other_workspace = _inside(resolved, work) and not any(_inside(resolved, r) for r in own)
        if not in_root or in_other_workspace:
            raise InvalidInputError("The dataset must be one of this session's uploads or lie inside a configured data folder; "
                                    "the path you gave is not.", ROOTS_HINT)
        path = resolved
    if not path.exists():
        if roots is not None:
            raise InvalidInputError("The dataset path you gave does not exist inside the data folders.", ROOTS_HINT)
        raise InvalidInputError(f"The dataset '{path}' does not exist.", "Give a folder with one subfolder per class, a CSV manifest or a .zip.")
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() in DATA_SUFFIXES:
        return path
    kind = "a file of another kind" if path.is_file() else "a device or other special file"
    raise InvalidInputError(f"'{path.name}' is {kind}, not a folder, a CSV manifest or a .zip archive.",
                            "Give a folder with one subfolder per class, a CSV manifest (path,label) or a .zip of class folders.")


def claimed_model_ids(runner=None) -> set[str]:
    """Model ids of training jobs that are queued or running (a second job may not claim the same id)."""
    if runner is None:
        return set()
    return {str(r.params.get("model_id")) for r in runner.list(kind="train") if r.active and r.params.get("model_id")}


def check_model_id(cfg: TrainConfig, *, models_dir: Path | None = None, claimed: Iterable[str] = ()) -> None:
    if not cfg.model_id:
        return
    models_dir = Path(models_dir) if models_dir is not None else get_settings().models_dir
    if (models_dir / cfg.model_id).exists():
        raise InvalidInputError(f"A model '{cfg.model_id}' is already registered.", "Choose another model id, or leave it empty for an automatic one.")
    if cfg.model_id in set(claimed):
        raise InvalidInputError(f"A queued or running training job will already register a model '{cfg.model_id}'.",
                                "Choose another model id, or leave it empty for an automatic one.")


def check_submission(config: dict | TrainConfig, *, roots: Sequence[Path | str] | None = None, models_dir: Path | None = None,
                     runner=None) -> tuple[TrainConfig, TileDataset]:
    """Every check a training job needs before it is queued (module docstring); returns the config and the dataset found."""
    cfg = parse_config(config)
    path = check_data_path(cfg.data, roots=roots)
    cfg = cfg.with_(data=str(path))
    check_model_id(cfg, models_dir=models_dir, claimed=claimed_model_ids(runner))
    found = discover(cfg.data, label_column=cfg.label_column, path_column=cfg.path_column, group_column=cfg.group_column, classes=cfg.classes)
    bad = [c for c in cfg.positive_classes if c not in found.classes]
    if bad:
        raise InvalidInputError(f"Positive class(es) {bad} are not among the classes found: {', '.join(found.classes)}.")
    return cfg, found
