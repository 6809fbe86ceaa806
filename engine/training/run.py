"""The training job: data → split → fit → evaluate → register. ``python -m engine train CONFIG.yaml``.

:func:`run_job` is the job function of kind ``"train"`` (:data:`engine.jobs.JOB_KINDS`); the page
and the CLI both submit a job and the worker process calls it, so they share one code path.
Steps (each reported through the :class:`~engine.jobs.JobContext`):

1. :func:`engine.training.datasets.discover` finds and checks the tiles (folder, CSV manifest, zip);
2. :func:`engine.training.datasets.prepare` decodes, optionally Macenko-normalises and resizes every
   tile exactly like inference (:func:`engine.imageio.resize_tile`) into a BMP cache, skipping and
   listing unreadable tiles;
3. a group-level split: train/validation/test (70/15/15 by default, REFERENCE.md §3) or stratified
   group k-fold (each fold's model is scored on its held-out groups; the registered model is then
   trained on all tiles for the median best epoch count, with the median fold threshold);
4. ``tf.data`` from the cached files (parallel BMP reads, augmentation, prefetch), class weights,
   a per-batch callback (progress, cancellation within one batch), per-epoch validation loss, accuracy
   and AUC, early stopping with the best weights kept, learning-rate reduction on plateau, mixed
   precision only when a GPU is visible;
5. the F1-optimal threshold on validation (REFERENCE.md §4), metrics on validation and test;
6. registration: ``model.keras`` (a clean float32 copy without optimizer state or augmentation) and
   ``card.json`` (registry schema + data hash, config, git commit, command to reproduce) written into
   ``settings.models_dir/<model id>`` atomically, so the model appears on every page without a restart.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from engine.calibration import apply_temperature, ece, fit_temperature
from engine.calibration import reliability as reliability_table
from engine.config import REPO_ROOT, get_settings
from engine.domain import fit as fit_domain
from engine.errors import Cancelled, IncompatibleModelError, InvalidInputError
from engine.forward import probabilities_from_output
from engine.jobs import JobContext
from engine.privacy import loggable_name
from engine.training.config import TrainConfig, parse_config
from engine.training.datasets import PreparedData, describe_skipped, discover, prepare, split_holdout, split_kfold, subsample
from engine.training.metrics import evaluate, f1_optimal_threshold, mean_sd, quality_check, roc_points

EVAL_BATCH = 64


# ----------------------------------------------------------------------------- entry points


def run_job(params: dict, ctx: JobContext) -> dict:
    """Job function of kind ``train``: ``params`` is a configuration mapping (:mod:`engine.training.config`).

    An ``out_dir`` entry (set by ``train-default`` only) writes the model into that folder instead of a new one.
    """
    params = dict(params)
    out_dir = params.pop("out_dir", None)
    cfg = parse_config(params)
    return train(cfg, ctx, out_dir=out_dir)


def train(cfg: TrainConfig, ctx: JobContext, *, out_dir: Path | str | None = None) -> dict:
    """Run one training configuration; returns the job result (model id, metrics, curves, quality).

    ``out_dir``: write the model folder there (replacing an earlier one; files named in
    :data:`KEEP_FILES` are kept) instead of a new folder in the models directory: ``train-default``.
    """
    t_start, cpu_start = time.time(), time.process_time()
    logged = dict(cfg.to_dict(), data=loggable_name(Path(str(cfg.data)).name))  # no dataset paths/names in logs (HISTODASH_LOG_NAMES)
    ctx.log(f"config: {json.dumps(logged, default=str)}")

    # 1-2. data
    ctx.progress(0, 1, "checking the dataset")
    ds = discover(cfg.data, label_column=cfg.label_column, path_column=cfg.path_column, group_column=cfg.group_column,
                  classes=cfg.classes, extract_to=ctx.workdir / "data")
    for w in ds.warnings:
        ctx.log(f"warning: {w}")
    ds = subsample(ds, cfg.max_images, cfg.seed)
    ctx.log(f"dataset: {ds.summary()}")
    positive = _positive_indices(cfg, ds.classes)
    normalizer, norm_source = training_normalizer(cfg)
    data = prepare(ds, cfg.px, normalization=cfg.normalization, normalizer=normalizer, workers=cfg.workers,
                   progress=lambda d, t: ctx.progress(d, t, f"preparing tiles at {cfg.px} px"), cancelled=ctx.cancelled)
    if data.skipped:
        ctx.log(describe_skipped(data.skipped))
    ctx.log(f"prepared {len(data.files)} tiles at {cfg.px} px in {time.time() - t_start:.1f} s; data hash {data.data_hash[:16]}…")
    ctx.raise_if_cancelled()

    # 3. TensorFlow, only now
    from engine.runtime import keras as _keras
    from engine.runtime import tensorflow as _tf

    tf, keras = _tf(), _keras()
    gpus = tf.config.list_physical_devices("GPU")
    mixed = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and bool(gpus))
    if mixed and not gpus:
        ctx.log("warning: mixed_precision: on, but no GPU is visible: training in float32 (mixed precision is slow on CPUs)")
        mixed = False
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    ctx.log(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; device {'GPU ' + ', '.join(g.name for g in gpus) if gpus else 'CPU'}; "
            f"precision {'mixed_float16' if mixed else 'float32'}")
    keras.utils.set_random_seed(cfg.seed)

    trainer = _Trainer(cfg, data, positive, ctx, tf, keras)
    n_classes = len(data.classes)
    y = data.y
    extra: dict = {}
    if cfg.split.method == "holdout":
        parts = split_holdout(y, data.groups, val=cfg.split.val, test=cfg.split.test, seed=cfg.seed, classes=data.classes)
        _log_split(ctx, data, parts)
        trainer.total_steps = cfg.epochs * cfg.ensemble * trainer.steps(len(parts["train"]))
        model, history, best_epoch = trainer.fit(parts["train"], parts["val"], epochs=cfg.epochs, label="")
        fit_s = time.time() - t_start
        ctx.progress(trainer.total_steps, trainer.total_steps, "calibrating and scoring")
        ev = _Evaluator(trainer, model)
        out_val = ev.run(parts["val"])
        temperature = fit_temperature(out_val.raw_probabilities, y[parts["val"]]) if cfg.calibration == "temperature" else 1.0
        detector = None
        if cfg.domain != "none":
            out_train = ev.run(parts["train"])
            detector = fit_domain(out_train.features, y[parts["train"]], out_val.features, pass_rate=cfg.domain_pass_rate,
                                  blocks=domain_blocks(cfg, model, ctx))
        val_probs = apply_temperature(out_val.raw_probabilities, temperature)
        threshold = f1_optimal_threshold(np.isin(y[parts["val"]], positive), val_probs[:, positive].sum(1))
        ctx.log(f"calibration: temperature {temperature:.4f} (fitted on {len(parts['val'])} validation tiles); threshold {threshold:.4f}"
                + (f"; out-of-domain threshold {detector.threshold:.1f} ({cfg.domain_pass_rate:.0%} of validation tiles inside)" if detector else ""))
        scorer = _Scorer(positive, n_classes, threshold, temperature, detector)
        metrics = [scorer.row("validation", f"{len(parts['val'])} tiles of held-out groups used for early stopping, calibration, the out-of-domain "
                              "threshold and the score threshold", out_val, y[parts["val"]])]
        rocs = {"validation": roc_points(np.isin(y[parts["val"]], positive), val_probs[:, positive].sum(1))}
        reliability = {"validation": scorer.reliability(out_val, y[parts["val"]])}
        if len(parts["test"]):
            test = parts["test"]
            out_test = ev.run(test)
            metrics.insert(0, scorer.row("test", f"{len(test)} tiles of held-out groups never used for training or selection; threshold, "
                                         "temperature and out-of-domain threshold from validation", out_test, y[test]))
            rocs["test"] = roc_points(np.isin(y[test], positive), scorer.calibrated(out_test)[:, positive].sum(1))
            reliability["test"] = scorer.reliability(out_test, y[test])
            if cfg.stain_test:
                ctx.progress(trainer.total_steps, trainer.total_steps, "scoring re-stained and differently normalised test tiles")
                from engine.stain_augment import RESTAIN_DESCRIPTION, restain

                out_re = ev.run_sources(test, lambda rgb, i: restain(rgb, int(i), seed=cfg.seed), normalizer)
                metrics.insert(1, scorer.row("test-restained", f"the {len(test)} test tiles re-stained like other labs: {RESTAIN_DESCRIPTION}", out_re, y[test]))
                reliability["test-restained"] = scorer.reliability(out_re, y[test])
                other, other_normalizer = ("macenko", _default_macenko()) if normalizer is None else ("none", None)
                out_other = ev.run_sources(test, None, other_normalizer)
                row_other = scorer.row(f"test-normalization-{other}", f"the {len(test)} test tiles with normalisation '{other}' instead of the "
                                       f"card's '{cfg.normalization}' (what a user who overrides the card gets)", out_other, y[test])
                metrics.append(row_other)
                extra["normalization_check"] = {
                    "card": {"setting": cfg.normalization, **{k: metrics[0].get(k) for k in ("accuracy_multiclass", "auc", "accuracy")}},
                    "other": {"setting": other, **{k: row_other.get(k) for k in ("accuracy_multiclass", "auc", "accuracy")}}}
        cv = None
        split_info = {"method": "holdout", **{f"n_{k}": int(len(v)) for k, v in parts.items()},
                      **{f"groups_{k}": int(len(set(data.groups[v].tolist()))) for k, v in parts.items()}}
        epochs_info = {"epochs_run": len(history) // cfg.ensemble, "best_epoch": best_epoch,  # an ensemble: per member (best: their median)
                       **({"members": cfg.ensemble} if cfg.ensemble > 1 else {})}
        calibration_fit = f"validation ({len(parts['val'])} tiles)"
        domain_fit = (f"class means and shared covariance of the {len(parts['train'])} training tiles (not augmented); threshold: the "
                      f"{cfg.domain_pass_rate:.0%} quantile of the {len(parts['val'])} validation tiles' scores")
    else:
        folds = split_kfold(y, data.groups, folds=cfg.split.folds, seed=cfg.seed, classes=data.classes)
        steps_fold = sum(trainer.steps(len(tr)) for tr, _ in folds)
        trainer.total_steps = cfg.epochs * cfg.ensemble * (steps_fold + trainer.steps(len(y)))
        fold_rows, thresholds, temperatures, best_epochs, history = [], [], [], [], []
        rocs, reliability = {}, {}
        for k, (tr, va) in enumerate(folds, start=1):
            ctx.log(f"fold {k}/{len(folds)}: train {len(tr)} tiles, validation {len(va)} tiles")
            fmodel, fhist, fbest = trainer.fit(tr, va, epochs=cfg.epochs, label=f"fold {k}/{len(folds)} · ", fold=k)
            history += [{**row, "fold": k} for row in fhist]
            out = _Evaluator(trainer, fmodel).run(va)
            t_k = fit_temperature(out.raw_probabilities, y[va]) if cfg.calibration == "temperature" else 1.0
            probs = apply_temperature(out.raw_probabilities, t_k)
            thr = f1_optimal_threshold(np.isin(y[va], positive), probs[:, positive].sum(1))
            row = _Scorer(positive, n_classes, thr, t_k, None).row(f"cv-fold-{k}", f"fold {k}: held-out groups, threshold and temperature tuned on them", out, y[va])
            fold_rows.append(row)
            rocs[f"fold {k}"] = roc_points(np.isin(y[va], positive), probs[:, positive].sum(1))
            thresholds.append(thr)
            temperatures.append(t_k)
            best_epochs.append(fbest)
            del fmodel
            keras.backend.clear_session()
        final_epochs = max(1, int(round(float(np.median(best_epochs)))))
        threshold = float(np.median(thresholds))
        temperature = float(np.median(temperatures))
        ctx.log(f"final model on all {len(y)} tiles for {final_epochs} epoch(s) (median best epoch); threshold {threshold:.4f}, "
                f"temperature {temperature:.4f} (medians of the folds)")
        trainer.total_steps = trainer.done_steps + final_epochs * cfg.ensemble * trainer.steps(len(y))
        model, fhist, _ = trainer.fit(np.arange(len(y)), None, epochs=final_epochs, label="final · ", fold=0)
        fit_s = time.time() - t_start
        history += [{**row, "fold": "final"} for row in fhist]
        detector = None
        if cfg.domain != "none":
            out_all = _Evaluator(trainer, model).run(np.arange(len(y)))
            detector = fit_domain(out_all.features, y, out_all.features, pass_rate=cfg.domain_pass_rate, blocks=domain_blocks(cfg, model, ctx))
        cv = mean_sd(fold_rows)
        metrics = [{"split": "cv-mean", "description": f"mean over {len(folds)} stratified group folds (s.d. in cv_sd)", **{k: v["mean"] for k, v in cv.items()},
                    "n": int(len(y)), "cv_sd": {k: v["sd"] for k, v in cv.items()}, "threshold": round(threshold, 4)}, *fold_rows]
        split_info = {"method": "kfold", "folds": len(folds), "n": int(len(y)), "fold_sizes": [int(len(va)) for _, va in folds]}
        epochs_info = {"epochs_run": final_epochs, "best_epoch": final_epochs, "fold_best_epochs": best_epochs}
        calibration_fit = f"median of the temperatures fitted on each of the {len(folds)} folds' held-out groups"
        domain_fit = (f"class means and shared covariance of all {len(y)} tiles (not augmented); threshold: the {cfg.domain_pass_rate:.0%} quantile "
                      "of the same tiles' scores (k-fold leaves no held-out tiles for the final model: optimistic)")

    headline = metrics[0]
    quality = quality_check(headline, n_classes)
    if quality["status"] == "failed":
        ctx.log("quality check FAILED: " + "; ".join(quality["reasons"]))
    calibration = {"method": cfg.calibration, "temperature": round(float(temperature), 5), "fitted_on": calibration_fit, "ece_bins": 10,
                   "reliability": reliability}
    timing = {"wall_time_s": None, "fit_time_s": round(fit_s, 1), "cpu_time_s": None}

    # 6. register
    ctx.progress(trainer.total_steps, trainer.total_steps, "registering the model")
    card = _register(cfg, data, model, positive, threshold, metrics, split_info, epochs_info, ctx, (t_start, cpu_start), tf, keras,
                     calibration=calibration, detector=detector, domain_fit=domain_fit, normalizer=normalizer, norm_source=norm_source,
                     quality=quality, extra=extra, timing=timing, out_dir=out_dir)
    ctx.log("metrics " + ", ".join(f"{m['split']}: AUC {m.get('auc')} acc {m.get('accuracy_multiclass', m.get('accuracy'))} ECE {m.get('ece')} "
                                   f"in-domain {m.get('in_domain_fraction')}" for m in metrics[:3]))
    ctx.log(f"registered model '{card['id']}' in {card['folder']}" + (" — FAILED quality check" if quality["status"] == "failed" else ""))
    return {
        "model_id": card["id"],
        "model_dir": card["folder"],
        "classes": list(data.classes),
        "positive_classes": [data.classes[i] for i in positive],
        "threshold": card["threshold"],
        "temperature": card["calibration"]["temperature"],
        "metrics": metrics,
        "headline": {k: headline.get(k) for k in ("split", "auc", "f1", "accuracy", "precision", "recall", "accuracy_multiclass", "ece")},
        "quality": quality,
        "cv": cv,
        "roc": rocs,
        "history": history,
        "n_tiles": len(data.files),
        "n_skipped": len(data.skipped),
        "data_hash": data.data_hash,
        "wall_s": card["training"]["wall_time_s"],
        "cpu_s": card["training"]["cpu_time_s"],
        **epochs_info,
    }


#: files of an earlier model folder that ``train(..., out_dir=...)`` keeps (the committed configuration)
KEEP_FILES = ("train.yaml",)


def training_normalizer(cfg: TrainConfig):
    """``(normaliser or None, description of its target)`` for a configuration's ``normalization``."""
    if cfg.normalization == "none":
        return None, None
    from engine.stain import get_normalizer

    if cfg.normalization_reference:
        from engine.imageio import read_image

        ref = Path(cfg.normalization_reference)
        return get_normalizer(cfg.normalization, read_image(ref)), f"reference tile {ref.name}"
    return get_normalizer(cfg.normalization), "the published Macenko target (HERef, maxCRef)"


