"""Events round-trip through their one JSON form."""

from __future__ import annotations

from typing import Any

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


def test_new_id_is_time_first_hex() -> None:
    import time

    from edge.events import new_id

    before = time.time_ns() // 1000
    ids = [new_id() for _ in range(2000)]
    after = time.time_ns() // 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert all(before <= int(i[:16], 16) <= after for i in ids)
    assert ids == sorted(ids, key=lambda i: i[:16])  # time-first: ordered by creation (µs)
    assert len({i[16:] for i in ids}) == len(ids)  # the 64 random bits differ


def test_new_id_differs_in_a_forked_child() -> None:
    """A child forked after the random state was seeded must not hand out its parent's next ids."""
    import os

    from edge.events import new_id

    new_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave without running the test runner's exit hooks
        os.close(r)
        os.write(w, "".join(new_id()[16:] for _ in range(4)).encode())
        os._exit(0)
    os.close(w)
    mine = "".join(new_id()[16:] for _ in range(4))
    with os.fdopen(r, "rb") as f:
        theirs = f.read().decode()
    os.waitpid(pid, 0)
    assert len(theirs) == 64 and theirs != mine


def test_maker_builds_the_same_event_as_the_dataclass() -> None:
    """``maker(cls)`` (the hot path's positional constructor) gives an event equal to ``cls(*values)``:
    same fields in declaration order, same ``==``, ``hash`` and JSON, still frozen."""
    import dataclasses

    import pytest

    from edge.events import EVENT_TYPES, RecItem, maker

    samples: dict[str, Any] = {"str": "x", "int": 3, "float": 1.25, "bool": True}
    item = RecItem("1", "Milk", 1.5, 0.9, "why", "MILK", "DAIRY")
    for cls in EVENT_TYPES.values():
        values = []
        for f in dataclasses.fields(cls):
            ann = str(f.type)
            if "RecItem" in ann:
                values.append((item, item))
            elif "tuple[str" in ann:
                values.append(("a", "b"))
            else:
                kind = next((k for k in ("bool", "float", "int", "str") if k in ann), "str")
                values.append(samples[kind] if f.name != "action" else "pick")
        a, b = maker(cls)(*values), cls(*values)
        assert a == b and hash(a) == hash(b) and a.to_json() == b.to_json(), cls
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(a, dataclasses.fields(cls)[0].name, None)
