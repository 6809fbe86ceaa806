"""Uploads and slide ids: safe file names, checked uploads, ids that never leave their folder."""

from __future__ import annotations

import io

import pytest

from engine.errors import CorruptFileError, InvalidInputError
from engine.uploads import resolve_slide_id, safe_filename, save_upload, slide_id_for, uploads_dir


@pytest.mark.parametrize("name,expected", [
    ("../../My Slide.tif", "My_Slide.tif"), ("C:\\scans\\a b.svs", "a_b.svs"), (".hidden.svs", "hidden.svs"),
    ("Ünïcode—name.png", "_n_code_name.png"), ("", "file"), ("///", "file"), ("a" * 300 + ".tif", "a" * 150),
])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected
    assert safe_filename("...", fallback="slide") == "slide"


def test_uploads_dir_refuses_odd_sessions():
    for bad in ("", "../x", "a/b", "x" * 65):
        with pytest.raises(InvalidInputError, match="session"):
            uploads_dir(bad)


def test_slide_ids_round_trip(slide_library, pyramid):
    path = resolve_slide_id("lib:cases/a/one.tif")
    assert path.name == "one.tif"
    assert slide_id_for(path) == "lib:cases/a/one.tif"
    saved = save_upload(io.BytesIO(pyramid.read_bytes()), "../../My Slide.tif", "sess1")
    assert saved.name == "My_Slide.tif" and saved.parent.name == "slides"
    assert slide_id_for(saved, session="sess1") == "up:My_Slide.tif"
    assert resolve_slide_id("up:My_Slide.tif", session="sess1") == saved
    with pytest.raises(InvalidInputError):
        resolve_slide_id("up:My_Slide.tif", session="other")
    with pytest.raises(InvalidInputError):
        resolve_slide_id("up:../x.tif", session="sess1")
    with pytest.raises(InvalidInputError):
        resolve_slide_id("file:/etc/passwd")


def test_broken_upload_leaves_nothing():
    with pytest.raises(CorruptFileError, match="broken.svs"):
        save_upload(io.BytesIO(b"not a slide at all"), "broken.svs", "sess2")
    assert list(uploads_dir("sess2").iterdir()) == []
