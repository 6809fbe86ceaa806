"""The browser-session cookie: signing, verification and the ASGI middleware that mints it."""

from __future__ import annotations

import asyncio

from dashboard import websession as ws


def test_sign_verify_roundtrip_and_forgeries():
    sid = ws.new_session_id()
    assert len(sid) == 32
    value = ws.sign(sid)
    assert ws.verify(value) == sid
    other = ws.new_session_id()
    assert ws.verify(f"{other}.{value.split('.', 1)[1]}") is None  # a signature of another id
    assert ws.verify(sid) is None  # unsigned
    assert ws.verify(value[:-1] + ("0" if value[-1] != "0" else "1")) is None  # altered signature
    for bad in (None, "", ".", "x" * 300, "../../etc.passwd", f"{sid.upper()}.{value.split('.', 1)[1]}"):
        assert ws.verify(bad) is None


def _run(app, scope):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _inner_app(seen):
    async def app(scope, receive, send):
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def test_middleware_mints_a_cookie_once_and_serves_the_request_as_that_session():
    seen = []
    app = ws.BrowserSessionMiddleware(_inner_app(seen))
    sent = _run(app, {"type": "http", "path": "/", "headers": [(b"host", b"x")]})
    cookies = [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    assert len(cookies) == 1
    text = cookies[0].decode()
    assert "HttpOnly" in text and "SameSite=Lax" in text and "Path=/" in text and "Secure" not in text
    value = text.split(";", 1)[0].split("=", 1)[1]
    sid = ws.verify(value)
    assert sid is not None
    assert ws.request_session_id(seen[0]) == sid  # the minting request already carries it
    # a second request with the cookie gets no new one and is the same session
    seen.clear()
    sent = _run(app, {"type": "http", "path": "/x", "headers": [(b"cookie", f"a=b; {ws.COOKIE}={value}".encode())]})
    assert not [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    assert ws.request_session_id(seen[0]) == sid


def test_middleware_replaces_a_forged_cookie_and_marks_https():
    seen = []
    app = ws.BrowserSessionMiddleware(_inner_app(seen))
    forged = f"{'a' * 32}.{'0' * 64}"
    headers = [(b"cookie", f"{ws.COOKIE}={forged}".encode()), (b"x-forwarded-proto", b"https")]
    sent = _run(app, {"type": "http", "path": "/", "headers": headers})
    cookie = next(v for k, v in sent[0]["headers"] if k == b"set-cookie").decode()
    assert "Secure" in cookie
    sid = ws.request_session_id(seen[0])
    assert sid is not None and sid != "a" * 32


def test_websocket_without_cookie_is_no_session():
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope)

    asyncio.run(ws.BrowserSessionMiddleware(inner)({"type": "websocket", "path": "/_stcore/stream", "headers": []}, None, None))
    assert ws.request_session_id(seen[0]) is None


def test_page_loads_renew_the_cookie_assets_do_not():
    seen = []
    app = ws.BrowserSessionMiddleware(_inner_app(seen))
    sid = ws.new_session_id()
    cookie = (b"cookie", f"{ws.COOKIE}={ws.sign(sid)}".encode())
    renewed = _run(app, {"type": "http", "method": "GET", "path": "/predict", "headers": [cookie]})
    [value] = [v.decode() for k, v in renewed[0]["headers"] if k == b"set-cookie"]
    assert value.startswith(f"{ws.COOKIE}={ws.sign(sid)};") and "Max-Age=" in value  # the same id, a fresh Max-Age
    for path in ("/_stcore/health", "/static/js/main.js", "/media/abc.png", "/favicon.png"):
        sent = _run(app, {"type": "http", "method": "GET", "path": path, "headers": [cookie]})
        assert not [v for k, v in sent[0]["headers"] if k == b"set-cookie"], path


def test_sign_in_store_expiry_sign_out_and_retired_ids(monkeypatch):
    monkeypatch.setenv("HISTODASH_PASSWORD_HASH", "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "=")
    sid, other = ws.new_session_id(), ws.new_session_id()
    assert not ws.is_signed_in(sid) and not ws.is_signed_in(None) and not ws.is_signed_in("../../etc")
    ws.sign_in(sid, how="password", now=1000.0)
    assert ws.signed_in_record(sid, now=1001.0)["how"] == "password"
    assert not ws.is_signed_in(sid)  # signed in at t = 1000 s: by the real clock, expired long ago
    ws.sign_in(sid, how="password")
    assert ws.is_signed_in(sid) and not ws.is_signed_in(other)
    max_age = 24 * 3600.0
    import time

    assert ws.signed_in_record(sid, now=time.time() + max_age + 1) is None  # expired (and removed)
    assert not ws.is_signed_in(sid)
    ws.sign_in(sid, how="password")
    ws.sign_out(sid)
    assert not ws.is_signed_in(sid) and ws.is_retired(sid) and not ws.is_retired(other)
    # a browser that still sends the retired id gets a new one on its next request
    seen = []
    app = ws.BrowserSessionMiddleware(_inner_app(seen))
    sent = _run(app, {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", f"{ws.COOKIE}={ws.sign(sid)}".encode())]})
    new = ws.request_session_id(seen[0])
    assert new is not None and new != sid
    assert any(k == b"set-cookie" and ws.sign(new).encode() in v for k, v in sent[0]["headers"])


def test_without_a_login_everyone_counts_as_signed_in(monkeypatch):
    monkeypatch.delenv("HISTODASH_PASSWORD_HASH", raising=False)
    assert ws.login_configured() is False
    assert ws.is_signed_in(ws.new_session_id()) and ws.is_signed_in(None)
