"""Stain normalisation bound to the model card: the card's normaliser by default, a warning for any other choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import jobs
from engine.errors import IncompatibleModelError
from engine.normalization import REFERENCE_FILE, choice_warning, normalizer_for_card, resolve, write_reference
from engine.registry import read_card
from engine.stain import MACENKO_REFERENCE_STAIN_MATRIX, MacenkoNormalizer
from engine.training.config import parse_config
from tests.conftest import write_tiny_model
from tests.engine.training.test_training import make_folder_dataset


def _card(folder, **changes):
    write_tiny_model(folder)
    data = json.loads((folder / "card.json").read_text())
    data.update(changes)
    (folder / "card.json").write_text(json.dumps(data))
    return read_card(folder)


def test_a_card_without_normalisation(tmp_path):
    card = _card(tmp_path / "m", normalization_check={"card": {"setting": "none", "accuracy_multiclass": 0.97},
                                                      "other": {"setting": "macenko", "accuracy_multiclass": 0.41}})
    assert normalizer_for_card(card) is None and resolve(card, None) == (None, None) and resolve(card, "none") == (None, None)
    normalizer, warning = resolve(card, "macenko")
    assert isinstance(normalizer, MacenkoNormalizer)
    assert "prescribes none" in warning and "0.41" in warning and "0.97" in warning
    assert choice_warning(card, "card") is None
    with pytest.raises(IncompatibleModelError):
        resolve(card, "sepia")


def test_a_card_with_a_bundled_macenko_reference(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    target = MacenkoNormalizer()
    target.stain_matrix_ = np.array([[0.6, 0.1], [0.7, 0.9], [0.4, 0.4]])
    target.max_concentrations_ = np.array([1.5, 0.9])
    ref = write_reference(folder, target, "reference tile lab.png")
    card = _card(folder, normalization="macenko", normalization_reference=ref)
    normalizer = normalizer_for_card(card)
    assert np.allclose(normalizer.target_stain_matrix, target.stain_matrix_) and np.allclose(normalizer.target_max_concentrations, [1.5, 0.9])
    same, warning = resolve(card, "macenko")  # naming the card's own method means the card's reference
    assert warning is None and np.allclose(same.target_stain_matrix, target.stain_matrix_)
    none, warning = resolve(card, "none")
    assert none is None and "Macenko to reference tile lab.png" in warning
    other, warning = resolve(card, "vahadane")
    assert warning and "vahadane" in warning
    (folder / REFERENCE_FILE).write_text((folder / REFERENCE_FILE).read_text().replace("0.6", "0.5"))
    with pytest.raises(IncompatibleModelError, match="does not match"):
        normalizer_for_card(card)
    (folder / REFERENCE_FILE).unlink()
    with pytest.raises(IncompatibleModelError, match="missing"):
        normalizer_for_card(card)


def test_training_with_macenko_bundles_its_reference(tmp_path, monkeypatch):
    from engine.training.run import train

    models = tmp_path / "models"
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(models))
    data = make_folder_dataset(tmp_path / "tiles")
    cfg = parse_config({"data": str(data), "architecture": "small_cnn", "input_px": 32, "epochs": 1, "batch_size": 8, "normalization": "macenko",
                        "split": {"val": 0.25, "test": 0.25}, "model_id": "norm", "stain_test": True, "augmentation": {"hed_sigma": 0.1, "hed_vector": 0.1}})
    result = train(cfg, jobs.JobContext(tmp_path / "job", {}))
    card = read_card(models / "norm")
    assert card.normalization == "macenko" and (models / "norm" / REFERENCE_FILE).is_file()
    assert np.allclose(normalizer_for_card(card).target_stain_matrix, MACENKO_REFERENCE_STAIN_MATRIX, atol=1e-6)
    assert "published Macenko target" in card.normalization_reference["source"]
    check = card.extra["normalization_check"]
    assert check["card"]["setting"] == "macenko" and check["other"]["setting"] == "none"
    assert [m.split for m in card.metrics] == ["test", "test-restained", "validation", "test-normalization-none"]
    assert result["temperature"] == card.temperature and card.domain["file"] == "domain.npz"


def test_cli_predict_applies_the_card_and_says_so_on_stderr_otherwise(tiny_registry, tmp_path, capsys):
    from PIL import Image

    from engine.cli import main
    from tests.conftest import rgb_tile

    tile = tmp_path / "t.png"
    Image.fromarray(rgb_tile(1, 64)).save(tile)
    assert main(["predict", str(tile), "--no-cache", "-q"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["predict", str(tile), "--no-cache", "-q", "--normalization", "macenko"]) == 0
    err = capsys.readouterr().err
    assert "warning: Stain normalisation 'macenko' differs from this model's card, which prescribes none" in err
