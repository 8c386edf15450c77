"""``shelfcast firmware list|flash|tare|calibrate|pack`` and ``shelfcast bench serial``.

These open the port themselves (exclusively): stop the node first, or they
report the port busy.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from edge.cli import CommandRegistry, UserError, positive_float, print_json, print_result

__all__ = ["register"]

NODE_CONFIG = Path("/etc/shelfcast/shelfcast.yaml")  # what the installer and `shelfcast provision` write


def register(reg: CommandRegistry) -> None:
    p = reg.subcommand("firmware", "list", "shelf controllers found: port, id, hardware, firmware", _list)
    p.add_argument("--port", action="append", default=[], metavar="PORT",
                   help="query this port (repeatable); default: shelves.ports of the node config and USB discovery "
                   "of its shelves.usb_ids")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"node config (default: $SHELFCAST_CONFIG or {NODE_CONFIG} when it exists)")
    p.add_argument("--json", action="store_true")

    p = reg.subcommand("firmware", "flash", "flash a controller's firmware image (resumes after a cable pull)",
                       _flash)
    p.add_argument("--port", required=True, metavar="PORT")
    p.add_argument("image", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    p.add_argument("--reconnect-timeout", type=float, default=60.0, metavar="S",
                   help="how long to wait for the port to come back after a cable pull")

    p = reg.subcommand("firmware", "identify",
                       "show the controller id and slot numbers on its shelf-edge displays for a while (which shelf "
                       "is which)", _identify)
    p.add_argument("--port", required=True, metavar="PORT")
    p.add_argument("--seconds", type=float, default=30.0, metavar="S",
                   help="how long the displays show it before they are cleared (default 30; Ctrl-C clears at once)")

    p = reg.subcommand("firmware", "tare", "zero a slot's scale (empty the slot first)", _tare)
    p.add_argument("--port", required=True, metavar="PORT")
    p.add_argument("--slot", type=int, default=None, help="slot number (default: all slots)")

    p = reg.subcommand("firmware", "calibrate",
                       "set a slot's scale from a known weight lying on the tared slot", _calibrate)
    p.add_argument("--port", required=True, metavar="PORT")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--grams", type=float, required=True, help="the known weight now on the slot")

    p = reg.subcommand("firmware", "pack", "wrap a raw firmware binary into a .scfw image", _pack)
    p.add_argument("payload", type=Path, metavar="BINARY")
    p.add_argument("--hardware", required=True, help="hardware id, e.g. SC-LC8-r2")
    p.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH")
    p.add_argument("--out", type=Path, required=True)

    p = reg.subcommand("bench", "serial", "shelf serial link: throughput, latency, detection quality", _bench)
    p.add_argument("--json", action="store_true")
    p.add_argument("--shelf-hours", type=positive_float, default=24.0,
                   help="simulated shelf-hours fed straight to the detector (default 24)")
    p.add_argument("--pty-seconds", type=positive_float, default=20.0,
                   help="seconds of scripted picks through a real pty (default 20)")
    p.add_argument("--frames", type=int, default=50_000, help="frames for the throughput run")
    p.add_argument("--seed", type=int, default=1)


def _node_config(usb_ids: list[str]) -> Path | None:
    """The node's own config, as doctor and provision find it ($SHELFCAST_CONFIG, else /etc/shelfcast/shelfcast.yaml
    when there is one): its shelves.usb_ids and shelves.ports say where the controllers are."""
    env = os.environ.get("SHELFCAST_CONFIG")
    path = Path(env) if env else NODE_CONFIG
    if os.access(path, os.R_OK):
        return path
    ids = ", ".join(usb_ids)
    # there, but not for this user (root:shelfcast 0640 in a 0750 directory)
    if os.path.exists(path) or (os.path.isdir(path.parent) and not os.access(path.parent, os.X_OK)):
        print(f"note: cannot read {path} as this user, so its shelves.ports and shelves.usb_ids are not used "
              f"(run it with sudo); looking for USB ids {ids}", file=sys.stderr)
    elif env:
        print(f"note: $SHELFCAST_CONFIG names {path}, which does not exist; looking for USB ids {ids}",
              file=sys.stderr)
    return None


def _ports(args: argparse.Namespace) -> list[str]:
    if args.port:
        return list(args.port)
    from edge.config import ConfigError, default_config, load_config
    from firmware_bridge.driver import discover

    usb_ids = default_config().shelves.usb_ids
    explicit: list[str] = []
    path = args.config if args.config is not None else _node_config(usb_ids)
    if path is not None:
        try:
            cfg = load_config(path)
        except ConfigError:
            if args.config is not None:
                raise
            print(f"note: {path} is not a valid config (`shelfcast config validate {path}`); looking for USB ids "
                  f"{', '.join(usb_ids)}", file=sys.stderr)
        else:
            usb_ids = cfg.shelves.usb_ids
            explicit = [p.port for p in cfg.shelves.ports if p.port != "auto"]
    return list(dict.fromkeys(explicit + [f.path for f in discover(usb_ids)]))


def _list(args: argparse.Namespace) -> int:
    from firmware_bridge.flash import FlashError, query
    from firmware_bridge.protocol import BOOT_REASONS, MODE_BOOTLOADER

    ports = _ports(args)
    rows = []
    for port in ports:
        try:
            h = query(port)
            rows.append({"port": port, "controller": h.controller_id, "hardware": h.hardware_id,
                         "firmware": h.firmware_str, "slots": h.slot_count,
                         "mode": "bootloader" if h.mode == MODE_BOOTLOADER else "app",
                         "boot_reason": BOOT_REASONS.get(h.boot_reason, str(h.boot_reason)), "error": None})
        except FlashError as exc:
            rows.append({"port": port, "controller": None, "hardware": None, "firmware": None, "slots": None,
                         "mode": None, "boot_reason": None, "error": str(exc)})
    if args.json:
        print_json({"controllers": rows})
    elif not rows:
        print("no shelf controllers found (USB ids checked; pass --port PORT to query a port directly)")
    else:
        print(f"{'PORT':<44} {'CONTROLLER':<18} {'HARDWARE':<12} {'FIRMWARE':<9} {'SLOTS':>5} MODE")
        for r in rows:
            if r["error"]:
                print(f"{r['port']:<44} error: {r['error']}")
            else:
                print(f"{r['port']:<44} {r['controller']:<18} {r['hardware']:<12} {r['firmware']:<9} "
                      f"{r['slots']:>5} {r['mode']}")
    return 0 if rows and all(r["error"] is None for r in rows) else (1 if rows else 0)


class _Bar:
    """A small progress bar on stderr (no dependency; tqdm is not a runtime requirement)."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.t0 = time.monotonic()
        self.last = 0.0
        self.open_line = False  # a bar is drawn and its line not ended yet

    def end_line(self) -> None:
        if self.open_line:
            sys.stderr.write("\n")
            self.open_line = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.05:
            return
        self.last = now
        frac = done / total if total else 1.0
        fill = int(frac * self.width)
        rate = done / max(1e-6, now - self.t0) / 1024
        sys.stderr.write(f"\rflashing [{'#' * fill}{'.' * (self.width - fill)}] {frac * 100:5.1f}% "
                         f"{done / 1024:7.1f}/{total / 1024:.1f} KiB {rate:6.1f} KiB/s")
        self.open_line = True
        if done >= total:
            self.end_line()
        sys.stderr.flush()


