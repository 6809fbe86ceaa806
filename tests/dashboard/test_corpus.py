"""Every case of the bad-input corpus (tests/corpus.py) through the page a user would use, headless (AppTest).

For each case: a clear message (error or warning) naming the file, no exception and no "Traceback"
anywhere on the page, and the session keeps what it had: tiles and the prediction table (Upload /
Tile prediction), the open slide (Slide heatmap), the earlier Kaplan–Meier result (Cohort survival),
the earlier job and no new one (Training), the registry (Models).

One AppTest per page is reused across a group's cases (a session that meets one bad file after the
other, as a real one would); each case checks the state it starts from, so the order does not matter.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.corpus import GOOD_ROWS, Case, cases, png

APP = str(ROOT / "dashboard" / "app.py")
TIMEOUT = 90
TEXT_KINDS = ("title", "header", "subheader", "markdown", "caption", "text", "code", "error", "warning", "info", "success", "exception")
_APPS: dict[str, AppTest] = {}  # one session per page group, shared by that group's tests


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def page_text(at: AppTest) -> str:
    out = []
    for kind in TEXT_KINDS:
        try:
            out.append(texts(at, kind))
        except Exception:  # noqa: BLE001 - an element kind this Streamlit version lacks
            pass
    return "\n".join(out)


def clean(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert "Traceback" not in page_text(at)
    assert "Something went wrong" not in texts(at, "error"), texts(at, "error")  # a non-HistoDashError reached the page
    return at


def run(at: AppTest) -> AppTest:
    at.run()
    return clean(at)


def go(at: AppTest, view: str) -> AppTest:
    at.switch_page(f"views/{view}.py")
    return run(at)


def session(key: str, setup) -> AppTest:
    if key not in _APPS:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        run(at)
        _APPS[key] = setup(at)
    return _APPS[key]


@pytest.fixture(scope="module", autouse=True)
def _forget_sessions():
    yield
    _APPS.clear()


def uploadable(group_cases: list[Case], suffixes: tuple[str, ...]) -> list[Case]:
    """The cases a browser can upload there: Streamlit's uploader refuses other file name endings before the page runs."""
    return [c for c in group_cases if c.name.lower().endswith(suffixes)]


def data_of(case: Case, tmp_path: Path) -> bytes:
    return case.make(tmp_path).read_bytes()


# ----------------------------------------------------------------------------- tiles: Upload + Tile prediction

def _tiles_session(at: AppTest) -> AppTest:
    go(at, "upload")
    at.file_uploader[0].set_value([("good.png", png(123), "image/png")])
    run(at)
    assert "1 tile(s) in this session" in texts(at, "subheader")
    go(at, "predict")
    at.button[0].click()  # Predict
    run(at)
    assert not at.error, texts(at, "error")
    assert list(at.dataframe[0].value["path"]) == ["good.png"]
    return at


def tile_count(at: AppTest) -> int:
    return int(next(s for s in texts(at, "subheader").splitlines() if "tile(s) in this session" in s).split()[0])


@pytest.mark.parametrize("case", uploadable(cases("image") + cases("archive"), (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".zip")), ids=lambda c: c.id)
def test_tile_upload(case, tmp_path, tiny_registry):
    at = session("tiles", _tiles_session)
    go(at, "upload")
    before = tile_count(at)
    at.file_uploader[0].set_value([(case.name, data_of(case, tmp_path), "application/octet-stream")])
    run(at)
    errors = texts(at, "error")
    if case.expect is not None:
        assert case.fragment in errors and f"**{case.name}** was not loaded" in errors, errors
        assert tile_count(at) == before  # nothing half-added
    elif case.group == "image":
        assert not at.error, errors
        assert "Added 1 tile(s)." in texts(at, "success") and tile_count(at) == before + 1
        assert case.name in "\n".join(c.value for c in at.caption)  # its thumbnail and caption
    else:  # a zip with good and broken tiles: the good ones load, each broken one is named
        assert f"Added {len(case.options['tiles'])} tile(s)." in texts(at, "success")
        assert tile_count(at) == before + len(case.options["tiles"])
        for member in case.options["member_errors"]:
            assert f"**{case.name}/{member}** was not loaded" in errors, errors
    if case.options.get("skipped"):
        assert f"skipped {len(case.options['skipped'])} non-tile" in texts(at, "info")
    go(at, "predict")  # the earlier prediction is still shown
    assert list(at.dataframe[0].value["path"]) == ["good.png"]


