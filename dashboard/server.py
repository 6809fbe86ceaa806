"""HistoDash's web server: ``streamlit run dashboard/server.py`` (what ``make run`` starts).

An ``st.App`` (Streamlit's ASGI app, Starlette underneath) around the page frame ``app.py``, plus
HistoDash's own HTTP routes and middleware, served by the same process as the pages:

* :data:`ROUTES` — extra HTTP endpoints (e.g. Deep Zoom tiles for the slide viewer);
* :data:`MIDDLEWARE` — ASGI middleware that sees every request before Streamlit does (e.g. the
  browser-session cookie, the sign-in gate).

Each feature contributes its routes or middleware from its own module; this file only assembles them.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/server.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from dashboard import streamlit_fixes, tileserver  # noqa: E402
from dashboard.gate import SignInGateMiddleware  # noqa: E402
from dashboard.websession import BrowserSessionMiddleware  # noqa: E402

streamlit_fixes.keep_keras_state()  # shared models survive reruns; no 0.2 s clear_session per rerun

ROUTES: list = []
ROUTES += tileserver.routes()  # Deep Zoom tiles of the slide viewer (token-checked)
MIDDLEWARE: list = [
    Middleware(BrowserSessionMiddleware),  # first: the browser-session cookie (the gate reads the id it sets)
    Middleware(SignInGateMiddleware),  # nothing before sign-in; bounded uploads
]

app = st.App(HERE / "app.py", routes=ROUTES, middleware=MIDDLEWARE)
