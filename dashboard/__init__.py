"""HistoDash Streamlit dashboard (UI only: every computation is in :mod:`engine`)."""
