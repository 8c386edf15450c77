"""Log output: JSON lines when asked, plain text otherwise."""

from __future__ import annotations

import io
import json
import logging

from edge.config import LoggingSection
from edge.logs import setup_logging


def test_json_lines() -> None:
    buf = io.StringIO()
    setup_logging(LoggingSection.model_validate({"level": "INFO", "json": True}), stream=buf)
    logging.getLogger("shelfcast.test").info("hello %s", "world")
    logging.getLogger("shelfcast.test").debug("hidden")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["msg"] == "hello world" and rec["level"] == "INFO" and rec["logger"] == "shelfcast.test"


def test_plain_text() -> None:
    buf = io.StringIO()
    setup_logging(LoggingSection(level="WARNING"), stream=buf)
    logging.getLogger("x").warning("careful")
    assert "WARNING x: careful" in buf.getvalue()
