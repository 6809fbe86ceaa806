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
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie

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


class BrowserSessionMiddleware:
    """ASGI middleware: every HTTP response to a browser without a valid session cookie sets a new one.

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
        minted = None
        if session_id is None and scope["type"] == "http":
            session_id = minted = new_session_id()
            cookie = f"{COOKIE}={sign(minted)}".encode("latin-1")
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"cookie"]
            old = _cookie_header(scope.get("headers") or [])
            headers.append((b"cookie", cookie + (b"; " + old.encode("latin-1") if old else b"")))
            scope = dict(scope, headers=headers)
        scope = dict(scope, state={**(scope.get("state") or {}), "histodash_session": session_id})
        if minted is None:
            await self.app(scope, receive, send)
            return
        set_cookie = set_cookie_header(minted, secure=_is_https(scope))

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
