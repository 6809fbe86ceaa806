"""Safe extraction of tile archives (``.zip``).

Zip files from users are untrusted. :func:`iter_zip_tiles` yields ``(member_name, bytes)`` for
tile files only and refuses, with :class:`~engine.errors.UnsafeArchiveError`:

* *zip-slip*: members with absolute paths, drive letters or ``..`` components (nothing is ever
  written to disk by this module, but such an archive is refused outright as hostile);
* *zip bombs*: a total uncompressed size, a member size, a member count or a compression ratio
  over the limits — checked from the central directory *and* enforced while reading, since the
  directory can lie.

* *pixel bombs*: small files that decode to huge images — each tile's header is read before it is
  yielded and the pixels of all tiles are summed; over ``max_total_pixels`` the archive is refused
  (:class:`~engine.errors.TooLargeError`) before any of those pixels is decoded.

Non-tile members (folders, ``__MACOSX`` resource forks, text files) are skipped and reported.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import get_settings
from engine.errors import CorruptFileError, TooLargeError, UnsafeArchiveError
from engine.imageio import header_pixels, is_tile_name


@dataclass(frozen=True)
class ZipLimits:
    max_members: int = 10_000
    max_member_bytes: int = 200 * 1024 * 1024
    max_total_bytes: int = 2 * 1024 * 1024 * 1024
    max_ratio: float = 200.0  # uncompressed / compressed, per member (JPEG tiles barely compress)
    max_total_pixels: int | None = None  # decoded pixels of all tiles together (default: 4 × settings.max_pixels)


@dataclass
class ZipReport:
    skipped: list[str] = field(default_factory=list)


def _unsafe_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    parts = name.replace("\\", "/").split("/")
    return any(part == ".." for part in parts)


HEADER_BYTES = 256 * 1024  # enough for any tile header (a JPEG's EXIF block is at most 64 KB)


def _is_tile_member(info: zipfile.ZipInfo) -> bool:
    base = posixpath.basename(info.filename.replace("\\", "/"))
    return not info.is_dir() and is_tile_name(base) and not base.startswith("._") and "__MACOSX" not in info.filename


def _check_pixels(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], name: str, limits: ZipLimits) -> None:
    """Sum the pixels every tile's header declares, before any tile is yielded (or decoded)."""
    limit = limits.max_total_pixels if limits.max_total_pixels is not None else 4 * get_settings().max_pixels
    pixels = 0
    for info in infos:
        if not _is_tile_member(info):
            continue
        try:
            with zf.open(info) as fh:
                head = fh.read(HEADER_BYTES)
        except Exception:  # noqa: BLE001 - the extraction pass names a broken member
            continue
        pixels += header_pixels(head)
        if pixels > limit:
            raise TooLargeError(
                f"'{name}': its tiles decode to more than {limit:,} pixels in all (reached at '{info.filename}'), over the limit for one archive.",
                "Upload fewer or smaller tiles at a time.", path=name)


def iter_zip_tiles(data: bytes | str | Path, *, name: str = "archive.zip", limits: ZipLimits = ZipLimits(), report: ZipReport | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member_name, raw_bytes)`` for each tile in a zip archive, safely (module docstring)."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise CorruptFileError(f"'{name}' is not a valid zip archive ({exc}).", path=name) from exc
    except OSError as exc:
        raise CorruptFileError(f"'{name}' cannot be read ({exc}).", path=name) from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UnsafeArchiveError(f"'{name}' holds {len(infos):,} entries, more than the limit of {limits.max_members:,}.", path=name)
        declared = 0
        for info in infos:
            if _unsafe_name(info.filename):
                raise UnsafeArchiveError(f"'{name}' contains a path that points outside the archive ('{info.filename}').", path=name)
            declared += info.file_size
            if info.file_size > limits.max_member_bytes:
                raise UnsafeArchiveError(f"'{name}': member '{info.filename}' expands to {info.file_size:,} bytes, over the limit.", path=name)
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio and info.file_size > 1024 * 1024:
                raise UnsafeArchiveError(f"'{name}': member '{info.filename}' is compressed {info.file_size / info.compress_size:.0f}:1 — a zip bomb?", path=name)
        if declared > limits.max_total_bytes:
            raise UnsafeArchiveError(f"'{name}' expands to {declared:,} bytes, over the limit of {limits.max_total_bytes:,}.", path=name)
        total = 0
        _check_pixels(zf, infos, name, limits)
        for info in infos:
            base = posixpath.basename(info.filename.replace("\\", "/"))
            if info.is_dir():
                continue
            if not is_tile_name(base) or base.startswith("._") or "__MACOSX" in info.filename:
                if report is not None:
                    report.skipped.append(info.filename)
                continue
            try:
                with zf.open(info) as fh:
                    raw = fh.read(limits.max_member_bytes + 1)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise CorruptFileError(f"'{name}': member '{info.filename}' cannot be extracted ({exc}).", path=name) from exc
            except RuntimeError as exc:  # encrypted members
                raise UnsafeArchiveError(f"'{name}': member '{info.filename}' is encrypted.", "Zip the tiles without a password.", path=name) from exc
            total += len(raw)
            if len(raw) > limits.max_member_bytes or total > limits.max_total_bytes:
                raise UnsafeArchiveError(f"'{name}' expands beyond its declared size — refused as a zip bomb.", path=name)
            yield info.filename, raw