# ----------------------------------------------------------------------------- slides: Slide heatmap (upload)

def _slides_session(tmp_root: Path):
    def setup(at: AppTest) -> AppTest:
        good = next(c for c in cases("slide") if c.name == "good.svs")
        go(at, "slides")
        at.file_uploader[0].set_value([("good.svs", data_of(good, tmp_root), "application/octet-stream")])
        run(at)
        assert "good.svs" in texts(at, "subheader")
        return at

    return setup


def current_slide(at: AppTest) -> str:
    return at.subheader[0].value if at.subheader else ""


@pytest.mark.parametrize("case", [c for c in cases("slide") if c.name != "good.svs"], ids=lambda c: c.name)
def test_slide_upload(case, tmp_path, tmp_path_factory, tiny_registry):
    at = session("slides", _slides_session(tmp_path_factory.mktemp("good-slide")))
    go(at, "slides")
    before = current_slide(at)
    assert before, "a slide is open before each case"
    at.file_uploader[0].set_value([(case.name, data_of(case, tmp_path), "application/octet-stream")])
    run(at)
    if case.expect is not None:
        errors = texts(at, "error")
        assert f"Upload of '{case.name}'" in errors and case.fragment in errors, errors
        assert str(tmp_path) not in errors  # no server paths
        assert current_slide(at) == before  # the slide shown before stays
        assert "tissue tiles of" in "\n".join(c.value for c in at.caption)
    else:
        assert f"Saved '{case.name}'" in texts(at, "success"), texts(at, "error")
        assert current_slide(at) == case.name  # the new slide is opened
        if case.options.get("tissue") == 0.0:
            assert "No tile has enough tissue" in texts(at, "warning")
            assert next(b for b in at.button if b.label == "Compute heatmap").disabled


# ----------------------------------------------------------------------------- cohort tables: Cohort survival

UPLOADER = "Cohort table (CSV, TSV or Excel; one row per patient)"


def widget(at: AppTest, kind: str, label: str):
    return next(w for w in getattr(at, kind) if w.label == label)


def press(at: AppTest, label: str) -> AppTest:
    widget(at, "button", label).click()
    return run(at)


def upload_table(at: AppTest, name: str, data: bytes) -> AppTest:
    widget(at, "file_uploader", UPLOADER).set_value((name, data, "text/csv"))
    return run(at)


def _survival_session(at: AppTest) -> AppTest:
    go(at, "survival")
    assert "228 patients, 165 events" in texts(at, "info")  # the demo cohort, analysed
    widget(at, "radio", "Cohort").set_value("Upload a table")
    run(at)
    return at


def good_result(at: AppTest) -> AppTest:
    """Upload the good table; analyse it unless its earlier result is (still) there."""
    upload_table(at, "good.csv", GOOD_ROWS.encode())
    if "6 patients, 4 events" not in texts(at, "info"):
        widget(at, "selectbox", "Group").set_value("arm")
        press(at, "Analyse")
    assert "6 patients, 4 events" in texts(at, "info") and at.get("plotly_chart")
    return at


