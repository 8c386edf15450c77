"""The one JSON form of "what a screen shows now", shared by HTTP, SSE and MQTT.

Schema version 1 (``docs/signage.md`` has the JSON schema)::

    {"schema": 1, "screen": "dairy-screen", "session": "visit-00012" | null,
     "items": [{"sku", "name", "price", "reason", "score", "category",
                "department", "icon"}, ...],
     "model_version": "fallback" | "<model version>", "updated": 1795872000.12,
     "zone": "dairy", "seq": 42, "kind": "full", "store": "...", "node": "..."}

``session`` is null when nobody is in front of the screen (popular items for
the zone and hour). ``updated`` is Unix seconds (UTC). ``icon`` is one of
``ICONS``: a player without images draws that glyph.
"""

from __future__ import annotations

import json
from typing import Any

from edge.events import RecommendationSet

__all__ = ["ICONS", "SCHEMA_VERSION", "icon_for", "payload", "sse_frame"]

SCHEMA_VERSION = 1

ICONS = ("fruit", "vegetable", "dairy", "cheese", "egg", "bread", "sweet", "drink", "snack", "basket")

# (substring of the category, icon); first match wins.
_RULES: tuple[tuple[str, str], ...] = (
    ("FRUIT", "fruit"), ("BERRIES", "fruit"), ("APPLES", "fruit"), ("CITRUS", "fruit"), ("GRAPES", "fruit"),
    ("MELONS", "fruit"), ("PEARS", "fruit"),
    ("CHEESE", "cheese"), ("EGGS", "egg"),
    ("MILK", "dairy"), ("YOGURT", "dairy"), ("BUTTER", "dairy"), ("MARGARINE", "dairy"),
    ("BREAD", "bread"), ("DOUGH", "bread"), ("CRACKERS", "snack"),
    ("SWEET", "sweet"), ("COOKIES", "sweet"),
    ("DRINK", "drink"), ("JUICE", "drink"), ("WATER", "drink"), ("BEER", "drink"), ("COFFEE", "drink"),
    ("SNACK", "snack"),
    ("VEGETABLE", "vegetable"), ("POTATO", "vegetable"), ("TOMATO", "vegetable"), ("ONION", "vegetable"),
    ("SALAD", "vegetable"), ("PEPPER", "vegetable"), ("CARROT", "vegetable"), ("BROCCOLI", "vegetable"),
    ("CORN", "vegetable"), ("MUSHROOM", "vegetable"), ("HERB", "vegetable"), ("SQUASH", "vegetable"),
)
_icon_cache: dict[tuple[str, str], str] = {}


def icon_for(category: str, department: str = "") -> str:
    """A glyph name for a product category (cached: the hot path calls this per item)."""
    key = (category, department)
    hit = _icon_cache.get(key)
    if hit is not None:
        return hit
    cat = category.upper()
    icon = next((ic for sub, ic in _RULES if sub in cat), None)
    if icon is None:
        icon = "vegetable" if department.upper() == "PRODUCE" else "basket"
    if len(_icon_cache) < 4096:
        _icon_cache[key] = icon
    return icon


def payload(rs: RecommendationSet, *, kind: str = "full", store: str = "", node: str = "",
            limit: int | None = None) -> dict[str, Any]:
    items = rs.items if limit is None else rs.items[:limit]
    return {
        "schema": SCHEMA_VERSION,
        "screen": rs.screen,
        "session": rs.session,
        "items": [
            {"sku": i.sku, "name": i.name, "price": i.price, "reason": i.reason, "score": i.score,
             "category": i.category, "department": i.department, "icon": icon_for(i.category, i.department)}
            for i in items
        ],
        "model_version": rs.model_version,
        "updated": rs.t,
        "zone": rs.zone,
        "seq": rs.seq,
        "kind": kind,
        "store": store,
        "node": node,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_frame(event: str, data: str, id: int | None = None) -> bytes:
    """One Server-Sent Events message (``data`` must be one line: compact JSON is)."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()
