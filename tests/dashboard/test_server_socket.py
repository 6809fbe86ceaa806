"""The web server `make run` starts answers without the ~40 ms Nagle / delayed-ACK stall.

Streamlit 1.67 binds its listening socket itself with ``socket.socket(family)`` (protocol 0), and asyncio's
own event loop sets ``TCP_NODELAY`` only on sockets whose protocol is ``IPPROTO_TCP``: so on the default loop
every accepted connection keeps Nagle on, and a response written in two pieces (headers, then body) waits for
the client's delayed ACK (~40 ms on Linux). uvloop (Streamlit's ``performance`` extra, pinned in
requirements.txt; uvicorn picks it when it is importable) sets ``TCP_NODELAY`` on every TCP connection it
accepts. This test starts a tiny ``st.App`` exactly the way ``make run`` starts ``dashboard/server.py`` and asks
the server process itself whether the connection it is answering has ``TCP_NODELAY`` on: no timing involved.
"""

from __future__ import annotations

import sys
import textwrap

import httpx
import pytest

from tests.browser import streamlit_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's sockets from /proc/self/fd (Linux)")

APP = '''
import os
import socket

import streamlit as st
from starlette.responses import JSONResponse
from starlette.routing import Route


def _sockets():
    """(socket, fd) of every TCP socket this process holds, as duplicates (closing one leaves the original open)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            yield sock
        else:
            sock.close()


async def nodelay(request):
    peer = request.scope["client"]
    found = {"connection_nodelay": None, "listening": 0}
    for sock in _sockets():
        with sock:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                found["listening"] += 1
                continue
            try:
                here = sock.getpeername()[:2]
            except OSError:
                continue
            if (here[0], here[1]) == (peer[0], peer[1]):
                found["connection_nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return JSONResponse(found)


app = st.App(os.path.join(os.path.dirname(__file__), "page.py"), routes=[Route("/nodelay", nodelay)])
'''


def test_make_run_server_sets_tcp_nodelay_on_accepted_connections(tmp_path):
    (tmp_path / "page.py").write_text("import streamlit as st\n\nst.write('hello')\n")
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(APP))
    with streamlit_server({}, tmp_path / "streamlit.log", script=script) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/_stcore/health").text == "ok"  # Streamlit's own routes are served by the same app
        got = client.get("/nodelay").json()
    assert got["listening"], f"found no listening socket in the server process: {got}"
    assert got["connection_nodelay"] is not None, f"the server process holds no socket connected to this client: {got}"
    assert got["connection_nodelay"] != 0, (
        "the server answers on a connection with Nagle's algorithm on (TCP_NODELAY 0): every response then waits "
        "~40 ms for the client's delayed ACK. Install requirements.txt (uvloop) into the environment that runs `make run`."
    )
