"""The bad-input corpus (tests/corpus.py) through the command line, in process: ``python -m engine …``.

A broken input exits 2 with ONE line on stderr, ``error: …``, holding the case's fragment, and no
traceback; an input that must load exits 0. The CLI is run by an operator on the server, so it may
name any file it is given.
"""

from __future__ import annotations

import pytest

from engine.cli import main
from tests.corpus import cases


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, fragment: str) -> None:
    assert rc == 2, (rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0] and "Traceback" not in err, err


def _cli_table_cases():
    # the survival command needs a group column and takes no covariates: cases that need neither, or fail on reading
    return [c for c in cases("table") if c.options["step"] == "read" or (c.options["group"] and c.options["step"] != "cox")]


@pytest.mark.parametrize("case", _cli_table_cases(), ids=lambda c: c.name)
def test_survival_cli(case, tmp_path, capsys):
    o = case.options
    path = case.make(tmp_path)
    rc, out, err = run_cli(["survival", str(path), "--time", o["time"], "--event", o["event"], "--group", o["group"] or "arm", "--json"], capsys)
    if case.expect is not None:
        assert_one_line_error(rc, err, case.fragment)
        return
    assert rc == 0, err
    assert f"{o['n']} patients, {o['events']} events" in err
    assert '"logrank"' in out


def test_predict_cli_names_every_bad_tile(tmp_path, tiny_registry, capsys, monkeypatch):
    """All image cases in one ``predict`` run: the run goes on, and each tile's row says what was wrong (or scores it)."""
    from engine.exports import read_back

    folder = tmp_path / "tiles"
    folder.mkdir()
    image_cases = cases("image")
    for case in image_cases:
        (folder / case.name).write_bytes(case.make(tmp_path / "src").read_bytes())
    monkeypatch.chdir(folder)
    rc, _, err = run_cli(["predict", "--out", str(tmp_path / "p.csv"), "-q", "--", *(c.name for c in image_cases)], capsys)
    assert rc == 0, err
    rows = read_back((tmp_path / "p.csv").read_bytes()).set_index("path")
    for case in image_cases:
        row = rows.loc[case.name]
        if case.expect is not None:
            assert case.fragment in row["error"], (case.name, row["error"])
        elif case.options.get("blank"):
            assert f"'{case.name}' is blank" in row["error"], (case.name, row["error"])
        else:
            assert isinstance(row["error"], float) and 0 <= row["score"] <= 1, (case.name, row["error"])


@pytest.mark.parametrize("case", cases("config"), ids=lambda c: c.name)
def test_train_cli(case, tmp_path, capsys, monkeypatch, tiny_registry):
    """``python -m engine train CONFIG.yaml``: a bad configuration exits 2 at submit, one line, and queues nothing."""
    from engine import jobs

    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    path = case.make(tmp_path)
    rc, out, err = run_cli(["train", str(path), "--detach"], capsys)
    runner = jobs.LocalProcessRunner(tmp_path / "jobs")
    if case.expect is not None:
        assert_one_line_error(rc, err, case.fragment)
        assert runner.list() == []
        return
    assert rc == 0, err
    [rec] = runner.list()
    assert out.strip() == rec.id
    runner.wait(rec.id, timeout=60)


@pytest.mark.parametrize("argv,fragment", [
    (["heatmap", "slide.svs", "--mpp", "nan"], "argument --mpp: 'nan' is not a finite number (µm/px)"),
    (["heatmap", "slide.svs", "--mpp", "-0.5"], "argument --mpp: -0.5 is out of range (µm/px: at least 0.01 and at most 100)"),
    (["heatmap", "slide.svs", "--mpp", "50000"], "out of range (µm/px"),
    (["heatmap", "slide.svs", "--min-tissue", "inf"], "argument --min-tissue: 'inf' is not a finite number"),
    (["heatmap", "slide.svs", "--stride", "0"], "argument --stride: 0 is out of range"),
    (["heatmap", "slide.svs", "--tile-px", "-3"], "argument --tile-px: -3 is out of range"),
    (["heatmap", "slide.svs", "--readers", "two"], "'two' is not a whole number (reader threads)"),
    (["predict", "t.png", "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
    (["gradcam", "t.png", "--opacity", "NaN"], "argument --opacity: 'NaN' is not a finite number"),
])
def test_bad_numbers_on_the_command_line(argv, fragment, capsys):
    """Issue 15: NaN and negative numbers (µm/px, thresholds) were accepted silently. Now: exit 2, one line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert_one_line_error(2, err, fragment)


@pytest.mark.parametrize("case", [c for c in cases("slide") if c.expect is not None], ids=lambda c: c.name)
def test_heatmap_cli_slide(case, tmp_path, capsys, tiny_registry):
    """``python -m engine heatmap SLIDE``: every broken slide (the 10⁶ × 10⁶ px BigTIFF included) exits 2 with one line."""
    path = case.make(tmp_path)
    rc, _, err = run_cli(["heatmap", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert_one_line_error(rc, err, case.fragment)
    assert path.name in err and not (tmp_path / "out").exists()
