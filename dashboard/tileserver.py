"""Deep Zoom tiles for the slide viewer, served by the dashboard's own process (``server.py``'s ``ROUTES``).

A page mints a token for the slide it shows (:func:`mint`); the browser then reads

* ``/tiles/<token>.dzi`` — the DZI descriptor;
* ``/tiles/<token>_files/<level>/<col>_<row>.jpeg`` — a tile (254 px + 1 px overlap).

No path or file name is in any URL: a token is 192 random bits (hex) naming a grant kept in this
process's memory — the slide file (and its size and modification time: a replaced file needs a new
token), the browser session that minted it, its scope and its expiry. Each request is checked:

* the token exists, has not expired and its file is unchanged;
* ``scope="upload"``: only the browser session that minted it (``request_session_id``);
* ``scope="library"``: any signed-in visitor;
* when a login is configured, the requesting browser session must be signed in.

Anything else gets **403 and never a tile** (with ``Cache-Control: no-store``). A valid token with a
malformed or out-of-range tile address gets 404. Tiles are served with ``Cache-Control: private,
max-age=…, immutable`` (the token names one version of one file). Label and macro images have no address.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard import websession
from engine.config import get_settings
from engine.deepzoom import FileKey, cached_tile, cached_tile_if_present, deepzoom_for
from engine.errors import HistoDashError

log = logging.getLogger(__name__)

PREFIX = "/tiles"
TOKEN_BYTES = 24
IDLE_TTL_S = 4 * 3600.0  # a grant unused (and not re-minted) this long expires
MAX_AGE_S = 24 * 3600.0  # and none lives longer than this
MAX_GRANTS = 20_000
SCOPES = ("upload", "library")
TILE_CACHE_CONTROL = "private, max-age=86400, immutable"
_PATH = re.compile(r"^(?P<token>[0-9a-f]{48})(?:\.dzi|_files/(?P<level>\d{1,3})/(?P<col>\d{1,9})_(?P<row>\d{1,9})\.jpeg)$")
_TOKEN = re.compile(r"^[0-9a-f]{48}")


@dataclass
class Grant:
    """What a token allows: one slide file, for one browser session (upload) or any signed-in visitor (library)."""

    path: Path
    key: FileKey
    session_id: str
    scope: str
    created: float
    expires: float


_GRANTS: dict[str, Grant] = {}
_BY_OWNER: dict[tuple, str] = {}
_LOCK = threading.Lock()


def mint(slide_path: str | Path, session_id: str, scope: str = "upload") -> str:
    """A token for ``slide_path`` minted by browser session ``session_id`` (the page calls this).

    The same (file version, session, scope) gets the same token back while it is valid, so the browser's
    tile cache keeps working across page runs; minting again extends its life.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    if not session_id:
        raise ValueError("a token needs the browser session that mints it")
    key = FileKey.of(slide_path)
    now = time.time()
    _note_signed_in(session_id, now)
    with _LOCK:
        owner = (key, session_id, scope)
        token = _BY_OWNER.get(owner)
        grant = _GRANTS.get(token) if token else None
        if grant is not None and now < grant.expires and now - grant.created < MAX_AGE_S:
            grant.expires = min(now + IDLE_TTL_S, grant.created + MAX_AGE_S)
            return token
        _sweep(now)
        token = secrets.token_hex(TOKEN_BYTES)
        _GRANTS[token] = Grant(Path(slide_path), key, session_id, scope, now, now + IDLE_TTL_S)
        _BY_OWNER[owner] = token
        return token


def revoke_session(session_id: str) -> int:
    """Drop every token minted by ``session_id`` (sign-out, workspace deleted); returns how many."""
    with _LOCK:
        gone = [t for t, g in _GRANTS.items() if g.session_id == session_id]
        for t in gone:
            _drop(t)
    _SIGNED_IN.pop(session_id, None)
    return len(gone)


def dzi_url(token: str) -> str:
    return f"{PREFIX}/{token}.dzi"


def tiles_url(token: str) -> str:
    """The Deep Zoom tiles folder URL OpenSeadragon appends ``<level>/<col>_<row>.jpeg`` to."""
    return f"{PREFIX}/{token}_files/"


def _drop(token: str) -> None:
    grant = _GRANTS.pop(token, None)
    if grant is not None:
        _BY_OWNER.pop((grant.key, grant.session_id, grant.scope), None)


