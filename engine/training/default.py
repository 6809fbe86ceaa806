"""Train the project's default model: ``python -m engine train-default``.

LC25000 lung subset, three classes (``lung_aca``, ``lung_n``, ``lung_scc``), score
p(malignant) = p(aca) + p(scc). The data are split **by ``group``** (pseudo-source field of
rotated/flipped copies; see ``shared/data/README.md`` §1) into train / validation / test, per class,
with a fixed seed. Validation picks the best epoch (lowest validation loss) and the F1-optimal
threshold on the malignant score (REFERENCE.md §4); the test groups are only scored at the end.

Images are decoded once, resized with PIL (bilinear, antialiased) to ``input_px`` and kept in
memory as uint8; augmentation (flips, 90° rotations, mild zoom, brightness/contrast/saturation/hue
jitter) runs on the fly in ``tf.data`` with seeded stateless random ops. The saved model carries
no augmentation layers: it takes float RGB 0..255 and returns the 3-class softmax.

Writes into ``--out``: ``model.keras``, ``card.json``, ``README.md`` and ``training_log.csv``
(per-epoch aggregate metrics only; no per-image predictions).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from engine.cache import sha256_file
from engine.errors import InvalidInputError

MODEL_ID = "lc25000-lung-cnn"
CLASSES = ["lung_aca", "lung_n", "lung_scc"]
CLASS_DESCRIPTIONS = {
    "lung_aca": "adenocarcinoma",
    "lung_n": "benign lung tissue",
    "lung_scc": "squamous cell carcinoma",
}
POSITIVE_CLASSES = ["lung_aca", "lung_scc"]
DEFAULTS = dict(architecture="lung_cnn", input_px=144, epochs=36, seed=20240611, batch_size=32, lr=2e-3,
                weight_decay=1e-4, label_smoothing=0.1, val_frac=0.15, test_frac=0.15, patience=12, width=32,
                dropout=0.3)
REPRODUCE = "python -m engine train-default --data ../shared/data/lc25000-lung-224 --out models/lc25000-lung-cnn"


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def read_labels(data_dir: Path):
    import pandas as pd

    path = data_dir / "labels.csv"
    if not path.is_file():
        raise InvalidInputError(f"{path} not found: --data must be the lc25000-lung-224 folder holding labels.csv.")
    df = pd.read_csv(path)
    missing = {"filename", "tissue_class", "group"} - set(df.columns)
    if missing:
        raise InvalidInputError(f"{path} lacks column(s) {sorted(missing)}.")
    unknown = sorted(set(df["tissue_class"]) - set(CLASSES))
    if unknown:
        raise InvalidInputError(f"{path} has unexpected classes {unknown}; expected {CLASSES}.")
    df = df.copy()
    df["y"] = df["tissue_class"].map({c: i for i, c in enumerate(CLASSES)}).astype(int)
    return df


def split_by_group(df, *, val_frac: float, test_frac: float, seed: int):
    """Per class, shuffle the class's groups (seeded) and fill test, then validation, by image count.

    No group is in two splits; each split holds about the same share of every class.
    Returns an array of 'train' / 'val' / 'test' aligned with ``df``.
    """
    rng = np.random.default_rng(seed)
    split = np.empty(len(df), dtype=object)
    for cls in CLASSES:
        sub = df[df["tissue_class"] == cls]
        sizes = sub.groupby("group").size()
        groups = np.array(sorted(sizes.index))
        rng.shuffle(groups)
        n = len(sub)
        assigned, count = {}, 0
        for g in groups:
            if count < test_frac * n:
                assigned[g] = "test"
            elif count < (test_frac + val_frac) * n:
                assigned[g] = "val"
            else:
                assigned[g] = "train"
            count += sizes[g]
        split[sub.index.to_numpy()] = sub["group"].map(assigned).to_numpy()
    # groups are class-specific in LC25000's labels, but check: never one group in two splits
    per_group = {}
    for g, s in zip(df["group"], split):
        per_group.setdefault(g, set()).add(s)
    leaking = [g for g, s in per_group.items() if len(s) > 1]
    if leaking:
        raise InvalidInputError(f"groups {leaking[:5]} span several classes; cannot split by group per class.")
    return split


def load_images(data_dir: Path, filenames, input_px: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(filenames), input_px, input_px, 3), dtype=np.uint8)
    for i, name in enumerate(filenames):
        with Image.open(data_dir / name) as im:
            im = im.convert("RGB")
            if im.size != (input_px, input_px):
                im = im.resize((input_px, input_px), Image.BILINEAR)
            out[i] = np.asarray(im, dtype=np.uint8)
    return out


def make_train_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int, n_classes: int):
    """Infinite, seeded, augmented tf.data stream of (float 0..255 images, one-hot labels)."""
    import tensorflow as tf

    px = x.shape[1]
    x_t = tf.constant(x)
    y_t = tf.constant(y.astype("int32"))

    def augment(idx, rnd):
        img = tf.cast(tf.gather(x_t, idx), tf.float32) / 255.0
        seeds = tf.random.experimental.stateless_split(tf.stack([rnd, tf.constant(seed, tf.int64)]), 9)
        img = tf.image.stateless_random_flip_left_right(img, seeds[0])
        k = tf.random.stateless_uniform([], seeds[1], 0, 4, dtype=tf.int32)
        img = tf.image.rot90(img, k)
        # mild zoom: crop 80-100 % of the side at a random place, resize back
        scale = tf.random.stateless_uniform([], seeds[2], 0.8, 1.0)
        off = tf.random.stateless_uniform([2], seeds[3], 0.0, 1.0) * (1.0 - scale)
        box = tf.stack([off[0], off[1], off[0] + scale, off[1] + scale])[None]
        img = tf.image.crop_and_resize(img[None], box, [0], [px, px])[0]
        # colour jitter (stain / scanner variation)
        img = tf.image.stateless_random_brightness(img, 0.08, seeds[4])
        img = tf.image.stateless_random_contrast(img, 0.8, 1.2, seeds[5])
        img = tf.image.stateless_random_saturation(img, 0.75, 1.25, seeds[6])
        img = tf.image.stateless_random_hue(img, 0.04, seeds[7])
        img = tf.clip_by_value(img, 0.0, 1.0) * 255.0
        label = tf.one_hot(tf.gather(y_t, idx), n_classes)
        return img, label

    idx = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    rnd = tf.data.Dataset.random(seed=seed + 1)
    ds = tf.data.Dataset.zip((idx, rnd)).map(augment, num_parallel_calls=2, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def f1_optimal_threshold(y_bin: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising F1 of ``score >= t``; midpoint between neighbouring scores, ties → lowest."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_bin, score)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    best = int(np.argmax(f1))
    t = float(thresholds[best])
    lower = score[score < t]
    if lower.size:  # midway to the next lower score: same decisions on this data, more margin
        t = float((t + lower.max()) / 2)
    return t


def evaluate(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    pos = [CLASSES.index(c) for c in POSITIVE_CLASSES]
    score = probs[:, pos].sum(axis=1)
    y_bin = np.isin(y, pos).astype(int)
    pred_bin = (score >= threshold).astype(int)
    return {
        "n": int(len(y)),
        "n_malignant": int(y_bin.sum()),
        "auc_malignant": round(float(roc_auc_score(y_bin, score)), 4),
        "accuracy_3class": round(float((probs.argmax(1) == y).mean()), 4),
        "accuracy_binary_at_threshold": round(float((pred_bin == y_bin).mean()), 4),
        "f1_at_threshold": round(float(f1_score(y_bin, pred_bin, zero_division=0)), 4),
        "precision": round(float(precision_score(y_bin, pred_bin, zero_division=0)), 4),
        "recall": round(float(recall_score(y_bin, pred_bin, zero_division=0)), 4),
        "_confusion": confusion_matrix(y, probs.argmax(1), labels=list(range(len(CLASSES)))).tolist(),
    }


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def train(args) -> int:
    data_dir = Path(args.data).expanduser()
    out_dir = Path(args.out).expanduser()
    if not data_dir.is_dir():
        raise InvalidInputError(f"data folder {data_dir} does not exist.")
    threads = args.threads or min(os.cpu_count() or 2, 4)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import tensorflow as tf

    from engine.architectures import ARCHITECTURES, build_model

    if args.architecture not in ARCHITECTURES:
        raise InvalidInputError(f"unknown architecture {args.architecture!r}; known: {sorted(ARCHITECTURES)}")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised in this process
        pass
    keras.utils.set_random_seed(args.seed)

    t_start = time.time()
    df = read_labels(data_dir)
    split = split_by_group(df, val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed)
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    counts = {s: {c: int((df["tissue_class"].to_numpy()[i] == c).sum()) for c in CLASSES} for s, i in idx.items()}
    n_groups = {s: int(df["group"].iloc[i].nunique()) for s, i in idx.items()}
    for s in ("train", "val", "test"):
        _log(f"split {s}: {len(idx[s])} images, {n_groups[s]} groups, per class {counts[s]}")

    px = args.input_px
    _log(f"loading {len(df)} images at {px} px …")
    x_all = load_images(data_dir, df["filename"].tolist(), px)
    y_all = df["y"].to_numpy()
    _log(f"loaded in {time.time() - t_start:.0f} s")
    x_tr, y_tr = x_all[idx["train"]], y_all[idx["train"]]
    x_va, y_va = x_all[idx["val"]].astype("float32"), y_all[idx["val"]]
    x_te, y_te = x_all[idx["test"]].astype("float32"), y_all[idx["test"]]

    n_classes = len(CLASSES)
    model = build_model(args.architecture, px, n_classes, dropout=args.dropout, width=args.width)
    steps = len(x_tr) // args.batch_size
    total = steps * args.epochs
    warmup = min(steps * 2, total // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr / 10, decay_steps=max(total - warmup, 1), alpha=0.01,
        warmup_target=args.lr, warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"],
    )
    _log(f"model {args.architecture}: {model.count_params():,} parameters, {steps} steps/epoch, {args.epochs} epochs")
    ds = make_train_dataset(x_tr, y_tr, batch_size=args.batch_size, seed=args.seed, n_classes=n_classes)
    y_va_1h = keras.utils.to_categorical(y_va, n_classes)

    log_rows: list[dict] = []
    best = {"val_loss": math.inf, "epoch": 0, "weights": None}

    class Monitor(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            from sklearn.metrics import roc_auc_score

            probs = self.model.predict(x_va, batch_size=128, verbose=0)
            score = probs[:, [0, 2]].sum(1)
            val_auc = float(roc_auc_score(y_va != 1, score))
            row = {
                "epoch": epoch + 1,
                "loss": round(float(logs["loss"]), 5),
                "accuracy": round(float(logs["accuracy"]), 5),
                "val_loss": round(float(logs["val_loss"]), 5),
                "val_accuracy": round(float(logs["val_accuracy"]), 5),
                "val_auc_malignant": round(val_auc, 5),
                "lr": float(self.model.optimizer.learning_rate),
                "epoch_s": round(time.time() - self.t0, 1),
                "elapsed_s": round(time.time() - t_start, 1),
            }
            log_rows.append(row)
            mark = ""
            if logs["val_loss"] < best["val_loss"]:
                best.update(val_loss=float(logs["val_loss"]), epoch=epoch + 1, weights=self.model.get_weights())
                mark = " *"
            _log(
                f"epoch {row['epoch']:3d}/{args.epochs}  loss {row['loss']:.4f} acc {row['accuracy']:.4f}  "
                f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} val_auc {val_auc:.4f}  "
                f"lr {row['lr']:.2e}  {row['epoch_s']:.0f} s{mark}"
            )
            min_epochs = args.min_epochs if args.min_epochs is not None else args.epochs // 2
            if epoch + 1 >= min_epochs and epoch + 1 - best["epoch"] >= args.patience:
                _log(f"early stop: no val_loss improvement for {args.patience} epochs")
                self.model.stop_training = True

    t_fit = time.time()
    model.fit(ds, steps_per_epoch=steps, epochs=args.epochs, validation_data=(x_va, y_va_1h), batch_size=128,
              callbacks=[Monitor()], shuffle=False, verbose=0)
    fit_s = time.time() - t_fit
    epochs_run = len(log_rows)
    model.set_weights(best["weights"])
    _log(f"training done in {fit_s:.0f} s; best epoch {best['epoch']} (val_loss {best['val_loss']:.4f})")

    # clean, uncompiled copy for saving (no optimizer state)
    final = build_model(args.architecture, px, n_classes, dropout=args.dropout, width=args.width)
    final.set_weights(model.get_weights())
    p_va = final.predict(x_va, batch_size=128, verbose=0)
    p_te = final.predict(x_te, batch_size=128, verbose=0)
    pos = [CLASSES.index(c) for c in POSITIVE_CLASSES]
    threshold = f1_optimal_threshold(np.isin(y_va, pos).astype(int), p_va[:, pos].sum(1))
    m_va = evaluate(p_va, y_va, threshold)
    m_te = evaluate(p_te, y_te, threshold)
    cm_te = m_te.pop("_confusion")
    m_va.pop("_confusion")
    _log(f"threshold (F1-optimal on validation): {threshold:.4f}")
    _log(f"validation: {m_va}")
    _log(f"TEST: {m_te}")
    _log(f"test confusion matrix (rows true {CLASSES}, cols predicted): {cm_te}")

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    final.save(model_path)
    # check that what we wrote loads in safe mode and gives the same outputs
    reloaded = keras.models.load_model(model_path, safe_mode=True)
    check = reloaded.predict(x_te[:16], batch_size=16, verbose=0)
    if not np.allclose(check, p_te[:16], atol=1e-5):
        raise RuntimeError("reloaded model.keras gives different outputs")
    wall = time.time() - t_start

    import pandas as pd

    from engine.exports import safe_csv

    safe_csv(pd.DataFrame(log_rows), out_dir / "training_log.csv")

    card = build_card(args, df, idx, counts, n_groups, m_va, m_te, cm_te, threshold, epochs_run, best["epoch"], wall,
                      fit_s, final.count_params(), model_path, tf.__version__, keras.__version__)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "README.md").write_text(render_readme(card))
    _log(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB), card.json, README.md, training_log.csv; "
         f"wall time {wall:.0f} s")
    return 0


def build_card(args, df, idx, counts, n_groups, m_va, m_te, cm_te, threshold, epochs_run, best_epoch, wall, fit_s,
               params, model_path, tf_version, keras_version) -> dict:
    n = {s: int(len(i)) for s, i in idx.items()}
    return {
        "id": MODEL_ID,
        "name": "LC25000 lung 3-class CNN",
        "version": "1",
        "task": "tile-classification",
        "architecture": args.architecture,
        "classes": CLASSES,
        "class_descriptions": CLASS_DESCRIPTIONS,
        "positive_classes": POSITIVE_CLASSES,
        "score_name": "p(malignant)",
        "labels": {"positive": "malignant", "negative": "benign"},
        "input_px": int(args.input_px),
        "input_range": "0-255 RGB",
        "mpp": None,
        "mpp_note": (
            "Unknown. LC25000 gives no microns per pixel; its 768x768 originals were cropped from lung "
            "histology photographed at an unstated magnification, and the tiles used here were downsized to "
            f"224x224 and then resized to {args.input_px} px for the model. Feed tiles of similar field of view "
            "(whole LC25000-like patch resized to the input size)."
        ),
        "normalization": "none",
        "threshold": round(float(threshold), 4),
        "threshold_method": "F1-optimal on the malignant score over the validation groups",
        "metrics": [
            {"split": "test", "description": f"held-out groups ({n_groups['test']} groups, never seen in training or "
             "model/threshold selection); threshold from validation", **m_te},
            {"split": "validation", "description": f"validation groups ({n_groups['val']} groups) used for early "
             "stopping (best val_loss epoch) and the threshold", **m_va},
        ],
        "confusion_matrix_test": cm_te,
        "training_data": (
            f"LC25000 lung subset (Borkowski et al. 2019, arXiv:1912.12142), {len(df)} 224x224 JPEG patches as "
            "copied from GitHub loser564/Lung-Cancer-Prediction-Model@3a1a557 (HistoDash shared/data "
            "lc25000-lung-224, dev split). Split by pseudo-source `group` (rotated/flipped copies of one field "
            f"stay together): train {n['train']} ({counts['train']}), validation {n['val']} ({counts['val']}), "
            f"test {n['test']} ({counts['test']})."
        ),
        "split": {
            "method": (f"per class, groups shuffled with the seed and assigned to test (~{args.test_frac:.0%} of the "
                       f"class's images), then validation (~{args.val_frac:.0%}), rest train; no group in two splits"),
            "seed": int(args.seed),
            "n_train": n["train"],
            "n_val": n["val"],
            "n_test": n["test"],
            "groups_train": n_groups["train"],
            "groups_val": n_groups["val"],
            "groups_test": n_groups["test"],
            "per_class": counts,
        },
        "training": {
            "epochs": int(epochs_run),
            "epochs_max": int(args.epochs),
            "best_epoch": int(best_epoch),
            "wall_time_s": round(wall, 1),
            "fit_time_s": round(fit_s, 1),
            "cpu": _cpu_name(),
            "threads": int(args.threads or min(os.cpu_count() or 2, 4)),
            "tensorflow": tf_version,
            "keras": keras_version,
            "python": platform.python_version(),
            "params": int(params),
            "batch_size": int(args.batch_size),
            "optimizer": f"AdamW (lr {args.lr:g}, weight decay {args.weight_decay:g}), linear warm-up then cosine decay",
            "loss": f"categorical cross-entropy, label smoothing {args.label_smoothing:g}",
            "dropout": float(args.dropout),
            "width": int(args.width),
            "augmentation": ("random horizontal flip, random 90-degree rotation, random zoom (crop 80-100% of the "
                             "side, resized back), brightness +-0.08, contrast 0.8-1.2, saturation 0.75-1.25, hue +-0.04"),
            "resize": "PIL bilinear (antialiased) from 224 px to input_px",
        },
        "weights_file": "model.keras",
        "weights_sha256": sha256_file(model_path),
        "reproduce": REPRODUCE,
        "created": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "intended_use": (
            "Research use only; not a medical device and not for diagnosis. Demonstrates tile classification, "
            "thresholding and saliency in HistoDash on LC25000-like lung H&E patches."
        ),
        "limitations": (
            "Trained on one small public data set (LC25000 lung: 750 original images augmented by rotation/flip, "
            "one source), so its metrics are optimistic and do not transfer to other labs, scanners, stains, "
            "magnifications or whole-slide tiles; the group split is a heuristic (no patient ids), so near-duplicates "
            "may remain across splits. Knows only three classes: any other tissue, background or artefact is still "
            "forced into one of them. Microns per pixel unknown. No stain normalisation."
        ),
    }


def render_readme(card: dict) -> str:
    lines = [f"# {card['name']} (`{card['id']}`, version {card['version']})", ""]
    lines += [f"**Intended use.** {card['intended_use']}", ""]
    lines += ["## Model", "", "| field | value |", "|---|---|"]
    for key in ("task", "architecture", "input_px", "input_range", "normalization", "score_name", "threshold",
                "threshold_method", "weights_file", "weights_sha256", "created"):
        lines.append(f"| {key} | {card[key]} |")
    desc = card["class_descriptions"]
    classes_txt = ", ".join(f"`{c}` ({desc[c]})" for c in card["classes"])
    lines.append(f"| classes | {classes_txt} |")
    lines.append(f"| positive classes | {', '.join(card['positive_classes'])} (score = their summed probability) |")
    lines.append(f"| mpp | {card['mpp']} — {card['mpp_note']} |")
    lines += ["", "Input: float RGB in 0..255, shape (N, {0}, {0}, 3); the model rescales internally. "
              "Output: softmax over the classes in the order above. Load with "
              "`keras.models.load_model(path, safe_mode=True)`.".format(card["input_px"]), ""]
    lines += ["## Metrics", "", "| split | n | AUC malignant | 3-class accuracy | binary accuracy @ threshold | F1 | precision | recall |",
              "|---|---|---|---|---|---|---|---|"]
    for m in card["metrics"]:
        lines.append(f"| {m['split']} | {m['n']} | {m['auc_malignant']:.4f} | {m['accuracy_3class']:.4f} | "
                     f"{m['accuracy_binary_at_threshold']:.4f} | {m['f1_at_threshold']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} |")
    lines += [""] + [f"- **{m['split']}**: {m['description']}" for m in card["metrics"]]
    lines += ["", "Test confusion matrix (rows: true, columns: predicted; order " + ", ".join(card["classes"]) + "):", ""]
    lines += ["| true \\ predicted | " + " | ".join(card["classes"]) + " |", "|---" * (len(card["classes"]) + 1) + "|"]
    for c, row in zip(card["classes"], card["confusion_matrix_test"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Data and split", "", card["training_data"], ""]
    for k, v in card["split"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Training", ""]
    for k, v in card["training"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Reproduce (from the repository root):", "", "```", card["reproduce"], "```", ""]
    lines += ["## Limitations", "", card["limitations"], ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - ``python -m engine.training.default …`` = ``python -m engine train-default …``
    from engine.cli import main

    sys.exit(main(["train-default", *sys.argv[1:]]))