def domain_blocks(cfg: TrainConfig, model, ctx: JobContext) -> tuple[int, ...] | None:
    """The feature parts of ``mahalanobis-blocks`` (None for ``mahalanobis``, or when the features are not a concatenation)."""
    if cfg.domain != "mahalanobis-blocks":
        return None
    from engine.forward import feature_blocks

    blocks = feature_blocks(model)
    if not blocks or len(blocks) < 2:
        ctx.log(f"warning: domain: mahalanobis-blocks, but {cfg.architecture}'s features are not concatenated from parts: one covariance over all")
        return None
    return blocks


def _default_macenko():
    from engine.stain import get_normalizer

    return get_normalizer("macenko")


class _Evaluator:
    """Runs a trained model (through :class:`engine.forward.ModelRunner`, uncalibrated) over tiles of the prepared data."""

    CHUNK = 256

    def __init__(self, trainer: _Trainer, model):
        from engine.forward import ModelRunner

        self.trainer = trainer
        self.runner = ModelRunner(model, n_classes=len(trainer.data.classes), positive=trainer.positive, mc_samples=0, tta=trainer.cfg.tta)

    def _forward(self, arrays: list[np.ndarray]):
        from engine.forward import concat

        parts = []
        for start in range(0, len(arrays), EVAL_BATCH):
            self.trainer.ctx.raise_if_cancelled()
            parts.append(self.runner.forward(np.stack(arrays[start:start + EVAL_BATCH]).astype(np.float32)))
        return concat(parts)

    def run(self, idx: np.ndarray):
        """ForwardOutput of the cached (prepared) tiles ``idx``."""
        from PIL import Image

        from engine.forward import concat

        files = self.trainer.files[idx]
        parts = []
        for start in range(0, len(files), self.CHUNK):
            arrays = []
            for f in files[start:start + self.CHUNK]:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("RGB")))
            parts.append(self._forward(arrays))
        return concat(parts)

    def run_sources(self, idx: np.ndarray, transform, normalizer):
        """ForwardOutput of the *original* tiles ``idx``, each ``transform(rgb, i)``-ed, normalised, resized like inference."""
        from engine.imageio import read_image, resize_tile

        arrays = []
        for i in idx:
            rgb = read_image(self.trainer.data.sources[i])
            if transform is not None:
                rgb = transform(rgb, i)
            if normalizer is not None:
                rgb = normalizer.transform_with_info(rgb).image
            arrays.append(resize_tile(rgb, self.trainer.cfg.px))
        return self._forward(arrays)