def _sweep(now: float) -> None:
    for t in [t for t, g in _GRANTS.items() if now >= g.expires]:
        _drop(t)
    while len(_GRANTS) >= MAX_GRANTS:  # oldest first (dicts keep insertion order)
        _drop(next(iter(_GRANTS)))


# --- sign-in -------------------------------------------------------------------------------------
# STAND-IN until branch `appstate` adds server-side sign-in state (`dashboard.websession.is_signed_in`):
# pages only run after `auth.gate()` let the visitor in, so a browser session that minted a token was
# signed in when it did; it counts as signed in for the token lifetime. A sign-out is not seen here until
# then (the page cannot tell this module); `revoke_session` is the hook for it.
_SIGNED_IN: dict[str, float] = {}


def _note_signed_in(session_id: str, now: float) -> None:
    _SIGNED_IN[session_id] = now + IDLE_TTL_S
    if len(_SIGNED_IN) > MAX_GRANTS:
        for sid in [s for s, t in _SIGNED_IN.items() if t <= now][: len(_SIGNED_IN) // 2]:
            _SIGNED_IN.pop(sid, None)


def login_configured() -> bool:
    """True when the dashboard asks visitors to sign in (shared password or OIDC)."""
    if get_settings().password_hash:
        return True
    try:
        import streamlit as st

        return bool(st.secrets.get("auth"))
    except Exception:  # noqa: BLE001 - no secrets file: no OIDC
        return False


def signed_in(session_id: str | None) -> bool:
    """Whether the browser session ``session_id`` may read library tiles (always, without a login)."""
    if not login_configured():
        return True
    if not session_id:
        return False
    check = getattr(websession, "is_signed_in", None)
    if check is not None:  # branch appstate's server-side sign-in state
        return bool(check(session_id))
    expiry = _SIGNED_IN.get(session_id)
    return expiry is not None and time.time() < expiry


# --- requests ------------------------------------------------------------------------------------


def authorise(token: str, session_id: str | None) -> Grant | None:
    """The grant a request may use, or None (→ 403)."""
    now = time.time()
    with _LOCK:
        grant = _GRANTS.get(token)
        if grant is None or now >= grant.expires:
            return None
    if grant.scope == "upload" and (not session_id or not secrets.compare_digest(session_id, grant.session_id)):
        return None
    if not signed_in(session_id):
        return None
    try:
        if FileKey.of(grant.path) != grant.key:  # the file was replaced or deleted since the token was minted
            return None
    except OSError:
        return None
    return grant


def _forbidden() -> Response:
    return Response("Forbidden", status_code=403, media_type="text/plain", headers={"Cache-Control": "no-store"})


def _not_found() -> Response:
    return Response("Not found", status_code=404, media_type="text/plain", headers={"Cache-Control": "no-store"})


async def serve(request: Request) -> Response:
    """``/tiles/{rest}``: the DZI descriptor or a tile. Checks and cache hits run on the event loop; decoding
    a tile that is not cached runs in Starlette's thread pool (OpenSlide releases the GIL)."""
    rest = request.path_params.get("rest", "")
    head = _TOKEN.match(rest)
    grant = authorise(head.group(0), websession.request_session_id(request.scope)) if head else None
    if grant is None:
        return _forbidden()
    m = _PATH.match(rest)
    if m is None:
        return _not_found()
    headers = {"Cache-Control": TILE_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    try:
        if m.group("level") is None:
            dzi = await run_in_threadpool(lambda: deepzoom_for(grant.path, grant.key).dzi())
            return Response(dzi, media_type="application/xml", headers=headers)
        level, col, row = int(m.group("level")), int(m.group("col")), int(m.group("row"))
        data = cached_tile_if_present(grant.key, level, col, row)
        if data is None:
            data = await run_in_threadpool(_decode, grant, level, col, row)
    except HistoDashError:
        return _not_found()
    except Exception:  # noqa: BLE001 - a damaged region: no tile, no traceback to the browser
        log.exception("tile request failed")
        return Response("Tile unavailable", status_code=500, media_type="text/plain", headers={"Cache-Control": "no-store"})
    return Response(data, media_type="image/jpeg", headers=headers)


def _decode(grant: Grant, level: int, col: int, row: int) -> bytes:
    deepzoom_for(grant.path, grant.key).check_address(level, col, row)
    return cached_tile(grant.path, level, col, row, grant.key)


def routes() -> list[Route]:
    """The Starlette routes ``dashboard/server.py`` adds to ``ROUTES``."""
    return [Route(PREFIX + "/{rest:path}", serve, methods=["GET", "HEAD"])]
