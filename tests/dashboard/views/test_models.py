"""Models page (AppTest): the registered cards, importing a model, and refusals that leave the registry unchanged.

Also: the predict page waits for a free inference slot (and says so), and offers anonymised exports.
"""

import shutil
import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from engine.registry import Registry
from tests.conftest import ROOT
from tests.dashboard.test_pages import png, texts, upload
from tests.engine.test_model_import import _keras_bytes

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture
def models(tiny_models_dir, tmp_path, monkeypatch):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(root))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", "tiny-test")
    return root


def models_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/models.py")
    at.run()
    assert not at.exception, at.exception
    return at


def fill(at, name, data, *, model_id="page-import", classes="benign, tumour", positive="tumour", px=32):
    at.file_uploader(key="import_model_file").set_value((name, data, "application/octet-stream"))
    inputs = {t.label: t for t in at.text_input}
    inputs["Model id"].set_value(model_id)
    inputs["Classes, in output order"].set_value(classes)
    inputs["Positive classes (score)"].set_value(positive)
    at.number_input[0].set_value(px)
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    assert not at.exception, at.exception
    return at


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_lists_registered_models(models):
    at = models_page()
    assert "2 registered model(s)" in texts(at, "subheader")
    assert any("tiny-test" in e.label for e in at.expander)


def test_import_a_model_then_select_it_in_the_sidebar(models, tmp_path):
    at = models_page()
    fill(at, "mine.keras", _keras_bytes(tmp_path))
    assert "Imported model **page-import**" in texts(at, "success"), texts(at, "error")
    assert "page-import" in at.sidebar.selectbox[0].options  # no restart needed
    assert "3 registered model(s)" in texts(at, "subheader")
    card = Registry(models).get("page-import")
    assert card.positive_classes == ("tumour",) and card.input_px == 32 and card.mpp is None


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [("evil.keras", "lambda", "Lambda layer"), ("notes.keras", "text", "not a Keras model file"), ("empty.keras", "empty", "is empty"),
     ("legacy.h5", "h5", "legacy Keras 2 HDF5"), ("wrong.keras", "px", "48×48 tiles but its card says 32 px")],
)
def test_refused_imports_show_a_message_and_change_nothing(models, tmp_path, name, kind, message):
    data = {
        "lambda": lambda: _keras_bytes(tmp_path, lambda_layer=True), "text": lambda: b"hello, not a model\n", "empty": lambda: b"",
        "h5": lambda: b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "px": lambda: _keras_bytes(tmp_path, px=48),
    }[kind]()
    before = snapshot(models)
    at = models_page()
    fill(at, name, data)
    errors = texts(at, "error")
    assert message in errors and name in errors, errors
    assert "Traceback" not in errors and not at.success
    assert snapshot(models) == before
    assert "page-import" not in at.sidebar.selectbox[0].options


# -- the predict page and the inference limit ------------------------------------------------------


def test_predict_page_waits_for_a_slot_and_reports_its_place(models, monkeypatch):
    import engine.limits as limits

    monkeypatch.setenv("HISTODASH_MAX_CONCURRENT_INFERENCE", "1")
    places = []
    original = limits.inference_slot

    def recording_slot(on_wait=None, **kw):
        def wrapped(place):
            places.append(place)
            on_wait(place)  # the page's own callback (updates its progress bar text)

        return original(on_wait=wrapped, **kw)

    monkeypatch.setattr(limits, "inference_slot", recording_slot)
    import dashboard.tilework as tilework  # the page's worker takes its slot here (imported by name)

    monkeypatch.setattr(tilework, "inference_slot", recording_slot)
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    upload(at, [("a.png", png(1)), ("b.png", png(2))])
    at.switch_page("views/predict.py")
    at.run()
    holder = limits.InferenceLimiter()
    fd = holder.acquire()  # another user's work holds the only slot
    threading.Timer(2.0, holder.release, args=(fd,)).start()
    t0 = time.monotonic()
    at.button[0].click()
    at.run()
    deadline = time.monotonic() + 120
    while not at.dataframe and time.monotonic() < deadline:  # prediction runs off the script thread: wait for its result
        assert not at.exception and not at.error, (at.exception, texts(at, "error"))
        time.sleep(0.5)
        at.run()
    assert not at.exception and not at.error, (at.exception, texts(at, "error"))
    assert time.monotonic() - t0 >= 1.5  # it waited for the slot
    assert places and places[0] == 1
    assert len(at.dataframe[0].value) == 2
    assert holder.busy() == 0  # released after the run


def test_predict_page_has_anonymise_option(models, media_downloads):
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    upload(at, [("SMITH_John.png", png(3))])
    at.switch_page("views/predict.py")
    at.run()
    at.button[0].click()
    at.run()
    toggle = next(t for t in at.toggle if t.label == "Anonymise names")
    toggle.set_value(True)
    at.run()
    assert not at.exception and not at.error
    assert set(at.dataframe[0].value["path"]) == {"SMITH_John.png"}  # the page still shows the user's names
    (name, data), = media_downloads(at).items()
    assert name.endswith(".csv") and b"SMITH_John" not in data and b"/tmp/" not in data
    from engine.privacy import pseudonym

    assert pseudonym("SMITH_John.png").encode() in data  # stable: the same pseudonym the engine gives
    toggle = next(t for t in at.toggle if t.label == "Anonymise names")
    toggle.set_value(False)
    at.run()
    (_, plain), = media_downloads(at).items()
    assert b"SMITH_John.png" in plain


def _edit_card(root, model_id, **changes):
    import json

    path = root / model_id / "card.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def test_failed_quality_check_is_red_with_its_reason_and_reliability_is_drawn(models, monkeypatch):
    from engine.calibration import reliability

    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", "nobody")
    _edit_card(models, "tiny-sigmoid", quality={"status": "failed", "reasons": ["it predicts one class for 100% of the test tiles"]})
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    tables = {"before": reliability(probs, [0, 1, 1, 1]), "after": reliability(probs, [0, 1, 1, 1])}
    _edit_card(models, "tiny-test", calibration={"method": "temperature", "temperature": 0.8, "fitted_on": "validation", "reliability": {"test": tables}},
               metrics=[{"split": "test", "n": 4, "auc": 0.9, "ece": 0.02, "ece_uncalibrated": 0.07, "in_domain_fraction": 0.97}])
    at = models_page()
    failed = next(e for e in at.expander if "tiny-sigmoid" in e.label)
    assert "FAILED QUALITY CHECK" in failed.label
    assert any("predicts one class" in e.value for e in at.error)
    assert len(at.get("plotly_chart")) == 1  # the reliability diagram of tiny-test (the failed card has none)
    assert at.session_state["model_id"] == "tiny-test"  # the failed model (first in order) is not the default
