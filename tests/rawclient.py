"""A raw HTTP + websocket client of a running Streamlit server (no browser): what a hostile client can send.

It speaks Streamlit's own protocol (protobuf ``BackMsg`` / ``ForwardMsg`` over ``/_stcore/stream``) with
``httpx`` and ``websockets``, so tests can check what the server accepts from a client that never ran the
front end: uploads, media, websocket messages, form submissions.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import httpx
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect


@dataclass
class Run:
    """What one script run sent: the Streamlit session id, widgets by label, texts of alerts and markdown."""

    session_id: str | None = None
    widgets: dict[str, str] = field(default_factory=dict)  # label -> widget id
    texts: list[str] = field(default_factory=list)
    finished: bool = False
    closed: bool = False


class RawClient:
    """One "browser": an httpx cookie jar, and websockets that carry its cookies."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def load_page(self, path: str = "/") -> httpx.Response:
        """What a browser does first: GET the page (mints the session cookie) and the health check (XSRF cookie)."""
        response = self.http.get(path)
        self.http.get("/_stcore/health")
        return response

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    @property
    def xsrf(self) -> str | None:
        return self.http.cookies.get("_streamlit_xsrf")

    @contextlib.contextmanager
    def websocket(self, *, with_cookies: bool = True):
        headers = {"Origin": self.url}
        if with_cookies and self.cookie_header:
            headers["Cookie"] = self.cookie_header
        protocols = ["streamlit", self.xsrf] if self.xsrf else ["streamlit"]
        with connect(f"{self.url.replace('http', 'ws', 1)}/_stcore/stream", additional_headers=headers,
                     subprotocols=protocols, max_size=None, open_timeout=30) as ws:
            yield ws

    def upload(self, st_session: str, data: bytes, *, name: str = "tile.png", file_id: str = "f1") -> httpx.Response:
        headers = {"X-Xsrftoken": self.xsrf or "", "Origin": self.url}
        return self.http.put(f"/_stcore/upload_file/{st_session}/{file_id}", files={"file": (name, data, "image/png")}, headers=headers)


def rerun(ws, widgets: list[tuple[str, str, object]] = (), *, page_hash: str = "") -> None:
    """Ask for a script run with these widget values: ``(widget id, "string_value" | "trigger_value" | …, value)``."""
    msg = BackMsg()
    msg.rerun_script.query_string = ""
    msg.rerun_script.page_script_hash = page_hash
    for wid, kind, value in widgets:
        state = msg.rerun_script.widget_states.widgets.add()
        state.id = wid
        setattr(state, kind, value)
    ws.send(msg.SerializeToString())


def read_run(ws, timeout_s: float = 60.0) -> Run:
    """Read ForwardMsgs until the script run finishes (or the socket closes); a run cut short by ``st.rerun()``
    is followed into the next one."""
    run = Run()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        except Exception:  # noqa: BLE001 - ConnectionClosed*: the server ended it
            run.closed = True
            break
        if isinstance(data, str):
            continue
        msg = ForwardMsg()
        msg.ParseFromString(data)
        kind = msg.WhichOneof("type")
        if kind == "new_session" and msg.new_session.HasField("initialize"):
            run.session_id = msg.new_session.initialize.session_id
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            etype = element.WhichOneof("type")
            inner = getattr(element, etype) if etype else None
            if inner is not None and hasattr(inner, "id") and getattr(inner, "label", None):
                run.widgets[inner.label] = inner.id
            for attr in ("body",):
                if inner is not None and hasattr(inner, attr) and isinstance(getattr(inner, attr), str):
                    run.texts.append(getattr(inner, attr))
        elif kind == "script_finished":
            if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:  # st.rerun(): the next run follows
                run.widgets.clear()
                run.texts.clear()
                continue
            run.finished = True
            break
    return run
