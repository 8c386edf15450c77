"""In-process typed publish/subscribe between rooms.

Dispatch is synchronous and allocation-free on the hot path: ``publish`` looks
the handlers up by the event's exact type and calls them in subscription
order. Handlers must not block; a room that needs I/O schedules it on its own
task or thread. A handler that raises is counted and logged once per type,
and never stops the other handlers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Bus"]

log = logging.getLogger(__name__)
E = TypeVar("E")


class Bus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)

    def subscribe(self, event_type: type[E], handler: Callable[[E], None], *, first: bool = False) -> None:
        """``first``: call ``handler`` before those already subscribed (taps that must see an event before
        the rooms act on it, e.g. the e2e bench's tracer)."""
        if first:
            self._handlers[event_type].insert(0, handler)
        else:
            self._handlers[event_type].append(handler)

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        try:
            self._handlers[event_type].remove(handler)
        except ValueError:
            pass

    def publish(self, event: Any) -> None:
        t = type(event)
        self.published[t.__name__] += 1
        for h in self._handlers.get(t, ()):
            try:
                h(event)
            except Exception:
                name = t.__name__
                self.errors[name] += 1
                if self.errors[name] == 1 or self.errors[name] % 1000 == 0:
                    log.exception("handler %r failed on %s (%d failures so far)", h, name, self.errors[name])

    def health(self) -> dict[str, Any]:
        return {"published": dict(self.published), "handler_errors": dict(self.errors)}
