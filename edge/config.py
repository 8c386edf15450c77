"""The node's one validated configuration.

Loaded once (``load_config``), passed down to every room. Unknown keys are
rejected; every problem is reported at once with its key path, the bad value,
what is allowed and the YAML line number (``ConfigError``).

Secrets (MQTT password, admin token, customer salt) may be given literally, as ``env:NAME``
or as ``file:/path``; they are resolved at load time and never logged
(``pydantic.SecretStr``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "DEMO_CUSTOMER_SALT",
    "ConfigError",
    "NodeConfig",
    "Problem",
    "default_config",
    "load_config",
    "parse_config",
]

ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The built-in fusion.customer_salt: public (it is in this file), so hashes made with it can be reversed by trying
# every loyalty number. `shelfcast demo` uses it; a deployed node needs the retailer's own salt (provision
# --customer-salt FILE).
DEMO_CUSTOMER_SALT = "shelfcast-demo-salt"
# ...and with a cloud link those hashes would leave the node: raw-id check-ins (POST /api/checkin) are refused
# (NodeConfig.refuses_raw_checkins); the cloud's already-hashed cmd check_in and everything else keep working.
DEMO_SALT_CHECKINS_REFUSED = (
    "fusion.customer_salt is the public demo salt and mqtt.cloud.url is set: check-ins with a raw loyalty id "
    "(POST /api/checkin) are refused, because their hashes would go to the cloud and anyone can reverse them by "
    "trying every loyalty number (the cloud's already-hashed cmd check_in still works); get the retailer's salt "
    "file from the cloud side and run `sudo shelfcast provision --customer-salt FILE`, then "
    "`sudo systemctl restart shelfcast`")
MIN_ADMIN_TOKEN = 16  # characters of signage.admin_token
Id = Annotated[str, Field(pattern=ID_RE)]
Point = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _resolve_secret(value: Any) -> Any:
    """``env:NAME`` / ``file:PATH`` indirection so secrets stay out of the YAML."""
    if isinstance(value, str):
        if value.startswith("env:"):
            name = value[4:]
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is not set (export it or give the value)")
            return os.environ[name]
        if value.startswith("file:"):
            p = Path(value[5:])
            try:
                return p.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read secret file {p}: {exc.strerror}") from None
    return value


def _nonempty_secret(value: Any, empty: str) -> Any:
    """``_resolve_secret``, refusing a value that resolves to blanks (``empty`` says why and names the fix)."""
    value = _resolve_secret(value)
    if isinstance(value, str) and not value.strip():
        raise ValueError(empty)
    return value


class NodeSection(_Strict):
    store_id: Id = "demo-store"
    node_id: Id = "node-1"
    data_dir: Path = Path("/var/lib/shelfcast")
    timezone: str = "America/New_York"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown IANA timezone; use a name like 'America/New_York' or 'UTC'") from None
        return v


class Zone(_Strict):
    id: Id
    name: str = ""
    polygon: list[Point]

    @field_validator("polygon")
    @classmethod
    def _poly(cls, v: list[Point]) -> list[Point]:
        if len(v) < 3:
            raise ValueError(f"a zone polygon needs at least 3 points, got {len(v)}")
        return v


class Slot(_Strict):
    slot: int = Field(ge=0, le=255)
    sku: str | None = None


class Shelf(_Strict):
    id: Id
    zone: Id
    position: Point
    controller: str | None = None  # controller id announced in the handshake
    slots: list[Slot] = Field(default_factory=list)
    reach_m: float = Field(default=1.2, gt=0, le=5)


class Screen(_Strict):
    id: Id
    kind: Literal["full", "strip", "shelf_display"] = "full"
    position: Point
    zone: Id
    orientation: Literal["landscape", "portrait"] = "landscape"
    shelf: Id | None = None
    slot: int | None = None


class LayoutSection(_Strict):
    zones: list[Zone] = Field(default_factory=list)
    shelves: list[Shelf] = Field(default_factory=list)
    screens: list[Screen] = Field(default_factory=list)


class SerialPort(_Strict):
    port: str  # "/dev/serial/by-id/...", "/dev/ttyACM0", or "auto"
    baudrate: int = Field(default=115200, gt=0)


class ShelvesSection(_Strict):
    enabled: bool = True
    ports: list[SerialPort] = Field(default_factory=list)
    usb_ids: list[str] = Field(default_factory=lambda: ["1209:5c5c"])
    sample_rate_hz: int = Field(default=20, ge=1, le=200)
    offline_after_s: float = Field(default=3.0, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)

    @field_validator("usb_ids")
    @classmethod
    def _vidpid(cls, v: list[str]) -> list[str]:
        for s in v:
            if not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", s):
                raise ValueError(f"{s!r} is not a USB VID:PID like '1209:5c5c'")
        return v


class CameraSection(_Strict):
    enabled: bool = False
    source: str | int = "synthetic"  # V4L2 index, /dev/videoN, rtsp://…, http://…, file path, "synthetic"
    width: int = Field(default=640, gt=0)
    height: int = Field(default=480, gt=0)
    fps: float = Field(default=15.0, gt=0, le=120)
    homography: list[list[float]] | None = None  # 3x3 image->floor (metres)
    stream_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    detect_width: int = Field(default=320, ge=80, le=1920)  # frames are downscaled to this for detection
    synthetic_shoppers: int = Field(default=3, ge=0, le=30)  # source "synthetic": simulated shoppers
    synthetic_seed: int = 0

    @field_validator("homography")
    @classmethod
    def _h(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None and (len(v) != 3 or any(len(r) != 3 for r in v)):
            raise ValueError("homography must be a 3x3 matrix (list of 3 lists of 3 numbers)")
        return v


class FusionSection(_Strict):
    time_tolerance_s: float = Field(default=1.5, gt=0, le=30)
    ambiguity_margin_m: float = Field(default=0.35, ge=0, le=5)
    session_idle_s: float = Field(default=300.0, gt=0)
    handoff_s: float = Field(default=2.0, ge=0, le=30)  # a lost track re-found this soon continues its session
    handoff_m: float = Field(default=1.0, ge=0, le=5)  # ... this close to where it was lost
    anonymous_idle_s: float = Field(default=60.0, gt=0)  # shelf-only session ends after this quiet time
    # ... and at its first pick after this long (a busy shelf is never 60 s quiet: its visit took hours of shoppers)
    anonymous_max_s: float = Field(default=180.0, gt=0, le=3600)
    # any other visit (a track, a check-in) ends at this age: a track kept for hours (staff restocking, a mannequin)
    # made one visit of hours of picks; 2 h is past any real grocery trip (docs/vision.md)
    visit_max_s: float = Field(default=7200.0, ge=60, le=86400)
    # camera down: a checked-in visit takes its zone's free shelves' picks for this long after the check-in (not
    # extended by picks: another shopper's picks there land on it at most this long); 0: never (docs/vision.md)
    stand_in_s: float = Field(default=120.0, ge=0, le=3600)
    # chain-wide salt for hashed customer ids: one retailer's secret, the same on all its nodes (the cloud joins
    # check-ins and profiles by the hash); literal, env:NAME or file:PATH. The default is public (DEMO_CUSTOMER_SALT).
    customer_salt: SecretStr = SecretStr(DEMO_CUSTOMER_SALT)

    @field_validator("customer_salt", mode="before")
    @classmethod
    def _salt(cls, v: Any) -> Any:
        # an empty salt (an empty file:, SHELFCAST_SALT= in an EnvironmentFile) makes the "hashed" ids plain
        # SHA-256 of loyalty numbers: anyone can reverse them by trying every number
        return _nonempty_secret(v, "the customer salt is empty; put the retailer's salt in a file and run `sudo "
                                   "shelfcast provision --customer-salt FILE` (or remove fusion.customer_salt for the "
                                   "demo salt)")

    def uses_demo_salt(self) -> bool:
        """True when shopper ids are hashed with the public demo salt (fine for `shelfcast demo` only)."""
        return self.customer_salt.get_secret_value() == DEMO_CUSTOMER_SALT


class ModelSection(_Strict):
    path: Path | None = None  # None: the bundled model in models/shipped
    public_key: Path | None = None  # Ed25519 key that signs releases
    k: int = Field(default=6, ge=1, le=50)
    diversity: float = Field(default=0.3, ge=0, le=1)
    repeat_cap: int = Field(default=3, ge=1)
    # Overload guard for the hot path: a visit whose pick has waited this long (ms) in the node's ranking queue
    # when its ranking starts (a burst of picks from several shelves is ranked one after another) is ranked by
    # the model's first stage alone, without the learned re-ranker (~0.1 ms a request). At store rates it never
    # fires; under a burst it keeps the set inside the 5 ms push budget. 0 turns the guard off.
    stage2_skip_after_ms: float = Field(default=1.0, ge=0)
    # A new shopper (no history, no pick yet) in front of a zone's screen: the model has no zone input (its training
    # data has no zones), so its cold list is the same in every zone. The zone's items (what its shelves stock) get
    # this share of the request's score span added before top-k: 0 = off, 1 = the zone's items always come first.
    # Requests without a zone, with a history or with a pick are not touched.
    cold_zone_blend: float = Field(default=0.5, ge=0, le=1)


class Promotion(_Strict):
    """A promoted product for idle screens (nobody in front): shown first, with the zone's popular items."""

    sku: str = Field(min_length=1)
    text: str = Field(default="on promotion", min_length=1, max_length=80)  # the reason line under it
    zones: list[Id] = Field(default_factory=list)  # empty: every zone
    hours: tuple[int, int] = (0, 24)  # local [start, end) hours; start > end runs past midnight

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: tuple[int, int]) -> tuple[int, int]:
        a, b = v
        if not (0 <= a <= 23 and 1 <= b <= 24 and a != b):
            raise ValueError("hours is [start, end): start 0..23, end 1..24, start != end (e.g. [7, 11])")
        return v

    def active(self, zone: str | None, hour: int) -> bool:
        """Runs in ``zone`` at local ``hour``."""
        if self.zones and zone not in self.zones:
            return False
        a, b = self.hours
        return a <= hour < b if a < b else (hour >= a or hour < b)