class _Scorer:
    """Metrics rows of model outputs at one threshold, temperature and out-of-domain detector."""

    def __init__(self, positive, n_classes: int, threshold: float, temperature: float, detector):
        self.positive, self.n_classes, self.threshold, self.temperature, self.detector = positive, n_classes, threshold, temperature, detector

    def calibrated(self, out) -> np.ndarray:
        return apply_temperature(out.raw_probabilities, self.temperature)

    def row(self, split: str, description: str, out, y: np.ndarray) -> dict:
        probs = self.calibrated(out)
        row = {"split": split, "description": description, **evaluate(probs, y, self.positive, self.threshold, n_classes=self.n_classes)}
        row["ece"] = ece(probs, y)
        row["ece_uncalibrated"] = ece(out.raw_probabilities, y)
        if self.detector is not None and out.features is not None:
            row["in_domain_fraction"] = round(float(self.detector.in_domain(self.detector.score(out.features)).mean()), 4)
        return row

    def reliability(self, out, y: np.ndarray) -> dict:
        return {"before": reliability_table(out.raw_probabilities, y), "after": reliability_table(self.calibrated(out), y)}


# ----------------------------------------------------------------------------- helpers


def _positive_indices(cfg: TrainConfig, classes: tuple[str, ...]) -> list[int]:
    if not cfg.positive_classes:
        return [len(classes) - 1]
    unknown = [c for c in cfg.positive_classes if c not in classes]
    if unknown:
        raise InvalidInputError(f"positive_classes {unknown} are not among the classes found in the data: {list(classes)}.")
    if len(set(cfg.positive_classes)) == len(classes):
        raise InvalidInputError("positive_classes cannot be every class: the score would always be 1.")
    return [classes.index(c) for c in cfg.positive_classes]


