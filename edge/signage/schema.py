"""JSON schema (draft 2020-12) of the screen payload, version 1 (``payload.payload``).

The same schema is printed in ``docs/signage.md`` for third-party players; a
test checks that the two agree and that real MQTT payloads validate.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCREEN_PAYLOAD_SCHEMA"]

SCREEN_PAYLOAD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://shelfcast.example/schemas/screen-recommendations-v1.json",
    "title": "ShelfCast screen recommendations, schema 1",
    "type": "object",
    "required": ["schema", "screen", "session", "items", "model_version", "updated"],
    "properties": {
        "schema": {"const": 1, "description": "payload version; a new major layout gets a new topic version"},
        "screen": {"type": "string", "description": "screen id (layout.screens[].id)"},
        "session": {"type": ["string", "null"], "description": "the visit served; null: nobody there"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["sku", "name", "price", "reason"],
                "properties": {
                    "sku": {"type": "string"},
                    "name": {"type": "string"},
                    "price": {"type": ["number", "null"], "minimum": 0},
                    "reason": {"type": "string", "description": "the line shown under the product"},
                    "score": {"type": "number"},
                    "category": {"type": "string"},
                    "department": {"type": "string"},
                    "icon": {"enum": ["fruit", "vegetable", "dairy", "cheese", "egg", "bread", "sweet", "drink",
                                      "snack", "basket"]},
                },
            },
        },
        "model_version": {"type": "string", "description": "'fallback' = popularity by zone and hour"},
        "updated": {"type": "number", "description": "Unix seconds (UTC) when the set was made"},
        "zone": {"type": ["string", "null"]},
        "seq": {"type": "integer", "minimum": 0, "description": "increases with every set the node makes"},
        "kind": {"enum": ["full", "strip", "shelf_display"]},
        "store": {"type": "string"},
        "node": {"type": "string"},
    },
}
