"""Cache headers of the screens port's static files (screen.js, screen.css), with a real node and Chromium.

aiohttp's static route sends ETag and Last-Modified but no Cache-Control, so a browser keeps a file "fresh" by its
heuristic (a tenth of the file's age): a kiosk restarted after an upgrade ran days-old screen.js under the new page.
Now every use revalidates (``no-cache``): a 304 while the file is the same, the new file once it changed.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.signage import http

SCREEN = "dairy-screen"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_static_files_are_revalidated_by_their_etag(make_node: Callable[..., Any]) -> None:
    n = make_node()
    for name in ("screen.js", "screen.css"):
        status, head, body = _get(f"{n.base}/static/{name}")
        assert status == 200 and body, (name, status)
        assert head.get("Cache-Control") == "no-cache", (name, head)
        assert head.get("Etag") and head.get("Last-Modified"), (name, head)
        # the same file again: a 304 without the body (what a kiosk's reload or update check costs)
        status, head2, body = _get(f"{n.base}/static/{name}", {"If-None-Match": head["Etag"]})
        assert (status, body) == (304, b""), (name, status)
        assert head2.get("Cache-Control") == "no-cache" and head2.get("Etag") == head["Etag"], head2
    # the page stays uncached, and a missing file is not cached either
    assert _get(f"{n.base}/screens/{SCREEN}")[1].get("Cache-Control") == "no-store"
    status, head, _ = _get(f"{n.base}/static/nope.js")
    assert status == 404 and head.get("Cache-Control") == "no-store"


def test_a_kiosk_opened_after_an_upgrade_runs_the_new_screen_js(make_node: Callable[..., Any], browser: Any,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    static = tmp_path / "static"  # a copy: the package's own files are not touched
    shutil.copytree(http.STATIC, static)
    js = static / "screen.js"
    installed = time.time() - 30 * 86400  # the release before was installed a month ago
    os.utime(js, (installed, installed))
    monkeypatch.setattr(http, "STATIC", static)
    n = make_node()
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(f"{n.base}/screens/{SCREEN}", wait_until="load")
        assert page.evaluate("window.__release") is None
        page.close()
        # the upgrade installs a new screen.js (pip writes it now); the kiosk (same profile and cache) opens the page
        js.write_text(js.read_text() + "\nwindow.__release = 'new';\n")
        page = ctx.new_page()
        page.goto(f"{n.base}/screens/{SCREEN}", wait_until="load")
        assert page.evaluate("window.__release") == "new", "the kiosk ran the cached screen.js of the old release"
        page.close()
    finally:
        ctx.close()