def _log_split(ctx: JobContext, data: PreparedData, parts: dict) -> None:
    for name, idx in parts.items():
        counts = np.bincount(data.y[idx], minlength=len(data.classes))
        per = ", ".join(f"{c} {n}" for c, n in zip(data.classes, counts))
        ctx.log(f"split {name}: {len(idx)} tiles, {len(set(data.groups[idx].tolist()))} groups ({per})")


class _Trainer:
    """Builds the tf.data pipelines and fits models; one per job (keeps the global step count)."""

    def __init__(self, cfg: TrainConfig, data: PreparedData, positive: list[int], ctx: JobContext, tf, keras):
        self.cfg, self.data, self.positive, self.ctx, self.tf, self.keras = cfg, data, positive, ctx, tf, keras
        self.total_steps = 1
        self.done_steps = 0
        self.files = np.array(data.files)

    def steps(self, n: int) -> int:
        return max(1, math.ceil(n / self.cfg.batch_size))

    # -- data
    def dataset(self, idx: np.ndarray, *, training: bool, member: int = 1):
        return make_dataset(self.files[idx], self.data.y[idx], px=self.cfg.px, batch_size=self.cfg.batch_size if training else EVAL_BATCH,
                            training=training, augmentation=self.cfg.augmentation if training else None, seed=self.cfg.seed + 1000 * (member - 1),
                            workers=self.cfg.workers, one_hot=len(self.data.classes) if training and self._soft_labels else None)

    @property
    def _soft_labels(self) -> bool:
        """One-hot float labels and categorical cross-entropy: label smoothing or CutMix's mixed labels need them."""
        return bool(self.cfg.label_smoothing or self.cfg.augmentation.cutmix)

    # -- model
    def build(self):
        from engine.architectures import build_model

        model = build_model(self.cfg.architecture, self.cfg.px, len(self.data.classes), dropout=self.cfg.dropout, freeze_backbone=self.cfg.freeze_backbone)
        if self.cfg.bn_momentum is not None:
            n_bn = _set_bn_momentum(model, self.cfg.bn_momentum, self.keras)
            if n_bn and self.done_steps == 0:
                self.ctx.log(f"BatchNorm momentum {self.cfg.bn_momentum} in {n_bn} layers")
        if self.cfg.init_from:
            copied = _copy_weights_from_registered(model, self.cfg.init_from)
            self.ctx.log(f"fine-tuning from registered model '{self.cfg.init_from}': {copied} layers' weights copied by name")
        return model

    def optimizer(self, steps_per_epoch: int = 1, epochs: int = 1):
        k, lr = self.keras, self.cfg.learning_rate
        if self.cfg.lr_schedule == "cosine":
            total = max(1, steps_per_epoch * epochs)
            warmup = min(int(round(self.cfg.warmup_epochs * steps_per_epoch)), total - 1)
            lr = k.optimizers.schedules.CosineDecay(initial_learning_rate=lr / 10 if warmup else lr, decay_steps=max(total - warmup, 1), alpha=0.01,
                                                    warmup_target=lr if warmup else None, warmup_steps=warmup)
        return {
            "adam": lambda: k.optimizers.Adam(learning_rate=lr),
            "adamw": lambda: k.optimizers.AdamW(learning_rate=lr, weight_decay=self.cfg.weight_decay or 1e-4),
            "sgd": lambda: k.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True),
            "rmsprop": lambda: k.optimizers.RMSprop(learning_rate=lr),
        }[self.cfg.optimizer]()

    def class_weight(self, y: np.ndarray) -> dict | None:
        cw = self.cfg.class_weights
        n_classes = len(self.data.classes)
        if cw in (None, "none"):
            return None
        if cw == "balanced":
            counts = np.bincount(y, minlength=n_classes).astype(float)
            return {i: float(len(y) / (n_classes * c)) if c else 1.0 for i, c in enumerate(counts)}
        unknown = sorted(set(cw) - set(self.data.classes))
        if unknown:
            raise InvalidInputError(f"class_weights names unknown classes {unknown}; classes: {list(self.data.classes)}.")
        return {i: float(cw.get(c, 1.0)) for i, c in enumerate(self.data.classes)}

    def bn_images(self, train_idx: np.ndarray) -> np.ndarray | None:
        """``cfg.bn_reestimate`` un-augmented training tiles (uint8, a seeded random subset) for :func:`reestimate_batchnorm`, or None."""
        n = min(int(self.cfg.bn_reestimate), len(train_idx))
        if n <= 0:
            return None
        from PIL import Image

        rng = np.random.default_rng([self.cfg.seed, 7])
        chosen = rng.choice(np.asarray(train_idx), n, replace=False)
        arrays = []
        for f in self.files[chosen]:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        return np.stack(arrays)

    def predict(self, model, idx: np.ndarray) -> np.ndarray:
        probs = model.predict(self.dataset(idx, training=False), verbose=0, callbacks=[_CancelCheck(self.ctx, self.keras)])
        return probabilities_from_output(probs, len(self.data.classes))

    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, *, epochs: int, label: str, fold: int | None = None):
        """Fit one model; returns ``(model with the best weights, per-epoch rows, best epoch)``.

        With ``cfg.ensemble`` members, each is fitted in turn (its own initialisation and data order;
        rows carry ``member``) and :func:`engine.architectures.merge_members` joins them; the best
        epoch is the median of theirs.
        """
        n = self.cfg.ensemble
        if n == 1:
            return self._fit_one(train_idx, val_idx, epochs=epochs, label=label, fold=fold)
        from engine.architectures import build_model, merge_members

        members, rows, best = [], [], []
        for k in range(1, n + 1):
            model, member_rows, member_best = self._fit_one(train_idx, val_idx, epochs=epochs, label=f"{label}member {k}/{n} · ", fold=fold, member=k)
            members.append(model)
            rows += member_rows
            best.append(member_best)
        ensemble = build_model(self.cfg.architecture, self.cfg.px, len(self.data.classes), dropout=self.cfg.dropout, members=n)
        merge_members(ensemble, members)
        if val_idx is not None:
            acc = float((self.predict(ensemble, val_idx).argmax(1) == self.data.y[val_idx]).mean())
            own = [next((r.get("val_accuracy") for r in rows if r.get("member") == k and r["epoch"] == b), None) for k, b in enumerate(best, start=1)]
            self.ctx.log(f"{label}ensemble of {n}: validation accuracy {acc:.4f} (members at their best epochs: {', '.join(map(str, own))})")
        return ensemble, rows, int(np.median(best))

    def _fit_one(self, train_idx: np.ndarray, val_idx: np.ndarray | None, *, epochs: int, label: str, fold: int | None = None, member: int | None = None):
        cfg, keras, ctx = self.cfg, self.keras, self.ctx
        model = self.build()
        steps = self.steps(len(train_idx))
        if self._soft_labels:
            loss, acc = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), keras.metrics.CategoricalAccuracy(name="accuracy")
        else:
            loss, acc = keras.losses.SparseCategoricalCrossentropy(), "accuracy"
        model.compile(optimizer=self.optimizer(steps, epochs), loss=loss, metrics=[acc])
        train_ds = self.dataset(train_idx, training=True, member=member or 1)
        ctx.log(f"{label}model {cfg.architecture} at {cfg.px} px: {model.count_params():,} parameters; {steps} batches of {cfg.batch_size} per epoch, up to {epochs} epochs")
        bn_images = self.bn_images(train_idx)
        if bn_images is not None or cfg.ema_decay:
            ctx.log(f"{label}evaluated weights: " + ", ".join(
                ([f"moving average of the weights (decay {cfg.ema_decay})"] if cfg.ema_decay else [])
                + ([f"BatchNorm statistics re-estimated on {len(bn_images)} un-augmented training tiles before each validation"] if bn_images is not None else [])))
        monitor = _EpochMonitor(self, model, val_idx, epochs=epochs, steps=steps, label=label, fold=fold, member=member, bn_images=bn_images)
        callbacks = [monitor]
        if val_idx is not None and cfg.reduce_lr_patience and cfg.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience,
                                                               min_lr=cfg.min_learning_rate, verbose=0))
        model.fit(train_ds, epochs=epochs, class_weight=self.class_weight(self.data.y[train_idx]), callbacks=callbacks, shuffle=False, verbose=0)
        ctx.raise_if_cancelled()
        if monitor.best_weights is not None:
            model.set_weights(monitor.best_weights)
        # a full epoch may have been skipped by early stopping: count it as done for the progress bar
        self.done_steps = monitor.step_base + epochs * steps
        return model, monitor.rows, monitor.best_epoch


