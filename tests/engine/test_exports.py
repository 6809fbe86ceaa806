"""CSV exports are safe in spreadsheets (OWASP "CSV injection"): every CSV the app and the CLI write goes
through :func:`engine.exports.safe_csv`, and each download is read back here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.exports import FORMULA_STARTS, escape_cell, read_back, safe_csv
from tests.conftest import ROOT

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-2+3", "@SUM(A1)", "\tlead", "\rcr"]


def formula_like(frame: pd.DataFrame) -> list[str]:
    """Cells and column names a spreadsheet would run as a formula."""
    cells = [str(c) for c in frame.columns] + [v for v in frame.to_numpy().ravel() if isinstance(v, str)]
    return [c for c in cells if c.startswith(FORMULA_STARTS)]


def test_text_is_escaped_numbers_are_not():
    frame = pd.DataFrame({"name": HOSTILE, "value": [-1.5, -2, 0, 3, -4e-3, np.nan], "=col": ["ok"] * 6})
    back = read_back(safe_csv(frame))
    assert formula_like(back) == []
    assert [v for v in back["name"] if isinstance(v, str)][:4] == ["'" + h for h in HOSTILE[:4]]
    assert back["'=col"].tolist() == ["ok"] * 6
    assert back["value"].iloc[:5].tolist() == [-1.5, -2.0, 0.0, 3.0, -0.004]  # negative numbers stay numbers
    assert escape_cell("-2") == "'-2" and escape_cell(-2) == -2 and escape_cell("a-b") == "a-b"


def test_writes_a_file_or_a_stream(tmp_path, capsys):
    import sys

    frame = pd.DataFrame({"slide": ["=evil.svs"], "score": [0.5]})
    safe_csv(frame, tmp_path / "out.csv")
    assert read_back((tmp_path / "out.csv").read_bytes())["slide"].tolist() == ["'=evil.svs"]
    safe_csv(frame, sys.stdout)
    assert "'=evil.svs" in capsys.readouterr().out


def test_no_csv_is_written_around_the_helper():
    """Every CSV writer in engine/ and dashboard/ goes through engine.exports (a `.to_csv(` or csv.writer elsewhere fails)."""
    offenders = []
    for path in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("dashboard/**/*.py")]:
        if path.name == "exports.py":
            continue
        text = path.read_text()
        for m in re.finditer(r"\.to_csv\(|csv\.(writer|DictWriter)\(", text):
            line = text[: m.start()].count("\n") + 1
            src = text.splitlines()[line - 1]
            if "def to_csv" in src or "self.to_csv(" in src or src.lstrip().startswith(">>>"):  # our own writers, docs
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {src.strip()}")
    assert offenders == []


def _hostile_tiles(folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = ["=HYPERLINK(1).png", "@sum.png", "-2.png", "+x.png"]
    for i, name in enumerate(names):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    return names


def test_predict_cli_csv(tmp_path, tiny_registry, capsys, monkeypatch):
    from engine.cli import main

    names = _hostile_tiles(tmp_path / "tiles")
    monkeypatch.chdir(tmp_path / "tiles")  # tiles named as the operator typed them: the CSV's path cells are those names
    assert main(["predict", "--out", str(tmp_path / "p.csv"), "-q", "--", *names]) == 0
    back = read_back((tmp_path / "p.csv").read_bytes())
    assert sorted(back["path"]) == sorted("'" + n for n in names) and formula_like(back) == []
    assert back["score"].between(0, 1).all()


def test_predict_page_download(tmp_path, tiny_registry, media_downloads):
    from streamlit.testing.v1 import AppTest

    names = _hostile_tiles(tmp_path / "tiles")
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=90)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    at.file_uploader[0].set_value([(n, (tmp_path / "tiles" / n).read_bytes(), "image/png") for n in names])
    at.run()
    at.switch_page("views/predict.py")
    at.run()
    at.button[0].click()
    at.run()
    assert not at.exception
    files = media_downloads(at)
    back = read_back(next(data for name, data in files.items() if name.endswith(".csv")))
    assert sorted(back["path"]) == sorted("'" + n for n in names) and formula_like(back) == []


def test_survival_page_downloads(media_downloads):
    from streamlit.testing.v1 import AppTest

    frame = pd.DataFrame({"time": [5, 6, 7, 9, 3, 4, 8, 2], "status": [1, 0, 1, 1, 1, 0, 1, 1],
                          "arm": ["=1+2", "=1+2", "=1+2", "=1+2", "@cmd", "@cmd", "@cmd", "@cmd"]})
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "survival.py"), default_timeout=60)
    at.run()
    next(w for w in at.radio if w.label == "Cohort").set_value("Upload a table")
    at.run()
    next(w for w in at.file_uploader if w.label.startswith("Cohort table")).set_value(("=evil.csv", frame.to_csv(index=False).encode(), "text/csv"))
    at.run()
    next(w for w in at.selectbox if w.label == "Group").set_value("arm")
    next(w for w in at.button if w.label == "Analyse").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    files = {n: d for n, d in media_downloads(at).items() if n.endswith(".csv")}
    assert {"km_medians.csv", "km_curves.csv", "logrank.csv", "hazard_ratios.csv"} <= set(files)
    for name, data in files.items():
        back = read_back(data)
        assert formula_like(back) == [], name
    medians = read_back(files["km_medians.csv"])
    assert sorted(medians["group"]) == ["'=1+2", "'@cmd"]


@pytest.mark.parametrize("value", HOSTILE)
def test_every_formula_start_is_escaped(value):
    assert escape_cell(value) == "'" + value