@pytest.mark.parametrize("case", uploadable(cases("table"), (".csv", ".tsv", ".txt", ".xlsx")), ids=lambda c: c.name)
def test_survival_table(case, tmp_path):
    at = session("survival", _survival_session)
    good_result(at)
    earlier = at.session_state["survival_result"]
    o = case.options
    upload_table(at, case.name, data_of(case, tmp_path))
    if o["step"] == "read":
        assert f"Reading {case.name}: " in texts(at, "error") and case.fragment in texts(at, "error"), texts(at, "error")
        # the table and its Kaplan–Meier result shown before stay on the page
        assert "Table **good.csv**" in "\n".join(c.value for c in at.caption)
        assert "6 patients, 4 events" in texts(at, "info") and at.get("plotly_chart")
        return
    assert f"Table **{case.name}**" in "\n".join(c.value for c in at.caption), texts(at, "error")
    if o["group"]:
        widget(at, "selectbox", "Group").set_value(o["group"])
    press(at, "Analyse")
    if o["step"] == "cox":
        widget(at, "multiselect", "Covariates (numeric)").set_value(list(o["covariates"]))
        press(at, "Fit Cox model")
    errors = texts(at, "error")
    if case.expect is None or o.get("page_loads"):
        assert not at.error, errors
        assert f"{o['n']} patients, {o['events']} events" in texts(at, "info")
        return
    assert case.fragment in errors, errors
    if o["step"] == "prepare":
        assert at.session_state["survival_result"] is earlier  # a failed analysis replaces nothing
        good_result(at)  # back to the good table: its result is shown again without analysing
        assert at.session_state["survival_result"] is earlier
    elif o["step"] == "groups":
        assert at.get("plotly_chart")  # the curves are valid and drawn; only the comparison is refused


# ----------------------------------------------------------------------------- training folders: Training

@pytest.fixture
def train_runner(tmp_path_factory, monkeypatch, tiny_registry):
    from engine import jobs

    root = tmp_path_factory.getbasetemp() / "corpus-train-jobs"
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(root))
    monkeypatch.setenv("HISTODASH_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))  # the page trains from here (test folders) or from uploads
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    return jobs.LocalProcessRunner(root)


def _training_session(tmp_root: Path):
    def setup(at: AppTest) -> AppTest:
        from tests.corpus import class_folders

        go(at, "training")
        submit_dataset(at, class_folders(tmp_root / "good", {"benign": 3, "tumour": 3}))
        assert "queued: 6 tiles in 2 classes" in texts(at, "success"), texts(at, "error")
        return at

    return setup


def submit_dataset(at: AppTest, path: Path, *, upload: bool = False) -> AppTest:
    box = widget(at, "text_input", "Dataset: folder, CSV manifest or .zip (server path)")
    uploader = at.file_uploader[0]
    if upload:
        box.set_value("")
        uploader.set_value([(path.name, path.read_bytes(), "application/zip")])
    else:
        box.set_value(str(path))
        uploader.set_value([])
    widget(at, "text_input", "Label column (manifest)").set_value("label")
    widget(at, "text_input", "Positive classes (score)").set_value("")
    widget(at, "button", "Start training").click()
    return run(at)


@pytest.mark.parametrize("case", cases("training"), ids=lambda c: c.name)
def test_training_dataset(case, tmp_path, tmp_path_factory, train_runner):
    at = session("training", _training_session(tmp_path_factory.mktemp("good-train")))
    go(at, "training")
    jobs_before = [r.id for r in train_runner.list(kind="train")]
    assert jobs_before and set(jobs_before) <= set(at.dataframe[0].value["job"])  # the earlier job(s) are listed
    path = case.make(tmp_path)
    submit_dataset(at, path, upload=path.suffix == ".zip")
    errors = texts(at, "error")
    if case.expect is not None and case.options.get("step") != "prepare":
        fragment = case.options.get("page_fragment", case.fragment)
        assert errors.startswith("Training job: ") and fragment in errors, errors
        if "page_fragment" in case.options:  # server paths as input: refused without naming any server folder
            assert "/etc" not in errors and "someone-else" not in errors and "/usr" not in errors and "null" not in errors, errors
        assert [r.id for r in train_runner.list(kind="train")] == jobs_before  # nothing queued
    else:  # tiles are decoded in the job, which skips and counts unreadable ones; the page checks the layout only
        assert "queued:" in texts(at, "success"), errors
        assert len(train_runner.list(kind="train")) == len(jobs_before) + 1
    assert set(jobs_before) <= set(at.dataframe[0].value["job"])  # the earlier jobs are still listed


# ----------------------------------------------------------------------------- models: Models (import)

MODELS_PAGE = ROOT / "dashboard" / "views" / "models.py"


@pytest.mark.skipif(not MODELS_PAGE.exists(), reason="the Models page (dashboard/views/models.py) is not there")
@pytest.mark.parametrize("case", cases("model"), ids=lambda c: c.name)
def test_model_import(case, tmp_path, tmp_path_factory, monkeypatch):
    from tests.conftest import write_tiny_model

    models = tmp_path_factory.getbasetemp() / "corpus-models"
    if not (models / "tiny-test").exists():
        write_tiny_model(models / "tiny-test")
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(models))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", "tiny-test")
    at = session("models", lambda at: go(at, "models"))
    go(at, "models")
    listing = sorted(p.name for p in models.iterdir())
    assert listing == ["tiny-test"]
    at.file_uploader[0].set_value([(case.name, data_of(case, tmp_path), "application/octet-stream")])
    widget(at, "text_input", "Model id").set_value("corpus-import")
    widget(at, "text_input", "Classes, in output order").set_value("benign, tumour")
    widget(at, "number_input", "Input px").set_value(8)
    widget(at, "button", "Import").click()
    run(at)
    errors = texts(at, "error")
    assert f"Import of '{case.name}'" in errors, errors
    assert sorted(p.name for p in models.iterdir()) == listing  # the registry is as it was, no staging left
    assert at.sidebar.selectbox[0].options == ["tiny-test"]


