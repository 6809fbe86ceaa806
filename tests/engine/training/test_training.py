"""Training: configuration schema, dataset checks, splits, metrics, and short real training runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import jobs
from engine.errors import InvalidInputError, UnsafeArchiveError
from engine.imageio import read_image, resize_tile
from engine.training import config as tconfig
from engine.training.config import TrainConfig, load_config, parse_config
from engine.training.datasets import discover, prepare, split_holdout, split_kfold
from engine.training.metrics import evaluate, f1_optimal_threshold
from tests.conftest import ROOT, shared_path

# ----------------------------------------------------------------------------- fixtures


def tile(colour, seed: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.int16)[None, None, :]
    arr = np.clip(base + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


COLOURS = {"benign": (230, 170, 200), "tumour": (110, 50, 150)}


def make_folder_dataset(root: Path, per_class: int = 12, patients: int = 4, fmt: str = "png") -> Path:
    """root/<class>/<patient>/<tile>: two easily separable classes, ``patients`` groups per class."""
    for c, colour in COLOURS.items():
        for i in range(per_class):
            folder = root / c / f"{c}-p{i % patients}"
            folder.mkdir(parents=True, exist_ok=True)
            tile(colour, seed=hash((c, i)) % 10_000).save(folder / f"{c}_{i}.{fmt}")
    return root


@pytest.fixture
def folder_ds(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "tiles")


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "models"
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(d))
    return d


# ----------------------------------------------------------------------------- configuration


def test_minimal_config_is_valid_and_everything_else_has_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: tiles\narchitecture: small_cnn\nepochs: 1\n")
    cfg = load_config(path)
    assert cfg.data == str(tmp_path / "tiles")  # relative to the YAML file
    assert (cfg.architecture, cfg.epochs, cfg.px, cfg.batch_size) == ("small_cnn", 1, 96, 32)
    assert cfg.split.method == "holdout" and (cfg.split.val, cfg.split.test) == (0.15, 0.15)
    assert cfg.augmentation.flip and cfg.class_weights == "balanced" and cfg.mixed_precision == "auto"
    # a full round trip through YAML gives the same configuration
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"data": "x", "epoch": 3}, r"Unknown setting 'epoch'\. Did you mean 'epochs'\?"),
        ({"architecture": "small_cnn"}, "needs 'data'"),
        ({"data": "x", "architecture": "resnet"}, "Unknown architecture 'resnet'"),
        ({"data": "x", "epochs": 0}, "epochs must be at least 1"),
        ({"data": "x", "epochs": "many"}, "epochs: expected a whole number"),
        ({"data": "x", "learning_rate": -1}, "learning_rate must be a positive number"),
        ({"data": "x", "optimizer": "adagrad"}, "Unknown optimizer 'adagrad'"),
        ({"data": "x", "augmentation": {"zoom": 2}}, r"augmentation\.zoom must be between 0 and 1"),
        ({"data": "x", "augmentation": {"flips": True}}, r"Unknown setting 'augmentation\.flips'\. Did you mean 'flip'\?"),
        ({"data": "x", "split": {"val": 0.5, "test": 0.45}}, "leaving at least 10% for training"),
        ({"data": "x", "split": {"method": "kfold", "folds": 1}}, "folds must be between 2 and 20"),
        ({"data": "x", "split": {"method": "random"}}, "Unknown split method 'random'"),
        ({"data": "x", "architecture": "inceptionv3_head", "input_px": 64}, "input_px 64 is out of range"),
        ({"data": "x", "class_weights": "auto"}, "class_weights must be"),
        ({"data": "x", "mixed_precision": "yes please"}, "mixed_precision must be one of"),
        ({"data": "x", "tta": 3}, "tta must be one of 1, 4, 8 views"),
        ({"data": "x", "ensemble": 0}, "ensemble must be a number of members between 1 and 8"),
        ({"data": "x", "ensemble": 2}, "ensemble: 2 needs one of the architectures lung_cnn, lung_cnn_ms"),
        ({"data": "x", "architecture": "lung_cnn", "ensemble": 2, "init_from": "m"}, "ensemble and init_from cannot be combined"),
        ({"data": "x", "domain": "knn"}, "Unknown domain method 'knn'"),
        ({"data": "x", "model_id": "../evil"}, "not a valid model id"),
        ({"data": "x", "classes": ["a", "b"], "positive_classes": ["c"]}, "positive_classes"),
    ],
)
def test_bad_configs_give_messages(data, match):
    with pytest.raises(InvalidInputError, match=match):
        parse_config(data)


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "is empty"), ("- a\n- b\n", "must be a mapping"), ("data: [unclosed\n", "not valid YAML")],
)
def test_bad_yaml_files_give_messages(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        load_config(path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_architectures_match_the_engine():
    from engine.architectures import ARCHITECTURES, DEFAULT_INPUT_PX

    assert set(tconfig.ARCHITECTURES) == set(ARCHITECTURES)
    assert tconfig.ARCHITECTURES == DEFAULT_INPUT_PX


# ----------------------------------------------------------------------------- datasets


def test_folder_dataset_with_patient_subfolders(folder_ds):
    ds = discover(folder_ds)
    assert ds.classes == ("benign", "tumour") and ds.source == "folder" and ds.has_groups
    assert len(ds) == 24 and ds.class_counts() == {"benign": 12, "tumour": 12}
    assert set(ds.groups) == {f"{c}-p{i}" for c in COLOURS for i in range(4)}


def test_one_class_only_and_empty_class_are_refused(tmp_path):
    root = tmp_path / "one"
    (root / "tumour").mkdir(parents=True)
    tile(COLOURS["tumour"], 1).save(root / "tumour" / "a.png")
    with pytest.raises(InvalidInputError, match=r"Only one class \('tumour'\)"):
        discover(root)
    (root / "benign").mkdir()
    with pytest.raises(InvalidInputError, match=r"Class folder\(s\) 'benign' .* hold no images"):
        discover(root)
    with pytest.raises(InvalidInputError, match="does not exist"):
        discover(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    flat.mkdir()
    tile(COLOURS["tumour"], 1).save(flat / "a.png")
    with pytest.raises(InvalidInputError, match="no class subfolders"):
        discover(flat)


def test_manifest_with_patients_labels_and_paths(tmp_path):
    root = make_folder_dataset(tmp_path / "d", per_class=4, patients=2)
    rows = ["path,label,patient"] + [f"{p.relative_to(root).as_posix()},{p.parts[-3]},P{i % 3}" for i, p in enumerate(sorted(root.rglob("*.png")))]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = discover(root)  # manifest.csv inside the folder wins over the class folders
    assert ds.source == "manifest" and ds.has_groups and len(ds) == 8
    assert set(ds.groups) == {"P0", "P1", "P2"}  # a patient in two classes is fine
    bad = root / "bad.csv"
    bad.write_text("path,label\n../outside.png,benign\n" + rows[1].rsplit(",", 1)[0] + "\n")
    with pytest.raises(InvalidInputError, match=r"1 path\(s\) in 'bad.csv' point outside the dataset folder \(first: '../outside.png'\)"):
        discover(bad)
    nolabel = root / "nolabel.csv"
    nolabel.write_text("path,label\n" + rows[1].split(",")[0] + ",\n" + rows[2].split(",")[0] + ",tumour\n")
    with pytest.raises(InvalidInputError, match=r"1 row\(s\) of 'nolabel.csv' have no label \(first: line 2"):
        discover(nolabel)
    nocol = root / "nocol.csv"
    nocol.write_text("path,diagnosis\na.png,x\n")
    with pytest.raises(InvalidInputError, match="has no column 'label' for the label"):
        discover(nocol)


def test_zip_dataset_is_extracted_safely(tmp_path, folder_ds):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder_ds.rglob("*.png")):
            zf.write(p, "upload/" + p.relative_to(folder_ds).as_posix())
        zf.writestr("upload/README.txt", "not a tile")
    path = tmp_path / "tiles.zip"
    path.write_bytes(buf.getvalue())
    quick = discover(path)  # the page's check: no extraction
    assert quick.classes == ("benign", "tumour") and len(quick) == 24
    ds = discover(path, extract_to=tmp_path / "x")
    assert ds.source == "zip" and len(ds) == 24 and ds.has_groups and all(Path(p).is_file() for p in ds.paths)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape/a.png", b"x")
    with pytest.raises(UnsafeArchiveError, match="outside the archive"):
        discover(evil, extract_to=tmp_path / "y")


def test_prepare_resizes_like_inference_and_skips_unreadable_tiles(folder_ds, tmp_path):
    (folder_ds / "benign" / "benign-p0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder_ds / "tumour" / "tumour-p0" / "empty.jpg").write_bytes(b"")
    ds = discover(folder_ds)
    progress = []
    data = prepare(ds, 24, cache_root=tmp_path / "cache", progress=lambda d, t: progress.append((d, t)))
    assert len(data.files) == 24 and len(data.skipped) == 2
    assert {Path(p).name for p, _ in data.skipped} == {"broken.png", "empty.jpg"}
    assert progress[-1] == (26, 26)
    for src, cached in zip(data.sources[:5], data.files[:5]):
        expected = resize_tile(read_image(src), 24)
        np.testing.assert_array_equal(np.asarray(Image.open(cached).convert("RGB")), expected)
    again = prepare(ds, 24, cache_root=tmp_path / "cache")  # from the cache: same hash and files
    assert again.data_hash == data.data_hash and again.files == data.files


def test_holdout_split_keeps_groups_together_and_stratifies():
    rng = np.random.default_rng(0)
    groups = np.array([f"P{i}" for i in rng.integers(0, 60, 600)])
    y = np.array([(int(g[1:]) + k) % 3 for k, g in enumerate(groups)]) % 3  # patients spread over classes
    parts = split_holdout(y, groups, val=0.15, test=0.15, seed=1)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(600))
    seen = [set(groups[idx]) for idx in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    for name, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[name]) / 600 - frac) < 0.06
        assert len(set(y[parts[name]].tolist())) == 3
    again = split_holdout(y, groups, val=0.15, test=0.15, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_too_few_groups_and_kfold():
    y = np.array([0, 0, 0, 1, 1, 1])
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    with pytest.raises(InvalidInputError, match="Too few patients/groups"):
        split_holdout(y, groups, classes=("benign", "tumour"))
    with pytest.raises(InvalidInputError, match="needs at least 5 patients/groups; the data have 3"):
        split_kfold(y, groups, folds=5)
    y = np.repeat([0, 1], 20)
    groups = np.array([f"g{i // 2}" for i in range(40)])
    folds = split_kfold(y, groups, folds=4, seed=0)
    assert len(folds) == 4
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(40))
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])


def test_f1_optimal_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    score = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)

    def f1(t):
        pred = score >= t
        tp = (pred & (y == 1)).sum()
        return 2 * tp / (pred.sum() + (y == 1).sum())

    best = max(f1(t) for t in np.unique(score))
    t = f1_optimal_threshold(y, score)
    assert f1(t) == pytest.approx(best)
    m = evaluate(np.stack([1 - score, score], 1), y, [1], t)
    assert m["f1"] == pytest.approx(round(best, 4)) and m["n"] == 300 and m["n_positive"] == int(y.sum())
    assert sum(map(sum, m["confusion_binary"])) == 300 and 0.5 < m["auc"] <= 1


# ----------------------------------------------------------------------------- real training runs


def test_kfold_training_in_process_registers_a_model(folder_ds, models_dir, tmp_path):
    from engine.registry import Registry
    from engine.training.run import train

    cfg = parse_config({"data": str(folder_ds), "architecture": "small_cnn", "input_px": 32, "epochs": 1, "batch_size": 8,
                        "split": {"method": "kfold", "folds": 2}, "augmentation": {"rotation": 0.05}, "model_id": "kfold-test"})
    ctx = jobs.JobContext(tmp_path / "job-kfold", cfg.to_dict())
    result = train(cfg, ctx)
    assert result["model_id"] == "kfold-test" and result["cv"]["auc"]["mean"] is not None
    assert [m["split"] for m in result["metrics"]] == ["cv-mean", "cv-fold-1", "cv-fold-2"]
    card = Registry(models_dir).get("kfold-test")
    assert card.threshold_method.startswith("median of the F1-optimal thresholds")
    assert card.extra["split"]["method"] == "kfold"


def test_fine_tuning_from_a_registered_model_with_macenko(folder_ds, models_dir, tmp_path):
    from engine.training.run import train

    first = parse_config({"data": str(folder_ds), "architecture": "small_cnn", "input_px": 32, "epochs": 1, "batch_size": 8,
                          "split": {"val": 0.25, "test": 0.25}, "model_id": "base", "augmentation": False})
    train(first, jobs.JobContext(tmp_path / "job-a", {}))
    tuned = first.with_(model_id="tuned", init_from="base", normalization="macenko", optimizer="sgd", class_weights={"tumour": 2.0})
    result = train(tuned, jobs.JobContext(tmp_path / "job-b", {}))
    log = (tmp_path / "job-b" / "log.txt").read_text()
    assert "fine-tuning from registered model 'base'" in log and "layers' weights copied by name" in log
    card = json.loads((models_dir / "tuned" / "card.json").read_text())
    assert card["normalization"] == "macenko" and card["config"]["init_from"] == "base" and result["model_id"] == "tuned"
    with pytest.raises(InvalidInputError, match="already registered"):
        train(tuned, jobs.JobContext(tmp_path / "job-c", {}))


def test_cli_train_options_and_errors(tmp_path, capsys):
    from engine.cli import main

    before = [r.id for r in jobs.get_runner().list()]
    assert main(["train", "--print-defaults"]) == 0
    defaults = capsys.readouterr().out
    path = tmp_path / "d.yaml"
    path.write_text(defaults)
    assert load_config(path) == TrainConfig(data=str(tmp_path / "PATH/TO/TILES"))
    path.write_text(f"data: {tmp_path / 'missing'}\nepochs: 1\n")
    assert main(["train", str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", str(path), "--set", "epochs=0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err
    assert [r.id for r in jobs.get_runner().list()] == before  # nothing was submitted


def test_training_job_cancel_stops_within_a_batch(folder_ds, models_dir, tmp_path):
    runner = jobs.LocalProcessRunner(tmp_path / "jobs")
    job_id = runner.submit("train", {"data": str(folder_ds), "architecture": "small_cnn", "input_px": 32, "epochs": 500, "batch_size": 2,
                                     "early_stopping_patience": 0, "split": {"val": 0.25, "test": 0.25}})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rec = runner.get(job_id)
        if rec.progress.get("batch", 0) >= 2 or not rec.active:
            break
        time.sleep(0.2)
    assert rec.state == "running", runner.log_tail(job_id)
    runner.cancel(job_id)
    rec = runner.wait(job_id, timeout=300)  # a hang guard: 500 epochs would take far longer than this
    assert rec.state == "cancelled", runner.log_tail(job_id)
    assert rec.progress["done"] < rec.progress["total"]
    log = runner.log_tail(job_id, 200)
    assert "cancelled" in log and "model small_cnn at 32 px" in log and "epoch 1/500" in rec.progress["message"]
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_training_job_with_bad_data_fails_with_a_message(tmp_path):
    runner = jobs.LocalProcessRunner(tmp_path / "jobs")
    job_id = runner.submit("train", {"data": str(tmp_path / "nowhere"), "epochs": 1})
    rec = runner.wait(job_id, timeout=60)
    assert rec.state == "failed" and "does not exist" in rec.error


def test_cli_trains_on_lc25000_and_the_model_predicts(tmp_path, models_dir):
    data = shared_path("lc25000-lung-224")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: {data}\narchitecture: small_cnn\nepochs: 2\ninput_px: 32\nmax_images: 300\n"
                   "label_column: tissue_class\npositive_classes: [lung_aca, lung_scc]\nlearning_rate: 0.003\n")
    env = {**os.environ, "HISTODASH_MODELS_DIR": str(models_dir)}
    proc = subprocess.run([sys.executable, "-m", "engine", "train", str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_id = proc.stdout.strip().splitlines()[-1]

    from engine.predict import TilePredictor
    from engine.registry import REQUIRED_KEYS, Registry

    registry = Registry(models_dir)
    card = registry.get(model_id)
    raw = json.loads((models_dir / model_id / "card.json").read_text())
    assert set(REQUIRED_KEYS) <= set(raw)
    assert card.classes == ("lung_aca", "lung_n", "lung_scc") and card.positive_classes == ("lung_aca", "lung_scc")
    assert card.input_px == 32 and 0 <= card.threshold <= 1
    assert raw["data_hash"].startswith("sha256:") and raw["config"]["epochs"] == 2 and "python -m engine train" in raw["reproduce"]
    assert "git_commit" in raw and raw["split"]["method"] == "holdout"
    test_m = card.headline_metrics()
    assert test_m["split"] == "test" and test_m["n"] > 0 and test_m["auc"] is not None
    # the job that trained it is on record, with per-epoch metrics
    rec = next(r for r in jobs.get_runner().list(kind="train") if (r.result or {}).get("model_id") == model_id)
    assert rec.state == "succeeded" and [m["epoch"] for m in rec.metrics] == [1, 2]
    # the tile predictor uses it like any registered model
    tiles = sorted((data / "images").glob("*.jpeg"))[:6]
    result = TilePredictor(card, cache=False).predict_paths(tiles)
    frame = result.to_frame()
    assert frame["error"].isna().all() and frame["score"].between(0, 1).all()
    assert np.allclose(frame[[f"p_{c}" for c in card.classes]].sum(1), 1, atol=1e-4)


# ----------------------------------------------------------------------------- evaluated weights: precise BatchNorm, weight average


def test_reestimate_batchnorm_makes_moving_statistics_the_mean_of_batch_statistics():
    import keras

    from engine.training.run import reestimate_batchnorm

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="c")(inp)
    out = keras.layers.BatchNormalization(momentum=0.9, name="bn")(conv)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(out))
    images = np.random.default_rng(0).uniform(0, 255, (40, 8, 8, 3)).astype(np.float32)
    features = keras.Model(inp, conv)
    batches = [features(images[i:i + 16]).numpy() for i in range(0, 40, 16)]  # 16, 16, 8
    want_mean = np.mean([b.mean((0, 1, 2)) for b in batches], axis=0)
    want_var = np.mean([b.var((0, 1, 2)) for b in batches], axis=0)
    kernel_before = model.get_layer("c").get_weights()[0].copy()
    assert reestimate_batchnorm(model, images, keras, batch_size=16) == 1
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), want_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-3)
    assert bn.momentum == 0.9 and np.array_equal(model.get_layer("c").get_weights()[0], kernel_before)


def test_weight_average_follows_the_decay_and_swaps_back():
    import keras

    from engine.training.run import WeightAverage

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    w = model.trainable_weights[0]
    w.assign(np.zeros((2, 1)))
    avg = WeightAverage(model, decay=0.9)
    expected = np.zeros((2, 1))
    for t, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        w.assign(np.full((2, 1), value))
        avg.update()
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    with avg.swapped_in():
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), 4.0)


def test_training_with_weight_average_and_precise_batchnorm(folder_ds, models_dir, tmp_path):
    from engine.registry import Registry, load_model_for_card
    from engine.training.run import train

    cfg = parse_config({"data": str(folder_ds), "architecture": "small_cnn", "input_px": 32, "epochs": 2, "batch_size": 8,
                        "split": {"val": 0.25, "test": 0.25}, "model_id": "ema", "ema_decay": 0.9, "bn_reestimate": 10})
    result = train(cfg, jobs.JobContext(tmp_path / "job-ema", {}))
    log = (tmp_path / "job-ema" / "log.txt").read_text()
    assert "moving average of the weights (decay 0.9)" in log and "re-estimated on 10 un-augmented training tiles" in log
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    model = load_model_for_card(Registry(models_dir).get("ema"))
    bn = next(layer for layer in model.layers if layer.name.endswith("_bn"))
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)  # statistics were estimated, not the initial zeros
    with pytest.raises(InvalidInputError, match="ema_decay"):
        parse_config({"data": str(folder_ds), "ema_decay": 1.0})
    with pytest.raises(InvalidInputError, match="bn_reestimate"):
        parse_config({"data": str(folder_ds), "bn_reestimate": -1})


def test_test_time_augmentation_and_block_detector_go_from_the_config_to_the_card(folder_ds, models_dir, tmp_path):
    from engine import domain
    from engine.forward import ModelRunner
    from engine.registry import Registry
    from engine.training.run import train

    base = {"data": str(folder_ds), "input_px": 32, "epochs": 1, "batch_size": 8, "split": {"val": 0.25, "test": 0.25}}
    train(parse_config({**base, "architecture": "lung_cnn_ms", "model_id": "tta", "tta": 4, "domain": "mahalanobis-blocks"}),
          jobs.JobContext(tmp_path / "job-tta", {}))
    card = Registry(models_dir).get("tta")
    assert card.tta_views == 4 and "4 90° rotations" in card.tta["what"]
    assert card.domain["method"] == domain.BLOCK_METHOD and card.domain["blocks"] == [64, 128, 256]
    assert "averaged over the tile's 4 test-time views" in card.domain["features"]
    assert ModelRunner.from_card(card).tta == 4
    assert "## Test-time augmentation" in (models_dir / "tta" / "README.md").read_text()
    # an architecture whose features are not concatenated falls back to one covariance, and says so
    train(parse_config({**base, "architecture": "small_cnn", "model_id": "flat", "domain": "mahalanobis-blocks"}),
          jobs.JobContext(tmp_path / "job-flat", {}))
    assert "features are not concatenated from parts" in (tmp_path / "job-flat" / "log.txt").read_text()
    flat = Registry(models_dir).get("flat")
    assert flat.domain["method"] == domain.METHOD and "blocks" not in flat.domain and flat.tta_views == 1 and not flat.tta


def test_an_ensemble_trains_its_members_in_turn_and_registers_one_model(folder_ds, models_dir, tmp_path):
    import csv

    from engine.forward import ModelRunner
    from engine.gradcam import Explainer
    from engine.registry import Registry
    from engine.training.run import train

    cfg = parse_config({"data": str(folder_ds), "architecture": "lung_cnn_ms", "input_px": 32, "epochs": 2, "batch_size": 8, "ensemble": 2,
                        "domain": "mahalanobis-blocks", "tta": 4, "split": {"val": 0.25, "test": 0.25}, "model_id": "pair"})
    result = train(cfg, jobs.JobContext(tmp_path / "job-pair", {}))
    log = (tmp_path / "job-pair" / "log.txt").read_text()
    assert "member 1/2 · epoch 2/2" in log and "member 2/2 · epoch 2/2" in log and "ensemble of 2: validation accuracy" in log
    assert [(r["member"], r["epoch"]) for r in result["history"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    with open(models_dir / "pair" / "training_log.csv") as fh:
        assert [row["member"] for row in csv.DictReader(fh)] == ["1", "1", "2", "2"]
    card = Registry(models_dir).get("pair")
    raw = json.loads((models_dir / "pair" / "card.json").read_text())
    assert raw["ensemble"]["members"] == 2 and card.domain["blocks"] == [64, 128, 256, 64, 128, 256]
    assert raw["training"]["members"] == 2 and raw["training"]["epochs_run"] == 2 and "## Ensemble" in (models_dir / "pair" / "README.md").read_text()
    runner = ModelRunner.from_card(card)
    out = runner.forward(np.stack([np.asarray(tile(c, 1, 32), np.float32) for c in COLOURS.values()]))
    assert out.in_domain is not None and out.uncertainty is not None and out.features.shape == (2, 896)
    assert Explainer.from_card(card, cache=False).default_layer().path == "m2_block4b_relu"


def test_cutmix_pastes_one_box_per_batch_and_mixes_the_labels_by_area():
    from engine.runtime import tensorflow
    from engine.training.run import cutmix

    tf = tensorflow()
    tf.random.set_seed(4)
    n, px = 6, 20
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None, None] * 10.0, px * px * 3).reshape(n, px, px, 3)  # tile i is all 10·i
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    mixed_any = False
    for _ in range(20):
        mx, my = (t.numpy() for t in cutmix(tf, tf.constant(x), tf.constant(y), 1.0))
        np.testing.assert_allclose(my.sum(1), 1.0, atol=1e-6)
        boxes = []
        for i in range(n):
            values = np.unique(mx[i, :, :, 0])
            others = values[values != 10.0 * i]
            assert len(others) <= 1  # the tile itself and at most one other tile of the batch
            own = float((mx[i, :, :, 0] == 10.0 * i).mean())
            expected = y[i] if not len(others) else own * y[i] + (1 - own) * y[int(others[0] / 10)]
            np.testing.assert_allclose(my[i], expected, atol=1e-5)  # the label is the two tiles' labels weighted by pixel area
            if len(others):
                boxes.append(mx[i, :, :, 0] != 10.0 * i)
                mixed_any |= own < 1
        assert all((b == boxes[0]).all() for b in boxes)  # one box for the whole batch
    assert mixed_any
    unchanged = cutmix(tf, tf.constant(x), tf.constant(y), 0.0)
    np.testing.assert_array_equal(unchanged[0].numpy(), x)
    np.testing.assert_array_equal(unchanged[1].numpy(), y)
    with pytest.raises(InvalidInputError, match="cutmix must be between 0 and 1"):
        parse_config({"data": "x", "augmentation": {"cutmix": 2}})
