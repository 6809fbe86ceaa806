"""Nothing before sign-in, and bounded uploads: ASGI middleware in front of Streamlit (``server.py``'s ``MIDDLEWARE``).

With a login configured (``HISTODASH_PASSWORD_HASH`` or OIDC), a client whose browser session has not
signed in (``dashboard.websession.is_signed_in``) gets:

* ``403`` from Streamlit's upload endpoint (``/_stcore/upload_file/…``), media files (``/media/…``) and
  components (``/component/…``, ``/_stcore/bidi-components/…``);
* no websocket at all without a valid session cookie (a browser always has one: the page load that
  precedes the websocket mints it). With a cookie it gets the websocket — the sign-in form is drawn
  through it — but no message larger than :data:`PRE_SIGN_IN_MESSAGE_BYTES` (the form sends a few
  hundred bytes), and at most :data:`PRE_SIGN_IN_SOCKETS` such sockets per session;
* ``404`` from ``/_stcore/metrics`` (closed for everyone while a login is configured).

Health checks, the static front end, Streamlit's own OIDC routes and the page HTML stay open, so the
sign-in form renders.

Uploads, login or not: one file (one request body) at most :func:`max_file_bytes` (Streamlit's
``server.maxUploadSize``, for whole-slide images; tile uploaders ask for ``HISTODASH_MAX_UPLOAD_MB``
in the browser and the tile reader refuses more), and one browser session holds at most
:func:`max_session_bytes` of uploads in server memory at once, over all its tabs (files of closed
sessions, and files the page let go once stored, no longer count).
"""

from __future__ import annotations

import logging
import threading

from dashboard import websession

log = logging.getLogger("histodash.gate")

PRE_SIGN_IN_MESSAGE_BYTES = 64 * 1024
PRE_SIGN_IN_SOCKETS = 8
TILE_FILES_PER_SESSION = 5
CLOSED_PATHS = ("_stcore/metrics",)
SIGNED_IN_PREFIXES = ("_stcore/upload_file/", "media/", "component/", "_stcore/bidi-components/")
UPLOAD_PREFIX = "_stcore/upload_file/"
STREAM_PATH = "_stcore/stream"


def _option(name: str, default):
    try:
        from streamlit import config

        value = config.get_option(name)
        return default if value is None else value
    except Exception:  # noqa: BLE001 - outside a Streamlit server (unit tests)
        return default


def max_file_bytes() -> int:
    """Largest upload request body: Streamlit's ``server.maxUploadSize`` (MB)."""
    return int(_option("server.maxUploadSize", 200)) * 1024 * 1024


def max_session_bytes() -> int:
    """Uploads one browser session may hold in server memory at once: one largest file, or five of the
    largest tile files (``HISTODASH_MAX_UPLOAD_MB``), whichever is more."""
    from engine.config import get_settings

    return max(max_file_bytes(), TILE_FILES_PER_SESSION * int(get_settings().max_upload_bytes))


def _relative(path: str) -> str:
    base = str(_option("server.baseUrlPath", "") or "").strip("/")
    path = path.lstrip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):].lstrip("/")
    return path


def _still_held(st_session: str, file_id: str) -> bool:
    """Whether Streamlit still holds this uploaded file (its session is open and the page did not let it go)."""
    try:
        from streamlit.runtime import Runtime

        if not Runtime.exists():
            return True
        runtime = Runtime.instance()
        if not runtime.is_active_session(st_session):
            return False
        storage = getattr(runtime.uploaded_file_mgr, "file_storage", None)  # MemoryUploadedFileManager (internal)
        return True if storage is None else file_id in storage.get(st_session, {})
    except Exception:  # noqa: BLE001 - internal API moved: count it as held (the stricter choice)
        return True


