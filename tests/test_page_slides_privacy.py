"""Slide heatmap page: 'Anonymise names' downloads carry a stable pseudonym, never the slide's name or a server path."""

import pytest

from tests.test_page_slides import library, open_library_slide, page, wait_for_job  # noqa: F401, F811 - fixture
from tests.test_slides import make_pyramid

PATIENT = "DOE_Jane_1961_S99-0001"


CAPTURED: dict[str, tuple[str, bytes]] = {}


@pytest.fixture(autouse=True)
def _capture_media(monkeypatch):
    """AppTest's media storage is discarded after each run: record what download buttons store."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    class Recording(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            if isinstance(path_or_data, (bytes, bytearray)):
                CAPTURED[file_id] = (filename or "", bytes(path_or_data))
            return file_id

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    yield
    CAPTURED.clear()


def _downloads(at) -> dict[str, bytes]:
    """file name → bytes of every download button on the page."""
    out = {}
    for el in at.get("download_button"):
        file_id = el.proto.url.rsplit("/", 1)[-1].split(".")[0]
        name, data = CAPTURED[file_id]
        out[name] = data
    return out


def test_anonymised_heatmap_downloads(library):  # noqa: F811 - the imported fixture
    make_pyramid(library / f"{PATIENT}.tif", width=2048, height=1536, levels=2)
    at = open_library_slide(page(), f"{PATIENT}.tif")
    at.selectbox(key="hm_level").set_value(1).run()
    at.number_input(key="hm_tile_px").set_value(128).run()
    next(b for b in at.button if b.label == "Compute heatmap").click().run()
    wait_for_job(at)
    assert not at.error
    plain = _downloads(at)
    assert len(plain) == 5 and any(PATIENT in name for name in plain)
    at.toggle(key="hm_anonymise").set_value(True).run()
    assert not at.exception, at.exception
    anon = _downloads(at)
    assert len(anon) == 5
    for name, data in anon.items():
        assert PATIENT not in name and PATIENT.encode() not in data, name
        assert str(library).encode() not in data and b"/tmp/" not in data, name
        assert name.startswith("slide-"), name
    at.run()
    assert sorted(_downloads(at)) == sorted(anon)  # stable
