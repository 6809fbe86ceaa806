"""Patient data: names out of logs, label/macro images unreachable, exports without server paths, stable pseudonyms."""

import json
import logging
import re
import stat

import numpy as np
import pandas as pd

from engine.privacy import anonymise_frame, installation_secret, loggable_name, pseudonym, strip_server_paths
from tests.conftest import shared_path

PATIENT = "SMITH_John_1957-03-02_S12-3456"


# -- pseudonyms and log names ---------------------------------------------------------------------


def test_pseudonym_is_stable_keyed_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTODASH_HOME", str(tmp_path / "home"))
    first = pseudonym(f"{PATIENT}.png")
    assert re.fullmatch(r"tile-[0-9a-f]{8}", first)
    assert pseudonym(f"{PATIENT}.png") == first  # stable
    assert pseudonym(f"{PATIENT}.png", "slide").startswith("slide-") and pseudonym("other.png") != first
    key = tmp_path / "home" / "secret" / "pseudonym.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(installation_secret()) == 32
    # another installation (another secret) gives another pseudonym: not a plain hash of the name
    monkeypatch.setenv("HISTODASH_HOME", str(tmp_path / "other-home"))
    assert pseudonym(f"{PATIENT}.png") != first


def test_loggable_name_hides_names_unless_allowed(monkeypatch):
    monkeypatch.delenv("HISTODASH_LOG_NAMES", raising=False)
    hidden = loggable_name(f"{PATIENT}.svs")
    assert PATIENT not in hidden and hidden.startswith("<name hidden:") and hidden == loggable_name(f"{PATIENT}.svs")
    monkeypatch.setenv("HISTODASH_LOG_NAMES", "1")
    assert loggable_name(f"{PATIENT}.svs") == f"{PATIENT}.svs"


def test_unexpected_page_errors_are_logged_without_names(monkeypatch, caplog):
    from dashboard.common import _log_unexpected

    monkeypatch.delenv("HISTODASH_LOG_NAMES", raising=False)
    try:
        raise ValueError(f"cannot decode /srv/sessions/abc/{PATIENT}.png")
    except ValueError as err:
        with caplog.at_level(logging.ERROR, logger="histodash.dashboard"):
            _log_unexpected(err, f"Upload of '{PATIENT}.png'")
    text = caplog.text
    assert "ValueError" in text and "test_privacy.py" in text  # type and code frames are kept
    assert PATIENT not in text


def test_heatmap_job_log_hides_the_slide_name(tiny_registry, tmp_path, monkeypatch):
    from engine.heatmap import run_job
    from tests.conftest import make_pyramid
    from tests.fakes import FakeContext

    monkeypatch.delenv("HISTODASH_LOG_NAMES", raising=False)
    slide = make_pyramid(tmp_path / f"{PATIENT}.tif", noise=3)
    ctx = FakeContext(tmp_path / "job")
    run_job({"slide_path": str(slide), "model_id": "tiny-test", "level": 2, "tile_px": 64, "batch_size": 8}, ctx)
    assert ctx.recorded.logs and not any(PATIENT in line for line in ctx.recorded.logs)


# -- server paths ---------------------------------------------------------------------------------


def test_strip_server_paths():
    value = {"data": "/srv/histodash/.histodash/sessions/3f2a/training/lung.zip", "n": 3,
             "cmd": ["python -m engine train /opt/hd/models/m/train_config.yaml"], "text": "split train/val/test at 0.5 µm/px"}
    assert strip_server_paths(value) == {"data": "lung.zip", "n": 3, "cmd": ["python -m engine train train_config.yaml"], "text": "split train/val/test at 0.5 µm/px"}


# -- label and macro images -----------------------------------------------------------------------


def _public_values(slide):
    """Everything reachable through the slide's public attributes and methods without arguments."""
    out = {}
    for name in dir(slide):
        if name.startswith("_") or name in ("close",):
            continue
        value = getattr(slide, name)
        if callable(value):
            try:
                value = value()
            except TypeError:
                continue
        out[name] = value
    return out


