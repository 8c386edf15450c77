"""Security audit of the signage HTTP server, against a real node on a free port (2026-12-01).

Admin actions need the bearer token in the header (not the query, not Basic), bad admin bodies are a 400 naming
the problem (never a 500 traceback), static files do not escape their directory, and a checked-in raw shopper id
is nowhere on disk (database, WAL) nor in the log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TOKEN = "audit-token-5f1e9c"
RAW_ID = "LOYALTY-4417-0093-2211"


def _admin(tok: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}


def _raw_get(port: int, target: str) -> bytes:
    """A request line sent as is (no client-side path normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_admin_token_only_in_the_authorization_header(make_node: Callable[..., Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_AUDIT_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_AUDIT_TOKEN")
    body = json.dumps({"customer": "c-1"}).encode()
    for path, headers, want in [
        ("/api/checkin", {}, 401),
        (f"/api/checkin?token={TOKEN}&admin_token={TOKEN}", {}, 401),
        ("/api/checkin", {"Authorization": f"Basic {TOKEN}"}, 401),
        ("/api/checkin", {"Authorization": f"bearer{TOKEN}"}, 401),
        ("/api/checkin", _admin("wrong"), 403),
        ("/api/checkin", _admin(TOKEN[:-1]), 403),
        ("/api/screens/dairy-screen/refresh", {}, 401),
    ]:
        status, _, text = n.get(path, headers=headers, method="POST", body=body)
        assert status == want, (path, headers, status, text)
        assert TOKEN not in text
    status, _, _ = n.get("/api/checkin", headers=_admin(), method="POST", body=body)
    assert status == 200
    for method in ("PUT", "DELETE", "PATCH"):
        status, _, _ = n.get("/api/screens", method=method)
        assert status == 401, method


@pytest.mark.parametrize("screen", [["dairy-screen"], {"id": "dairy-screen"}, 7, True])
def test_a_checkin_with_a_non_string_screen_is_a_400_not_a_500(make_node: Callable[..., Any], screen: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_AUDIT_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_AUDIT_TOKEN")
    status, ctype, text = n.get("/api/checkin", headers=_admin(), method="POST",
                                body=json.dumps({"customer": "c-1", "screen": screen}).encode())
    assert status == 400, (status, text)
    assert ctype.startswith("application/json")
    assert "'screen' must be a screen id" in json.loads(text)["error"]
    # the node still answers afterwards
    assert n.get("/api/screens/dairy-screen/recommendations")[0] == 200


def test_static_files_and_screen_ids_do_not_escape(make_node: Callable[..., Any]) -> None:
    n = make_node()
    assert b"200 OK" in _raw_get(n.port, "/static/site.css")
    for target in ("/static/../http.py", "/static/../../config.py", "/static/%2e%2e/http.py",
                   "/static/..%2fhttp.py", "/static//etc/passwd", "/static/%2e%2e%2f%2e%2e%2fconfig.py"):
        out = _raw_get(n.port, target)
        assert out.split(b"\r\n", 1)[0].split()[1] in (b"403", b"404"), (target, out[:200])
        assert b"build_app" not in out and b"root:" not in out and b"class NodeConfig" not in out
    status, _, text = n.get("/screens/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert status == 404 and "<script>alert(1)" not in text


def test_a_raw_shopper_id_is_stored_nowhere_and_not_logged(make_node: Callable[..., Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from edge.events import ShopperEvent

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SC_AUDIT_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_AUDIT_TOKEN")
    n.publish(ShopperEvent(session="s-audit", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    status, _, text = n.get("/api/checkin", headers=_admin(), method="POST",
                            body=json.dumps({"customer": f"  {RAW_ID} ", "session": "s-audit"}).encode())
    assert status == 200, text
    hashed = json.loads(text)["customer"]
    assert len(hashed) == 64 and RAW_ID not in text
    n.sync(n.node.store.flush)
    time.sleep(0.2)
    data_dir = Path(n.config.node.data_dir)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:  # the database, its WAL and anything else the node wrote
        blob = p.read_bytes()
        assert RAW_ID.encode() not in blob, p
        assert TOKEN.encode() not in blob, p
    assert RAW_ID not in caplog.text and TOKEN not in caplog.text


def _raw_post_auth(port: int, auth: bytes) -> int:
    body = b'{"customer": "c-raw"}'
    req = (b"POST /api/checkin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\nAuthorization: " + auth + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return int(out.split(b" ", 2)[1])


def test_odd_bytes_and_unicode_blanks_in_the_token_are_a_403_not_a_500(make_node: Callable[..., Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_AUDIT_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_AUDIT_TOKEN")
    tok = TOKEN.encode()
    assert _raw_post_auth(n.port, b"Bearer " + tok) == 200
    assert _raw_post_auth(n.port, b"Bearer " + tok + b" \t") == 200  # HTTP's own blanks are not part of it
    for auth in (b"Bearer \xa0", b"Bearer " + tok + b"\xa0", b"Bearer \xff" + tok, b"Bearer " + tok + b"\xc2\xa0",
                 b"Bearer \xe3\x80\x80" + tok):
        assert _raw_post_auth(n.port, auth) == 403, auth
    assert n.get("/api/screens")[0] == 200


CLI = [sys.executable, "-m", "edge"]


@pytest.mark.parametrize("form", ["literal", "env", "file"])
def test_a_short_admin_token_is_refused_at_config_load(tmp_path: Path, form: str) -> None:
    """Anyone on the store network may try tokens against the screens port: fewer than 16 characters is refused,
    naming the key and the fix, never echoing the token; 16 are accepted."""

    def config_with(token: str) -> tuple[Path, dict[str, str]]:
        env = {**os.environ}
        value = token
        if form == "env":
            env["SC_SHORT_TOKEN"] = token
            value = "env:SC_SHORT_TOKEN"
        elif form == "file":
            (tmp_path / "token").write_text(token + "\n")
            value = f"file:{tmp_path / 'token'}"
        cfg = tmp_path / "node.yaml"
        cfg.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nsignage:\n  admin_token: '{value}'\n")
        return cfg, env

    for token in ("s3cret", "audit-tok-5f1e9c"[:15]):
        cfg, env = config_with(token)
        for cmd in (["config", "validate", str(cfg)], ["run", "--config", str(cfg)]):
            r = subprocess.run([*CLI, *cmd], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
            out = r.stdout + r.stderr
            assert r.returncode != 0, (cmd, out)
            assert "signage.admin_token" in out and f"is {len(token)} characters" in out, out
            assert "`openssl rand -hex 16`" in out and "Traceback" not in out, out
            assert token not in out
    cfg, env = config_with("audit-tok-5f1e9c")  # 16 characters
    r = subprocess.run([*CLI, "config", "validate", str(cfg)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
