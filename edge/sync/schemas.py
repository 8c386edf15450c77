"""One JSON schema per MQTT payload, as pydantic models.

Downstream payloads are validated here before anything acts on them; a
payload that does not fit is rejected with an error event upstream (never a
crash). ``python -m edge.sync.schemas`` prints every schema as JSON Schema
(docs/mqtt.md lists the topics they belong to).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "SCHEMAS",
    "CatalogueDelta",
    "CatalogueSnapshot",
    "ChunkHeader",
    "Command",
    "ConfigUpdate",
    "PlanogramDelta",
    "PlanogramSnapshot",
    "ProfilesDelta",
    "ProfilesSnapshot",
    "PromotionEntry",
    "PromotionsSnapshot",
    "ReleaseManifest",
    "StockDelta",
    "StockSnapshot",
    "describe_error",
]

MAX_MESSAGE_BYTES = 128 * 1024  # AWS IoT Core's cap on one MQTT message
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_CUSTOMER_HASH = re.compile(r"[0-9a-f]{64}")  # edge.fusion.hash_customer: salted SHA-256, hex


def is_customer_hash(v: object) -> TypeGuard[str]:
    """The only form a shopper id may take in a message: hash_customer's 64 lowercase hex (never a raw id)."""
    return isinstance(v, str) and _CUSTOMER_HASH.fullmatch(v) is not None
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Sku = Annotated[str, Field(min_length=1, max_length=64)]
MsgId = Annotated[str, Field(min_length=1, max_length=128)]


# what a release can carry (edge.sync.topics.RELEASE_KINDS lists the same)
ReleaseKind = Literal["model", "catalogue", "planogram", "stock", "profiles", "promotions"]
MAX_PROMOTIONS = 50_000  # entries in one promotions snapshot: a store's plan is a few thousand at most


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- releases ------------------------------------------------------------------
class ReleaseManifest(_Strict):
    """``…/release/<kind>/manifest`` (retained): what the chunks add up to, signed."""

    kind: ReleaseKind
    version: Annotated[str, Field(pattern=VERSION_RE)]
    sha256: Sha256
    size: int = Field(ge=1, le=512 * 1024 * 1024)
    chunks: int = Field(ge=1, le=100_000)
    chunk_size: int = Field(ge=1024, le=MAX_MESSAGE_BYTES)
    format: Literal["file", "tar", "json", "json+zlib"] = "file"
    signature: Annotated[str, Field(max_length=200)] | None = None  # base64 Ed25519 over signed_message()
    key_id: str | None = None
    created: float | None = None

    def signed_message(self) -> bytes:
        """What the signature covers: kind, version, hash and size (so none can be swapped)."""
        return f"shelfcast-release/1\n{self.kind}\n{self.version}\n{self.sha256}\n{self.size}\n".encode()


class ChunkHeader(_Strict):
    """The JSON header in front of each chunk's bytes (``…/release/<kind>/chunk/<i>``)."""

    kind: ReleaseKind
    version: Annotated[str, Field(pattern=VERSION_RE)]
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    sha256: Sha256


# -- catalogue / planogram / stock / profiles ---------------------------------------
class ProductIn(_Strict):
    sku: Sku
    name: Annotated[str, Field(min_length=1, max_length=200)]
    department: str = ""
    category: str = ""
    product_type: str = ""
    brand: str = ""
    price: float | None = Field(default=None, ge=0)
    package_size: str = ""
    unit_weight_g: float | None = Field(default=None, gt=0)
    sales_heat: float = Field(default=0.0, ge=0)


class PlanogramEntry(_Strict):
    shelf: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    slot: int = Field(ge=0, le=255)
    sku: Sku | None = None


class ProfileIn(_Strict):
    # the salted hash, never a raw id: hash_customer's 64 lowercase hex, the only key a check-in can match (a
    # loyalty number, which the old pattern [A-Za-z0-9_-]{8,128} accepted, would be stored as is)
    customer: str
    demographics: dict[str, str | int | float | None] = Field(default_factory=dict)
    history: list[tuple[Sku, float, float]] = Field(default_factory=list)  # (sku, unix time, quantity)
    visits: int = Field(default=0, ge=0)
    updated: float = 0.0


    @field_validator("customer")
    @classmethod
    def _hashed(cls, v: str) -> str:
        if not is_customer_hash(v):
            raise ValueError("must be the salted hash of the customer id, hash_customer(id, fusion.customer_salt): "
                             "64 lowercase hex; a raw loyalty id is never accepted")
        return v


class CatalogueDelta(_Strict):
    """``…/catalogue/delta``: products to add or change."""

    id: MsgId
    upsert: list[ProductIn] = Field(min_length=1)


class PlanogramDelta(_Strict):
    """``…/planogram/delta``: slots to (re)assign; ``sku: null`` empties a slot."""

    id: MsgId
    entries: list[PlanogramEntry] = Field(min_length=1)


