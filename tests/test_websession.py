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