def test_label_and_macro_images_are_never_exposed(tmp_path):
    from engine.heatmap import HeatmapRun, TileGrid
    from engine.slides import open_slide
    from tests.engine.heatmap.test_heatmap import colour_predictor

    path = shared_path("wsi", "CMU-1-Small-Region.svs")  # carries 'label' and 'macro' associated images
    import openslide

    with openslide.OpenSlide(str(path)) as raw:
        assert {"label", "macro"} <= set(raw.associated_images)
        secrets = {k: np.asarray(raw.associated_images[k].convert("RGB")) for k in ("label", "macro")}
    with open_slide(path) as slide:
        assert "label" not in slide.associated_names and "macro" not in slide.associated_names
        values = _public_values(slide)
        free_text = [v for k, v in slide.properties.items() if k in ("aperio.Filename", "aperio.User", "tiff.ImageDescription") and len(v) > 6]
        assert json.dumps(slide.info.to_dict()) and not any(t in json.dumps(slide.info.to_dict()) for t in free_text)
        arrays = [v for v in values.values() if isinstance(v, np.ndarray)] + [slide.get_thumbnail(1024)[0]]
        for a in arrays:
            for secret in secrets.values():
                assert a.shape != secret.shape or not np.array_equal(a, secret)
        # an export of the slide: nothing of label/macro in it
        grid = TileGrid.for_slide(slide, 32, level=0, tile_px=256)
        result = HeatmapRun(colour_predictor(), min_tissue=0.0).run(slide, grid)
    files = result.export_files()
    for data in files.values():  # no free-text scanner metadata (file name, user, description) in any export
        assert not any(t.encode() in data for t in free_text)
    assert "label" not in json.loads(files[next(k for k in files if k.endswith("_manifest.json"))]).get("slide", {})


# -- exports --------------------------------------------------------------------------------------


def test_heatmap_exports_carry_no_server_paths_and_anonymise_the_slide(tiny_registry, tmp_path):
    from engine.heatmap import HeatmapResult, compute_heatmap
    from tests.conftest import make_pyramid

    (tmp_path / "server-only-folder").mkdir()
    slide = make_pyramid(tmp_path / "server-only-folder" / f"{PATIENT}.tif", noise=3)
    result, thumb = compute_heatmap(slide, model_id="tiny-test", level=2, tile_px=64)
    out = tmp_path / "out"
    result.save(out, thumbnail=thumb)
    for f in out.iterdir():  # what the job writes (and the page offers)
        assert b"server-only-folder" not in f.read_bytes() and str(tmp_path).encode() not in f.read_bytes(), f.name
    plain = HeatmapResult.load(out).export_files()
    assert any(PATIENT.encode() in data for data in plain.values())  # the user's own name, when not anonymised
    anon = HeatmapResult.load(out).export_files(anonymise=True)
    again = HeatmapResult.load(out).export_files(anonymise=True)
    assert list(anon) == list(again)  # stable pseudonym
    stem = pseudonym(f"{PATIENT}.tif", "slide")
    assert all(name.startswith(stem) for name in anon)
    for name, data in anon.items():
        assert PATIENT.encode() not in data and PATIENT not in name
        assert str(tmp_path).encode() not in data
    assert json.loads(anon[f"{stem}_summary.json"])["slide"] == stem
    assert json.loads(anon[f"{stem}_manifest.json"])["slide"]["name"] == stem


def test_prediction_csv_anonymised(tmp_path):
    frame = pd.DataFrame({
        "path": [f"{PATIENT}.zip/a/{PATIENT}_1.png", f"{PATIENT}_2.png", "bad.png"],
        "score": [0.1, 0.9, None],
        "error": [None, None, f"'{PATIENT}_1.png' is not an image"],
    })
    frame.loc[2, "error"] = f"'{PATIENT}_2.png' is damaged"
    out = anonymise_frame(frame, "path", "tile")
    data = out.to_csv(index=False).encode()
    assert PATIENT.encode() not in data
    assert list(out["path"]) == [pseudonym(n) for n in frame["path"]]
    assert anonymise_frame(frame, "path", "tile").equals(out)  # stable
    assert pseudonym(f"{PATIENT}_2.png") in out.loc[2, "error"]
