"""Streamlit behaviour HistoDash turns off, each with its reason (applied once, by ``server.py``, at start).

* After every script run Streamlit calls ``keras.backend.clear_session()`` whenever Keras is imported
  (``streamlit.runtime.scriptrunner.script_runner._clean_problem_modules``, private and not configurable).
  HistoDash loads each model once per process and shares it between sessions and worker threads, so
  clearing Keras' global state between reruns is wrong for it, and it cost about 0.2 s of every rerun,
  fragment reruns included (a colour-map change on Grad-CAM took 0.3-0.5 s instead of ~0.1 s;
  measured with py-spy and ``bench/interactive.py``). Matplotlib figures are still closed as before.
"""

from __future__ import annotations

import sys

#: Streamlit's own clean-up, once :func:`keep_keras_state` has replaced it (tests put it back to compare)
streamlit_clean_up = None


def _close_matplotlib_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        try:
            sys.modules["matplotlib.pyplot"].close("all")
        except Exception:  # noqa: BLE001, S110 - as Streamlit's own clean-up: never fail a rerun over it
            pass


def keep_keras_state() -> bool:
    """Stop Streamlit's per-rerun ``keras.backend.clear_session()``; False when this Streamlit has no such hook."""
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:
        return False
    if not hasattr(script_runner, "_clean_problem_modules"):
        return False
    global streamlit_clean_up
    if script_runner._clean_problem_modules is not _close_matplotlib_figures:
        streamlit_clean_up = script_runner._clean_problem_modules
    script_runner._clean_problem_modules = _close_matplotlib_figures
    return True
