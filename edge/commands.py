"""Core commands: ``demo``, ``run``, ``config validate|schema``, ``version``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import sys
from pathlib import Path

from edge import __version__
from edge.cli import CommandRegistry, UserError, print_json
from edge.config import DEMO_SALT_CHECKINS_REFUSED, ConfigError, json_schema, load_config

log = logging.getLogger("shelfcast")


def register(reg: CommandRegistry) -> None:
    p = reg.command("demo", "run a whole simulated store on embedded defaults", _demo)
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed for the shoppers")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="keep the node's SQLite cache here (default: a temp dir, removed at exit)")
    p.add_argument("--port", type=int, default=None, metavar="PORT",
                   help="serve the signage pages on http://127.0.0.1:PORT/")
    p.add_argument("--shoppers", type=int, default=6, metavar="N", help="shoppers in the store at once")
    p.add_argument("--cloud-broker", default=None, metavar="URL",
                   help="sync events upstream to this MQTT broker (mqtt://HOST:PORT)")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")

    p = reg.command("run", "run the node from a config file", _run)
    p.add_argument("--config", type=Path, required=True, metavar="FILE")

    reg.subcommand("config", "validate", "check a config file; report every problem at once",
                   _config_validate).add_argument("file", type=Path, metavar="FILE")
    reg.subcommand("config", "schema", "print the config's JSON schema", _config_schema)
    reg.command("version", "print the ShelfCast version", _version)

    p = reg.subcommand("bench", "store", "SQLite cache write/read latency", _bench_store)
    p.add_argument("--json", action="store_true")
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--rate", type=float, default=1000.0, help="events per second offered")
    p.add_argument("--flush-interval-ms", type=int, default=500, help="the writer's batch interval")


def _demo(args: argparse.Namespace) -> int:
    from edge.demo import DemoOptions, main

    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be a positive number of seconds")
    if args.shoppers < 1 or args.shoppers > 200:
        raise UserError("--shoppers must be between 1 and 200")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UserError("--port must be between 0 and 65535")
    if args.data_dir is not None:
        try:
            args.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot use --data-dir {args.data_dir}: {exc.strerror}; pick a writable directory") from None
    return main(DemoOptions(duration=args.duration, seed=args.seed, data_dir=args.data_dir, port=args.port,
                            shoppers=args.shoppers, quiet=args.quiet, cloud_broker=args.cloud_broker))


def _run(args: argparse.Namespace) -> int:
    from edge.app import Node
    from edge.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.logging)
    if args.log_level:
        logging.getLogger().setLevel(args.log_level)
    if config.refuses_raw_checkins():
        log.warning(DEMO_SALT_CHECKINS_REFUSED)
    elif config.fusion.uses_demo_salt():  # `shelfcast demo` does not come through here
        log.warning("fusion.customer_salt is the public demo salt: stored and synced shopper ids can be reversed; "
                    "get the retailer's salt file from the cloud side and run `sudo shelfcast provision "
                    "--customer-salt FILE`")
    # the cache holds hashed shopper keys, profiles and visit histories: nothing the node writes is readable by
    # other users, however it was started (the systemd unit has UMask=0027 too)
    os.umask(os.umask(0o027) | 0o027)
    try:
        Path(config.node.data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"node.data_dir {config.node.data_dir} is not usable ({exc.strerror}); create it and "
                        "give the service user write access: `sudo chown shelfcast: DIR`") from None
    _close_to_others(Path(config.node.data_dir))

    lock = _hold_data_dir(Path(config.node.data_dir))

    async def main() -> None:
        from edge.systemd import Notifier

        node = Node(config)
        notifier = Notifier()  # no-op outside systemd
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await node.start()
        log.warning("node %s/%s running", config.node.store_id, config.node.node_id)
        notifier.ready(f"serving {config.node.store_id}/{config.node.node_id}")  # after every room started
        watchdog = asyncio.create_task(notifier.watchdog_loop(), name="sd-watchdog")
        try:
            await stop.wait()
        finally:
            notifier.stopping("stopping rooms")
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await node.stop()
            notifier.close()

    from edge.store import StoreNewerError

    try:
        asyncio.run(main())
    except StoreNewerError as exc:  # a downgrade: one clear message (exit 2), not a traceback
        raise UserError(str(exc)) from None
    finally:
        os.close(lock)
    return 0


def _close_to_others(data_dir: Path) -> None:
    """Take the permissions for others off the data dir and the files directly in it (a database from an
    earlier run under umask 022); a WARNING naming the fix when that is not allowed (not the owner)."""
    try:
        paths = [data_dir, *(f for f in data_dir.iterdir() if f.is_file() and not f.is_symlink())]
    except OSError:
        paths = [data_dir]  # not listable: the store names the problem when it opens the database
    for p in paths:
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & 0o007:
                p.chmod(mode & ~0o007)
        except OSError as exc:
            log.warning("cannot take the permissions for others off %s (%s): shopper data in it may be readable "
                        "by every user; run `sudo chmod -R o-rwx %s`", p, exc.strerror, data_dir)
            return


def _hold_data_dir(data_dir: Path) -> int:
    """One node per data dir: a second ``shelfcast run`` on the same config (by hand while the service runs, or
    an old and a new unit during a swap) would share the database and knock the first off the local broker
    every few seconds (same client ids) with nothing in the log naming why. The flock goes with the process
    (kill -9, power cut: no stale lock); the file keeps the holder's pid for the message."""
    path = data_dir / "shelfcast.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise UserError(f"cannot open {path} ({exc.strerror}); give the service user write access to "
                        f"node.data_dir: `sudo chown -R shelfcast: {data_dir}`") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"another shelfcast node is running on node.data_dir {data_dir} (pid {holder}): stop it "
                        "first (`sudo systemctl stop shelfcast`, or Ctrl-C in its terminal); two nodes on one "
                        "config share one database and knock each other off the broker") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _config_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(f"{args.file}: valid ({len(cfg.layout.zones)} zones, {len(cfg.layout.shelves)} shelves, "
          f"{len(cfg.layout.screens)} screens)")
    if cfg.refuses_raw_checkins():
        print(f"note: {DEMO_SALT_CHECKINS_REFUSED}", file=sys.stderr)
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0


def _bench_store(args: argparse.Namespace) -> int:
    from edge.bench_store import main

    if args.events < 1 or not args.rate > 0 or args.flush_interval_ms < 0:
        raise UserError("--events must be at least 1, --rate above 0 events per second and --flush-interval-ms "
                        "0 or more (defaults: 5000 events at 1000/s, 500 ms)")
    return main(args)


def _version(args: argparse.Namespace) -> int:
    print_json({"shelfcast": __version__, "python": sys.version.split()[0]})
    return 0
