"""The CLI: predict writes one row per image, errors as rows; user errors are one line, exit 2."""

import pandas as pd
from PIL import Image

from engine.cli import main
from tests.conftest import rgb_tile


def test_predict_folder_to_csv(tiny_registry, tmp_path, capsys):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rgb_tile(i)).save(folder / f"t{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "s.csv"
    assert main(["predict", "--out", str(out), str(folder)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns[:3]) == ["path", "score", "label"] and {"p_benign", "p_tumour", "cached", "error"} <= set(frame.columns)
    assert len(frame) == 4
    assert frame["error"].notna().sum() == 1 and "broken.jpg" in frame.loc[frame["error"].notna(), "error"].iloc[0]
    assert "4 tiles" in capsys.readouterr().err
    # Second run: answered from the cache.
    assert main(["predict", "--out", str(out), str(folder)]) == 0
    assert pd.read_csv(out)["cached"].sum() == 3


def test_unknown_model_is_a_clear_error(tiny_registry, tmp_path, capsys):
    Image.fromarray(rgb_tile(0)).save(tmp_path / "a.png")
    assert main(["predict", "--model", "nope", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No model with id 'nope'") and "Traceback" not in err


def test_no_tiles_is_a_clear_error(tiny_registry, tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 2
    assert "No tiles found" in capsys.readouterr().err


def test_models_lists_registry(tiny_registry, capsys):
    assert main(["models", "--models-dir", str(tiny_registry.root)]) == 0
    out = capsys.readouterr().out
    assert "tiny-test" in out and "tiny-sigmoid" in out
