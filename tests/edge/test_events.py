"""Events round-trip through their one JSON form."""

from __future__ import annotations

import pytest

from edge.events import (
    Impression,
    RecItem,
    RecommendationSet,
    ShelfEvent,
    ShopperEvent,
    TrackUpdate,
    from_json,
)


@pytest.mark.parametrize(
    "event",
    [
        ShelfEvent("dairy-1", 3, "1082185", -2, 0.97, 1.5e9, "ctrl-dairy-1"),
        TrackUpdate(7, 1.25, 3.5, "dairy", 4.0, 1.5e9),
        ShopperEvent("visit-1", "1082185", "pick", "produce", 1, "produce-1", 0, 1.5e9),
        RecommendationSet("s1", "visit-1", (RecItem("1", "Milk", 1.2, 0.9, "because"),), "m1", "dairy", 1.5e9, 4),
        Impression("s1", None, ("1", "2"), "m1", 1.5e9),
    ],
)
def test_round_trip(event) -> None:
    assert from_json(event.to_json()) == event


def test_shelf_event_action() -> None:
    assert ShelfEvent("s", 0, "x", -1).action == "pick"
    assert ShelfEvent("s", 0, "x", 2).action == "put" and ShelfEvent("s", 0, "x", 2).units == 2


def test_bad_json_named() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        from_json('{"type": "nope"}')
    with pytest.raises(ValueError, match="unknown field"):
        from_json('{"type": "track", "track": 1, "x": 0, "y": 0, "zone": null, "colour": 1}')
    with pytest.raises(ValueError, match="not valid JSON"):
        from_json("{")
    with pytest.raises(ValueError, match="missing"):
        from_json('{"type": "track", "track": 1}')
