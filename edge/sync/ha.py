"""Optional Home Assistant MQTT discovery: the node, its screens and shelves as devices.

Configs are retained under ``<discovery prefix>/<component>/<object id>/config``
and republished whenever Home Assistant announces itself on
``<discovery prefix>/status`` (payload ``online``), as its docs ask.
"""

from __future__ import annotations

import json
from typing import Any

from edge.sync.topics import Topics

__all__ = ["discovery_messages"]


def discovery_messages(topics: Topics, *, prefix: str, version: str, screens: list[str],
                       shelves: list[str]) -> list[tuple[str, str]]:
    """(topic, retained JSON payload) for every entity."""
    uid = f"shelfcast_{topics.store}_{topics.node}".replace("-", "_").replace(".", "_")
    node_dev: dict[str, Any] = {"identifiers": [uid], "name": f"ShelfCast {topics.node}", "manufacturer": "ShelfCast",
                                "model": "edge node", "sw_version": version, "suggested_area": topics.store}
    avail = {"availability_topic": topics.availability, "payload_available": "online",
             "payload_not_available": "offline"}
    out: list[tuple[str, str]] = []

    def add(component: str, object_id: str, cfg: dict[str, Any]) -> None:
        out.append((f"{prefix}/{component}/{object_id}/config", json.dumps({**avail, **cfg}, separators=(",", ":"))))

    add("sensor", f"{uid}_status", {"name": "Status", "unique_id": f"{uid}_status", "state_topic": topics.state,
                                    "value_template": "{{ value_json.status }}", "device": node_dev})
    add("sensor", f"{uid}_outbox", {"name": "Outbox pending", "unique_id": f"{uid}_outbox",
                                    "state_topic": topics.state,
                                    "value_template": "{{ value_json.outbox_pending }}",
                                    "unit_of_measurement": "events",
                                    "state_class": "measurement", "device": node_dev})
    add("sensor", f"{uid}_model", {"name": "Model", "unique_id": f"{uid}_model", "state_topic": topics.state,
                                   "value_template": "{{ value_json.model }}", "device": node_dev})
    for kind, ids in (("screen", screens), ("shelf", shelves)):
        for i in ids:
            sid = f"{uid}_{kind}_{i}".replace("-", "_").replace(".", "_")
            dev = {"identifiers": [sid], "name": f"{kind.title()} {i}", "manufacturer": "ShelfCast",
                   "model": "signage screen" if kind == "screen" else "smart shelf", "via_device": uid}
            add("sensor", f"{sid}_status", {
                "name": "Status", "unique_id": f"{sid}_status", "state_topic": topics.state,
                "value_template": f"{{{{ value_json.{kind}s['{i}'] | default('unknown') }}}}", "device": dev})
    return out