def _flash(args: argparse.Namespace) -> int:
    from firmware_bridge.flash import FlashError, FlashInterrupted, flash
    from firmware_bridge.image import ImageError, read_image

    try:
        image = read_image(args.image)
    except ImageError as exc:
        raise UserError(f"{args.image}: {exc}; nothing was written") from None
    bar = None if args.json else _Bar()
    try:
        res = flash(args.port, image, bar, reconnect_timeout=args.reconnect_timeout)
    except FlashInterrupted as exc:  # Ctrl-C: say where the controller was left, exit 130 like any interrupt
        if bar is not None:
            bar.end_line()
        raise UserError(str(exc), code=130) from None
    except FlashError as exc:
        if bar is not None:
            bar.end_line()
        raise UserError(str(exc), code=3) from None
    if args.json:
        print_json({"ok": True, "controller": res.controller_id, "hardware": res.hardware_id,
                    "old_version": res.old_version, "new_version": res.new_version, "bytes": res.bytes_sent,
                    "retries": res.retries, "reconnects": res.reconnects, "resumed_from": res.resumed_from,
                    "seconds": round(res.seconds, 3)})
    else:
        print(f"controller {res.controller_id}: {res.old_version} -> {res.new_version} "
              f"({res.bytes_sent} bytes, {res.retries} retries, {res.reconnects} reconnects, {res.seconds:.1f} s)")
    return 0


