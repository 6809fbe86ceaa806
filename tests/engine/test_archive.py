"""Zip uploads: tiles come out; zip-slip, zip bombs and broken archives are refused with clear errors."""

import io
import zipfile

import pytest
from PIL import Image

from engine.archive import ZipLimits, ZipReport, iter_zip_tiles
from engine.errors import CorruptFileError, UnsafeArchiveError
from tests.conftest import rgb_tile


def png_bytes(seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_tile(seed, 16)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_tiles_are_yielded_and_other_entries_skipped():
    report = ZipReport()
    data = make_zip({"a.png": png_bytes(1), "sub/b.PNG": png_bytes(2), "notes.txt": b"hi", "__MACOSX/._a.png": b"x"})
    names = [n for n, _ in iter_zip_tiles(data, report=report)]
    assert names == ["a.png", "sub/b.PNG"]
    assert report.skipped == ["notes.txt", "__MACOSX/._a.png"]


@pytest.mark.parametrize("evil", ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/win/evil.png", "..\\evil.png"])
def test_zip_slip_is_refused(evil):
    with pytest.raises(UnsafeArchiveError, match="outside the archive"):
        list(iter_zip_tiles(make_zip({"ok.png": png_bytes(), evil: png_bytes()}), name="slip.zip"))


def test_zip_bomb_by_ratio_is_refused():
    bomb = make_zip({"bomb.png": b"\0" * (20 * 1024 * 1024)})
    assert len(bomb) < 100_000
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        list(iter_zip_tiles(bomb, name="bomb.zip"))


def test_total_size_limit():
    data = make_zip({f"{i}.png": png_bytes(i) for i in range(3)}, compression=zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="over the limit"):
        list(iter_zip_tiles(data, limits=ZipLimits(max_total_bytes=1000)))


def test_member_count_limit():
    data = make_zip({f"{i}.png": b"x" for i in range(5)})
    with pytest.raises(UnsafeArchiveError, match="entries"):
        list(iter_zip_tiles(data, limits=ZipLimits(max_members=4)))


def test_lying_central_directory_is_caught_while_reading():
    data = bytearray(make_zip({"a.png": b"\0" * 5000}, compression=zipfile.ZIP_STORED))
    # Patch the declared uncompressed size (central directory) down to 10 bytes.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    with pytest.raises((UnsafeArchiveError, CorruptFileError)):
        list(iter_zip_tiles(bytes(data), limits=ZipLimits(max_member_bytes=100)))


@pytest.mark.parametrize("raw", [b"", b"PK\x03\x04 not really", make_zip({"a.png": png_bytes()})[:40]], ids=["empty", "garbage", "truncated"])
def test_broken_zip_is_a_corrupt_file(raw):
    with pytest.raises(CorruptFileError, match="broken.zip"):
        list(iter_zip_tiles(raw, name="broken.zip"))
