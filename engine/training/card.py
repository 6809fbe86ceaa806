"""The model card a training run writes (``card.json``) and its human-readable ``README.md``.

One writer for every training job (Training page, ``python -m engine train``, ``train-default``):
the schema is :class:`engine.registry.ModelCard` with :class:`engine.registry.SplitMetrics` rows.
No TensorFlow here.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

from engine.training.config import TrainConfig


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _data_name(cfg: TrainConfig) -> str:
    """The dataset's name: its folder (a manifest or zip: the folder holding it)."""
    path = Path(cfg.data)
    return path.parent.name if path.suffix.lower() in (".csv", ".tsv", ".zip") else path.name


def _augmentation_text(cfg: TrainConfig) -> str:
    a = cfg.augmentation
    parts = []
    if a.flip:
        parts.append("random horizontal and vertical flips")
    if a.rotate90:
        parts.append("random 90° rotations")
    if a.rotation:
        parts.append(f"rotation up to ±{a.rotation * 360:g}°")
    if a.zoom:
        parts.append(f"zoom ×1±{a.zoom:g}")
    if a.shift:
        parts.append(f"shift ±{a.shift:g} of the side")
    if a.stain:
        parts.append(f"HED stain jitter (Tellez et al. 2019: haematoxylin, eosin and DAB densities × U(1±{a.hed_sigma:g}) + U(±{a.hed_bias:g}) "
                     f"in natural-log optical density; stain vectors recombined with N(0, {a.hed_vector:g}) noise per component)")
    if a.color_jitter:
        j = a.color_jitter
        parts.append(f"brightness ±{j:g}, contrast ×1±{2 * j:g}, saturation ×1±{3 * j:g}, hue ±{j / 2:g}")
    if a.cutmix:
        parts.append(f"CutMix (Yun et al. 2019) in {a.cutmix:.0%} of the batches: a box of area U(0, 1) of each tile pasted from another tile of "
                     "the batch, labels mixed by area")
    return ", ".join(parts) or "none"


