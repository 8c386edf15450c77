"""The signage HTTP server as screens and people use it: pages, JSON, errors, auth, metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from edge.events import ShopperEvent


def test_index_lists_screens_with_links(make_node: Callable[..., Any]) -> None:
    n = make_node()
    status, ctype, text = n.get("/")
    assert status == 200 and ctype.startswith("text/html")
    for sc in n.config.layout.screens:
        assert f"href='/screens/{sc.id}'" in text


def test_recommendations_json_has_the_documented_keys(make_node: Callable[..., Any]) -> None:
    n = make_node()
    d = n.json("/api/screens/dairy-screen/recommendations")
    for key in ("screen", "session", "items", "model_version", "updated"):
        assert key in d
    assert d["screen"] == "dairy-screen" and d["session"] is None  # nobody there yet: the fallback
    assert d["items"], "never blank"
    assert set(d["items"][0]) >= {"sku", "name", "price", "reason"}
    n.publish(ShopperEvent(session="s-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    d = n.json("/api/screens/dairy-screen/recommendations?limit=2")
    assert d["session"] == "s-1" and len(d["items"]) == 2
    assert "1029743" not in [i["sku"] for i in d["items"]]  # just picked: not recommended back


def test_unknown_screen_is_a_helpful_404(make_node: Callable[..., Any]) -> None:
    n = make_node()
    status, ctype, text = n.get("/screens/no-such-screen")
    assert status == 404 and ctype.startswith("text/html")
    assert "no-such-screen" in text and "href='/screens/dairy-screen'" in text and "layout.screens" in text
    status, ctype, text = n.get("/api/screens/no-such-screen/recommendations")
    assert status == 404 and ctype.startswith("application/json")
    body = json.loads(text)
    assert "dairy-screen" in body["screens"] and "no-such-screen" in body["error"]
    status, _, _ = n.get("/api/screens/no-such-screen/stream")
    assert status == 404


def test_malformed_query_parameters_are_400_with_a_message(make_node: Callable[..., Any]) -> None:
    n = make_node()
    for path, needle in [
        ("/api/screens/dairy-screen/recommendations?limit=abc", "limit='abc' is not a whole number"),
        ("/api/screens/dairy-screen/recommendations?limit=0", "out of range"),
        ("/screens/dairy-screen?orientation=sideways", "use one of auto, landscape, portrait"),
        ("/screens/dairy-screen?attract=1", "out of range"),
    ]:
        status, _, text = n.get(path)
        assert status == 400, path
        assert needle in text, text
    status, _, text = n.get("/screens/dairy-screen?orientation=portrait&attract=30")
    assert status == 200 and '"orientation": "portrait"' in text


def test_admin_actions_need_the_token(make_node: Callable[..., Any]) -> None:
    n = make_node(admin_token="s3cret-token-0042")
    body = json.dumps({"customer": "loyalty-42", "screen": "dairy-screen"}).encode()
    status, _, text = n.get("/api/checkin", method="POST", body=body)
    assert status == 401 and "Bearer" in text
    status, _, _ = n.get("/api/checkin", method="POST", body=body, headers={"Authorization": "Bearer wrong"})
    assert status == 403
    n.publish(ShopperEvent(session="s-9", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    status, _, text = n.get("/api/checkin", method="POST", body=body,
                            headers={"Authorization": "Bearer s3cret-token-0042", "Content-Type": "application/json"})
    assert status == 200, text
    out = json.loads(text)
    assert out["session"] == "s-9" and "loyalty-42" not in text  # stored hashed, never echoed raw
    assert n.node.recommender.visits["s-9"].customer == out["customer"]
    status, _, text = n.get("/api/screens/dairy-screen/refresh", method="POST",
                            headers={"Authorization": "Bearer s3cret-token-0042"})
    assert status == 200 and json.loads(text)["screen"] == "dairy-screen"
    status, _, text = n.get("/api/checkin", method="POST", body=b"not json",
                            headers={"Authorization": "Bearer s3cret-token-0042"})
    assert status == 400 and "must be JSON" in text


def test_admin_actions_off_without_a_configured_token(make_node: Callable[..., Any]) -> None:
    n = make_node()
    status, _, text = n.get("/api/screens/dairy-screen/refresh", method="POST")
    assert status == 403 and "signage.admin_token" in text


def test_health_is_the_nodes_health(make_node: Callable[..., Any]) -> None:
    n = make_node()
    h = n.json("/api/health")
    assert h["status"] == "ok" and {"store", "recommend", "signage"} <= set(h["rooms"])
    assert h["rooms"]["signage"]["http"]["listening"] is True
    assert h["rooms"]["signage"]["mqtt"]["status"] == "disabled"


LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
PROM_LINE = re.compile(rf"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{LABEL}(,{LABEL})*\}})? -?[0-9.e+-]+$")


def test_metrics_are_prometheus_text(make_node: Callable[..., Any]) -> None:
    n = make_node()
    n.publish(ShopperEvent(session="s-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    status, ctype, text = n.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+", line), line
            continue
        assert PROM_LINE.match(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples["shelfcast_signage_pushes_total"] >= 1
    assert samples['shelfcast_signage_sse_clients{screen="dairy-screen"}'] == 0


def test_port_in_use_degrades_then_binds_when_free(make_node: Callable[..., Any]) -> None:
    import socket
    import time

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    n = make_node(port=port)
    h = n.node.health()["rooms"]["signage"]
    assert h["status"] == "degraded" and h["http"]["listening"] is False
    assert "pick a free signage.port" in h["http"]["error"]
    n.publish(ShopperEvent(session="s-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    assert n.node.screens.latest["dairy-screen"].session == "s-1"  # the node keeps serving sets
    blocker.close()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not n.node.signage.health()["http"]["listening"]:
        time.sleep(0.1)
    assert n.port == port
    assert n.json("/api/screens/dairy-screen/recommendations")["session"] == "s-1"