class StockDelta(_Strict):
    """``…/stock/delta``: absolute ``levels`` and/or relative ``adjust`` per sku."""

    id: MsgId
    levels: dict[Sku, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    adjust: dict[Sku, int] = Field(default_factory=dict)


class ProfilesDelta(_Strict):
    """``…/profiles/delta``: shopper profiles to add or replace, and ``delete``: hashed ids to erase from the node
    (a shopper's right to erasure: their profile goes, and their hash is cleared from stored visits)."""

    id: MsgId
    profiles: list[ProfileIn] = Field(default_factory=list)
    delete: list[str] = Field(default_factory=list)

    @field_validator("delete")
    @classmethod
    def _hashed(cls, v: list[str]) -> list[str]:
        for c in v:
            if not is_customer_hash(c):
                raise ValueError("each entry must be the salted hash of a customer id (64 lowercase hex), as in "
                                 "profiles[].customer; a raw loyalty id is never accepted")
        return v

    @model_validator(mode="after")
    def _something(self) -> ProfilesDelta:
        if not self.profiles and not self.delete:
            raise ValueError("a profiles delta needs at least one entry in 'profiles' or 'delete'")
        return self


class CatalogueSnapshot(_Strict):
    products: list[ProductIn] = Field(min_length=1)


class PlanogramSnapshot(_Strict):
    entries: list[PlanogramEntry]


class StockSnapshot(_Strict):
    levels: dict[Sku, Annotated[int, Field(ge=0)]]


class ProfilesSnapshot(_Strict):
    profiles: list[ProfileIn]


class PromotionEntry(_Strict):
    """One sku's promotion: on display and/or in the mailer from ``start`` to ``end`` (store-local dates,
    both inclusive)."""

    sku: Sku
    display: bool = False
    mailer: bool = False
    start: date
    end: date

    @model_validator(mode="after")
    def _sane(self) -> PromotionEntry:
        if not (self.display or self.mailer):
            raise ValueError(f"promotion of {self.sku!r}: set display and/or mailer to true (an entry with neither "
                             "promotes nothing; leave the sku out instead)")
        if self.end < self.start:
            raise ValueError(f"promotion of {self.sku!r}: end {self.end} is before start {self.start} (both dates "
                             "are inclusive, YYYY-MM-DD)")
        return self


class PromotionsSnapshot(_Strict):
    """The store's promotion plan (release kind ``promotions``): replaces the node's whole plan; a second stage
    trained with promotion columns reads the entries active on the request's day."""

    entries: list[PromotionEntry] = Field(max_length=MAX_PROMOTIONS)


# -- commands / config ------------------------------------------------------------
class Command(_Strict):
    """``…/cmd``: one command; the result goes to ``…/cmd/result`` with the same id."""

    id: MsgId
    command: Literal["rollback", "republish_state", "flush_outbox", "ping", "homeassistant_discovery", "check_in"]
    args: dict[str, Any] = Field(default_factory=dict)


class ConfigUpdate(_Strict):
    """``…/config``: runtime-tunable settings by dotted key (see docs/mqtt.md for the list)."""

    id: MsgId
    values: dict[str, Any] = Field(min_length=1)


# -- upstream (documented; built by the node) -----------------------------------------
class BatchEnvelope(_Strict):
    """Every upstream message from the outbox: ``items`` are events (each with its idempotency ``id``)."""

    schema_: Literal["shelfcast.batch/1"] = Field(alias="schema")
    store: str
    node: str
    boot: str
    first_seq: int
    last_seq: int
    items: list[dict[str, Any]]


class ErrorEvent(_Strict):
    type: Literal["sync_error"] = "sync_error"
    id: str
    topic: str
    reason: str
    t: float


class ReleaseStatus(_Strict):
    type: Literal["release_status"] = "release_status"
    id: str
    kind: str
    version: str
    step: Literal["manifest", "staging", "staged", "verified", "loaded", "canary", "swapped", "applied",
                  "refused", "rolled_back", "failed"]
    ok: bool
    detail: str = ""
    t: float


SCHEMAS: dict[str, type[BaseModel]] = {
    "release_manifest": ReleaseManifest,
    "chunk_header": ChunkHeader,
    "catalogue_delta": CatalogueDelta,
    "planogram_delta": PlanogramDelta,
    "stock_delta": StockDelta,
    "profiles_delta": ProfilesDelta,
    "catalogue_snapshot": CatalogueSnapshot,
    "planogram_snapshot": PlanogramSnapshot,
    "stock_snapshot": StockSnapshot,
    "profiles_snapshot": ProfilesSnapshot,
    "promotions_snapshot": PromotionsSnapshot,
    "command": Command,
    "config_update": ConfigUpdate,
    "batch_envelope": BatchEnvelope,
    "error_event": ErrorEvent,
    "release_status": ReleaseStatus,
}

SNAPSHOTS: dict[str, type[BaseModel]] = {
    "catalogue": CatalogueSnapshot,
    "planogram": PlanogramSnapshot,
    "stock": StockSnapshot,
    "profiles": ProfilesSnapshot,
    "promotions": PromotionsSnapshot,
}
DELTAS: dict[str, type[BaseModel]] = {
    "catalogue": CatalogueDelta,
    "planogram": PlanogramDelta,
    "stock": StockDelta,
    "profiles": ProfilesDelta,
}


def describe_error(exc: ValidationError, limit: int = 3) -> str:
    """A short, human-readable summary of what did not fit (no payload echoed back)."""
    parts = []
    for e in exc.errors(include_url=False, include_input=False)[:limit]:
        loc = ".".join(str(p) for p in e["loc"]) or "(payload)"
        parts.append(f"{loc}: {e['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def main() -> None:
    out = {name: m.model_json_schema(by_alias=True) for name, m in SCHEMAS.items()}
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
