"""``signage.trusted_clients``: addresses or networks the per-device caps leave out, over real sockets (2026-12-01).

Several screens behind one NAT or VLAN gateway reach the node from one address, and so does one player showing
eight screens; under ``max_streams_per_ip`` / ``max_connections_per_ip`` the ninth screen was refused. A trusted
address is still held by the totals (``max_streams``, ``max_connections``) and by the header budget; every other
address keeps its per-device caps. A bad entry is refused at config load, naming the key and the fix.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import SignageSection
from edge.signage.http import GATE


def _wait(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def _idle(lan: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((lan, 0))
    s.settimeout(5)
    s.connect((lan, port))
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_screens_behind_one_trusted_gateway_are_not_refused_but_the_totals_still_hold(
        make_node: Callable[..., Any], lan: str, sse_stream: Any) -> None:
    gateway_net = str(ipaddress.ip_network(f"{lan}/24", strict=False))  # the store's screen VLAN, say
    n = make_node(host="0.0.0.0", max_streams=6, max_streams_per_ip=2, max_connections=24, max_connections_per_ip=4,
                  trusted_clients=[gateway_net, "fd00:5c::/64"])
    hub = n.node.signage.hub
    # 5 screens behind the gateway: more than max_streams_per_ip (2), each with its stream
    screens = [sse_stream(lan, n.port, source=lan) for _ in range(5)]
    for st in screens:
        assert st.status == 200 and st.wait_for(b"event: recommendations"), st.head
    # and their idle page connections, past max_connections_per_ip (4)
    idle = [_idle(lan, n.port) for _ in range(15)]
    assert _wait(lambda: n.sync(lambda: hub.conn_per_peer.get(lan, 0)) == 20)
    stats = n.sync(lambda: dict(hub.stats))
    assert stats["refused_max_streams_per_ip"] == 0 and stats["refused_max_connections_per_ip"] == 0, stats
    # the totals still hold for a trusted address: a 7th stream past max_streams (6; one from loopback)
    local = sse_stream("127.0.0.1", n.port)
    assert local.status == 200
    over = sse_stream(lan, n.port, source=lan)
    assert over.status == 503 and b"signage.max_streams)" in over.refused_body()
    assert _wait(lambda: n.sync(lambda: hub.stats["connections"]) == 21)  # 20 from the gateway, 1 loopback
    more = [_idle(lan, n.port) for _ in range(3)]
    assert _wait(lambda: n.sync(lambda: hub.stats["connections"]) == 24)  # max_connections
    more.append(_idle(lan, n.port))
    answer = _read_until_closed(more[-1])
    assert answer.startswith(b"HTTP/1.1 503") and b"signage.max_connections)" in answer, answer
    # another address is still held by the per-device caps; IPv4-mapped IPv6 peers match IPv4 networks
    gate = n.node.signage._runner.app[GATE]
    assert n.sync(gate.exempt, lan) and n.sync(gate.exempt, f"::ffff:{lan}") and n.sync(gate.exempt, "fd00:5c::7")
    assert not n.sync(gate.exempt, "198.51.100.7") and not n.sync(gate.exempt, "fd00:5d::7")
    assert n.sync(hub.refuse_connection, "198.51.100.7", 1000, 0) == "per_ip"
    for s in idle + more:
        s.close()


@pytest.mark.parametrize(("entry", "says"), [
    ("'screens-gw.local'", "entry 0 ('screens-gw.local') is not an IP address or network"),
    ("'192.168.1.300'", "entry 0 ('192.168.1.300') is not an IP address or network"),
    ("'0.0.0.0/0'", "is every address, which turns the per-device caps off"),
    ("'::/0'", "is every address, which turns the per-device caps off"),
])
def test_a_bad_trusted_client_is_refused_at_config_load_naming_the_key(tmp_path: Path, entry: str,
                                                                       says: str) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nshelves:\n  enabled: false\n"
                   f"signage:\n  trusted_clients: [{entry}]\n")
    r = subprocess.run([sys.executable, "-m", "edge", "config", "validate", str(cfg)], capture_output=True, text=True,
                       timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out
    assert "signage.trusted_clients" in out and says in out, out
    assert "192.168.10.0/24" in out or "max_connections_per_ip" in out, out  # the fix
    # one address written without a list, and networks in either form, are taken
    assert SignageSection(trusted_clients="10.1.2.3").trusted_clients == ["10.1.2.3"]  # type: ignore[arg-type]
    assert SignageSection(trusted_clients=[" 10.1.2.0/24 ", "fd00::1"]).trusted_clients == ["10.1.2.0/24", "fd00::1"]