def _bn_layers(model, keras) -> list:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
        elif hasattr(layer, "layers"):
            out += _bn_layers(layer, keras)
    return out


def reestimate_batchnorm(model, images: np.ndarray, keras, *, batch_size: int = EVAL_BATCH) -> int:
    """Precise BatchNorm (Wu & Johnson 2021): every BN layer's moving mean and variance become the average of its batch statistics over ``images``.

    The moving averages a training run leaves follow the last few dozen *augmented* batches of
    weights that kept changing; the model is evaluated on un-augmented tiles. A training-mode
    forward pass over ``images`` (uint8 or float 0..255) with momentum ``k / (k + 1)`` at batch ``k``
    makes them the plain mean over the batches; no trainable weight changes (dropout is active in the
    pass but touches nothing stored). Frozen BN layers (``trainable=False``) run in inference mode
    and keep their statistics. Returns the number of BN layers.
    """
    layers = _bn_layers(model, keras)
    if not layers or images is None or not len(images):
        return 0
    saved = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(np.asarray(images[start:start + batch_size], dtype=np.float32), training=True)
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m
    return len(layers)


class WeightAverage:
    """Exponential moving average of a model's trainable weights, updated after every batch.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` at update ``t`` (TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``), so the first batches do not freeze the random initial weights into it.
    :meth:`swapped_in` puts the average into the model for an evaluation and puts the training weights back.
    """

    def __init__(self, model, decay: float):
        self.model, self.decay, self.updates = model, float(decay), 0
        self.average = [np.array(v.numpy(), dtype=np.float64) for v in model.trainable_weights]

    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, v in zip(self.average, self.model.trainable_weights):
            avg *= d
            avg += (1.0 - d) * v.numpy()
        self.updates += 1

    def swapped_in(self):
        import contextlib

        @contextlib.contextmanager
        def swap():
            raw = [v.numpy() for v in self.model.trainable_weights]
            for avg, v in zip(self.average, self.model.trainable_weights):
                v.assign(avg.astype(v.dtype))
            try:
                yield
            finally:
                for r, v in zip(raw, self.model.trainable_weights):
                    v.assign(r)
        return swap()


