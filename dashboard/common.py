"""Helpers shared by every page: error display, disclaimer, session workspace.

Pages never let an exception reach the browser: user errors (``HistoDashError``) are shown with
their message and hint; anything else is logged with its traceback and shown as a short generic
message. What the user already had in ``st.session_state`` is left untouched.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import uuid
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

from engine.config import get_settings
from engine.errors import HistoDashError
from engine.privacy import loggable_name

log = logging.getLogger("histodash.dashboard")

DISCLAIMER = (
    "**Research use only.** HistoDash is not a medical device: its outputs are not validated for "
    "diagnosis and must not guide patient care."
)


def disclaimer() -> None:
    """Show the research-use-only disclaimer (small, at the foot of a page)."""
    st.caption(DISCLAIMER)


def show_error(err: BaseException, *, context: str = "") -> None:
    """Render an error as a message on the page, never as a traceback."""
    prefix = f"{context}: " if context else ""
    if isinstance(err, HistoDashError):
        st.error(f"{prefix}{err.message}")
        if err.hint:
            st.caption(err.hint)
    else:
        _log_unexpected(err, context)
        st.error(f"{prefix}Something went wrong ({type(err).__name__}). The details were written to the server log.")


def _log_unexpected(err: BaseException, context: str) -> None:
    """Log a bug with its traceback; without ``HISTODASH_LOG_NAMES`` the context and the exception's message
    (which may name an uploaded file or a slide) are left out: only the exception type and the code frames."""
    if get_settings().log_names:
        log.error("unexpected error %s", context, exc_info=err)
        return
    frames = "".join(traceback.format_tb(err.__traceback__))
    log.error("unexpected error %s (%s; message hidden, set HISTODASH_LOG_NAMES=1 to log it)\n%s", loggable_name(context) if context else "", type(err).__name__, frames)


@contextlib.contextmanager
def guarded(context: str = ""):
    """``with guarded("Prediction"):`` shows any error as a message and stops the block, not the page."""
    try:
        yield
    except (StopException, RerunException):  # Streamlit's own control flow, not errors
        raise
    except Exception as err:  # noqa: BLE001 - every error becomes a message
        show_error(err, context=context)


def session_id() -> str:
    """This browser's session id: the one its signed ``histodash_session`` cookie names (so a refresh or a
    second tab of the same browser gets the same workspace), else a random id kept in session state (AppTest,
    clients without the cookie). Never derived from unsigned user input."""
    if "session_id" not in st.session_state:
        from dashboard.websession import browser_session_id  # noqa: PLC0415 - keeps this module light

        st.session_state["session_id"] = browser_session_id() or uuid.uuid4().hex
    return st.session_state["session_id"]


def session_workspace() -> Path:
    """This browser session's private upload folder (created on first use)."""
    path = get_settings().work_dir / session_id()
    if not path.is_dir():
        from dashboard.sessions import mark_alive  # noqa: PLC0415 - sessions imports this module

        mark_alive(force=True)  # a new workspace is marked alive at once (its session, this server)
    path.mkdir(parents=True, exist_ok=True)
    return path
