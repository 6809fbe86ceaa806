"""Issue 15 item 0 with a raw HTTP/websocket client (no browser): nothing before sign-in, bounded uploads, a race-free throttle.

One real server (``dashboard/server.py``) with a password, ``server.maxUploadSize`` = 2 MB and
``HISTODASH_MAX_UPLOAD_MB`` = 1, so a browser session may hold max(2, 5 × 1) = 5 MB of uploads at once.
The tests share the server's one login throttle (all clients are 127.0.0.1): the parallel-attempts
test runs last.
"""

from __future__ import annotations

import threading

import pytest

from dashboard import gate
from tests.browser import streamlit_server
from tests.conftest import write_tiny_model
from tests.rawclient import RawClient, read_run, rerun

PASSWORD = "raw client passphrase"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from engine.auth import hash_password

    root = tmp_path_factory.mktemp("gate")
    write_tiny_model(root / "models" / "tiny-test")
    env = {"HISTODASH_HOME": str(root / "home"), "HISTODASH_MODELS_DIR": str(root / "models"), "HISTODASH_DEFAULT_MODEL": "tiny-test",
           "HISTODASH_PASSWORD_HASH": hash_password(PASSWORD), "HISTODASH_MAX_UPLOAD_MB": "1", "STREAMLIT_SERVER_MAX_UPLOAD_SIZE": "2",
           "HISTODASH_CACHE_DIR": str(root / "cache"), "HISTODASH_WORK_DIR": None, "HISTODASH_JOBS_DIR": None}
    with streamlit_server(env, root / "streamlit.log") as url:
        yield url


def first_run(client: RawClient):
    """Open a websocket and run the script once: (socket context, run)."""
    ctx = client.websocket()
    ws = ctx.__enter__()
    rerun(ws)
    return ctx, ws, read_run(ws)


def sign_in(ws, run, password: str):
    rerun(ws, [(run.widgets["Password"], "string_value", password), (run.widgets["Sign in"], "trigger_value", True)])
    return read_run(ws)


def test_before_sign_in_only_the_form_and_no_endpoint_takes_work(server):
    client = RawClient(server)
    assert client.load_page("/predict").status_code == 200
    assert client.http.get("/_stcore/metrics").status_code == 404
    ctx, ws, run = first_run(client)
    try:
        assert run.session_id and set(run.widgets) == {"Password", "Sign in"}  # the form renders, nothing else
        assert client.upload(run.session_id, b"\x89PNG" + b"x" * 1000).status_code == 403  # a live session, still refused
        for path in ("/media/0123456789abcdef.png", "/component/anything/index.html", "/_stcore/bidi-components/x/y.js"):
            assert client.http.get(path).status_code == 403, path
    finally:
        ctx.__exit__(None, None, None)
    assert client.http.get("/_stcore/health").status_code == 200  # what the form itself needs stays open


def test_a_websocket_without_the_session_cookie_is_refused(server):
    client = RawClient(server)
    client.load_page()
    with pytest.raises(Exception, match="403"):
        with client.websocket(with_cookies=False):
            pass


def test_a_large_message_before_sign_in_closes_the_socket(server):
    client = RawClient(server)
    client.load_page()
    ctx, ws, run = first_run(client)
    try:
        assert run.finished and not run.closed
        ws.send(b"\0" * (gate.PRE_SIGN_IN_MESSAGE_BYTES + 1))
        assert read_run(ws, 20).closed
    finally:
        ctx.__exit__(None, None, None)


def test_at_most_a_few_websockets_per_session_before_sign_in(server):
    client = RawClient(server)
    client.load_page()
    opened = []
    try:
        for _ in range(gate.PRE_SIGN_IN_SOCKETS):
            ctx = client.websocket()
            opened.append((ctx, ctx.__enter__()))
        with pytest.raises(Exception, match="403"):
            with client.websocket():
                pass
    finally:
        for ctx, _ in opened:
            ctx.__exit__(None, None, None)


def _chunked(data: bytes, boundary: str = "histodashboundary"):
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
    yield head
    for i in range(0, len(data), 256 * 1024):
        yield data[i : i + 256 * 1024]
    yield f"\r\n--{boundary}--\r\n".encode()


def test_signed_in_uploads_are_bounded_per_file_and_per_session(server):
    client = RawClient(server)
    client.load_page()
    ctx, ws, run = first_run(client)
    try:
        after = sign_in(ws, run, PASSWORD)
        assert "Password" not in after.widgets, after.texts  # signed in: the app, not the form
        sid = run.session_id
        assert client.upload(sid, b"a" * (MB // 2), file_id="small").status_code == 204
        too_big = client.upload(sid, b"b" * (3 * MB), file_id="big")
        assert too_big.status_code == 413 and "per file" in too_big.text
        # the same without a Content-Length header (chunked): cut off while streaming
        headers = {"X-Xsrftoken": client.xsrf, "Origin": server, "Content-Type": "multipart/form-data; boundary=histodashboundary"}
        chunked = client.http.put(f"/_stcore/upload_file/{sid}/chunked", content=_chunked(b"c" * (3 * MB)), headers=headers)
        assert chunked.status_code == 413
        # per session: 0.5 + 1.9 + 1.9 = 4.3 MB held; one more 1.9 MB file would be 6.2 > 5 MB
        for name in ("f2", "f3"):
            assert client.upload(sid, b"d" * (19 * MB // 10), file_id=name).status_code == 204
        refused = client.upload(sid, b"e" * (19 * MB // 10), file_id="f4")
        assert refused.status_code == 413 and "already holds" in refused.text
        # letting a file go (the widget's delete) makes room again
        assert client.http.delete(f"/_stcore/upload_file/{sid}/f2", headers={"X-Xsrftoken": client.xsrf, "Origin": server}).status_code == 204
        assert client.upload(sid, b"e" * (19 * MB // 10), file_id="f4").status_code == 204
        assert client.http.get("/media/0123456789abcdef.png").status_code == 404  # signed in: an ordinary "no such file"
        # signed in, large websocket messages are accepted
        rerun(ws, [(after.widgets.get("Model", "x"), "string_value", "y" * (gate.PRE_SIGN_IN_MESSAGE_BYTES * 2))])
        assert not read_run(ws, 30).closed
    finally:
        ctx.__exit__(None, None, None)
    # another browser (no sign-in of its own) is still refused
    other = RawClient(server)
    other.load_page()
    assert other.http.get("/media/0123456789abcdef.png").status_code == 403


def test_twelve_parallel_sign_in_attempts_are_throttled(server):
    """The attempt is recorded before the password is checked, so parallel attempts cannot all be checked."""
    answers: list[str] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(12)

    def attempt(i: int) -> None:
        try:
            client = RawClient(server)
            client.load_page()
            with client.websocket() as ws:
                rerun(ws)
                run = read_run(ws)
                ready.wait(120)
                answers.extend(t for t in sign_in(ws, run, f"wrong guess {i}").texts if "Wrong password" in t or "Too many" in t)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    checked = [a for a in answers if a.startswith("Wrong password")]
    throttled = [a for a in answers if a.startswith("Too many")]
    assert len(checked) + len(throttled) == 12, answers
    assert throttled and len(checked) < 12, answers