class SignageSection(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admin_token: SecretStr | None = None
    conversion_window_s: float = Field(default=600.0, gt=0)
    attract_after_s: float = Field(default=60.0, gt=0)
    promotions: list[Promotion] = Field(default_factory=list)  # on idle screens, in this order
    max_promotions: int = Field(default=2, ge=0, le=10)  # at most this many per idle set
    # live SSE streams (a screen page holds one): past a cap a new one is a 503 naming the key; loopback (the node's
    # own kiosk, `shelfcast bench --screens` up to 500) counts only towards the total. ~13 KB of RSS a stream;
    # at most 3000: the unit's LimitNOFILE is 4096.
    max_streams: int = Field(default=512, ge=1, le=3000)
    max_streams_per_ip: int = Field(default=16, ge=1, le=3000)
    # a connection that has not sent a whole request (headers, an admin body) by then is closed (slow clients)
    request_timeout_s: float = Field(default=15.0, ge=1, le=600)
    # every TCP connection to the port (a stream holds one; so do pages, JSON, health and idle keep-alive ones):
    # past a cap a new one gets a 503 naming the key and is closed; loopback (the node itself) is never refused and
    # counts only towards the total. A connection holds 1 descriptor (2 while a file is sent); the defaults leave
    # most of the unit's LimitNOFILE 4096 to the node. Left out, they stay above raised stream caps.
    max_connections: int = Field(default=1024, ge=16, le=3100)
    max_connections_per_ip: int = Field(default=64, ge=2, le=3100)
    # addresses or networks (CIDR) left out of the per-device caps (max_streams_per_ip, max_connections_per_ip), not
    # of the totals: a NAT/VLAN gateway with several screens behind it, one player showing many screens
    trusted_clients: list[str] = Field(default_factory=list)
    # opt-in HTTPS (docs/privacy.md, check-ins): a second listener on tls_port with these PEM files (both or neither),
    # same routes and caps; admin_tls_only refuses admin requests (POST...) on the plain port unless from loopback
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_port: int = Field(default=8443, ge=1, le=65535)
    admin_tls_only: bool = False

    @model_validator(mode="after")
    def _tls_pair(self) -> SignageSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            have, missing = ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            raise ValueError(f"signage.{have} is set but signage.{missing} is not: HTTPS needs both signage.tls_cert "
                             "(the certificate, PEM) and signage.tls_key (its private key, PEM); set both, or neither")
        if self.admin_tls_only and self.tls_cert is None:
            raise ValueError("signage.admin_tls_only is true but no certificate is set: admin requests would be "
                             "refused everywhere but loopback; set signage.tls_cert and signage.tls_key, or remove "
                             "admin_tls_only")
        if self.tls_cert is not None and self.tls_port == self.port:
            raise ValueError(f"signage.tls_port ({self.tls_port}) is signage.port: HTTPS needs its own port; set "
                             "tls_port to another one (8443 by default)")
        return self

    @field_validator("trusted_clients", mode="before")
    @classmethod
    def _one_trusted_client(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # one address written without a list

    @field_validator("trusted_clients")
    @classmethod
    def _trusted_clients(cls, v: list[str]) -> list[str]:
        import ipaddress

        for i, raw in enumerate(v):
            try:
                net = ipaddress.ip_network(raw.strip(), strict=False)
            except ValueError:
                raise ValueError(f"entry {i} ({raw!r}) is not an IP address or network; write one address "
                                 "(192.168.10.20) or a network in CIDR form (192.168.10.0/24) per entry") from None
            if net.prefixlen == 0:
                raise ValueError(f"entry {i} ({raw!r}) is every address, which turns the per-device caps off for the "
                                 "whole network; list the gateways or players that need it, or raise "
                                 "signage.max_connections_per_ip and signage.max_streams_per_ip instead")
        return [raw.strip() for raw in v]

    @model_validator(mode="before")
    @classmethod
    def _connection_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            try:
                streams, per_ip = int(data.get("max_streams", 512)), int(data.get("max_streams_per_ip", 16))
            except (TypeError, ValueError):
                return data  # the field's own check names it
            if "max_connections" not in data and streams + 64 > 1024:
                data = {**data, "max_connections": min(3100, streams + 64)}
            if "max_connections_per_ip" not in data and per_ip + 16 > 64:
                total = data.get("max_connections", 1024)
                cap = min(3100, per_ip + 16, total if isinstance(total, int) else 3100)
                data = {**data, "max_connections_per_ip": cap}
        return data

    @model_validator(mode="after")
    def _connections_above_streams(self) -> SignageSection:
        # a stream holds a connection: at the connection cap a device could not even load the page it streams to
        for conns, streams in (("max_connections", "max_streams"),
                               ("max_connections_per_ip", "max_streams_per_ip")):
            c, s = getattr(self, conns), getattr(self, streams)
            if c <= s:
                raise ValueError(f"signage.{conns} ({c}) must be above signage.{streams} ({s}): every live screen "
                                 f"stream holds a connection and its page, JSON and health requests need more; set "
                                 f"{conns} to at least {s + 16}, or leave it out")
        if self.max_connections_per_ip > self.max_connections:
            raise ValueError(f"signage.max_connections_per_ip ({self.max_connections_per_ip}) is above "
                             f"signage.max_connections ({self.max_connections}); lower it or raise max_connections")
        return self

    @field_validator("admin_token", mode="before")
    @classmethod
    def _secret(cls, v: Any) -> Any:
        # an empty token (e.g. SHELFCAST_ADMIN_TOKEN= in an EnvironmentFile, an empty file:) would let anyone
        # with "Authorization: Bearer " plus a blank through; absence is how admin actions are turned off
        v = _nonempty_secret(v, "the admin token is empty; set a long random one (e.g. `openssl rand -hex 24`), "
                                "or remove signage.admin_token to turn admin actions off")
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if isinstance(raw, str) and len(raw.strip()) < MIN_ADMIN_TOKEN:
            # anyone on the store network may try tokens against the screens port; a short one is guessed
            raise ValueError(f"the admin token is {len(raw.strip())} characters, too short to resist guessing; use "
                             f"at least {MIN_ADMIN_TOKEN} random ones: `openssl rand -hex 16` (32 characters), or "
                             "remove signage.admin_token to turn admin actions off")
        return v


class BrokerSection(_Strict):
    url: str | None = None  # mqtt://host:port or mqtts://host:port; None disables
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"mqtts?://[^/:\s]+(:\d{1,5})?/?", v):
            raise ValueError("broker url must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        return v

    @field_validator("password", mode="before")
    @classmethod
    def _secret(cls, v: Any) -> Any:
        return _resolve_secret(v)

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> BrokerSection:
        # The link speaks TLS only for mqtts://: with mqtt:// these files would be ignored and the events (and any
        # password) would go out in clear text while the config looks like TLS.
        files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
        if self.url is not None and self.url.startswith("mqtt://") and files:
            tls_url = re.sub(r"^mqtt://([^/:]+)(:\d+)?/?$", r"mqtts://\1:8883", self.url)
            raise ValueError(f"url {self.url} is plain MQTT but {', '.join(files)} {'is' if len(files) == 1 else 'are'}"
                             f" set for TLS; the connection would not be encrypted: use url: {tls_url} (the "
                             "broker's TLS port), or remove the TLS files")
        return self


class SyncSection(_Strict):
    """Cloud sync tuning (edge/sync, docs/mqtt.md); the defaults suit a store link and AWS IoT's 128 KB cap."""

    session_expiry_s: int = Field(default=7 * 86400, ge=0)  # broker keeps our session (queued commands) this long
    connack_timeout_s: float = Field(default=10.0, gt=0)  # no CONNACK by then: say why (e.g. missing client cert)
    batch_max_events: int = Field(default=500, ge=1, le=10_000)
    batch_max_age_ms: int = Field(default=200, ge=0, le=60_000)  # a partial batch leaves once this old
    max_message_bytes: int = Field(default=128 * 1024, ge=4096, le=256 * 1024 * 1024)
    outbox_max_age_s: float = Field(default=14 * 86400.0, gt=0)  # older upstream events are evicted (counted)
    state_interval_s: float = Field(default=60.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # a catalogue/planogram/stock/profiles snapshot's JSON, decompressed: larger ones are refused (parsed whole,
    # they take ~10x their size in RAM; the full Complete Journey catalogue is 23 MB)
    max_snapshot_mb: int = Field(default=32, ge=1, le=1024)
    homeassistant: bool = False  # publish Home Assistant MQTT discovery for the node, screens and shelves
    homeassistant_prefix: str = "homeassistant"


class MqttSection(_Strict):
    local: BrokerSection = Field(default_factory=BrokerSection)
    cloud: BrokerSection = Field(default_factory=BrokerSection)
    topic_prefix: str = "shelfcast/v1"
    sync: SyncSection = Field(default_factory=SyncSection)


class StoreSection(_Strict):
    retention_days: float = Field(default=14.0, gt=0)
    max_events: int = Field(default=2_000_000, ge=1000)
    max_outbox: int = Field(default=500_000, ge=1000)
    flush_interval_ms: int = Field(default=500, ge=1, le=5000)  # SD wear: one commit per interval at most


class LoggingSection(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")


class NodeConfig(_Strict):
    node: NodeSection = Field(default_factory=NodeSection)
    layout: LayoutSection = Field(default_factory=LayoutSection)
    shelves: ShelvesSection = Field(default_factory=ShelvesSection)
    camera: CameraSection = Field(default_factory=CameraSection)
    fusion: FusionSection = Field(default_factory=FusionSection)
    model: ModelSection = Field(default_factory=ModelSection)
    signage: SignageSection = Field(default_factory=SignageSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    store: StoreSection = Field(default_factory=StoreSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _cross_checks(self) -> NodeConfig:
        problems = cross_check(self.model_dump(mode="json", by_alias=True))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- helpers -----------------------------------------------------------
    def refuses_raw_checkins(self) -> bool:
        """The public demo salt with a cloud link: POST /api/checkin is refused (DEMO_SALT_CHECKINS_REFUSED)."""
        return self.fusion.uses_demo_salt() and self.mqtt.cloud.url is not None

    def redacted(self) -> dict[str, Any]:
        """The config as plain JSON data with every secret masked."""
        return json.loads(self.model_dump_json(by_alias=True))

    def zone_of(self, x: float, y: float) -> str | None:
        for z in self.layout.zones:
            if point_in_polygon(x, y, z.polygon):
                return z.id
        return None


def cross_check(raw: dict[str, Any]) -> list[str]:
    """Checks across sections, on plain data so they run even when a field is bad."""
    problems: list[str] = []
    layout = raw.get("layout") if isinstance(raw, dict) else None
    if not isinstance(layout, dict):
        return problems

    def items(name: str) -> list[dict[str, Any]]:
        v = layout.get(name)
        return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []

    def key(v: Any) -> Any:  # a wrong-typed id or reference (a list, a mapping) is compared by its text
        return v if v is None or isinstance(v, (str, int, float, bool)) else repr(v)

    for section in ("zones", "shelves", "screens"):
        seen: set[Any] = set()
        for i, it in enumerate(items(section)):
            if key(it.get("id")) in seen:
                problems.append(
                    f"layout.{section}.{i}.id: two {section} with id {it.get('id')!r}; ids must be unique"
                )
            seen.add(key(it.get("id")))
    zones = {key(z.get("id")) for z in items("zones")}
    shelves = {key(s.get("id")) for s in items("shelves")}
    for i, sh in enumerate(items("shelves")):
        if "zone" in sh and key(sh["zone"]) not in zones:
            problems.append(
                f"layout.shelves.{i}.zone: shelf {sh.get('id')!r} is in unknown zone {sh['zone']!r}; "
                f"known zones: {sorted(str(z) for z in zones)}"
            )
        raw_slots = sh.get("slots")
        slots = [key(s.get("slot")) for s in raw_slots if isinstance(s, dict)] if isinstance(raw_slots, list) else []
        if len(slots) != len(set(slots)):
            problems.append(f"layout.shelves.{i}.slots: shelf {sh.get('id')!r} lists a slot number twice")
    for i, sc in enumerate(items("screens")):
        if "zone" in sc and key(sc["zone"]) not in zones:
            problems.append(
                f"layout.screens.{i}.zone: screen {sc.get('id')!r} is in unknown zone {sc['zone']!r}; "
                f"known zones: {sorted(str(z) for z in zones)}"
            )
        if sc.get("shelf") is not None and key(sc["shelf"]) not in shelves:
            problems.append(f"layout.screens.{i}.shelf: screen {sc.get('id')!r} names unknown shelf {sc['shelf']!r}")
    signage = raw.get("signage")
    promos = signage.get("promotions") if isinstance(signage, dict) else None
    for i, pr in enumerate(promos if isinstance(promos, list) else []):
        pz = pr.get("zones") if isinstance(pr, dict) else None
        for z in pz if isinstance(pz, list) else []:
            if zones and key(z) not in zones:
                problems.append(f"signage.promotions.{i}.zones: unknown zone {z!r}; "
                                f"known zones: {sorted(str(z) for z in zones)}")
    return problems


def point_in_polygon(x: float, y: float, poly: list[Point]) -> bool:
    inside = False
    n = len(poly)
    j = n - 1
    for i in range(n):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / ((yj - yi) or 1e-12) + xi:
            inside = not inside
        j = i
    return inside


# -- errors -------------------------------------------------------------------


class Problem(BaseModel):
    path: str
    message: str
    value: Any = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        val = "" if self.value is None else f" (got {self.value!r})"
        return f"{where}{self.path}: {self.message}{val}"


class ConfigError(Exception):
    """Every problem found in a config file, each with key path and line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: {len(self.problems)} problem(s) in the configuration"
        return "\n".join([head, *("  - " + str(p) for p in self.problems)])


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map every key path in the YAML document to its 1-based line number."""
    index: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                index[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    if root is not None:
        walk(root, ())
    return index


_ALLOWED_HINTS = {
    "extra_forbidden": "unknown key; remove it or check the spelling",
}


def _problems_from(exc: ValidationError, lines: dict[tuple[str, ...], int], raw: Any) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        # pydantic appends the union member / validator name for some errors; trim unknown tails
        while loc and loc not in lines and loc[:-1] in lines and not loc[-1].isdigit():
            if _lookup(raw, loc) is not _MISSING:
                break
            loc = loc[:-1]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _lookup(raw, loc[:-1])
            allowed = ""
            model = _model_at(loc[:-1])
            if model is not None:
                allowed = f"; allowed keys: {', '.join(sorted(model.model_fields))}"
            msg = _ALLOWED_HINTS["extra_forbidden"] + allowed
            _ = parent
        elif err["type"] == "literal_error":
            msg = f"{msg}"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        line = None
        probe = loc
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        value = err.get("input")
        if isinstance(value, dict | list) or err["type"] == "missing":
            value = None
        if loc and loc[-1] in ("password", "admin_token", "customer_salt"):
            value = "***"
        if err["type"] == "value_error" and not loc and ";" in msg:
            for part in msg.split("; "):
                path, _, rest = part.partition(": ")
                keys = tuple(path.split("."))
                out.append(Problem(path=path, message=rest, line=lines.get(keys)))
            continue
        out.append(Problem(path=".".join(loc) or "(top level)", message=msg, value=value, line=line))
    return out


_MISSING = object()


def _lookup(raw: Any, loc: tuple[str, ...]) -> Any:
    cur = raw
    for p in loc:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            return _MISSING
    return cur


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: Any = NodeConfig
    for p in loc:
        if p.isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(p)
        if field is None:
            # alias lookup
            for f in getattr(model, "model_fields", {}).values():
                if f.alias == p:
                    field = f
                    break
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cand = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cand:
            return None
        model = cand[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def parse_config(text: str, source: str = "<config>") -> NodeConfig:
    """Validate YAML text; raises ``ConfigError`` listing every problem."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, [Problem(path="(yaml)", message=f"not valid YAML: {exc}", line=line)]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [Problem(path="(top level)", message="the config must be a mapping of sections")])
    try:
        return NodeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = _line_index(text)
        problems = _problems_from(exc, lines, raw)
        known = {p.path for p in problems}
        for msg in cross_check(raw):
            path, _, rest = msg.partition(": ")
            if path not in known:
                problems.append(Problem(path=path, message=rest, line=lines.get(tuple(path.split(".")))))
        raise ConfigError(source, problems) from None


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(str(p), [Problem(path="(file)", message="file not found; check the path")]) from None
    except PermissionError as exc:  # an installed node's config is root:shelfcast 0640 in a 0750 directory
        raise ConfigError(str(p), [Problem(path="(file)", message=f"cannot read: {exc.strerror} (on a node the "
                                           "config is root:shelfcast 0640): run the command with sudo")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [Problem(path="(file)", message=f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, str(p))


def default_config(**overrides: Any) -> NodeConfig:
    """The embedded defaults (no layout): what ``shelfcast run`` uses without a file."""
    return NodeConfig.model_validate(overrides)


def json_schema() -> dict[str, Any]:
    return NodeConfig.model_json_schema(by_alias=True)
