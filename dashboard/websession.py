"""The browser session: a signed, HttpOnly cookie that names this browser's workspace.

Streamlit's own session lasts as long as one websocket (a refresh or a second tab starts a new one).
HistoDash binds a user's work to the *browser* instead: :class:`BrowserSessionMiddleware` (listed in
``dashboard/server.py``'s ``MIDDLEWARE``) gives every browser a cookie ``histodash_session`` whose value is
``<id>.<signature>``: a 128-bit random id (hex) and its HMAC-SHA256 under a per-installation secret
(``$HISTODASH_HOME/secret/session.key``), so a made-up or altered value is ignored and replaced.

* Pages get the id with :func:`browser_session_id` (from ``st.context.cookies``); ``None`` when the
  script runs without an HTTP request behind it (``AppTest``), and callers then fall back to an id kept
  in ``st.session_state``.
* HistoDash's own HTTP routes get it with :func:`request_session_id` (from an ASGI scope).

The cookie is renewed (same id, a fresh ``Max-Age``) on every page load, so it lasts as long as the
workspace it names: until ``HISTODASH_SESSION_MAX_AGE_H`` without a visit.

**Sign-in** (with a login configured) is held on the server for the cookie's session, in
``$HISTODASH_HOME/signins/<id>.json`` with an expiry (``HISTODASH_SESSION_MAX_AGE_H`` after signing in):
:func:`sign_in`, :func:`is_signed_in` (also for HTTP routes: the tile server's 403 rule) and
:func:`sign_out`. Signing out *retires* the id: a browser that still sends it is given a new one on
its next page load, so the next person at that browser starts with a new, empty workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from http.cookies import SimpleCookie
from pathlib import Path

from engine.config import get_settings

COOKIE = "histodash_session"
SECRET_NAME = "session.key"
ID_BYTES = 16


def _secret() -> bytes:
    from engine.privacy import installation_secret

    return installation_secret(name=SECRET_NAME)


def sign(session_id: str) -> str:
    """The cookie value for ``session_id``."""
    mac = hmac.new(_secret(), session_id.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{session_id}.{mac}"


def verify(value: str | None) -> str | None:
    """The session id of a cookie value, or None when it is missing, malformed or not signed by this server."""
    if not value or not isinstance(value, str) or len(value) > 200 or "." not in value:
        return None
    session_id, _, mac = value.partition(".")
    if len(session_id) != 2 * ID_BYTES or not all(c in "0123456789abcdef" for c in session_id):
        return None
    expected = hmac.new(_secret(), session_id.encode("ascii"), hashlib.sha256).hexdigest()
    return session_id if hmac.compare_digest(mac, expected) else None


def new_session_id() -> str:
    return secrets.token_hex(ID_BYTES)


# --------------------------------------------------------------------------------------- sign-in store
SIGNINS_DIR = "signins"
_ID_RE = re.compile(r"[0-9a-f]{32}")


def _signin_dir() -> Path:
    return get_settings().home / SIGNINS_DIR


def _signin_path(session_id: str, suffix: str = ".json") -> Path | None:
    if not isinstance(session_id, str) or not _ID_RE.fullmatch(session_id):
        return None
    return _signin_dir() / f"{session_id}{suffix}"


def _oidc_configured() -> bool:
    try:
        import streamlit as st

        return bool(st.secrets.get("auth"))
    except Exception:  # noqa: BLE001 - no secrets file, a malformed one…
        return False


def login_configured() -> bool:
    """True when this server asks for a sign-in (a password hash, or OIDC in ``.streamlit/secrets.toml``)."""
    return bool(get_settings().password_hash) or _oidc_configured()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def sign_in(session_id: str, *, how: str, now: float | None = None) -> None:
    """Hold a sign-in for ``session_id`` until the session age limit (``HISTODASH_SESSION_MAX_AGE_H``)."""
    path = _signin_path(session_id)
    if path is None:
        raise ValueError("not a session id")
    now = time.time() if now is None else now
    _write_atomic(path, json.dumps({"how": how, "since": now, "expires": now + float(get_settings().session_max_age_s)}))


def signed_in_record(session_id: str | None, *, now: float | None = None) -> dict | None:
    """The unexpired sign-in record of ``session_id``, or None."""
    path = _signin_path(session_id) if session_id else None
    if path is None:
        return None
    try:
        record = json.loads(path.read_text())
        expires = float(record["expires"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (time.time() if now is None else now) >= expires:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return record


def is_signed_in(session_id: str | None) -> bool:
    """Whether the browser session ``session_id`` may use the app: True when no login is configured;
    otherwise only with an unexpired sign-in held for it (never for None or a malformed id)."""
    if not login_configured():
        return True
    return signed_in_record(session_id) is not None


def sign_out(session_id: str) -> None:
    """End the sign-in of ``session_id`` and retire the id (its cookie is replaced on the next page load)."""
    path = _signin_path(session_id)
    if path is None:
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _write_atomic(_signin_path(session_id, ".retired"), json.dumps({"since": time.time()}))


def is_retired(session_id: str) -> bool:
    path = _signin_path(session_id, ".retired")
    return path is not None and path.exists()


def sweep_signins(*, now: float | None = None) -> int:
    """Delete expired sign-ins and retired ids older than the session age limit; returns how many."""
    now = time.time() if now is None else now
    max_age = float(get_settings().session_max_age_s)
    removed = 0
    try:
        entries = list(os.scandir(_signin_dir()))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.endswith(".json"):
            if signed_in_record(entry.name[:-5], now=now) is None:  # expired (removed) or unreadable
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                removed += 1
        elif entry.name.endswith(".retired"):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > max_age:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _cookie_header(headers) -> str:
    return "; ".join(v.decode("latin-1") for k, v in headers if k == b"cookie")


def session_from_headers(headers) -> str | None:
    """The verified session id in raw ASGI headers (``[(b"cookie", b"…"), …]``), or None."""
    raw = _cookie_header(headers)
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is no session
        return None
    morsel = jar.get(COOKIE)
    return verify(morsel.value) if morsel is not None else None


def request_session_id(scope: dict) -> str | None:
    """The browser session of an ASGI request (HTTP or websocket), or None."""
    state = scope.get("state") or {}
    return state.get("histodash_session") or session_from_headers(scope.get("headers") or [])


def set_cookie_header(session_id: str, *, secure: bool = False) -> bytes:
    max_age = int(get_settings().session_max_age_s)
    parts = [f"{COOKIE}={sign(session_id)}", "Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def _is_https(scope: dict) -> bool:
    if scope.get("scheme") in ("https", "wss"):
        return True
    return any(k == b"x-forwarded-proto" and v.strip().lower() == b"https" for k, v in scope.get("headers") or [])


_NOT_PAGES = ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/")


def _is_page_load(scope: dict) -> bool:
    """A GET of an app page (HTML), not of an asset or an API endpoint."""
    if scope.get("method") != "GET":
        return False
    path = scope.get("path") or "/"
    return not any(part in path for part in _NOT_PAGES) and "." not in path.rsplit("/", 1)[-1]


class BrowserSessionMiddleware:
    """ASGI middleware: every HTTP response to a browser without a valid session cookie sets a new one
    (a retired id counts as none), and every page load renews the cookie's ``Max-Age``.

    The id is also put into the request itself (its Cookie header and ``scope["state"]``), so the very
    request that mints it is already served as that session.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        session_id = session_from_headers(scope.get("headers") or [])
        if session_id is not None and is_retired(session_id):  # signed out: this browser gets a new id
            session_id = None
        minted = None
        if session_id is None and scope["type"] == "http":
            session_id = minted = new_session_id()
            cookie = f"{COOKIE}={sign(minted)}".encode("latin-1")
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"cookie"]
            old = _cookie_header(scope.get("headers") or [])
            headers.append((b"cookie", cookie + (b"; " + old.encode("latin-1") if old else b"")))
            scope = dict(scope, headers=headers)
        scope = dict(scope, state={**(scope.get("state") or {}), "histodash_session": session_id})
        if minted is None and not (scope["type"] == "http" and _is_page_load(scope)):
            await self.app(scope, receive, send)
            return
        set_cookie = set_cookie_header(minted or session_id, secure=_is_https(scope))  # new, or renewed Max-Age

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", set_cookie)])
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def browser_session_id() -> str | None:
    """This browser's session id inside a page run (None without a valid cookie, e.g. under AppTest)."""
    import streamlit as st

    try:
        value = st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 - no request context (bare mode, AppTest)
        return None
    return verify(value)
