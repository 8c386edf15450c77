"""``shelfcast`` command line.

Each room contributes its own sub-commands through a ``register(reg)``
function in a module listed in ``COMMAND_MODULES``; a module that is not
there yet is skipped. Handlers return an exit code. A user mistake raises
``UserError`` (or ``ConfigError``) and becomes one clear message on stderr
with exit code 2 (1 for an invalid config), never a traceback.

Exit codes: 0 ok, 1 invalid config / check failed, 2 usage or user error,
3 runtime failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edge.config import ConfigError

__all__ = ["COMMAND_MODULES", "CommandRegistry", "UserError", "main", "positive_float", "sudo_user"]

log = logging.getLogger("shelfcast")

# Modules that add sub-commands. Order is the order of --help.
COMMAND_MODULES: tuple[str, ...] = (
    "edge.commands",  # demo, run, config, version
    "models.cli",  # model prepare|train|quantize|evaluate|export
    "edge.ranking.cli",  # bench ranking
    "firmware_bridge.cli",  # firmware list|flash, bench serial
    "edge.vision.cli",  # calibrate camera, bench vision
    "edge.signage.cli",  # report, bench e2e
    "edge.sync.cli",  # cloud ingest, model publish, bench sync
    "edge.doctor",  # doctor
    "edge.provision",  # provision, support-bundle
)

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """A mistake the user can fix; the message says how."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def sudo_user() -> tuple[int, int] | None:
    """(uid, gid) of the technician who ran this command with sudo, else None: files a command writes for them
    (a support bundle, a calibration snapshot) are handed back to them, not left to root."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if os.geteuid() == 0 and uid.isdigit() and gid.isdigit():
        return int(uid), int(gid)
    return None


def positive_float(text: str) -> float:
    """argparse ``type=`` for a number that must be above 0 (a negative error bound or duration is a typo that
    would otherwise run and report nonsense)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage + exit 2; keep that, shorter
        self.print_usage(sys.stderr)
        m = re.fullmatch(r"argument (--[\w-]+)(?:/\S+)?: expected one argument", message)
        if m:  # `--since -2d`: argparse takes a value starting with '-' for an option
            message += f" (a value that starts with '-' must be joined to it with '=': {m.group(1)}=-VALUE)"
            # (or the value is simply missing at the end of the line)
        raise UserError(f"{self.prog}: {message}")


class CommandRegistry:
    """Hands out (sub-)sub-parsers so rooms can add commands without touching this file."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self._top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
        self._groups: dict[str, argparse._SubParsersAction[Any]] = {}

    def command(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        p = self._top.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    def group(self, name: str, help: str = "") -> argparse._SubParsersAction[Any]:
        """``shelfcast NAME SUB ...``: one group shared by several rooms (bench, model, …)."""
        if name not in self._groups:
            p = self._top.add_parser(name, help=help, description=help)
            p.set_defaults(handler=lambda a, _p=p: (_p.print_help(), 2)[1])
            self._groups[name] = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND",
                                                  parser_class=_Parser)
        return self._groups[name]

    def subcommand(self, group: str, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        p = self.group(group).add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p


_GROUP_HELP = {
    "bench": "benchmarks; each prints JSON with --json",
    "model": "train, quantize, evaluate, export and publish the ranking model",
    "config": "validate a config file or print its JSON schema",
    "firmware": "list shelf controllers and flash their firmware",
    "calibrate": "calibrate the camera",
    "cloud": "reference cloud-side tools",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shelfcast", description="ShelfCast edge recommender node")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    reg = CommandRegistry(parser)
    for name, help_ in _GROUP_HELP.items():
        reg.group(name, help_)
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and (mod == exc.name or mod.startswith(exc.name + ".")):
                continue  # that room is not built (or not installed) here
            _broken_module(mod, exc)
            continue
        except Exception as exc:  # one broken room must not take every command down
            _broken_module(mod, exc)
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(reg)
    return parser


BROKEN_MODULES: dict[str, str] = {}


def _broken_module(mod: str, exc: BaseException) -> None:
    BROKEN_MODULES[mod] = f"{type(exc).__name__}: {exc}"
    print(f"warning: commands from {mod} are unavailable ({type(exc).__name__}: {exc}); "
          "reinstall ShelfCast or run `shelfcast doctor`", file=sys.stderr)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: ``NaN`` is not JSON (jq and browsers refuse it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """One line of strict JSON on stdout (a measurement that has no value, e.g. a p99 of nothing, is null)."""
    sys.stdout.write(json.dumps(_finite(obj), separators=(",", ":"), default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def print_result(result: Mapping[str, Any], as_json: bool) -> None:
    """A bench's result: one JSON line for scripts (``--json``), else ``key  value`` lines for people."""
    if as_json:
        print_json(result)
        return
    for k, v in result.items():
        print(f"{k:>34}  {v}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        level = args.log_level or "WARNING"
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # python -m edge.cli: use the importable module so exception classes match
    from edge.cli import main as _main

    raise SystemExit(_main())
