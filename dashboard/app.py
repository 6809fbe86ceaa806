"""HistoDash page frame, run by ``dashboard/server.py`` (``streamlit run dashboard/server.py``) for every browser session.

A frame only: page setup, navigation and the shared sidebar. Each page is a short script in
``dashboard/views/`` that calls the engine.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the script runs with only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import auth, sessions, sidebar  # noqa: E402

st.set_page_config(page_title="HistoDash", page_icon=":material/biotech:", layout="wide")

if not auth.gate():  # hosting with a login: visitors who have not signed in see the login form only
    st.stop()
sessions.housekeeping()  # this session's workspace is marked alive; idle ones are swept

PAGES = Path(__file__).resolve().parent / "views"


def _page(name: str, title: str, icon: str, **kw):
    return st.Page(str(PAGES / f"{name}.py"), title=title, icon=icon, url_path=name, **kw)


def available(*pages):
    return [p for p in pages if p is not None]


def optional(name: str, title: str, icon: str):
    return _page(name, title, icon) if (PAGES / f"{name}.py").exists() else None


sections = {
    "HistoDash": [_page("home", "Home", ":material/home:", default=True)],
    "Tiles": available(_page("upload", "Upload", ":material/upload:"), _page("predict", "Tile prediction", ":material/analytics:"), optional("gradcam", "Grad-CAM", ":material/local_fire_department:")),
    "Slides": available(optional("slides", "Slide heatmap", ":material/map:")),
    "Cohorts": available(optional("cohort", "Cohort", ":material/groups:"), optional("survival", "Cohort survival", ":material/monitoring:")),
    "Models": available(optional("training", "Training", ":material/model_training:"), optional("models", "Models", ":material/inventory_2:")),
}
navigation = st.navigation({name: pages for name, pages in sections.items() if pages})
sidebar.render()
navigation.run()
