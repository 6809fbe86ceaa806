"""Patient identifiers stay out of logs and, on request, out of exports.

File and slide names often carry patient names or accession numbers. Two helpers:

* :func:`loggable_name` — what a log line may say about a name: the name itself only when the admin
  set ``HISTODASH_LOG_NAMES=1``, else ``<name hidden:1a2b3c4d>`` (a keyed hash, so two lines about the
  same file can be matched without revealing it).
* :func:`pseudonym` — a stable stand-in for a name in an anonymised export, ``tile-1a2b3c4d``: an
  HMAC-SHA256 of the name under a per-installation secret, so it is the same every time on this
  installation, differs between installations and cannot be reversed by hashing guessed names.

The secret is 32 random bytes in ``<home>/secret/pseudonym.key`` (mode 0600), created on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from engine.config import get_settings

SECRET_FILE = Path("secret") / "pseudonym.key"


def installation_secret(home: Path | None = None, *, name: str = SECRET_FILE.name) -> bytes:
    """This installation's secret key ``<home>/secret/<name>`` (created atomically on first use; never logged
    or exported). One file per purpose: ``pseudonym.key`` for pseudonyms, ``session.key`` for browser cookies."""
    path = (home or get_settings().home) / SECRET_FILE.parent / name
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def _digest(name: str, home: Path | None = None) -> str:
    return hmac.new(installation_secret(home), str(name).encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def pseudonym(name: str, prefix: str = "tile", *, home: Path | None = None) -> str:
    """``<prefix>-<8 hex>``: stable on this installation, reveals nothing of ``name``."""
    return f"{prefix}-{_digest(name, home)[:8]}"


def loggable_name(name) -> str:
    """``name`` when ``settings.log_names`` is on, else ``<name hidden:<8 hex>>`` (keyed, stable)."""
    if name is None:
        return "<none>"
    text = str(name)
    if get_settings().log_names:
        return text
    try:
        return f"<name hidden:{_digest(text)[:8]}>"
    except OSError:  # no writable home: still never the name
        return "<name hidden>"


# ----------------------------------------------------------------------------- exports and displays

_ABS_PATH = re.compile(r"""(?<![\w.~-])(?:[A-Za-z]:)?[/\\](?:[^\s'"/\\,;()\[\]{}]+[/\\])+[^\s'"/\\,;()\[\]{}]*""")


def strip_server_paths(value, known: tuple = ()):
    """``value`` (str, or lists/dicts of them) with every absolute server path replaced by its last part.

    For what pages show and export (job settings, model cards, log tails, library error messages):
    ``/srv/histodash/.histodash/sessions/3f…/training/lung.zip`` becomes ``lung.zip``. Relative names are
    left alone. ``known`` paths (e.g. the file an error is about) are replaced first, exactly, as given
    and resolved, with their folders — so a path with spaces, which the generic pattern cannot see
    whole, leaves nothing of its folders either.
    """
    if isinstance(value, str):
        for p in known:
            path = Path(p)
            for text in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
                value = value.replace(text, path.name)
            for folder in sorted({str(path.parent), str(path.resolve().parent)}, key=len, reverse=True):
                if folder not in ("", ".", os.sep):
                    value = value.replace(folder + os.sep, "")
        return _ABS_PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1] or m.group(0), value)
    if isinstance(value, dict):
        return {k: strip_server_paths(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(strip_server_paths(v, known) for v in value)
    return value


def scrub(text: str, names: dict[str, str]) -> str:
    """``text`` with every real name (longest first) replaced by its pseudonym."""
    for real in sorted(names, key=len, reverse=True):
        if real:
            text = text.replace(real, names[real])
    return text


def anonymise_frame(frame, column: str = "path", prefix: str = "tile", *, home: Path | None = None):
    """A copy of ``frame`` whose ``column`` holds pseudonyms; the real names are also scrubbed from every
    other text column (error messages name their file). Pseudonyms are stable (:func:`pseudonym`)."""
    out = frame.copy()
    names = {str(n): pseudonym(str(n), prefix, home=home) for n in out[column].dropna().unique()}
    for real in list(names):  # error messages may name only the last part of a zip member
        base = re.split(r"[/\\]", real)[-1]
        if base and base != real and len(base) >= 3:
            names.setdefault(base, names[real])
    out[column] = out[column].map(lambda n: names.get(str(n), n) if n is not None else n)
    for col in out.columns:
        if col != column and out[col].dtype == object:
            out[col] = out[col].map(lambda v: scrub(v, names) if isinstance(v, str) else v)
    return out
