"""dashboard.state: values kept in the session's workspace (signed pickles) outlive the websocket; tiles are files."""

from __future__ import annotations

import os
import stat

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import state
from engine.config import get_settings


def test_store_round_trip_versions_and_pop(tmp_path):
    store = state.Store(tmp_path / "ws")
    assert store.get("x") is None and store.version("x") is None
    v1 = store.put("x", {"a": [1, 2, 3]})
    assert v1 is not None and store.get("x") == {"a": [1, 2, 3]}
    v2 = store.put("x", {"a": [4]})
    assert v2 != v1 and store.read("x") == ({"a": [4]}, v2)
    assert store.keys() == ["x"]
    store.pop("x")
    assert store.get("x", "gone") == "gone" and store.keys() == []


@pytest.mark.parametrize("key", ["", "A", "../x", "a/b", "x" * 65, "a.b", None])
def test_keys_are_plain_names(tmp_path, key):
    with pytest.raises(ValueError):
        state.Store(tmp_path).put(key, 1)


def test_altered_or_renamed_files_count_as_absent(tmp_path):
    store = state.Store(tmp_path / "ws")
    store.put("result", [1, 2])
    path = store.path("result")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert store.get("result", "absent") == "absent"  # altered content: the signature no longer matches
    store.put("other", "secret")
    os.replace(store.path("other"), store.path("renamed"))
    assert store.get("renamed", "absent") == "absent"  # the signature binds the key
    store.path("garbage").write_bytes(b"not a state file")
    assert store.get("garbage", "absent") == "absent"


def test_an_unwritable_workspace_keeps_nothing_on_disk_and_raises_nothing(tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "ws" / state.STATE_DIR
        blocked.parent.mkdir()
        blocked.write_text("a file where the folder should be")  # even root cannot make a folder here
    else:
        (tmp_path / "ws").mkdir()
        os.chmod(tmp_path / "ws", stat.S_IRUSR | stat.S_IXUSR)
    assert state.Store(tmp_path / "ws").put("x", 1) is None


def _page():
    import streamlit as st

    from dashboard import state

    action = st.session_state.get("action")
    if action == "put":
        state.put("demo_value", {"n": st.session_state.get("n", 0)})
    elif action == "pop":
        state.pop("demo_value")
    st.write(f"value={state.get('demo_value')}")


def _run(sid: str, **session) -> AppTest:
    at = AppTest.from_function(_page, default_timeout=30)
    at.session_state["session_id"] = sid  # the id the browser's cookie names
    for k, v in session.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _shown(at) -> str:
    return at.markdown[0].value


def test_put_get_across_tabs_restarts_and_other_browsers():
    sid, other = "a" * 32, "b" * 32
    tab1 = _run(sid, action="put", n=1)
    assert _shown(tab1) == "value={'n': 1}"
    tab2 = _run(sid)  # a second tab (or a refresh, or a restarted server): a new Streamlit session, the same cookie
    assert _shown(tab2) == "value={'n': 1}"
    assert _shown(_run(other)) == "value=None"  # another browser sees nothing
    # tab 2 changes it; tab 1 sees the change on its next run, not its own stale copy
    tab2.session_state["action"], tab2.session_state["n"] = "put", 2
    tab2.run()
    tab1.session_state["action"] = None
    tab1.run()
    assert _shown(tab1) == "value={'n': 2}"
    # forgotten in one tab, gone in the other
    tab2.session_state["action"] = "pop"
    tab2.run()
    tab1.run()
    assert _shown(tab1) == "value=None"
    assert not (get_settings().work_dir / sid / state.STATE_DIR / "demo_value.pkl").exists()