def _identify(args: argparse.Namespace) -> int:
    from firmware_bridge.flash import FlashError, identify
    from firmware_bridge.protocol import Hello

    if not 0 <= args.seconds <= 3600:
        raise UserError("--seconds must be between 0 and 3600")

    def shown(h: Hello) -> None:
        print(f"controller {h.controller_id} on {args.port}: its {h.slot_count} shelf-edge displays show "
              f"'{h.controller_id}' and 'slot N' for {args.seconds:g} s (Ctrl-C ends it); in the config that shelf "
              f"is `controller: {h.controller_id}` in layout.shelves", flush=True)

    try:
        identify(args.port, args.seconds, shown)
    except FlashError as exc:
        raise UserError(str(exc), code=3) from None
    except KeyboardInterrupt:
        pass  # identify() cleared the displays on its way out
    print("displays cleared")
    return 0


def _slot_command(args: argparse.Namespace, msg: object, what: str) -> int:
    from firmware_bridge.flash import FlashError, send_command
    from firmware_bridge.protocol import Message, Status

    assert isinstance(msg, Message)
    try:
        h, ack = send_command(args.port, msg)
    except FlashError as exc:
        raise UserError(str(exc), code=3) from None
    if ack.status != Status.OK:
        hint = {Status.BAD_ARG: "check the slot number", Status.FAIL: "is the weight on the slot and was it tared?"}
        raise UserError(f"controller {h.controller_id} refused to {what} ({Status.NAMES.get(ack.status)}); "
                        f"{hint.get(ack.status, 'see the controller log')}", code=3)
    print(f"controller {h.controller_id}: {what} done")
    return 0


def _tare(args: argparse.Namespace) -> int:
    from firmware_bridge.protocol import ALL_SLOTS, Tare

    if args.slot is not None and not 0 <= args.slot < 255:
        raise UserError("--slot must be 0-254")
    slot = ALL_SLOTS if args.slot is None else args.slot
    return _slot_command(args, Tare(slot), "tare " + ("all slots" if args.slot is None else f"slot {slot}"))


def _calibrate(args: argparse.Namespace) -> int:
    from firmware_bridge.protocol import Calibrate

    if not 0 <= args.slot < 255:
        raise UserError("--slot must be 0-254")
    if not 0 < args.grams < 2_000_000:
        raise UserError("--grams must be a positive weight in grams, e.g. 500")
    return _slot_command(args, Calibrate(args.slot, round(args.grams * 1000)), f"calibrate slot {args.slot}")


def _pack(args: argparse.Namespace) -> int:
    from firmware_bridge.image import ImageError, build_image

    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", args.version)
    if not m:
        raise UserError(f"--version {args.version!r} must look like 1.4.2")
    ma, mi, pa = (int(x) for x in m.groups())
    if ma > 255 or mi > 255 or pa > 65535:
        raise UserError("--version: major and minor go up to 255, patch up to 65535")
    try:
        data = args.payload.read_bytes()
    except OSError as exc:
        raise UserError(f"{args.payload}: cannot read ({exc.strerror})") from None
    try:
        img = build_image(data, args.hardware, (ma, mi, pa))
    except ImageError as exc:
        raise UserError(str(exc)) from None
    args.out.write_bytes(img)
    print(f"{args.out}: {args.hardware} {args.version}, {len(data)} bytes payload")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from firmware_bridge.bench import run_bench

    res = run_bench(shelf_hours=args.shelf_hours, pty_seconds=args.pty_seconds, frames=args.frames,
                    seed=args.seed)
    print_result(res, args.json)
    return 0
