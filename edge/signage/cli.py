"""Signage commands: ``shelfcast report``, ``shelfcast bench e2e``, ``bench hotpath`` and ``bench soak``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edge.cli import CommandRegistry, UserError, print_json, print_result


def register(reg: CommandRegistry) -> None:
    p = reg.command("report", "conversion rates per screen and per model version (impressions → pick-ups)",
                    _report)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, metavar="FILE", help="the node's config (its node.data_dir is read)")
    src.add_argument("--data-dir", type=Path, metavar="DIR", help="the node's data dir (holds shelfcast.db)")
    p.add_argument("--since-hours", type=float, default=None, metavar="H", help="only the last H hours")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = reg.subcommand("bench", "e2e", "pick-ups through pty, driver, fusion, ranking and SSE + MQTT push",
                       _bench)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--rate", type=float, default=1000.0, metavar="R", help="pick-ups per second (default 1000)")
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS", help="measured seconds (default 10)")
    p.add_argument("--screens", type=int, default=50, metavar="N", help="connected SSE screens (default 50)")
    p.add_argument("--no-mqtt", action="store_true", help="skip the local Mosquitto broker")
    p.add_argument("--no-model", action="store_true",
                   help="rank with the popularity fallback (measures the rest of the path without the model)")
    p.add_argument("--stage2-skip-after-ms", type=float, default=None, metavar="MS",
                   help="the overload guard's threshold (config model.stage2_skip_after_ms; 0 = always run the "
                        "model's second stage); default: the config default")
    p.add_argument("--samples", type=Path, default=None, metavar="FILE",
                   help="write each measured pick's timeline (write, read, ranked, arrivals; ns) as JSON lines")
    p.add_argument("--arrivals", choices=("lockstep", "staggered"), default="lockstep",
                   help="lockstep (default): the 4 controllers' frames of a round back to back, so their picks "
                        "reach the node together; staggered: each controller on its own clock phase (i/4 of a "
                        "round later), as independent controllers run")

    p = reg.subcommand("bench", "hotpath", "CPU per pick of the node's ranking path alone (no pty, broker or "
                       "screens): compare code versions on a loaded machine", _bench_hotpath)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--picks", type=int, default=10000, metavar="N", help="measured pick-ups (default 10000)")
    p.add_argument("--no-model", action="store_true", help="rank with the popularity fallback")

    p = reg.subcommand("bench", "soak", "a real node under a busy store's load for N minutes (shelf simulators, "
                       "camera, cloud outages, screen churn, check-ins, releases): what grows per hour", _bench_soak)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--minutes", type=float, default=45.0, metavar="N", help="how long to run (default 45)")
    p.add_argument("--interval", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between samples (default 30)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep the run's files (node data dir, node log, broker) in DIR")


def _report(args: argparse.Namespace) -> int:
    from edge.config import default_config, load_config
    from edge.signage.report import conversion_report, format_report

    if args.data_dir is not None:
        data_dir = args.data_dir
    else:
        cfg = load_config(args.config) if args.config is not None else default_config()
        data_dir = Path(cfg.node.data_dir)
    db = data_dir / "shelfcast.db"
    try:
        found = db.exists()
    except PermissionError:  # an installed node's data dir is 0750 shelfcast: pathlib raises instead of False
        raise UserError(f"cannot read {db}: the node's data belongs to the shelfcast user; run it with sudo: "
                        "`sudo shelfcast report`") from None
    if not found:
        raise UserError(f"no node database at {db}; point --data-dir (or --config) at the node's node.data_dir")
    if args.since_hours is not None and args.since_hours <= 0:
        raise UserError("--since-hours must be a positive number of hours")
    since = time.time() - args.since_hours * 3600 if args.since_hours is not None else None
    r = conversion_report(db, since)
    if args.json:
        print_json(r)
    else:
        print(format_report(r))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edge.signage.bench import BenchOptions, run

    if not 1 <= args.rate <= 20000:
        raise UserError("--rate must be between 1 and 20000 pick-ups per second")
    if not 0 < args.duration <= 600:
        raise UserError("--duration must be between 0 and 600 seconds")
    if not 0 <= args.screens <= 500:
        raise UserError("--screens must be between 0 and 500")
    result = run(BenchOptions(rate=args.rate, duration=args.duration, screens=args.screens, mqtt=not args.no_mqtt,
                              model=not args.no_model, stage2_skip_after_ms=args.stage2_skip_after_ms,
                              samples_path=str(args.samples) if args.samples is not None else None,
                              arrivals=args.arrivals))
    print_result(result, args.json)
    return 0


def _bench_hotpath(args: argparse.Namespace) -> int:
    from edge.signage.benchhot import run_hotpath

    if not 1 <= args.picks <= 1_000_000:
        raise UserError("--picks must be between 1 and 1000000")
    result = run_hotpath(args.picks, model=not args.no_model)
    print_result(result, args.json)
    return 0


def _bench_soak(args: argparse.Namespace) -> int:
    import shutil

    from edge.soak import SoakOptions, run_soak

    if not 0 < args.minutes <= 60 * 24 * 14:
        raise UserError("--minutes must be above 0 and at most 20160 (14 days)")
    if not 1 <= args.interval <= 3600:
        raise UserError("--interval must be between 1 and 3600 seconds")
    if shutil.which("mosquitto") is None:
        raise UserError("the soak runs a local Mosquitto as the node's cloud link; install it: "
                        "`sudo apt-get install -y mosquitto`")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        raise UserError(f"--keep {args.keep} is not empty; name a new or empty directory")
    result = run_soak(SoakOptions(minutes=args.minutes, interval_s=args.interval, keep_dir=args.keep))
    print_result(result, args.json)
    return 0 if result["node_exited_cleanly"] else 1
