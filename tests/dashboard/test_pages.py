"""Every page headless with AppTest: main paths, and each broken-file case shown as a message."""

import io
import zipfile

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, rgb_tile

APP = str(ROOT / "dashboard" / "app.py")
TIMEOUT = 60


def png(seed=0, size=40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_tile(seed, size)).save(buf, format="PNG")
    return buf.getvalue()


def zipped(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(f"views/{page}.py")
        at.run()
    assert not at.exception, at.exception
    return at


def texts(at, kind) -> str:
    return "\n".join(e.value for e in getattr(at, kind))


@pytest.fixture(autouse=True)
def _models(tiny_registry):
    yield


def test_home_has_disclaimer_and_links():
    at = app()
    assert "HistoDash" in at.title[0].value
    assert "Research use only" in texts(at, "warning")
    assert at.sidebar.selectbox[0].value == "tiny-test"


def upload(at, files):
    at.file_uploader[0].set_value([(name, data, "application/octet-stream") for name, data in files])
    at.run()
    assert not at.exception, at.exception
    return at


def test_upload_good_tiles_and_zip():
    at = app("upload")
    upload(at, [("a.png", png(1)), ("b.png", png(2)), ("tiles.zip", zipped({"c.png": png(3), "d/e.png": png(4), "readme.txt": b"x"}))])
    assert "Added 4 tile(s)" in texts(at, "success")
    assert "4 tile(s) in this session" in texts(at, "subheader")
    assert "skipped 1 non-tile" in texts(at, "info")
    assert not at.error


BROKEN = [
    ("empty.png", b"", "is empty"),
    ("truncated.png", png(1)[:100], "damaged or cut short"),
    ("renamed.jpg", b"plain text renamed to jpg", "not an image"),
    ("anim.png", None, "GIF"),
    ("slip.zip", zipped({"../../etc/evil.png": b"x"}), "outside the archive"),
    ("bomb.zip", zipped({"big.png": b"\0" * (20 * 1024 * 1024)}), "zip bomb"),
    ("broken.zip", b"PK\x03\x04 nope", "not a valid zip"),
    ("empty.zip", zipped({"notes.txt": b"x"}), "contains no tiles"),
    ("mixed.zip", zipped({"ok.png": png(9), "bad.png": b"garbage"}), "mixed.zip/bad.png"),
]


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_tile(0, 8)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize(("name", "data", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_upload_shows_message_and_keeps_earlier_tiles(name, data, message):
    at = app("upload")
    upload(at, [("good.png", png(5))])
    assert "1 tile(s) in this session" in texts(at, "subheader")
    upload(at, [("good.png", png(5)), (name, data if data is not None else _gif())])
    errors = texts(at, "error")
    assert message in errors and name.split("/")[0] in errors, errors
    assert "Traceback" not in errors
    expected = 2 if name == "mixed.zip" else 1
    assert f"{expected} tile(s) in this session" in texts(at, "subheader")


def test_predict_page_without_tiles_points_to_upload():
    at = app("predict")
    assert "No tiles yet" in texts(at, "info")


def test_predict_page_runs_and_second_run_hits_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTODASH_CACHE_DIR", str(tmp_path / "cache"))  # other tests predict the same tiles
    at = app("upload")
    upload(at, [("a.png", png(1)), ("b.png", png(2)), ("c.png", png(3))])
    at.switch_page("views/predict.py")
    at.run()
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception and not at.error, (at.exception, texts(at, "error"))
    frame = at.dataframe[0].value
    assert len(frame) == 3 and frame["score"].between(0, 1).all()
    assert set(frame["path"]) == {"a.png", "b.png", "c.png"}  # user's names, not server paths
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["From cache"].startswith("0/")
    at.button[0].click()
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["From cache"] == "3/3"


def test_predict_with_macenko_normalisation():
    at = app("upload")
    upload(at, [("a.png", png(1, 64))])
    at.switch_page("views/predict.py")
    at.run()
    at.selectbox(key="predict_normalization").set_value("macenko")
    at.run()
    assert "differs from this model's card, which prescribes none" in texts(at, "warning")  # said before predicting
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    assert "before / after" in texts(at, "subheader")
    assert "These results: Stain normalisation 'macenko' differs" in texts(at, "warning")
    at.selectbox(key="predict_normalization").set_value("card")
    at.run()
    assert "differs from this model's card" not in texts(at, "warning").split("These results")[0]


def test_predict_with_broken_reference_keeps_previous_result():
    at = app("upload")
    upload(at, [("a.png", png(1))])
    at.switch_page("views/predict.py")
    at.run()
    at.button[0].click()
    at.run()
    assert len(at.dataframe[0].value) == 1
    at.selectbox(key="predict_normalization").set_value("macenko")
    at.file_uploader[0].set_value(("ref.png", b"not an image", "image/png"))
    at.button[0].click()
    at.run()
    assert not at.exception
    assert "ref.png" in texts(at, "error")
    assert len(at.dataframe[0].value) == 1  # the earlier result is still shown
