"""Signage: what shoppers see, and what they do next.

- ``room.SignageRoom``: the node room (start/stop/health). It takes every
  ``RecommendationSet`` the ``ScreenBoard`` accepts, coalesces bursts per
  screen within one event-loop tick, and pushes the latest set to the kiosk
  pages (SSE, ``hub``), the local MQTT broker (retained, ``mqtt``), shelf-edge
  displays (``firmware_bridge``'s ``show``) and the feedback loop
  (``feedback``: impressions and conversions).
- ``http``: the aiohttp server (pages, JSON API, health, Prometheus metrics).
- ``report``: ``shelfcast report`` (conversion rates per screen and model).
- ``bench``: ``shelfcast bench e2e`` (pty → driver → ranking → SSE + MQTT).
"""

from typing import Any

__all__ = ["SignageRoom"]


_LAZY = {
    "SignageRoom": "edge.signage.room",
}


def __getattr__(name: str) -> Any:
    """Import on first use: ``shelfcast`` commands start fast and load only the rooms they run."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
