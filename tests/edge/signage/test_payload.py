"""The hot path's ``encode`` writes exactly what ``dumps(payload(...))`` writes (and what the schema and
the players expect), for sets with every kind of value an item may carry."""

from __future__ import annotations

import json
import math
import random

import jsonschema

from edge.events import RecItem, RecommendationSet
from edge.signage.payload import dumps, encode, payload
from edge.signage.schema import SCREEN_PAYLOAD_SCHEMA

TEXTS = ["", "Milk", "Käse «fin» 'x' \"q\"", "a\\b\nc\td\u0001", "☕ coffee", "FRUIT - BERRIES", "PRODUCE"]


def _text(r: random.Random) -> str:
    return r.choice(TEXTS) + ("" if r.random() < 0.5 else str(r.randrange(1000)))


def _set(r: random.Random) -> RecommendationSet:
    items = tuple(
        RecItem(str(r.randrange(100, 130)), _text(r), r.choice([None, 0.5, 2.49, 10.0, r.random() * 50]),
                r.choice([0.0, -1.5, r.random(), round(r.random(), 6), 1e-9, 3]), _text(r), _text(r), _text(r))
        for _ in range(r.randrange(0, 12)))
    return RecommendationSet(_text(r) or "s", r.choice([None, "anon-shelf-1", _text(r)]), items,
                             r.choice(["fallback", "2026.11.30-v3"]), r.choice([None, "dairy"]),
                             r.choice([1796000000.0, 1796000000.123456, r.random() * 2e9]), r.randrange(10**6))


def test_encode_equals_dumps_of_payload_on_random_sets() -> None:
    r = random.Random(6)
    for _ in range(3000):  # products repeat (sku 100..129): the cached item parts are exercised too
        rs = _set(r)
        kind = r.choice(["full", "strip", "shelf_display"])
        assert encode(rs, kind=kind, store="st", node="nd") == dumps(payload(rs, kind=kind, store="st", node="nd"))


def test_encoded_sets_match_the_schema() -> None:
    r = random.Random(7)
    for _ in range(200):
        rs = _set(r)
        if not rs.items:  # the node never pushes an empty set (schema: minItems 1)
            continue
        obj = json.loads(encode(rs, kind="full", store="st", node="nd"))
        jsonschema.validate(obj, SCREEN_PAYLOAD_SCHEMA)


def test_non_finite_scores_are_written_as_json_module_writes_them() -> None:
    for score in (math.nan, math.inf, -math.inf):
        rs = RecommendationSet("s", None, (RecItem("1", "n", None, score, "r"),), "fallback")
        assert encode(rs) == dumps(payload(rs))