def _set_bn_momentum(model, momentum: float, keras) -> int:
    """Set the moving-average momentum of every BatchNormalization layer (nested backbones included)."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
        elif hasattr(layer, "layers"):
            count += _set_bn_momentum(layer, momentum, keras)
    return count


def make_dataset(files, y, *, px: int, batch_size: int, training: bool, augmentation=None, seed: int = 0, workers: int = 2, one_hot: int | None = None):
    """``tf.data`` of ``(float32 0..255 images, int labels)`` read from the cache's BMP files: parallel reads, augmentation, prefetch.

    ``one_hot``: number of classes, for one-hot float labels (label smoothing needs them).
    """
    from engine.runtime import tensorflow

    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(files, dtype=str), np.asarray(y, dtype=np.int32)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    parallel = tf.data.AUTOTUNE if workers <= 0 else workers

    def load(path, label):
        img = tf.io.decode_bmp(tf.io.read_file(path), channels=3)  # the uncompressed cache of datasets.prepare
        img.set_shape([px, px, 3])
        return img, (tf.one_hot(label, one_hot) if one_hot else label)

    ds = ds.map(load, num_parallel_calls=parallel, deterministic=not training)
    return _batch_and_augment(ds, batch_size=batch_size, augmentation=augmentation if training else None, seed=seed, workers=workers)


def make_array_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, training: bool, augmentation=None, seed: int = 0, workers: int = 2):
    """The same pipeline from in-memory uint8 arrays (for the benchmark and small data); integer labels, so no CutMix."""
    from engine.runtime import tensorflow

    if augmentation is not None and augmentation.cutmix:
        raise ValueError("make_array_dataset gives integer labels; CutMix needs one-hot labels (make_dataset with one_hot)")

    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((x, np.asarray(y, dtype=np.int32)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return _batch_and_augment(ds, batch_size=batch_size, augmentation=augmentation if training else None, seed=seed, workers=workers)


def _batch_and_augment(ds, *, batch_size: int, augmentation, seed: int, workers: int):
    from engine.runtime import tensorflow

    tf = tensorflow()
    parallel = tf.data.AUTOTUNE if workers <= 0 else workers
    a = augmentation if augmentation is not None and augmentation.any else None
    if a is not None and (a.flip or a.rotate90 or a.colour):
        ds = ds.map(lambda img, label: (_augment_tile(tf, img, a), label), num_parallel_calls=parallel, deterministic=False)
    ds = ds.batch(batch_size)
    if a is not None and (a.rotation or a.zoom or a.shift):
        ds = ds.map(lambda x, y: (_random_affine(tf, tf.cast(x, tf.float32), a.rotation, a.zoom, a.shift), y), num_parallel_calls=parallel, deterministic=False)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=parallel)
    if a is not None and a.cutmix:
        ds = ds.map(lambda x, y: cutmix(tf, x, y, a.cutmix), num_parallel_calls=parallel, deterministic=False)
    return ds.prefetch(tf.data.AUTOTUNE)


def cutmix(tf, x, y, rate: float):
    """CutMix (Yun et al. 2019) of one batch, with probability ``rate``: ``(images, one-hot labels)`` → mixed ones.

    One box for the batch, area ``1 − λ`` of the tile with λ ~ U(0, 1), its centre uniform and the box
    clipped to the tile; inside it, tile ``i`` shows tile ``perm[i]`` of the same batch (a random
    permutation). Each label becomes ``λ' · y_i + (1 − λ') · y_perm[i]`` with λ' the share of tile ``i``
    left after clipping, so labels match pixel areas exactly. Labels must be one-hot floats.
    """
    n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    cut = tf.sqrt(1.0 - tf.random.uniform([]))
    ch, cw = tf.cast(hf * cut, tf.int32), tf.cast(wf * cut, tf.int32)
    cy, cx = tf.random.uniform([], 0, h, dtype=tf.int32), tf.random.uniform([], 0, w, dtype=tf.int32)
    y0, y1 = tf.clip_by_value(cy - ch // 2, 0, h), tf.clip_by_value(cy + (ch - ch // 2), 0, h)
    x0, x1 = tf.clip_by_value(cx - cw // 2, 0, w), tf.clip_by_value(cx + (cw - cw // 2), 0, w)
    rows, cols = tf.range(h), tf.range(w)
    inside = tf.logical_and(rows[:, None] >= y0, rows[:, None] < y1) & tf.logical_and(cols[None, :] >= x0, cols[None, :] < x1)
    apply = tf.random.uniform([]) < rate
    mask = tf.cast(inside, x.dtype)[None, :, :, None] * tf.cast(apply, x.dtype)
    perm = tf.random.shuffle(tf.range(n))
    mixed = x * (1.0 - mask) + tf.gather(x, perm) * mask
    kept = 1.0 - tf.reduce_sum(mask) / (hf * wf)
    labels = tf.cast(y, tf.float32)
    return mixed, kept * labels + (1.0 - kept) * tf.gather(labels, perm)


def _augment_tile(tf, img, a):
    """Flips, 90° turns, stain (HED) jitter and colour jitter of one uint8 tile.

    HED jitter (:func:`engine.stain_augment.hed_jitter`, Tellez et al. 2019) first, then colour jitter
    of strength ``j``: brightness ± j, contrast × 1 ± 2j, saturation × 1 ± 3j, hue ± j/2 (TensorFlow's
    fused per-image kernels). Returns uint8 without colour augmentation, else float32 in 0..255.
    Rotation/zoom/shift follow per batch (:func:`_random_affine`).
    """
    if a.flip:
        img = tf.image.random_flip_left_right(img)
        img = tf.image.random_flip_up_down(img)
    if a.rotate90:
        img = tf.image.rot90(img, tf.random.uniform([], 0, 4, dtype=tf.int32))
    if a.stain:
        from engine.stain_augment import hed_jitter

        img = hed_jitter(tf, img, float(a.hed_sigma), float(a.hed_bias), float(a.hed_vector))
    j = float(a.color_jitter)
    if j > 0:
        img = tf.cast(img, tf.float32) / 255.0
        img = tf.image.random_brightness(img, j)
        img = tf.image.random_contrast(img, max(0.0, 1 - 2 * j), 1 + 2 * j)
        img = tf.image.random_saturation(img, max(0.0, 1 - 3 * j), 1 + 3 * j)
        img = tf.image.random_hue(img, min(0.5, j / 2))
        img = tf.clip_by_value(img, 0.0, 1.0) * 255.0
    return img


def _random_affine(tf, x, rotation: float, zoom: float, shift: float):
    """One random rotation (± ``rotation`` turns), zoom (× 1 ± ``zoom``) and shift (± ``shift`` of the side) per image.

    A single vectorised projective-transform op over the batch ``(N, H, W, 3)``, bilinear, edges reflected.
    """
    n = tf.shape(x)[0]
    h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    theta = tf.random.uniform([n], -rotation, rotation) * 2.0 * math.pi
    z = 1.0 + tf.random.uniform([n], -zoom, zoom)
    tx, ty = tf.random.uniform([n], -shift, shift) * w, tf.random.uniform([n], -shift, shift) * h
    c, s = tf.cos(theta) / z, tf.sin(theta) / z
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    # output pixel (x, y) samples input (c·x − s·y + a2, s·x + c·y + b2): rotation and zoom about the centre, then the shift
    a2, b2 = cx - c * cx + s * cy + tx, cy - s * cx - c * cy + ty
    zeros = tf.zeros([n])
    transforms = tf.stack([c, -s, a2, s, c, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
                                                 interpolation="BILINEAR", fill_mode="REFLECT")


def _copy_weights_from_registered(model, model_id: str) -> int:
    from engine.registry import Registry, load_model_for_card

    card = Registry().get(model_id)
    source = load_model_for_card(card)

    def flat(m):
        out = {}
        for layer in m.layers:
            if hasattr(layer, "layers") and layer.layers:  # nested backbone
                out.update(flat(layer))
            if layer.weights:
                out[layer.name] = layer
        return out

    src, dst = flat(source), flat(model)
    copied = 0
    for name, layer in dst.items():
        other = src.get(name)
        if other is None or hasattr(layer, "layers") and layer.layers:
            continue
        w_new, w_old = layer.get_weights(), other.get_weights()
        if len(w_new) == len(w_old) and all(a.shape == b.shape for a, b in zip(w_new, w_old)):
            layer.set_weights(w_old)
            copied += 1
    if not copied:
        raise IncompatibleModelError(f"No layer of the registered model '{model_id}' ({card.architecture}) fits the new {model.name} model.",
                                     "Fine-tune from a model of the same architecture.")
    return copied


class _CancelCheck:
    """A Keras callback (built lazily: Keras is imported only in the worker) that stops predict/evaluate on cancel."""

    def __new__(cls, ctx, keras):
        class CancelCheck(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch, logs=None):
                ctx.raise_if_cancelled()

            def on_test_batch_end(self, batch, logs=None):
                ctx.raise_if_cancelled()

        return CancelCheck()


def _EpochMonitor(trainer: _Trainer, model, val_idx, *, epochs: int, steps: int, label: str, fold: int | None,  # noqa: N802 - a class factory
                  member: int | None = None, bn_images: np.ndarray | None = None):
    """Per-batch progress, cancellation and weight average; per-epoch validation metrics, early stopping, best weights.

    The weights that are validated, kept as best and returned are the evaluated ones: the moving
    average of the weights when ``cfg.ema_decay`` is set, with BatchNorm statistics re-estimated on
    ``bn_images`` when given (:func:`reestimate_batchnorm`); training goes on from the raw weights (BN
    moving statistics play no part in a training step, so re-estimating them does not disturb it).
    """
    keras, ctx, cfg = trainer.keras, trainer.ctx, trainer.cfg
    from sklearn.metrics import roc_auc_score

    class EpochMonitor(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows: list[dict] = []
            self.best_loss = math.inf
            self.best_epoch = 0
            self.best_weights = None
            self.step_base = trainer.done_steps
            self.epoch = 0
            self.t0 = time.time()
            self.average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.t0 = epoch, time.time()

        def on_train_batch_end(self, batch, logs=None):
            if self.average is not None:
                self.average.update()
            if ctx.cancelled():
                raise Cancelled(f"cancelled during epoch {self.epoch + 1}, batch {batch + 1}")
            done = self.step_base + self.epoch * steps + batch + 1
            loss = (logs or {}).get("loss")
            ctx.progress(done, trainer.total_steps, f"{label}epoch {self.epoch + 1}/{epochs} · batch {batch + 1}/{steps}",
                         epoch=self.epoch + 1, epochs=epochs, batch=batch + 1, batches=steps, fold=fold, member=member,
                         loss=None if loss is None else round(float(loss), 5))

        def on_epoch_end(self, epoch, logs=None):
            import contextlib

            with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
                if bn_images is not None:
                    reestimate_batchnorm(self.model, bn_images, keras)
                self._epoch_end(epoch, logs)

        def _epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            row = {"epoch": epoch + 1, "loss": _r(logs.get("loss")), "accuracy": _r(logs.get("accuracy"))}
            if fold is not None:
                row["fold"] = fold
            if member is not None:
                row["member"] = member
            if val_idx is not None:
                probs = trainer.predict(self.model, val_idx)
                y = trainer.data.y[val_idx]
                val_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
                y_bin = np.isin(y, trainer.positive)
                score = probs[:, trainer.positive].sum(1)
                auc = float(roc_auc_score(y_bin, score)) if 0 < y_bin.sum() < len(y_bin) else None
                logs.update(val_loss=val_loss, val_accuracy=float((probs.argmax(1) == y).mean()))
                if auc is not None:
                    logs["val_auc"] = auc
                row.update(val_loss=_r(val_loss), val_accuracy=_r(logs["val_accuracy"]), val_auc=_r(auc))
                improved = val_loss < self.best_loss - 1e-6
            else:
                improved = True  # no validation (final k-fold model): keep the last weights
            lr = self.model.optimizer.learning_rate
            row.update(lr=float(f"{float(np.asarray(lr.numpy() if hasattr(lr, 'numpy') else lr)):.4g}"), epoch_s=round(time.time() - self.t0, 1))
            if improved:
                self.best_loss = row.get("val_loss", math.inf) if val_idx is not None else math.inf
                self.best_epoch = epoch + 1
                self.best_weights = self.model.get_weights()
            self.rows.append(row)
            ctx.metric(**row)
            text = "  ".join(f"{k} {v}" for k, v in row.items() if k not in ("epoch", "fold", "member") and v is not None)
            ctx.log(f"{label}epoch {epoch + 1}/{epochs}  {text}{' *' if improved else ''}")
            patience = cfg.early_stopping_patience
            if val_idx is not None and patience and epoch + 1 >= cfg.min_epochs and epoch + 1 - self.best_epoch >= patience:
                ctx.log(f"{label}early stopping: no val_loss improvement for {patience} epochs; keeping epoch {self.best_epoch}")
                self.model.stop_training = True

    return EpochMonitor()


def _r(v, nd: int = 5):
    return None if v is None else round(float(v), nd)


# ----------------------------------------------------------------------------- registration


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None


def new_model_id(cfg: TrainConfig, models_dir: Path) -> str:
    if cfg.model_id:
        if (models_dir / cfg.model_id).exists():
            raise InvalidInputError(f"A model '{cfg.model_id}' is already registered.", "Choose another model_id, or leave it empty for an automatic one.")
        return cfg.model_id
    base = f"{cfg.architecture.replace('_', '-')}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    model_id, n = base, 1
    while (models_dir / model_id).exists():
        n += 1
        model_id = f"{base}-{n}"
    return model_id


def _register(cfg, data: PreparedData, model, positive, threshold, metrics, split_info, epochs_info, ctx, t_start, tf, keras, *,
              calibration: dict, detector, domain_fit: str, normalizer, norm_source: str | None, quality: dict, extra: dict, timing: dict,
              out_dir: Path | str | None = None) -> dict:
    """Write the model folder (weights, detector, stain reference, card, README, config, log) atomically; returns the card."""
    from engine.architectures import build_model
    from engine.normalization import write_reference
    from engine.registry import load_keras_file, sha256_file
    from engine.training.card import build_card, render_readme

    settings = get_settings()
    if out_dir is not None:
        final_dir = Path(out_dir).expanduser().resolve()
        model_id = cfg.model_id or final_dir.name
        parent = final_dir.parent
    else:
        parent = settings.models_dir
        model_id = new_model_id(cfg, parent)
        final_dir = parent / model_id
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{model_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # a clean float32 copy: no optimizer state, no mixed-precision policy, no augmentation
        keras.mixed_precision.set_global_policy("float32")
        final = build_model(cfg.architecture, cfg.px, len(data.classes), dropout=cfg.dropout, freeze_backbone=cfg.freeze_backbone, members=cfg.ensemble)
        final.set_weights(model.get_weights())
        final.save(tmp / "model.keras")
        load_keras_file(tmp / "model.keras")  # must load in safe mode
        stored = cfg.with_(model_id=None, data=str(Path(cfg.data).resolve()))
        (tmp / "train_config.yaml").write_text(stored.to_yaml())
        history = [m for m in _read_metrics(ctx)]
        _write_history(tmp / "training_log.csv", history)
        domain = None
        if detector is not None:
            from engine.domain import FILE_NAME

            blocks = detector.blocks
            features = (f"{detector.dim}-d input of the final Dense layer" + (f" (parts {' + '.join(map(str, blocks))}, one covariance each, "
                        "each part's squared distance divided by its size)" if blocks else "")
                        + (", square-rooted" if detector.transform == "sqrt" else "")
                        + (f", averaged over the tile's {cfg.tta} test-time views" if cfg.tta > 1 else ""))
            domain = {"method": detector.method, "file": FILE_NAME, "sha256": detector.save(tmp / FILE_NAME), "threshold": round(detector.threshold, 4),
                      "pass_rate": detector.pass_rate, "transform": detector.transform, **({"blocks": list(blocks)} if blocks else {}),
                      "features": features, "fitted_on": domain_fit, "slide_warning_fraction": 0.5}
        reference = write_reference(tmp, normalizer, norm_source) if normalizer is not None else None
        from engine.forward import find_head

        _, dropout_rate = find_head(final)
        wall, cpu = time.time() - t_start[0], time.process_time() - t_start[1]
        timing = {**timing, "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1)}
        card = build_card(cfg, data, model_id=model_id, params=int(final.count_params()), positive=positive, threshold=threshold, metrics=metrics,
                          split_info=split_info, epochs_info=epochs_info, calibration=calibration, domain=domain, reference=reference,
                          quality=quality, extra=extra, timing=timing, history=history, job_id=ctx.job_id, tf_version=tf.__version__,
                          keras_version=keras.__version__, device="GPU" if tf.config.list_physical_devices("GPU") else "CPU",
                          git=git_commit(), weights_sha256=sha256_file(tmp / "model.keras"), weights_bytes=(tmp / "model.keras").stat().st_size,
                          dropout_rate=dropout_rate, reproduce=cfg.card.get("reproduce") or f"python -m engine train {final_dir / 'train_config.yaml'}")
        (tmp / "card.json").write_text(json.dumps(card, indent=2, default=float) + "\n")
        (tmp / "README.md").write_text(render_readme(card))
        if out_dir is not None and final_dir.exists():
            for name in KEEP_FILES:
                if (final_dir / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(final_dir / name, tmp / name)
            old = parent / f".old-{model_id}-{os.getpid()}"
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if final_dir.exists():
                raise InvalidInputError(f"A model '{model_id}' appeared while training; the new model is kept in '{tmp}'.")
            os.replace(tmp, final_dir)  # atomic: the registry never sees half a model
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    card["folder"] = str(final_dir)
    return card


def _write_history(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from engine.exports import safe_csv

    rows = [r for r in rows if "epoch" in r]
    if rows:
        safe_csv(pd.DataFrame(rows), path)  # fold labels are text: escaped like every CSV (engine.exports)


def _read_metrics(ctx: JobContext) -> list[dict]:
    path = ctx.job_dir / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            row.pop("time", None)
            rows.append(row)
    return rows
