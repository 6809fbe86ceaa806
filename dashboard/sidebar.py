"""The sidebar shown on every page: model picker with its card summary, and cache statistics.

``app.py`` calls :func:`render` before the page and :func:`cache_stats` again after it, so the cache
numbers include what the page just computed (they used to lag one run behind).
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from engine.cache import shared_cache
from engine.errors import HistoDashError
from engine.privacy import strip_server_paths
from engine.registry import ModelCard, Registry

MODEL_KEY = "model_id"


def selected_card() -> ModelCard | None:
    """The card of the model picked in the sidebar (None when no model is registered)."""
    try:
        return Registry().get(st.session_state.get(MODEL_KEY))
    except HistoDashError:
        return None


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render():
    """Draw the sidebar; returns the placeholder of the cache numbers (for :func:`cache_stats`)."""
    registry = Registry()
    cards = registry.cards()
    with st.sidebar:
        st.subheader("Model")
        if not cards:
            st.warning(f"No models registered in `{registry.root}`.")
        else:
            ids = [c.id for c in cards]
            current = st.session_state.get(MODEL_KEY)
            if current not in ids:
                current = registry.get().id
            st.session_state[MODEL_KEY] = current
            st.selectbox("Model", ids, key=MODEL_KEY, label_visibility="collapsed", help="Used by every page. Models trained on the Training page appear here.")
            card = next(c for c in cards if c.id == st.session_state[MODEL_KEY])
            if card.quality_failed:
                st.error(f"This model failed its quality check: {card.quality_reason}.", icon=":material/error:")
            st.caption(f"**{card.name or card.id}** · {card.architecture} · {card.input_px} px · classes: {', '.join(card.classes)}")
            m = card.headline_metrics()
            if m:
                st.caption(" · ".join(f"{k} {_fmt(v)}" for k, v in m.items() if isinstance(v, float))[:300] + f" ({m.get('split', '')})")
            with st.expander("Full model card"):
                st.json(strip_server_paths(card.to_dict()), expanded=False)
        for folder, problem in registry.problems().items():
            st.caption(f":material/warning: {folder}: {problem}")
        st.subheader("Cache")
        box = st.empty()
    cache_stats(box)
    return box


def cache_stats(box) -> None:
    """Fill the sidebar's cache placeholder with the current numbers (nothing when the page stopped the run)."""
    try:
        stats = shared_cache().stats()
        if stats.enabled:
            box.caption(f"{stats.entries:,} results · {stats.size_bytes / 1e6:.1f} MB of {stats.limit_bytes / 1e9:.1f} GB · this process: {stats.hits} hits / {stats.misses} misses")
        else:
            box.caption(f":material/warning: Cache off: {stats.warning}")
    except StopException:  # the page called st.stop(): the numbers drawn before it stay
        pass