class UploadLedger:
    """Bytes of uploads each browser session holds: ``{browser id: {(Streamlit session, file id): bytes}}``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, dict[tuple[str, str], int]] = {}

    def held(self, browser: str) -> int:
        with self._lock:
            files = self._held.get(browser, {})
            for key in [k for k in files if not _still_held(*k)]:
                del files[key]
            return sum(files.values())

    def add(self, browser: str, key: tuple[str, str], size: int) -> None:
        with self._lock:
            self._held.setdefault(browser, {})[key] = size

    def remove(self, browser: str, key: tuple[str, str]) -> None:
        with self._lock:
            self._held.get(browser, {}).pop(key, None)
            if browser in self._held and not self._held[browser]:
                del self._held[browser]

    def reset(self) -> None:
        with self._lock:
            self._held.clear()


LEDGER = UploadLedger()


async def _respond(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class SignInGateMiddleware:
    """The rules of the module docstring. Must come after ``BrowserSessionMiddleware`` (it reads the id it sets)."""

    def __init__(self, app):
        self.app = app
        self._sockets: dict[str, int] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _relative(scope.get("path") or "/")
        browser = websession.request_session_id(scope)
        login = websession.login_configured()
        if scope["type"] == "websocket":
            if login and path == STREAM_PATH:
                await self._websocket(scope, receive, send, browser)
                return
            await self.app(scope, receive, send)
            return
        if login and path in CLOSED_PATHS:
            await _respond(send, 404, "Not found")
            return
        if login and path.startswith(SIGNED_IN_PREFIXES) and not websession.is_signed_in(browser):
            await _respond(send, 403, "Sign in first.")
            return
        if path.startswith(UPLOAD_PREFIX):
            await self._upload(scope, receive, send, browser, path)
            return
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------------------------- uploads
    async def _upload(self, scope, receive, send, browser: str | None, path: str):
        parts = path[len(UPLOAD_PREFIX):].split("/")
        method = scope.get("method")
        if browser is None or len(parts) != 2 or method not in ("PUT", "DELETE"):
            await self.app(scope, receive, send)  # Streamlit answers (OPTIONS, malformed paths)
            return
        key = (parts[0], parts[1])
        if method == "DELETE":
            LEDGER.remove(browser, key)
            await self.app(scope, receive, send)
            return
        file_cap = max_file_bytes() + 1024 * 1024  # multipart framing
        room = max_session_bytes() - LEDGER.held(browser)
        limit = min(file_cap, room)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > limit:
                await _respond(send, 413, self._too_large(declared > file_cap))
                return
        received = 0
        over = False
        status = {}

        async def counting_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message):
            if over:
                return  # our own 413 goes out instead
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except Exception:
            if not over:
                raise
        if over:
            log.warning("upload refused: over the per-file or per-session limit")
            if "code" not in status:
                await _respond(send, 413, self._too_large(received > file_cap))
            return
        if status.get("code", 500) < 300:
            LEDGER.add(browser, key, received)

    @staticmethod
    def _too_large(file_limit: bool) -> str:
        if file_limit:
            return f"File too large: at most {max_file_bytes() >> 20} MB per file."
        return f"Too much uploaded: this session already holds {max_session_bytes() >> 20} MB of uploads. Remove some first."

    # ------------------------------------------------------------------------------------- websocket
    async def _websocket(self, scope, receive, send, browser: str | None):
        if browser is None:  # no valid cookie: not a browser that loaded the page
            await send({"type": "websocket.close", "code": 1008})
            return
        if websession.is_signed_in(browser):
            await self.app(scope, receive, send)
            return
        with self._lock:
            if self._sockets.get(browser, 0) >= PRE_SIGN_IN_SOCKETS:
                refused = True
            else:
                refused = False
                self._sockets[browser] = self._sockets.get(browser, 0) + 1
        if refused:
            await send({"type": "websocket.close", "code": 1008})
            return
        closed = False

        async def bounded_receive():
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and not closed:
                size = len(message.get("bytes") or b"") + len(message.get("text") or "")
                if size > PRE_SIGN_IN_MESSAGE_BYTES and not websession.is_signed_in(browser):
                    closed = True
                    log.warning("websocket closed: a %d-byte message before sign-in", size)
                    await send({"type": "websocket.close", "code": 1009})
                    return {"type": "websocket.disconnect", "code": 1009}
            return message

        async def bounded_send(message):
            if not closed:
                await send(message)

        try:
            await self.app(scope, bounded_receive, bounded_send)
        finally:
            with self._lock:
                left = self._sockets.get(browser, 1) - 1
                if left > 0:
                    self._sockets[browser] = left
                else:
                    self._sockets.pop(browser, None)
