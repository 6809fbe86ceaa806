"""Every case of the bad-input corpus (tests/corpus.py) through the engine API.

A broken input raises the expected :class:`HistoDashError` subclass — never a bare Python exception —
with a message that says why (the case's fragment) and, where the engine knows the file, names it.
An awkward but valid input loads, and loads correctly (size, colour, counts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import HistoDashError, IncompatibleModelError, InvalidInputError
from tests.corpus import ALL_CASES, CANARY, Case, cases

GROUPS = ("image", "archive", "slide", "table", "training", "config", "model")


def test_corpus_has_at_least_40_cases_in_every_group():
    assert len(ALL_CASES) >= 40, len(ALL_CASES)
    assert {c.group for c in ALL_CASES} == set(GROUPS)
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES), "case ids must be unique"
    assert sum(c.expect is not None for c in ALL_CASES) >= 40  # broken inputs, besides the ones that must load


def expect_error(case: Case, fn, *, names_file: bool = True) -> HistoDashError:
    """Run ``fn``; it must raise the case's error class (a HistoDashError) with the fragment in its message."""
    try:
        fn()
    except HistoDashError as err:
        assert isinstance(err, case.expect), f"{case.id}: {type(err).__name__} instead of {case.expect}: {err}"
        text = str(err)
        assert case.fragment in text, f"{case.id}: {case.fragment!r} not in {text!r}"
        if names_file:
            assert Path(case.name).name in text, f"{case.id}: the message does not name the file: {text!r}"
        assert "Traceback" not in text
        return err
    except Exception as exc:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{case.id}: bare {type(exc).__name__} escaped the engine: {exc}")
    pytest.fail(f"{case.id}: no error raised, expected {case.expect}")


# ----------------------------------------------------------------------------- images

