"""The CLI: predict writes one row per image, errors as rows; user errors are one line, exit 2."""

import pandas as pd
import pytest
from PIL import Image

from engine.cli import main
from tests.conftest import ROOT, rgb_tile


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


# -- the command table -------------------------------------------------------------------------------

def test_command_table_is_the_whole_cli():
    from engine.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert {"predict", "models", "gradcam", "heatmap", "cohort", "cohort-scores", "survival", "train", "jobs", "train-default", "hash-password"} == set(COMMANDS)


def test_a_broken_command_fails_loudly():
    from engine.cli import CommandTableError, build_parser

    with pytest.raises(ModuleNotFoundError, match="engine.cli.no_such_area"):
        build_parser({"nothing": "engine.cli.no_such_area:add_parser"})
    with pytest.raises(CommandTableError, match="did not add the command 'renamed'"):
        build_parser({"renamed": "engine.cli.predict:add_parser"})
    with pytest.raises(CommandTableError, match="no function 'missing'"):
        build_parser({"predict": "engine.cli.predict:missing"})


@pytest.mark.parametrize("module", [
    "engine/predict.py", "engine/registry.py", "engine/gradcam.py", "engine/jobs.py", "engine/auth.py", "engine/training/run.py",
    "engine/training/default.py", "engine/slides.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "engine" / "heatmap").glob("*.py")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "engine" / "survival").glob("*.py")),
])
def test_library_modules_know_no_argparse(module):
    assert "argparse" not in (ROOT / module).read_text(), f"{module}: command-line parsing belongs in engine/cli/"
