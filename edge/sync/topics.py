"""The MQTT topic tree, in one place (documented in docs/mqtt.md).

Everything of one node lives under ``<prefix>/<store>/<node>/`` (prefix
``shelfcast/v1``). Downstream topics are also listened to under
``<prefix>/<store>/_all/`` so the cloud can address every node of a store at
once; ``_all`` cannot collide with a node id (ids start with a letter or digit).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL_NODES", "RELEASE_KINDS", "Topics"]

ALL_NODES = "_all"
RELEASE_KINDS: tuple[str, ...] = ("model", "catalogue", "planogram", "stock", "profiles", "promotions")
DELTA_KINDS: tuple[str, ...] = ("catalogue", "planogram", "stock", "profiles")


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    store: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.store}/{self.node}"

    @property
    def store_base(self) -> str:
        return f"{self.prefix}/{self.store}/{ALL_NODES}"

    # -- up ------------------------------------------------------------------
    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    @property
    def release_status(self) -> str:
        return f"{self.base}/release/status"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/cmd/result"

    # -- down ----------------------------------------------------------------
    def release_manifest(self, kind: str, *, everyone: bool = False) -> str:
        return f"{self.store_base if everyone else self.base}/release/{kind}/manifest"

    def release_chunk(self, kind: str, index: int, *, everyone: bool = False) -> str:
        return f"{self.store_base if everyone else self.base}/release/{kind}/chunk/{index}"

    def delta(self, kind: str, *, everyone: bool = False) -> str:
        return f"{self.store_base if everyone else self.base}/{kind}/delta"

    def cmd(self, *, everyone: bool = False) -> str:
        return f"{self.store_base if everyone else self.base}/cmd"

    def config(self, *, everyone: bool = False) -> str:
        return f"{self.store_base if everyone else self.base}/config"

    def subscriptions(self) -> list[str]:
        """Every downstream filter this node subscribes to (its own and its store's)."""
        out = []
        for base in (self.base, self.store_base):
            out += [f"{base}/release/+/manifest", f"{base}/release/+/chunk/+", f"{base}/cmd", f"{base}/config"]
            out += [f"{base}/{k}/delta" for k in DELTA_KINDS]
        return out

    def classify(self, topic: str) -> tuple[str, str | None, int | None]:
        """Map a downstream topic to (handler kind, release kind, chunk index); ("unknown", …) otherwise."""
        for base in (self.base, self.store_base):
            if not topic.startswith(base + "/"):
                continue
            parts = topic[len(base) + 1:].split("/")
            if len(parts) == 3 and parts[0] == "release" and parts[2] == "manifest":
                return "manifest", parts[1], None
            if len(parts) == 4 and parts[0] == "release" and parts[2] == "chunk":
                try:
                    return "chunk", parts[1], int(parts[3])
                except ValueError:
                    return "unknown", None, None
            if parts == ["cmd"]:
                return "cmd", None, None
            if parts == ["config"]:
                return "config", None, None
            if len(parts) == 2 and parts[1] == "delta" and parts[0] in DELTA_KINDS:
                return "delta", parts[0], None
        return "unknown", None, None