@pytest.mark.parametrize("case", cases("image"), ids=lambda c: c.name)
def test_image(case, tmp_path):
    from engine.imageio import read_image_with_info

    path = case.make(tmp_path)
    if case.expect is not None:
        expect_error(case, lambda: read_image_with_info(path))
        expect_error(case, lambda: read_image_with_info(path.read_bytes(), name=case.name))  # an upload's bytes
        return
    rgb, info = read_image_with_info(path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (rgb.dtype, rgb.shape)
    assert rgb.shape[:2] == case.options["size"] and (info.height, info.width) == case.options["size"]
    mean = rgb.reshape(-1, 3).mean(axis=0)
    assert np.allclose(mean, case.options["colour"], atol=case.options.get("tolerance", 1.5)), (case.fragment, mean)
    from engine.errors import InvalidInputError as _Invalid
    from engine.imageio import check_scorable

    if case.options.get("blank"):  # one colour: named, not scored
        with pytest.raises(_Invalid, match=f"'{case.name}' is blank: every pixel is about RGB"):
            check_scorable(rgb, case.name)
    else:
        check_scorable(rgb, case.name)


# ----------------------------------------------------------------------------- archives

def ingest_zip(path: Path, name: str):
    """What the Upload page does with a zip, engine calls only: (loaded members, {member: error}, skipped)."""
    from engine.archive import ZipReport, iter_zip_tiles
    from engine.imageio import read_image_with_info

    report, loaded, errors = ZipReport(), [], {}
    for member, raw in iter_zip_tiles(path, name=name, report=report):
        try:
            read_image_with_info(raw, name=f"{name}/{member}")
            loaded.append(member)
        except HistoDashError as err:
            errors[member] = err
    return loaded, errors, report.skipped


@pytest.mark.parametrize("case", cases("archive"), ids=lambda c: c.name)
def test_archive(case, tmp_path):
    path = case.make(tmp_path)
    if case.fragment == "contains no tiles":  # the engine yields nothing; the page turns that into the message
        loaded, errors, skipped = ingest_zip(path, case.name)
        assert (loaded, errors) == ([], {}) and skipped == case.options.get("skipped", [])
        return
    if case.expect is not None:
        expect_error(case, lambda: ingest_zip(path, case.name))
        expect_error(case, lambda: ingest_zip(path.read_bytes(), case.name))
        return
    loaded, errors, skipped = ingest_zip(path, case.name)
    assert loaded == case.options["tiles"]
    assert {m: type(e) for m, e in errors.items()} == case.options["member_errors"]
    for member, err in errors.items():
        assert f"{case.name}/{member}" in str(err)  # names the archive and the member
    assert skipped == case.options["skipped"]


def test_zip_slip_never_writes_outside(tmp_path):
    """The training extractor (the one place a zip is written to disk) refuses zip-slip before writing anything."""
    from engine.errors import UnsafeArchiveError
    from engine.training.datasets import discover

    case = next(c for c in cases("archive") if c.name == "slip.zip")
    path = case.make(tmp_path)
    dest = tmp_path / "deep" / "extract"
    with pytest.raises(UnsafeArchiveError, match="outside the archive"):
        discover(path, extract_to=dest)
    assert not (tmp_path / "deep" / "evil.png").exists() and not list(dest.rglob("*.png"))


# ----------------------------------------------------------------------------- slides

@pytest.mark.parametrize("case", cases("slide"), ids=lambda c: c.name)
def test_slide(case, tmp_path):
    from engine.slides import open_slide
    from engine.tissue import TissueMasker

    path = case.make(tmp_path)
    if case.expect is not None:
        err = expect_error(case, lambda: open_slide(path))
        assert str(tmp_path) not in str(err), "server paths must not reach the message"
        return
    with open_slide(path) as slide:
        info = slide.info
        assert info.format == case.options["kind"]
        if "vendor" in case.options:
            assert info.vendor == case.options["vendor"] and info.mpp == (case.options["mpp"], case.options["mpp"])
        thumb, _ = slide.get_thumbnail(512)
        assert thumb.dtype == np.uint8 and thumb.shape[2] == 3
        mask = TissueMasker().thumbnail_mask(thumb, info.dimensions[0] / thumb.shape[1], info.dimensions[1] / thumb.shape[0])
        if "tissue" in case.options:
            assert mask.tissue_fraction == pytest.approx(case.options["tissue"], abs=0.01)
        rgb = slide.read_region((0, 0), 0, (64, 64))
        assert rgb.shape == (64, 64, 3)


def test_slide_upload_of_a_broken_file_leaves_nothing_behind(tmp_path, monkeypatch):
    from engine.uploads import save_upload, uploads_dir

    monkeypatch.setenv("HISTODASH_WORK_DIR", str(tmp_path / "sessions"))
    for case in cases("slide"):
        path = case.make(tmp_path / "src")
        if case.expect is None:
            continue
        with open(path, "rb") as fh, pytest.raises(case.expect):
            save_upload(fh, case.name, "corpus")
    assert list(uploads_dir("corpus").iterdir()) == []


# ----------------------------------------------------------------------------- cohort tables

def run_table(case: Case, path: Path):
    from engine import survival as sv

    o = case.options
    table = sv.read_table(path.read_bytes(), name=case.name)  # as an upload: bytes and the user's file name
    if o["step"] == "read":
        return table
    cohort = sv.prepare_cohort(table, o["time"], o["event"], o["group"], o["covariates"])
    if o["step"] in ("groups", "all"):
        sv.kaplan_meier(cohort)
        sv.logrank_test(cohort)
        sv.group_hazard_ratios(cohort)
    if o["step"] == "cox":
        sv.fit_cox(cohort, o["covariates"])
    return cohort


@pytest.mark.parametrize("case", cases("table"), ids=lambda c: c.name)
def test_table(case, tmp_path):
    path = case.make(tmp_path)
    if case.expect is not None:
        # reading names the file; a column's problem names the column (the page shows the table's name beside it)
        err = expect_error(case, lambda: run_table(case, path), names_file=case.options["step"] == "read")
        if case.options["step"] == "read":
            assert str(tmp_path) not in str(err)
        return
    cohort = run_table(case, path)
    assert (cohort.n, cohort.n_events) == (case.options["n"], case.options["events"])
    assert cohort.group_order == ("a", "b")
    if "encoding" in case.options:  # detected, and the accented column reads back as written
        from engine import survival as sv

        table = sv.read_table(path.read_bytes(), name=case.name)
        assert table.attrs["encoding"] == case.options["encoding"]
        assert list(table.columns)[-1] == "Région" and set(table["Région"]) == {"Île", "Zürich"}


# ----------------------------------------------------------------------------- training folders

@pytest.mark.parametrize("case", [c for c in cases("training") if not c.options.get("page_only")], ids=lambda c: c.name)
def test_training(case, tmp_path):
    from engine.training.datasets import discover, prepare

    path = case.make(tmp_path)
    shown = Path(case.name).stem if path.suffix == ".csv" else path.name  # a manifest is named by its folder's manifest.csv

    def run():
        ds = discover(path)
        if case.options.get("step") == "prepare":
            return prepare(ds, 16, cache_root=tmp_path / "cache", workers=1)
        return ds

    if case.expect is not None:
        err = expect_error(case, run, names_file=False)
        assert shown in str(err) or path.name in str(err), f"{case.id}: {err}"
        return
    prepared = run()
    assert len(prepared.files) == case.options["kept"]
    assert sorted(Path(p).name for p, _ in prepared.skipped) == case.options["skipped"]
    for p, why in prepared.skipped:
        assert Path(p).name in why  # each skipped tile says which and why


# ----------------------------------------------------------------------------- training configurations

@pytest.mark.parametrize("case", cases("config"), ids=lambda c: c.name)
def test_training_config(case, tmp_path, tiny_registry):
    """A YAML configuration through everything checked at submit (load_config, then check_submission)."""
    from engine.training.config import load_config
    from engine.training.submit import check_submission

    path = case.make(tmp_path)

    def run():
        return check_submission(load_config(path), models_dir=tiny_registry.root)

    if case.expect is not None:
        expect_error(case, run, names_file=False)
        return
    cfg, found = run()
    assert len(found) == 6 and cfg.epochs == 1


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("case", [c for c in cases("model") if not c.options.get("import_only")], ids=lambda c: c.name)
def test_model(case, tmp_path, monkeypatch):
    from engine.registry import load_keras_file

    path = case.make(tmp_path)
    if case.options.get("canary"):
        monkeypatch.syspath_prepend(str(path.parent))  # the named module is importable: loading must still not import it
        monkeypatch.delenv("HISTODASH_CANARY_IMPORTED", raising=False)
    err = expect_error(case, lambda: load_keras_file(path))
    assert isinstance(err, HistoDashError)
    if case.options.get("canary"):
        assert CANARY not in sys.modules and "HISTODASH_CANARY_IMPORTED" not in os.environ, "safe mode imported a module named by the file"
    assert not (Path.cwd() / "pwned").exists()


@pytest.mark.parametrize("case", cases("model"), ids=lambda c: c.name)
def test_model_import_refused_and_registry_unchanged(case, tmp_path, monkeypatch):
    """The same files through ``import_model`` (what the Models page calls): refused, nothing written."""
    from engine.registry import import_model

    path = case.make(tmp_path)
    if case.options.get("canary"):
        monkeypatch.syspath_prepend(str(path.parent))
        monkeypatch.delenv("HISTODASH_CANARY_IMPORTED", raising=False)
    models = tmp_path / "models"
    models.mkdir()
    fields = {"id": "corpus-import", "classes": "benign, tumour", "input_px": 8, "threshold": 0.5}
    try:
        import_model(path.read_bytes(), fields, models, file_name=case.name)
    except HistoDashError as err:
        assert isinstance(err, (IncompatibleModelError, InvalidInputError)), type(err)
        assert case.name in str(err) and "Traceback" not in str(err)
        if case.options.get("import_only"):
            assert case.fragment in str(err), str(err)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{case.id}: bare {type(exc).__name__} escaped import_model: {exc}")
    else:
        pytest.fail(f"{case.id}: imported")
    assert list(models.iterdir()) == []
    assert CANARY not in sys.modules and "HISTODASH_CANARY_IMPORTED" not in os.environ