def test_awkward_tiles_predict_and_show_in_the_gallery(tmp_path, tiny_registry):
    """Every image case that must load (16-bit, CMYK, grey, alpha, float, misnamed) is uploaded, predicted and shown."""
    good = [c for c in cases("image") if c.expect is None]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    run(at)
    go(at, "upload")
    at.file_uploader[0].set_value([(c.name, data_of(c, tmp_path), "application/octet-stream") for c in good])
    run(at)
    assert f"{len(good)} tile(s) in this session" in texts(at, "subheader") and not at.error, texts(at, "error")
    go(at, "predict")
    at.button[0].click()
    run(at)
    frame = at.dataframe[0].value.set_index("path")
    assert sorted(frame.index) == sorted(c.name for c in good)
    blank = [c.name for c in good if c.options.get("blank")]
    scored = [c.name for c in good if not c.options.get("blank")]
    assert blank and scored
    for name in blank:  # one colour: named, not scored (issue 15)
        assert f"'{name}' is blank: every pixel is about RGB" in frame.loc[name, "error"] and pd.isna(frame.loc[name, "score"])
    assert frame.loc[scored, "error"].isna().all() and frame.loc[scored, "score"].between(0, 1).all()
    assert len(at.get("image")) >= len(scored)  # the gallery drew every scored thumbnail


def test_two_uploads_with_one_name_are_kept_apart(tiny_registry):
    """Two different files both named 'same.png' are both kept (the second as 'same (2).png') and both predicted;
    the same file uploaded again is not added twice; each is reported."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    run(at)
    go(at, "upload")
    at.file_uploader[0].set_value([("same.png", png(1, 64), "image/png"), ("same.png", png(2, 64), "image/png"), ("again.png", png(1, 64), "image/png")])
    run(at)
    assert "Added 2 tile(s)." in texts(at, "success") and tile_count(at) == 2
    info = texts(at, "info")
    assert "Another tile is already named same.png: this one is kept as same (2).png." in info
    assert "again.png is identical to same.png, already in this session: not added again." in info
    go(at, "predict")
    at.button[0].click()
    run(at)
    frame = at.dataframe[0].value
    assert sorted(frame["path"]) == ["same (2).png", "same.png"] and frame["score"].notna().all()
    assert len(at.get("image")) >= 2  # both in the gallery