def build_card(cfg: TrainConfig, data, *, model_id: str, params: int, positive, threshold: float, metrics: list[dict], split_info: dict,
               epochs_info: dict, calibration: dict, domain: dict | None, reference: dict | None, quality: dict, extra: dict, timing: dict,
               history: list[dict], job_id: str, tf_version: str, keras_version: str, device: str, git: str | None, weights_sha256: str,
               weights_bytes: int, dropout_rate: float | None, reproduce: str) -> dict:
    classes = list(data.classes)
    pos = [classes[i] for i in positive]
    neg = [c for c in classes if c not in pos]
    overrides = dict(cfg.card)
    mpp = mpp_method = None
    if cfg.mpp is not None:
        source_px = data.source_px or cfg.px
        mpp = round(float(cfg.mpp) * source_px / cfg.px, 4)
        mpp_method = (f"{overrides.get('mpp_method', 'as stated in the training configuration')} The training tiles ({source_px} px, median side) are "
                      f"{cfg.mpp:g} µm/px; resized to the {cfg.px} px input that is {mpp:g} µm per input pixel, a field of view of "
                      f"{cfg.mpp * source_px:.0f} µm. Slides whose µm/px is known are tiled at this µm/px.")
    holdout = split_info["method"] == "holdout"
    training_data = (f"{len(data.files)} tiles ({', '.join(f'{c} {int((data.y == i).sum())}' for i, c in enumerate(classes))}) from "
                     f"{_data_name(cfg)}; {len(data.skipped)} unreadable tiles skipped; resized to {cfg.px} px with engine.imageio.resize_tile"
                     + (f", {cfg.normalization.capitalize()}-normalised first" if cfg.normalization != "none" else "") + ".")
    if overrides.get("training_data_note"):
        training_data = f"{overrides['training_data_note']} {training_data}"
    card = {
        "id": model_id,
        "name": cfg.name or f"{cfg.architecture} on {_data_name(cfg)} ({len(classes)} classes)",
        "version": str(overrides.get("version", "1")),
        "task": "tile-classification",
        "architecture": cfg.architecture,
        "classes": classes,
        "class_descriptions": overrides.get("class_descriptions", {}),
        "positive_classes": pos,
        "score_name": overrides.get("score_name", f"p({' + '.join(pos)})"),
        "labels": overrides.get("labels", {"positive": " or ".join(pos), "negative": " or ".join(neg)}),
        "input_px": cfg.px,
        "input_range": "0-255 RGB",
        "mpp": mpp,
        "mpp_method": mpp_method or "unknown: the training configuration states no µm/px, so slides are tiled by pyramid level",
        "normalization": cfg.normalization,
        "normalization_reference": reference,
        "threshold": round(float(threshold), 4),
        "threshold_method": ("F1-optimal on the calibrated positive score over the validation groups" if holdout
                             else "median of the F1-optimal thresholds of the cross-validation folds"),
        "calibration": calibration,
        "domain": domain or {},
        "uncertainty": ({"method": "mc-dropout", "samples": cfg.mc_samples, "rate": dropout_rate, "seed": 0,
                         "what": "standard deviation of the calibrated positive score over Monte Carlo dropout masks on the penultimate features"}
                        if dropout_rate and cfg.mc_samples else {}),
        "ensemble": ({"members": cfg.ensemble, "what": (f"{cfg.ensemble} networks of this architecture, trained one after another with their own random "
                                                         "initialisation and data order, in one model: their penultimate features side by side, the head "
                                                         "averages their logits")} if cfg.ensemble > 1 else {}),
        "tta": ({"views": cfg.tta, "what": (f"the network runs on the tile's {cfg.tta} " + ("90° rotations" if cfg.tta == 4 else "90° rotations and their mirror images")
                                            + " and averages its penultimate features before the head, the out-of-domain detector and the dropout masks; "
                                            "every metric on this card was measured that way")} if cfg.tta > 1 else {}),
        "quality": quality,
        "metrics": metrics,
        **extra,
        "training_data": training_data,
        "data_hash": f"sha256:{data.data_hash}",
        "split": {**split_info, "seed": cfg.seed},
        "training": {**epochs_info, **timing, "cpu": _cpu_name(), "tensorflow": tf_version, "keras": keras_version,
                     "python": platform.python_version(), "params": params, "device": device, "job_id": job_id,
                     "augmentation": _augmentation_text(cfg), "history": history},
        "config": cfg.with_(model_id=None, data=Path(cfg.data).name).to_dict(),
        "git_commit": git,
        "reproduce": reproduce,
        "created": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "weights_file": "model.keras",
        "weights_sha256": weights_sha256,
        "weights_bytes": int(weights_bytes),
        "intended_use": overrides.get("intended_use", "Research use only; not a medical device and not for diagnosis."),
        "limitations": overrides.get("limitations", "Trained with HistoDash's training page/CLI on the data named above; metrics hold only for data "
                                                    "like it (same lab, scanner, stain, magnification)."),
    }
    if card["config"].get("normalization_reference"):
        card["config"]["normalization_reference"] = Path(card["config"]["normalization_reference"]).name
    return card


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render_readme(card: dict) -> str:
    """Markdown summary of a card (written next to it as README.md)."""
    lines = [f"# {card['name']} (`{card['id']}`, version {card['version']})", ""]
    q = card.get("quality") or {}
    if q.get("status") == "failed":
        lines += [f"**FAILED QUALITY CHECK**: {'; '.join(q.get('reasons', []))}. Not selected by default.", ""]
    lines += [f"**Intended use.** {card['intended_use']}", ""]
    lines += ["## Model", "", "| field | value |", "|---|---|"]
    for key in ("task", "architecture", "input_px", "input_range", "score_name", "threshold", "threshold_method", "weights_file", "weights_sha256",
                "created"):
        lines.append(f"| {key} | {card.get(key)} |")
    desc = card.get("class_descriptions") or {}
    lines.append("| classes | " + ", ".join(f"`{c}`" + (f" ({desc[c]})" if c in desc else "") for c in card["classes"]) + " |")
    lines.append(f"| positive classes | {', '.join(card['positive_classes'])} (score = their summed probability) |")
    lines.append(f"| weights size | {card.get('weights_bytes', 0) / 1e6:.2f} MB |")
    lines += ["", "Input: float RGB in 0..255, shape (N, {0}, {0}, 3); the model rescales internally. Output: softmax over the classes in "
              "the order above. Load with `keras.models.load_model(path, safe_mode=True)`.".format(card["input_px"]), ""]
    ref = card.get("normalization_reference") or {}
    lines += ["## Stain normalisation", "", f"`{card['normalization']}`" + (f": target from {ref.get('source')} (bundled as `{ref.get('file')}`)" if ref else
              " — tiles go into the model as they are; prediction applies no normalisation unless the user overrides it (with a warning)."), ""]
    check = card.get("normalization_check")
    if check:
        lines += [f"Measured on the test groups: 3-class accuracy {_fmt(check['card'].get('accuracy_multiclass'))} with the card's setting "
                  f"('{check['card']['setting']}'), {_fmt(check['other'].get('accuracy_multiclass'))} with '{check['other']['setting']}'.", ""]
    lines += ["## Field of view", "", f"µm per input pixel: {card.get('mpp')}. {card.get('mpp_method')}", ""]
    cal = card.get("calibration") or {}
    lines += ["## Calibration", "", f"{cal.get('method')}: T = {cal.get('temperature')} fitted on {cal.get('fitted_on')}; probabilities are "
              "softmax(log p / T). ECE: top-label, 10 equal-width bins.", ""]
    dom = card.get("domain") or {}
    if dom:
        lines += ["## Out-of-domain flag", "", f"{dom['method']} on the {dom['features']}; {dom['fitted_on']}. A tile is in domain when its score "
                  f"is at most {dom['threshold']}. Detector file `{dom['file']}` (sha256 {dom['sha256'][:16]}…). A slide whose tissue tiles are "
                  f"more than {dom.get('slide_warning_fraction', 0.5):.0%} out of domain gets a warning.", ""]
    ensemble = card.get("ensemble") or {}
    if ensemble:
        lines += ["## Ensemble", "", f"{ensemble['members']} members: {ensemble['what']}.", ""]
    tta = card.get("tta") or {}
    if tta:
        lines += ["## Test-time augmentation", "", f"{tta['views']} views: {tta['what']}.", ""]
    unc = card.get("uncertainty") or {}
    if unc:
        lines += ["## Uncertainty", "", f"{unc['method']}: {unc['what']} ({unc['samples']} samples, rate {unc['rate']}).", ""]
    lines += ["## Metrics", "", "| split | n | AUC | 3-class accuracy | balanced accuracy | binary accuracy @ threshold | F1 | ECE | ECE before calibration | in domain |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in card["metrics"]:
        lines.append(f"| {m['split']} | {m.get('n')} | {_fmt(m.get('auc'))} | {_fmt(m.get('accuracy_multiclass'))} | {_fmt(m.get('balanced_accuracy'))} | "
                     f"{_fmt(m.get('accuracy'))} | {_fmt(m.get('f1'))} | {_fmt(m.get('ece'))} | {_fmt(m.get('ece_uncalibrated'))} | {_fmt(m.get('in_domain_fraction'))} |")
    lines += [""] + [f"- **{m['split']}**: {m.get('description', '')}" for m in card["metrics"]]
    first = card["metrics"][0] if card["metrics"] else {}
    if first.get("confusion"):
        lines += ["", f"Confusion matrix, {first['split']} (rows: true, columns: predicted; order " + ", ".join(card["classes"]) + "):", ""]
        lines += ["| true \\ predicted | " + " | ".join(card["classes"]) + " |", "|---" * (len(card["classes"]) + 1) + "|"]
        for c, row in zip(card["classes"], first["confusion"]):
            lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    q_rule = q.get("rule")
    if q_rule:
        lines += ["", f"Quality check: **{q.get('status')}**. {q_rule}"]
    lines += ["", "## Data and split", "", card["training_data"], ""]
    for k, v in card["split"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Training", ""]
    for k, v in card["training"].items():
        if k != "history":
            lines.append(f"- {k}: {v}")
    lines += ["", "Reproduce (from the repository root):", "", "```", card["reproduce"], "```", ""]
    lines += ["## Limitations", "", card["limitations"], ""]
    return "\n".join(lines)
