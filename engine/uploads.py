"""Slides users bring, and the ids pages pass around for slides.

>>> from engine.uploads import save_upload, resolve_slide_id
>>> path = save_upload(upload, upload.name, session_id)        # checked: it opens as a slide
>>> resolve_slide_id(f"up:{path.name}", session=session_id)    # the same path, from a query parameter

:func:`save_upload` streams a browser upload into the session's slide folder and keeps it only when it
opens as a slide; :func:`slide_id_for` and :func:`resolve_slide_id` turn paths into the ids pages pass
around (``lib:<relative path>`` in the slide library, ``up:<file name>`` among this session's uploads)
and back, refusing anything that leaves its folder. :func:`safe_filename` is the one file-name cleaner
(the Upload page's tile names use it too).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from engine.config import get_settings
from engine.errors import InvalidInputError
from engine.slides import SlideLibrary, open_slide


def safe_filename(name: str, *, fallback: str = "file", max_chars: int = 150) -> str:
    """The last part of a user's file name, reduced to ``A-Za-z0-9._-`` (runs of others → ``_``), without
    leading dots, at most ``max_chars`` long; ``fallback`` when nothing is left. Never a path."""
    base = str(name).replace("\\", "/").split("/")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")[:max_chars]
    return base or fallback


def uploads_dir(session: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session or ""):
        raise InvalidInputError("Invalid session id.")
    return get_settings().work_dir / session / "slides"


def save_upload(fileobj, name: str, session: str, *, chunk: int = 8 << 20) -> Path:
    """Copy an uploaded file object to the session's slide folder in chunks and check it opens.

    Written to a temporary name first and renamed only when it opens as a slide, so a broken upload
    leaves nothing behind (the error says why). Returns the final path.
    """
    folder = uploads_dir(session)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / safe_filename(name, fallback="slide")
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
    tmp = staging / final.name  # same name and suffix: format detection and messages see the real name
    try:
        if hasattr(fileobj, "seek"):
            fileobj.seek(0)
        with open(tmp, "wb") as out:
            shutil.copyfileobj(fileobj, out, chunk)
        with open_slide(tmp):
            pass
        os.replace(tmp, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def slide_id_for(path: Path, *, session: str | None = None) -> str:
    """The id pages pass around (query params) for a library or uploaded slide path."""
    path = Path(path).resolve()
    library = SlideLibrary.configured()
    if library is not None:
        root = library._root()
        if root in path.parents:
            return "lib:" + path.relative_to(root).as_posix()
    if session is not None and path.parent == uploads_dir(session).resolve():
        return "up:" + path.name
    raise InvalidInputError(f"'{path.name}' is neither in the slide library nor among this session's uploads.")


def resolve_slide_id(slide_id: str, *, session: str | None = None) -> Path:
    """``lib:<relative path>`` → path in the library; ``up:<file name>`` → this session's upload.

    Anything else, or a path leaving its folder, raises :class:`InvalidInputError` (safe to call
    with untrusted query parameters).
    """
    kind, _, rest = (slide_id or "").partition(":")
    if kind == "lib":
        library = SlideLibrary.configured()
        if library is None:
            raise InvalidInputError("No slide library is configured (HISTODASH_SLIDES_DIR).")
        path = library.resolve(rest)
        if not path.is_file():
            raise InvalidInputError(f"'{rest}' is not a slide file.")
        return path
    if kind == "up":
        if session is None:
            raise InvalidInputError("Uploaded slides are only visible in the browser session that uploaded them.")
        if rest != safe_filename(rest, fallback="slide"):
            raise InvalidInputError(f"'{rest}' is not a valid upload name.")
        path = uploads_dir(session) / rest
        if not path.is_file():
            raise InvalidInputError(f"No uploaded slide '{rest}' in this session.")
        return path
    raise InvalidInputError(f"'{slide_id}' is not a slide id (expected 'lib:…' or 'up:…').")
