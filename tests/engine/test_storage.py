"""A full disk (issue 15 item 6): every write a page or job makes says "the server's disk is full…", never
"Something went wrong (OSError)", leaves nothing half-written, and prediction still works where it can.

The disk is real: a tmpfs of a few MB mounted for the test (root / CAP_SYS_ADMIN; skipped with the reason
otherwise), so ENOSPC comes from the kernel, not from a mock. One check needs no mount: ``/dev/full``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.errors import StorageError, storage_errors
from tests.conftest import make_pyramid
from tests.dashboard.views.test_slides import library  # noqa: F401 - the Slide page's fixture

FULL = "The server's disk is full"


def mount_small_disk(path: Path, size: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount"):
        pytest.skip("no mount command: a small real filesystem cannot be made here")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own, unmounted afterwards."""
    mounted = []

    def make(name: str = "small", size: str = "2m") -> Path:
        mounted.append(mount_small_disk(tmp_path / name, size))
        return mounted[-1]

    yield make
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:  # busy (a worker still exiting)
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> None:
    """Write until the kernel says ENOSPC (the disk is then full to the last block)."""
    with open(disk / "filler.bin", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(disk / "filler-tail.bin", "wb", buffering=0) as fh:  # what is left below 64 KB
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def test_a_real_enospc_is_the_disk_full_message():
    """No mount needed: /dev/full answers every write with ENOSPC."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is absent on this system")
    with pytest.raises(StorageError) as err, storage_errors("'a.svs' could not be saved"), open("/dev/full", "wb", buffering=0) as fh:
        fh.write(b"x")
    assert err.value.message == f"{FULL}: 'a.svs' could not be saved." and "Nothing was saved" in err.value.hint
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    with pytest.raises(FileNotFoundError), storage_errors("x"):  # other errors pass unchanged
        open("/nonexistent-folder/x", "rb")


def test_a_slide_upload_onto_a_full_disk(small_disk, monkeypatch, tmp_path):
    from engine.uploads import save_upload, uploads_dir

    disk = small_disk()
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(disk))
    before = free_bytes(disk)
    blob = tmp_path / "big.svs"
    blob.write_bytes(os.urandom(3 << 20))  # bigger than the disk
    with open(blob, "rb") as fh, pytest.raises(StorageError, match=f"^{FULL}: 'big.svs' could not be saved"):
        save_upload(fh, "big.svs", "s1")
    assert list(uploads_dir("s1").iterdir()) == []  # no staging folder, no partial file
    assert free_bytes(disk) == before  # the space is given back
    ok = make_pyramid(tmp_path / "small.tif", width=1024, height=768, levels=2)  # a slide that fits is still saved
    with open(ok, "rb") as fh:
        assert save_upload(fh, "small.tif", "s1").is_file()


def test_no_job_is_queued_half_on_a_full_disk(small_disk, monkeypatch):
    from engine import jobs

    disk = small_disk()
    fill(disk)
    runner = jobs.LocalProcessRunner(disk / "jobs")
    with pytest.raises(StorageError, match=f"^{FULL}: the job could not be queued"):
        runner.submit("heatmap", {"slide_path": "x.svs"}, owner="s1")
    assert runner.list() == []
    assert [p for p in (disk / "jobs").glob("*") if p.is_dir()] == []  # no half-written job folder


def test_a_job_whose_results_meet_a_full_disk_fails_saying_so(small_disk, monkeypatch, tmp_path):
    """In a real worker process: the failure is the disk-full message, not 'OSError: [Errno 28] …'."""
    from engine import jobs

    disk = small_disk()
    monkeypatch.setitem(jobs.JOB_KINDS, "fill", "tests.engine.test_storage:fill_job")
    runner = jobs.LocalProcessRunner(disk / "jobs")
    job_id = runner.submit("fill", {})
    rec = runner.wait(job_id, timeout=120)
    assert rec.state == "failed" and rec.error.startswith(f"{FULL}: the job's results could not be written"), rec.error


def fill_job(params, ctx) -> dict:
    (Path(ctx.workdir) / "result.bin").write_bytes(b"\0" * (4 << 20))  # over the 2 MB disk
    return {}


def test_the_heatmap_goes_on_when_the_upload_cannot_be_kept(small_disk, monkeypatch, tmp_path, tiny_registry):
    """Uploads on one disk, jobs on another with room for the results but not for a copy of the slide: the heatmap is
    computed (not kept: logged), rather than the job failing."""
    from engine.heatmap import run_job
    from tests.fakes import FakeContext

    work = tmp_path / "sessions"
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(work))
    (work / "s1" / "slides").mkdir(parents=True)
    upload = make_pyramid(work / "s1" / "slides" / "case.tif", width=8192, height=6144, levels=3)
    disk = small_disk(size="1m")
    assert upload.stat().st_size > 1 << 20
    out = run_job({"slide_path": str(upload), "model_id": "tiny-test", "level": 2, "tile_px": 128}, FakeContext(disk / "job"))
    assert not out["slide_kept"] and out["slide_path"] == str(upload) and out["n_tiles"] > 0
    assert Path(out["files"]["tiles.csv"]).is_file() and list((disk / "job" / "work" / "slide").iterdir()) == []


def test_prediction_works_uncached_when_the_cache_disk_is_full(small_disk, monkeypatch, tiny_registry):
    from engine.cache import ResultCache
    from engine.predict import TilePredictor
    from tests.conftest import rgb_tile

    disk = small_disk()
    fill(disk)
    cache = ResultCache(disk / "cache")
    result = TilePredictor(tiny_registry.get("tiny-test"), cache=cache).predict_arrays([rgb_tile(1), rgb_tile(2)])
    scores = [p.score for p in result.predictions]
    assert len(scores) == 2 and all(np.isfinite(scores)) and result.n_errors == 0 and not cache.enabled


# ----------------------------------------------------------------------------- the pages

def test_slide_page_upload_onto_a_full_disk_keeps_the_slide_shown(small_disk, monkeypatch, tmp_path, library):  # noqa: F811
    from tests.dashboard.views.test_slides import open_library_slide, page, texts

    at = open_library_slide(page(), "synthetic.tif")
    disk = small_disk()
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(disk))
    at.radio(key="slide_source").set_value("Upload").run()
    at.file_uploader[0].set_value([("big.svs", os.urandom(3 << 20), "application/octet-stream")]).run()
    assert not at.exception, at.exception
    errors = texts(at, "error")
    assert f"Upload of 'big.svs': {FULL}: 'big.svs' could not be saved." in errors and "Something went wrong" not in errors, errors
    assert "synthetic.tif" in texts(at, "subheader")  # what the user had stays


def test_training_page_zip_upload_onto_a_full_disk(small_disk, monkeypatch, tmp_path, tiny_registry):
    from tests.dashboard.views.test_training import page, texts

    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    at = page()
    disk = small_disk()
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(disk))
    at.file_uploader[0].set_value([("tiles.zip", os.urandom(3 << 20), "application/zip")])
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, at.exception
    errors = texts(at, "error")
    assert f"{FULL}: 'tiles.zip' could not be saved." in errors and "Something went wrong" not in errors, errors
    assert not list(disk.rglob("*tiles.zip*"))  # nothing half-written



def test_cohort_page_clinical_table_onto_a_full_disk(small_disk, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from tests.dashboard.views.test_cohort import APP

    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/cohort.py")
    at.run()
    disk = small_disk()
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(disk))
    table = "patient_id,time,event\n" + "".join(f"P{i:06d},{i % 900},{i % 2}\n" for i in range(250_000))  # 3 MB
    next(w for w in at.get("file_uploader") if w.label.startswith("Clinical table")).set_value(("clinical.csv", table.encode(), "text/csv")).run()
    assert not at.exception, at.exception
    errors = "\n".join(e.value for e in at.error)
    assert f"{FULL}: 'clinical.csv' could not be saved." in errors and "Something went wrong" not in errors, errors
    assert not list(disk.rglob("*clinical.csv*"))  # nothing half-written


def test_upload_page_tiles_onto_a_full_disk(small_disk, monkeypatch, tmp_path):
    """Tiles uploaded while the workspace disk is full: each named with the disk-full message, nothing half-kept;
    the tile already in the session stays."""
    from streamlit.testing.v1 import AppTest

    from tests.dashboard.views.test_gradcam import APP, png, upload_tiles

    disk = small_disk()
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(disk))
    at = upload_tiles(AppTest.from_file(APP, default_timeout=90), ("first.png", png(1)))
    assert not at.error, [e.value for e in at.error]
    fill(disk)
    at.file_uploader[0].set_value([("first.png", png(1), "image/png"), ("big.png", png(2, size=300), "image/png")]).run()
    assert not at.exception, at.exception
    errors = "\n".join(e.value for e in at.error)
    assert f"{FULL}: " in errors and "big.png" in errors and "Something went wrong" not in errors, errors
    assert [p.name for p in disk.rglob("*big.png*")] == []  # no tile, preview or record of it
    assert list(disk.rglob("*_first.png.json"))  # the earlier tile's record is still there
