"""Training quality gate: chance-level or one-class models are registered as 'failed quality check' and never selected by default."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine import jobs
from engine.training.config import parse_config
from engine.training.metrics import QUALITY_RULE, evaluate, quality_check
from tests.conftest import write_tiny_model


def test_rules_on_metric_rows():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 100)
    good = np.eye(3)[y] * 0.8 + 0.1
    assert quality_check({"split": "test", **evaluate(good, y, [0, 2], 0.5)}, 3)["status"] == "passed"
    one_class = np.tile([0.2, 0.5, 0.3], (300, 1))
    q = quality_check({"split": "test", **evaluate(one_class, y, [0, 2], 0.5)}, 3)
    assert q["status"] == "failed" and any("one class" in r for r in q["reasons"]) and q["rule"] == QUALITY_RULE
    noise = rng.dirichlet([1, 1, 1], 300)
    q = quality_check({"split": "test", **evaluate(noise, y, [0, 2], 0.5)}, 3)
    assert q["status"] == "failed" and any("chance" in r for r in q["reasons"])
    # a test split that really is 90 % one class: predicting it is no failure
    y_skew = np.array([1] * 270 + [0] * 30)
    skew = np.where(y_skew[:, None] == 1, [0.1, 0.9], [0.7, 0.3])
    assert quality_check({"split": "test", **evaluate(skew, y_skew, [1], 0.5)}, 2)["status"] == "passed"


def _constant_dataset(root, n=12):
    tile = Image.fromarray(np.full((24, 24, 3), (200, 120, 180), np.uint8))
    for c in ("a", "b"):
        for i in range(n):
            folder = root / c / f"{c}-p{i % 6}"
            folder.mkdir(parents=True, exist_ok=True)
            tile.save(folder / f"{c}{i}.png")
    return root


def test_a_model_that_cannot_tell_the_classes_apart_fails_and_is_not_the_default(tmp_path, monkeypatch):
    from engine.registry import Registry
    from engine.training.run import train

    models = tmp_path / "models"
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(models))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", "nobody")
    write_tiny_model(models / "zz-usable", model_id="zz-usable", input_px=24)
    cfg = parse_config({"data": str(_constant_dataset(tmp_path / "tiles")), "architecture": "small_cnn", "input_px": 24, "epochs": 1,
                        "batch_size": 8, "augmentation": False, "split": {"val": 0.25, "test": 0.25}, "model_id": "aa-degenerate"})
    result = train(cfg, jobs.JobContext(tmp_path / "job", {}))
    assert result["quality"]["status"] == "failed" and any("one class" in r for r in result["quality"]["reasons"])
    card = json.loads((models / "aa-degenerate" / "card.json").read_text())
    assert card["quality"]["status"] == "failed"
    assert "FAILED QUALITY CHECK" in (models / "aa-degenerate" / "README.md").read_text()
    registry = Registry(models)
    assert registry.get("aa-degenerate").quality_failed  # registered, selectable by name
    assert registry.get().id == "zz-usable"  # but never the default, although it sorts first


@pytest.mark.parametrize("reasons", [["AUC 0.5"]])
def test_failed_card_alone_is_still_returned(tmp_path, reasons):
    from engine.registry import Registry

    folder = write_tiny_model(tmp_path / "only")
    card = json.loads((folder / "card.json").read_text())
    card["quality"] = {"status": "failed", "reasons": reasons}
    (folder / "card.json").write_text(json.dumps(card))
    got = Registry(tmp_path).get()
    assert got.quality_failed and got.quality_reason == "AUC 0.5"
