"""Access control for hosted deployments (see issue: lab hosting). Filled in by the hosting work."""

from __future__ import annotations


def gate() -> bool:
    """True when this visitor may see the app. Without a configured login, everyone may."""
    return True
