"""Streamlit custom components of HistoDash (browser code served from each component's frontend/ folder)."""
