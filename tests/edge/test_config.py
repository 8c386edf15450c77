"""Config validation: every problem at once, with key path, value, allowed values and line."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, load_config, parse_config

BAD = """\
node:
  store_id: s1
  colour: blue
signage:
  port: eighty
layout:
  zones:
    - id: a
      polygon: [[0, 0], [1, 0]]
  shelves:
    - id: s
      zone: nowhere
      position: [0, 0]
  screens:
    - {id: x, position: [0, 0], zone: a}
    - {id: x, position: [0, 0], zone: a}
logging:
  level: LOUD
"""


def test_every_problem_reported_with_path_and_line() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(BAD, "bad.yaml")
    probs = {p.path: p for p in ei.value.problems}
    assert probs["node.colour"].line == 3
    assert "unknown key" in probs["node.colour"].message
    assert "store_id" in probs["node.colour"].message  # lists the allowed keys
    assert probs["signage.port"].line == 5 and probs["signage.port"].value == "eighty"
    assert probs["layout.zones.0.polygon"].line == 9
    assert "at least 3 points" in probs["layout.zones.0.polygon"].message
    assert "unknown zone 'nowhere'" in probs["layout.shelves.0.zone"].message
    assert probs["layout.shelves.0.zone"].line == 12
    assert "unique" in probs["layout.screens.1.id"].message
    assert "'DEBUG'" in probs["logging.level"].message  # names the allowed values
    assert len(ei.value.problems) == 6


def test_defaults_are_valid_and_demo_layout_loads() -> None:
    cfg = parse_config("")
    assert cfg.signage.port == 8080 and cfg.node.timezone == "America/New_York"
    from importlib import resources

    demo = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    assert len(demo.layout.zones) == 4 and len(demo.layout.shelves) == 8
    assert demo.zone_of(1.0, 1.0) == "produce" and demo.zone_of(9.0, 6.0) == "drinks"
    assert demo.zone_of(-1.0, 1.0) is None


def test_secrets_from_env_and_file_are_masked(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SC_TOKEN", "s3cret-token-for-tests")
    secret_file = tmp_path / "pw"
    secret_file.write_text("hunter2\n")
    cfg = parse_config(f"signage:\n  admin_token: env:SC_TOKEN\nmqtt:\n  cloud:\n    password: file:{secret_file}\n")
    assert cfg.signage.admin_token is not None
    assert cfg.signage.admin_token.get_secret_value() == "s3cret-token-for-tests"
    assert cfg.mqtt.cloud.password is not None and cfg.mqtt.cloud.password.get_secret_value() == "hunter2"
    dumped = str(cfg.redacted())
    assert "s3cret" not in dumped and "hunter2" not in dumped and "**" in dumped


def test_missing_env_secret_is_named() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config("signage:\n  admin_token: env:NOPE_NOT_SET_123\n")
    assert "NOPE_NOT_SET_123" in str(ei.value)


def test_bad_yaml_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config("node: [unclosed\n")
    assert ei.value.problems[0].line is not None
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_broker_url_and_timezone_checked() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config("mqtt:\n  cloud:\n    url: http://x\nnode:\n  timezone: Mars/Olympus\n")
    paths = {p.path for p in ei.value.problems}
    assert paths == {"mqtt.cloud.url", "node.timezone"}
