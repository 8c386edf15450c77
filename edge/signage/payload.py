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
import math
from typing import Any

from edge.events import RecommendationSet

__all__ = ["ICONS", "SCHEMA_VERSION", "encode", "icon_for", "payload", "sse_frame"]

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


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_enc = _encoder.encode
_str = json.encoder.encode_basestring  # what the encoder uses for str with ensure_ascii=False


def dumps(obj: Any) -> str:
    return _enc(obj)


def _val(v: Any) -> str:
    """One JSON scalar, as ``dumps`` writes it (floats by repr; NaN/Infinity as json allows by default)."""
    t = type(v)
    if t is str:
        return _str(v)
    if t is float:
        return repr(v) if math.isfinite(v) else _enc(v)
    if v is None:
        return "null"
    return _enc(v)


# per product: the item's JSON around its two per-set fields (reason, score); products repeat across sets
_item_parts: dict[tuple[str, str, Any, str, str], tuple[str, str]] = {}


def encode(rs: RecommendationSet, *, kind: str = "full", store: str = "", node: str = "") -> str:
    """``dumps(payload(rs, ...))``, the same string, built without the intermediate dicts: the parts of an
    item that only depend on the product are encoded once and reused (the hot path encodes every set)."""
    parts = []
    for i in rs.items:
        key = (i.sku, i.name, i.price, i.category, i.department)
        pre_post = _item_parts.get(key)
        if pre_post is None:
            pre_post = (f'{{"sku":{_val(i.sku)},"name":{_val(i.name)},"price":{_val(i.price)},"reason":',
                        f',"category":{_val(i.category)},"department":{_val(i.department)},'
                        f'"icon":{_val(icon_for(i.category, i.department))}}}')
            if len(_item_parts) < 8192:
                _item_parts[key] = pre_post
        parts.append(f'{pre_post[0]}{_val(i.reason)},"score":{_val(i.score)}{pre_post[1]}')
    return (f'{{"schema":{SCHEMA_VERSION},"screen":{_val(rs.screen)},"session":{_val(rs.session)},'
            f'"items":[{",".join(parts)}],"model_version":{_val(rs.model_version)},"updated":{_val(rs.t)},'
            f'"zone":{_val(rs.zone)},"seq":{_val(rs.seq)},"kind":{_val(kind)},"store":{_val(store)},'
            f'"node":{_val(node)}}}')


def sse_frame(event: str, data: str, id: int | None = None) -> bytes:
    """One Server-Sent Events message (``data`` must be one line: compact JSON is)."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()
