"""Streamlit behaviour HistoDash turns off (dashboard/streamlit_fixes.py), checked against real Streamlit and Keras."""

import pytest
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest

from dashboard import streamlit_fixes

keras = pytest.importorskip("keras")
from keras.src.backend.common import global_state  # noqa: E402


def _rerun_keeps_probe(tmp_path) -> bool:
    script = tmp_path / "page.py"
    script.write_text("import streamlit as st\nst.write('a rerun')\n")
    global_state.set_global_attribute("histodash_probe", 1)
    AppTest.from_file(str(script)).run()
    return global_state.get_global_attribute("histodash_probe") == 1


def test_a_rerun_keeps_keras_state_only_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(script_runner, "_clean_problem_modules", script_runner._clean_problem_modules)  # restored afterwards
    assert streamlit_fixes.keep_keras_state()
    assert _rerun_keeps_probe(tmp_path)
    monkeypatch.setattr(script_runner, "_clean_problem_modules", streamlit_fixes.streamlit_clean_up)
    assert not _rerun_keeps_probe(tmp_path), "Streamlit no longer clears the Keras session after a run: the fix can go"


def test_the_server_applies_it():
    import dashboard.server  # noqa: F401 - the process entry point applies the fix at import

    assert script_runner._clean_problem_modules is streamlit_fixes._close_matplotlib_figures
