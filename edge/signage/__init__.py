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

from edge.signage.room import SignageRoom

__all__ = ["SignageRoom"]
