"""Per-session workspace lifetime (see issue: lab hosting). Filled in by the hosting work."""

from __future__ import annotations


def housekeeping() -> None:
    """Mark this session's workspace as alive and sweep idle ones."""
