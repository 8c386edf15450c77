"""``ShelfBridge``: the node's shelf room (see the package docstring for the surface).

It owns one ``SerialLink`` per port, does the handshake, turns SAMPLES into
``ShelfEvent`` through a ``ShelfDetector`` per controller, sends commands
(seq numbers, ACKs, retries), keeps per-controller health, and re-sends what
each shelf display showed when a controller reboots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.config import NodeConfig
from edge.events import ShelfEvent, maker, new_id
from firmware_bridge import protocol as P
from firmware_bridge.detect import DetectorConfig, ShelfDetector
from firmware_bridge.driver import SerialLink, discover

__all__ = ["CommandError", "ControllerHealth", "Planogram", "ShelfBridge"]

log = logging.getLogger("shelfcast.shelves")
# (shelf, slot, sku, delta_units, confidence, t, controller, id): the frozen dataclass __init__ is ~2 µs
_shelf_event = maker(ShelfEvent)

Planogram = Callable[[str, int], tuple[str | None, float | None]]
DISCOVERY_INTERVAL_S = 5.0
STARTUP_GRACE_S = 15.0  # USB enumeration + controller boot: not "missing" before this
HELLO_RETRY_S = 1.0


class CommandError(RuntimeError):
    """A command was not acknowledged (timeout after retries) or was refused."""


@dataclass
class ControllerHealth:
    """Everything the node knows about the controller on one port."""

    port: str
    link: SerialLink
    hello: P.Hello | None = None
    shelf: str | None = None
    detector: ShelfDetector | None = None
    online: bool = False
    last_frame: float = 0.0  # monotonic
    last_hello_req: float = 0.0
    frames: int = 0
    lost_frames: int = 0
    malformed: int = 0
    protocol_errors: int = 0
    protocol_error: str = ""
    frames_before_hello: int = 0
    reboots: int = 0
    events: int = 0
    last_seq: int | None = None
    t_ms_last: int = 0
    t_ms_wraps: int = 0
    uptime_ms: int = 0
    hb_flags: int = 0
    tx_overflows: int = 0
    next_seq: int = 0
    pending: dict[int, asyncio.Future[P.Ack]] = field(default_factory=dict)
    shown: dict[int, P.Show] = field(default_factory=dict)
    went_offline: float | None = None
    garbage_mark: int = 0  # the decoder's garbage_bytes / crc_errors at the last read with a valid frame
    crc_mark: int = 0

    @property
    def controller_id(self) -> str | None:
        return self.hello.controller_id if self.hello else None


class ShelfBridge:
    """The shelf room. ``on_event`` is called on the event loop, once per detected change."""

    name = "shelves"

    def __init__(self, config: NodeConfig, on_event: Callable[[ShelfEvent], None],
                 planogram: Planogram | None = None, detector: DetectorConfig | None = None,
                 ports: list[str] | None = None, startup_grace_s: float = STARTUP_GRACE_S) -> None:
        self.config = config
        self.cfg = config.shelves
        self.on_event = on_event
        self.planogram = planogram
        self.detector_cfg = detector or DetectorConfig()
        self.extra_ports = list(ports or [])
        self.controllers: dict[str, ControllerHealth] = {}  # by port
        # benchmark hook: (event, port, arrival perf_counter_ns, t_ms of the deciding SAMPLES frame)
        self.trace: Callable[[ShelfEvent, str, int, int], None] | None = None
        self.events = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._shelf_of = {s.controller: s.id for s in config.layout.shelves if s.controller}
        self._layout_sku = {(s.id, sl.slot): sl.sku for s in config.layout.shelves for sl in s.slots}
        self._started = False
        self.startup_grace_s = startup_grace_s
        self._t_start = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._t_start = time.monotonic()
        if not self.cfg.enabled:
            return
        for port in self._configured_ports():
            self._add_port(port)
        self._task = asyncio.create_task(self._supervise(), name="shelves-supervisor")

    async def stop(self) -> None:
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        links = [c.link for c in self.controllers.values()]
        await asyncio.gather(*(asyncio.to_thread(link.stop) for link in links))
        for c in self.controllers.values():
            for fut in c.pending.values():
                if not fut.done():
                    fut.cancel()
        self.controllers.clear()

    def _configured_ports(self) -> list[str]:
        explicit = [p.port for p in self.cfg.ports if p.port != "auto"] + self.extra_ports
        auto = not self.cfg.ports or any(p.port == "auto" for p in self.cfg.ports)
        found = [f.path for f in discover(self.cfg.usb_ids)] if auto and not self.extra_ports else []
        return list(dict.fromkeys(explicit + found))

    def _baud(self, port: str) -> int:
        for p in self.cfg.ports:
            if p.port == port:
                return p.baudrate
        return 115200

    def _add_port(self, port: str) -> None:
        if port in self.controllers or self._loop is None:
            return
        link = SerialLink(port, self._loop, self._on_frames, self._on_link_state, self._baud(port),
                          self.cfg.reconnect_max_s)
        self.controllers[port] = ControllerHealth(port, link)
        link.start()

    def add_port(self, port: str) -> None:
        """Attach one more port at run time (tests, the demo, hot-plugged controllers)."""
        self._add_port(port)

    async def _supervise(self) -> None:
        last_discovery = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for c in self.controllers.values():
                if c.online and now - c.last_frame > self.cfg.offline_after_s:
                    c.online = False
                    c.went_offline = time.time()
                    log.warning("shelf controller %s on %s went silent (%.1f s without a frame)",
                                c.controller_id or "?", c.port, now - c.last_frame)
                if c.link.state == "open" and c.hello is None and not c.protocol_error \
                        and now - c.last_hello_req > HELLO_RETRY_S:
                    c.last_hello_req = now
                    self._send(c, P.HelloRequest())
            if now - last_discovery > DISCOVERY_INTERVAL_S and self.cfg.enabled:
                last_discovery = now
                auto = not self.cfg.ports or any(p.port == "auto" for p in self.cfg.ports)
                if auto and not self.extra_ports:
                    try:
                        found = await asyncio.to_thread(discover, self.cfg.usb_ids)
                    except Exception as exc:  # discovery must never take the room down
                        log.debug("discovery failed: %s", exc)
                        found = []
                    for f in found:
                        self._add_port(f.path)

    # -- link callbacks (on the loop) ----------------------------------------------------------
    def _on_link_state(self, link: SerialLink, state: str, msg: str) -> None:
        c = self.controllers.get(link.port)
        if c is None:
            return
        if state == "open":
            c.last_seq = None
            c.last_hello_req = time.monotonic()
            self._send(c, P.HelloRequest())
        elif c.online:
            c.online = False
            c.went_offline = time.time()
        if state != "open":
            for fut in c.pending.values():
                if not fut.done():
                    fut.set_exception(CommandError(msg or f"{link.port}: link {state}"))
            c.pending.clear()

    def _on_frames(self, link: SerialLink, items: list[tuple[float, int, P.Frame]]) -> None:
        c = self.controllers.get(link.port)
        if c is None:
            return
        now = time.monotonic()
        st = link.decoder.stats
        c.garbage_mark, c.crc_mark = st.garbage_bytes, st.crc_errors
        for wall, ns, fr in items:
            if fr.version != P.PROTOCOL_VERSION:
                c.protocol_errors += 1
                if not c.protocol_error:
                    c.protocol_error = (f"controller on {c.port} speaks shelf protocol v{fr.version}; this node "
                                        f"speaks v{P.PROTOCOL_VERSION}: flash matching firmware "
                                        "(`shelfcast firmware flash`) or update shelfcast")
                    log.error("%s", c.protocol_error)
                continue
            c.frames += 1
            c.last_frame = now
            if not c.online and c.hello is not None:
                c.online = True
                log.info("shelf controller %s on %s is back", c.controller_id, c.port)
            if c.last_seq is not None:
                gap = (fr.seq - c.last_seq - 1) & 0xFF
                if gap and fr.type != P.Hello.TYPE:
                    c.lost_frames += gap
            c.last_seq = fr.seq
            typ = fr.type
            try:
                if typ == 0x02:
                    self._on_samples(c, P.Samples.unpack(fr.payload), wall, ns)
                elif typ == 0x04:
                    ack = P.Ack.unpack(fr.payload)
                    fut = c.pending.get(ack.ack_seq)
                    if fut is not None and not fut.done():
                        fut.set_result(ack)
                elif typ == 0x03:
                    hb = P.Heartbeat.unpack(fr.payload)
                    c.uptime_ms, c.hb_flags, c.tx_overflows = hb.uptime_ms, hb.flags, hb.tx_overflows
                elif typ == 0x01:
                    self._on_hello(c, P.Hello.unpack(fr.payload))
                elif typ == 0x05:
                    lg = P.Log.unpack(fr.payload)
                    log.debug("controller %s: %s", c.controller_id, lg.text)
                else:
                    c.malformed += 1
            except P.ProtocolError as exc:
                c.malformed += 1
                log.debug("%s: malformed frame: %s", c.port, exc)

    def _on_hello(self, c: ControllerHealth, h: P.Hello) -> None:
        first = c.hello is None or c.hello.controller_id != h.controller_id
        rebooted = not first and h.uptime_ms < c.uptime_ms
        if rebooted:
            c.reboots += 1
        c.uptime_ms = h.uptime_ms
        prev = c.hello
        c.hello = h
        c.protocol_error = ""
        c.online = True
        if first or rebooted:
            c.t_ms_wraps = 0
            c.t_ms_last = 0
        shelf = self._shelf_of.get(h.controller_id, h.controller_id)
        # in app mode the controller is told to use shelves.sample_rate_hz right below
        rate = self.cfg.sample_rate_hz if h.mode == P.MODE_APP else h.sample_rate_hz
        if first or c.detector is None or c.detector.rate_hz != rate or len(c.detector.slots) != h.slot_count:
            c.detector = ShelfDetector(h.slot_count, rate, self.detector_cfg)
            c.shelf = shelf
            self._apply_planogram(c)
            if h.controller_id not in self._shelf_of:
                log.warning("controller %s (%s) is not in layout.shelves; its events use shelf id %r",
                            h.controller_id, c.port, shelf)
            log.info("shelf controller %s on %s: hw %s fw %s, %d slots @ %d Hz%s", h.controller_id, c.port,
                     h.hardware_id, h.firmware_str, h.slot_count, h.sample_rate_hz,
                     " (bootloader)" if h.mode == P.MODE_BOOTLOADER else "")
        elif rebooted:
            c.detector.reset()  # a reboot: same shelf, same weights, new clock
            if prev is not None and h.boot_reason in (P.BOOT_BROWN_OUT, P.BOOT_WATCHDOG):
                log.warning("shelf controller %s rebooted (%s)", h.controller_id, P.BOOT_REASONS[h.boot_reason])
        if (first or rebooted) and h.mode == P.MODE_BOOTLOADER:
            log.warning("%s", self._bootloader_error(c))
        if h.mode == P.MODE_APP and (first or rebooted):
            if h.sample_rate_hz != self.cfg.sample_rate_hz:
                self._fire(c, P.SetRate(self.cfg.sample_rate_hz))
            for show in list(c.shown.values()):  # display RAM is lost on reboot
                self._fire(c, show)

    def _apply_planogram(self, c: ControllerHealth) -> None:
        if c.detector is None or c.shelf is None:
            return
        for slot in range(len(c.detector.slots)):
            _, unit = self._lookup(c.shelf, slot)
            c.detector.set_unit(slot, unit)

    def refresh_planogram(self) -> None:
        """Re-read unit weights (call after the planogram or catalogue changed)."""
        for c in self.controllers.values():
            self._apply_planogram(c)

    def _lookup(self, shelf: str, slot: int) -> tuple[str | None, float | None]:
        if self.planogram is not None:
            try:
                return self.planogram(shelf, slot)
            except Exception as exc:  # a bad lookup must not stop sensing
                log.debug("planogram lookup failed for %s/%d: %s", shelf, slot, exc)
        return self._layout_sku.get((shelf, slot)), None

    def _on_samples(self, c: ControllerHealth, s: P.Samples, wall: float, ns: int) -> None:
        det = c.detector
        if det is None or c.hello is None or c.hello.mode != P.MODE_APP:
            c.frames_before_hello += 1
            return
        t_ms = s.t_ms
        if t_ms < c.t_ms_last:
            if t_ms < c.t_ms_last - 0x80000000:
                c.t_ms_wraps += 1
            else:  # the clock went back: a reboot whose HELLO we missed
                c.reboots += 1
                c.t_ms_wraps = 0
                det.reset()
                c.hello = None  # samples wait for a fresh handshake (the supervisor asks)
                c.frames_before_hello += 1
                return
        c.t_ms_last = t_ms
        c.uptime_ms = t_ms
        t = (t_ms + c.t_ms_wraps * 0x100000000) / 1000.0
        grams = [math.nan if v == P.NO_READING else v / 1000.0 for v in s.mg]
        dets = det.feed(t, s.first_slot, grams)
        if not dets:
            return
        shelf = c.shelf or ""
        cid = c.hello.controller_id
        for d in dets:
            sku, _ = self._lookup(shelf, d.slot)
            ev = _shelf_event(shelf, d.slot, sku, d.delta_units, d.confidence, wall - (t - d.t), cid, new_id())
            c.events += 1
            self.events += 1
            try:
                self.on_event(ev)
            except Exception:
                log.exception("shelf event handler failed for %s", ev)
            if self.trace is not None:
                self.trace(ev, c.port, ns, s.t_ms)

    # -- commands ------------------------------------------------------------------------------
    def _send(self, c: ControllerHealth, msg: P.Message) -> int:
        c.next_seq = c.next_seq % 255 + 1
        c.link.send(msg.frame(c.next_seq))
        return c.next_seq

    def _fire(self, c: ControllerHealth, msg: P.Message) -> None:
        task = asyncio.ensure_future(self._command(c, msg))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _command(self, c: ControllerHealth, msg: P.Message, timeout: float = 0.3,
                       retries: int = 3) -> P.Ack:
        """Send with a fresh seq; resend the *same* seq on timeout (the controller de-duplicates)."""
        assert self._loop is not None
        c.next_seq = c.next_seq % 255 + 1
        seq = c.next_seq
        frame = msg.frame(seq)
        fut: asyncio.Future[P.Ack] = self._loop.create_future()
        c.pending[seq] = fut
        try:
            for _ in range(retries + 1):
                if not c.link.send(frame):
                    raise CommandError(c.link.error or f"{c.port}: not connected")
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), timeout)
                except TimeoutError:
                    continue
            raise CommandError(f"{c.controller_id or c.port}: no answer to {type(msg).__name__} "
                               f"after {retries + 1} tries")
        finally:
            if c.pending.get(seq) is fut:
                del c.pending[seq]

    def _by_shelf(self, shelf: str) -> ControllerHealth | None:
        for c in self.controllers.values():
            if c.shelf == shelf and c.hello is not None:
                return c
        return None

    async def show(self, shelf: str, slot: int, name: str, price: float | None, promo: str = "") -> bool:
        """Put a product on a slot's shelf-edge display. False if it cannot be shown now."""
        c = self._by_shelf(shelf)
        if c is None or c.hello is None or not (c.hello.capabilities & P.CAP_DISPLAY):
            return False
        if not 0 <= slot < c.hello.slot_count:
            return False
        cents = None if price is None or price != price else max(0, min(2**32 - 1, round(price * 100)))
        msg = P.Show(slot, P.sanitize_text(name, P.NAME_MAX), cents, P.sanitize_text(promo, P.PROMO_MAX))
        c.shown[slot] = msg
        if not c.online:
            return False  # remembered: sent when the controller says HELLO again
        try:
            ack = await self._command(c, msg)
        except CommandError as exc:
            log.debug("show on %s/%d failed: %s", shelf, slot, exc)
            return False
        return ack.status == P.Status.OK

    async def command(self, shelf: str, msg: P.Message) -> P.Ack:
        """Send any command to a shelf's controller; raises ``CommandError``."""
        c = self._by_shelf(shelf)
        if c is None:
            raise CommandError(f"no controller for shelf {shelf!r} is connected")
        return await self._command(c, msg)

    async def tare(self, shelf: str, slot: int = P.ALL_SLOTS) -> bool:
        return (await self.command(shelf, P.Tare(slot))).status == P.Status.OK

    async def calibrate(self, shelf: str, slot: int, known_g: float) -> bool:
        return (await self.command(shelf, P.Calibrate(slot, round(known_g * 1000)))).status == P.Status.OK

    # -- health --------------------------------------------------------------------------------
    def _silence_error(self, c: ControllerHealth, st: Any, now: float) -> str:
        """Why a controller whose port is open is offline: garbage on the line, or silence."""
        if c.online or c.link.state != "open" or not c.last_frame:
            return ""
        age = now - c.last_frame
        junk, bad = st.garbage_bytes - c.garbage_mark, st.crc_errors - c.crc_mark
        if junk or bad:
            return (f"{c.port}: no valid frame for {age:.0f} s, only garbage ({junk} bytes, {bad} frames with a bad "
                    f"CRC): a loose or damaged cable, electrical noise, or firmware that is not ShelfCast's at "
                    f"{c.link.baudrate} baud; reseat or replace the cable, or flash it (`shelfcast firmware flash`)")
        return (f"{c.port}: controller silent for {age:.0f} s (port open, nothing received): it may have hung or "
                "lost power; power-cycle the shelf controller")

    @staticmethod
    def _bootloader_error(c: ControllerHealth) -> str:
        """A controller that answers from its bootloader (a flash interrupted by Ctrl-C or a closed laptop) sends
        no weights: its shelf sees no picks although the link is fine."""
        h = c.hello
        if h is None or h.mode != P.MODE_BOOTLOADER:
            return ""
        return (f"{c.port}: controller {h.controller_id} is in its bootloader (an interrupted firmware flash?) and "
                "sends no weights, so its shelf sees no picks; `sudo systemctl stop shelfcast`, then run the same "
                f"`shelfcast firmware flash --port {c.port} IMAGE` again (it resumes) or power-cycle the controller "
                f"(it boots its current firmware {h.firmware_str}), then `sudo systemctl start shelfcast`")

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        ctrls: dict[str, Any] = {}
        online = 0
        for c in self.controllers.values():
            st = c.link.decoder.stats
            h = c.hello
            entry = {
                "port": c.port,
                "controller": c.controller_id,
                "shelf": c.shelf,
                "online": c.online,
                "link": c.link.state,
                "error": (c.protocol_error or c.link.error or self._silence_error(c, st, now)
                          or self._bootloader_error(c)),
                "hardware": h.hardware_id if h else None,
                "firmware": h.firmware_str if h else None,
                "mode": ("bootloader" if h.mode == P.MODE_BOOTLOADER else "app") if h else None,
                "boot_reason": P.BOOT_REASONS.get(h.boot_reason, str(h.boot_reason)) if h else None,
                "slots": h.slot_count if h else None,
                "frames": c.frames,
                "crc_errors": st.crc_errors,
                "garbage_bytes": st.garbage_bytes,
                "resyncs": st.resyncs,
                "lost_frames": c.lost_frames,
                "malformed": c.malformed,
                "frames_before_hello": c.frames_before_hello,
                "protocol_errors": c.protocol_errors,
                "reconnects": c.link.stats.reconnects,
                "queue_drops": c.link.stats.queue_drops,
                "reboots": c.reboots,
                "events": c.events,
                "last_frame_age_s": round(now - c.last_frame, 3) if c.last_frame else None,
            }
            online += c.online
            ctrls[c.controller_id or c.port] = entry
        seen = {c.controller_id for c in self.controllers.values()}
        missing = sorted(cid for cid in self._shelf_of if cid not in seen)
        lost = [c for c in self.controllers.values() if not c.online and (c.hello is not None or c.frames)]
        waiting = [c for c in self.controllers.values() if c.hello is None and not c.frames]
        in_grace = now - self._t_start < self.startup_grace_s
        if not self.cfg.enabled:
            status = "disabled"
        elif (lost or any(c.protocol_error or self._bootloader_error(c) for c in self.controllers.values())
              or ((missing or waiting) and not in_grace)):
            status = "degraded"
        else:
            status = "ok"
        return {"status": status, "online": online, "offline": len(self.controllers) - online,
                "missing": missing, "starting": in_grace and bool(missing or waiting),
                "events": self.events, "controllers": ctrls}
