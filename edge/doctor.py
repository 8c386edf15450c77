"""``shelfcast doctor``: one screen that tells a field technician what is wrong and how to fix it.

Every check returns a ``Check(name, status, detail, fix)``; status is one of
``pass``, ``warn``, ``fail`` or ``skip`` (the hardware or feature is not there).
A failure always carries its fix. Checks never raise: an unexpected error in a
check is itself reported as that check's failure.

Exit code (the worst status, as monitoring plugins do): 0 all pass or skip,
1 at least one warn, 2 at least one fail. ``--json`` prints exactly
``{"checks": [{"name", "status", "detail", "fix"}, ...]}``.

The checks take their probes as arguments (``access=os.access``, a throttled
file path, …) so the tests drive real failure conditions, including ones a
root test runner cannot otherwise see (permission bits do not stop root).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import grp
import hashlib
import json
import math
import os
import pwd
import shutil
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.cli import CommandRegistry, UserError, print_json
from edge.clock import CLOCK_FIX, clock_problem, looks_unset
from edge.config import DEMO_SALT_CHECKINS_REFUSED, BrokerSection, ConfigError, NodeConfig, load_config

__all__ = [
    "DEFAULT_CONFIG",
    "STATUSES",
    "Check",
    "check_brokers",
    "check_camera",
    "check_clock",
    "check_config",
    "check_customer_salt",
    "check_data_dir",
    "check_database",
    "check_kiosk",
    "check_model",
    "check_power",
    "check_sd_card",
    "check_serial_permissions",
    "check_shelves",
    "check_signage",
    "check_signage_tls",
    "exit_code",
    "render",
    "run_checks",
]

DEFAULT_CONFIG = Path("/etc/shelfcast/shelfcast.yaml")
SERVICE_USER = "shelfcast"
STATUSES = ("pass", "skip", "warn", "fail")  # in order of severity
_RANK = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
DIALOUT_FIX = "add the service user to the dialout group: `sudo usermod -aG dialout shelfcast`, then " \
              "`sudo systemctl restart shelfcast`"
MIN_FREE_MB = 200
WARN_FREE_MB = 1024


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _ok(name: str, detail: str) -> Check:
    return Check(name, "pass", detail, "")


def exit_code(checks: Iterable[Check]) -> int:
    """0 all pass/skip, 1 worst is warn, 2 worst is fail."""
    return max((_RANK.get(c.status, 2) for c in checks), default=0)


# -- config, disk, database ----------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, NodeConfig | None]:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        if _permission_denied(path):  # the file, or /etc/shelfcast (0750 root:shelfcast) on the way to it
            return Check("config", "fail", f"{path}: cannot read it as {_whoami()}",
                         "run the doctor with sudo: `sudo shelfcast doctor`"), None
        first = "; ".join(str(p) for p in exc.problems[:3])
        more = f" (+{len(exc.problems) - 3} more)" if len(exc.problems) > 3 else ""
        return Check("config", "fail", f"{path}: {len(exc.problems)} problem(s): {first}{more}",
                     f"fix the listed keys (`shelfcast config validate {path}` shows every problem with its line), "
                     "or re-run `sudo shelfcast provision`"), None
    n = cfg.node
    detail = (f"{path}: valid; store {n.store_id}, node {n.node_id}, {len(cfg.layout.zones)} zones, "
              f"{len(cfg.layout.shelves)} shelves, {len(cfg.layout.screens)} screens")
    if n.store_id == "unprovisioned":
        return Check("config", "warn", detail + "; the node is not provisioned yet",
                     "run `sudo shelfcast provision` (store id, node id, cloud broker)"), cfg
    return _ok("config", detail), cfg


def check_customer_salt(cfg: NodeConfig) -> Check:
    """Warn while shopper ids are hashed with the public demo salt (reversible by trying every loyalty number),
    saying so when a cloud link makes the node refuse raw-id check-ins because of it (a warning: the node serves)."""
    if cfg.refuses_raw_checkins():
        return Check("customer_salt", "warn", DEMO_SALT_CHECKINS_REFUSED.split("; get ")[0],
                     "get the retailer's salt file from the cloud side and run `sudo shelfcast provision "
                     "--customer-salt FILE` (the same salt on every node of the retailer), then "
                     "`sudo systemctl restart shelfcast`")
    if cfg.fusion.uses_demo_salt():
        return Check("customer_salt", "warn",
                     "fusion.customer_salt is the public demo salt: stored and synced shopper ids can be reversed "
                     "by hashing every loyalty number",
                     "get the retailer's salt file from the cloud side and run `sudo shelfcast provision "
                     "--customer-salt FILE` (the same salt on every node of the retailer), then "
                     "`sudo systemctl restart shelfcast`")
    return _ok("customer_salt", "fusion.customer_salt is set (not the demo salt)")


def check_data_dir(data_dir: Path, min_free_mb: int = MIN_FREE_MB, warn_free_mb: int = WARN_FREE_MB) -> Check:
    fix_owner = f"create it and give the service user write access: `sudo mkdir -p {data_dir} && " \
                f"sudo chown shelfcast: {data_dir}`"
    if not data_dir.is_dir():
        return Check("data_dir", "fail", f"{data_dir} does not exist", fix_owner)
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=data_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if os.geteuid() != 0 and _owned_by_service_user(data_dir):
            return Check("data_dir", "warn", f"{data_dir} belongs to {SERVICE_USER}; cannot test it as {_whoami()}",
                         "run the doctor with sudo: `sudo shelfcast doctor`")
        return Check("data_dir", "fail", f"{data_dir} is not writable ({exc.strerror})", fix_owner)
    du = shutil.disk_usage(data_dir)
    free_mb = du.free / 1e6
    detail = f"{data_dir} writable; {free_mb:,.0f} MB free of {du.total / 1e6:,.0f} MB"
    from edge.store import space_fix

    fix_space = f"free space ({space_fix(data_dir)}), or lower store.retention_days"
    if free_mb < min_free_mb:
        return Check("data_dir", "fail", detail + f" (needs at least {min_free_mb} MB)", fix_space)
    if free_mb < warn_free_mb:
        return Check("data_dir", "warn", detail + f" (below {warn_free_mb} MB)", fix_space)
    return _ok("data_dir", detail)


def _permission_denied(path: Path) -> bool:
    """Not ``path.exists()``: Python 3.11 raises PermissionError from it when a parent directory is closed."""
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False


def _whoami() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _owned_by_service_user(p: Path) -> bool:
    try:
        return pwd.getpwuid(p.stat().st_uid).pw_name == SERVICE_USER
    except (KeyError, OSError):
        return False


def database_stats(db: Path) -> dict[str, Any]:
    """Row counts per table and the schema version: no row contents (used by support-bundle too)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        counts = {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    size = db.stat().st_size
    wal = Path(str(db) + "-wal")
    return {"path": str(db), "schema_version": version, "rows": counts, "size_bytes": size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0}


def check_database(data_dir: Path) -> Check:
    db = data_dir / "shelfcast.db"
    fix_corrupt = ("restart the node: it moves a corrupt file aside and starts a fresh cache that the cloud refills "
                   "(`sudo systemctl restart shelfcast`); if it keeps happening the SD card is failing: replace it")
    from edge.store import KEEP_CORRUPT, corrupt_copies

    aside = corrupt_copies(db)
    if os.geteuid() != 0 and data_dir.is_dir() and not (os.access(data_dir, os.R_OK | os.X_OK) and
                                                        (not db.exists() or os.access(db, os.R_OK))):
        return Check("database", "warn", f"cannot read {db} as {_whoami()}",
                     "run the doctor with sudo: `sudo shelfcast doctor`")
    if not db.exists():
        return Check("database", "warn", f"{db} does not exist yet (the node creates it when it starts)",
                     "start the node: `sudo systemctl start shelfcast`")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        from edge.store import is_disk_error, space_fix

        if is_disk_error(exc):  # a full or failing disk, not a bad file: a restart would not help
            return Check("database", "fail", f"cannot read {db}: {exc} (its disk is full or failing; the file "
                         "itself may be fine)", f"free space in {data_dir} (`df -h {data_dir}`, "
                         f"{space_fix(data_dir)}); the node waits for the space and resumes by itself; if the disk "
                         "is not full, replace the SD card")
        return Check("database", "fail", f"{db} is corrupted: {exc}", fix_corrupt)
    if rows != ["ok"]:
        return Check("database", "fail", f"{db} failed its integrity check: {'; '.join(rows[:3])}", fix_corrupt)
    try:
        from edge.store import SCHEMA_VERSION

        stats = database_stats(db)
    except sqlite3.DatabaseError as exc:
        return Check("database", "fail", f"{db}: {exc}", fix_corrupt)
    if stats["schema_version"] > SCHEMA_VERSION:
        return Check("database", "fail", f"{db} has schema {stats['schema_version']}, newer than this ShelfCast "
                     f"({SCHEMA_VERSION})", "upgrade ShelfCast: `sudo /opt/shelfcast/lib/install.sh --source NEW`")
    r = stats["rows"]
    detail = (f"integrity ok; schema {stats['schema_version']}; {stats['size_bytes'] / 1e6:.1f} MB; "
              f"{r.get('products', 0)} products, {r.get('events', 0)} events, {r.get('outbox', 0)} in outbox")
    if len(aside) > 1:  # the node keeps the newest KEEP_CORRUPT: two mean it was corrupt at least twice
        return Check("database", "warn", detail + f"; found corrupt and set aside at least {len(aside)} times "
                     f"({', '.join(p.name for p in aside[-3:])}): the SD card is suspect",
                     "replace the SD card (docs/technician-guide.md, Replacing a node or its SD card); the node "
                     f"keeps the newest {KEEP_CORRUPT} copies for support and removes older ones itself; to free "
                     f"their space now: `sudo rm -f {data_dir}/shelfcast.db.corrupt-*`")
    if aside:
        return Check("database", "warn", detail + f"; an earlier corrupt copy was moved aside: {aside[-1].name}",
                     "the node recovered by itself; if this repeats the SD card is failing. The copy is kept for "
                     "support (a support bundle lists it, it does not hold it); to free its space: "
                     f"`sudo rm -f {aside[-1]}*`")
    return _ok("database", detail)


# -- model ---------------------------------------------------------------------------------------------


def _default_model_dir() -> Path:
    try:
        from edge.ranking.ranker import DEFAULT_MODEL_DIR

        return Path(DEFAULT_MODEL_DIR)
    except ImportError:
        return Path(__file__).resolve().parents[1] / "models" / "shipped"


def _check_model_key(cfg: NodeConfig) -> tuple[str, str, str]:
    """(status, detail, fix) for the pinned model-signing public key."""
    key = cfg.model.public_key
    fix = "pin the key that signs model releases: `sudo shelfcast provision --model-key FILE.pem` (from store ops)"
    if key is None:
        return "warn", "no model-signing key pinned (signed releases cannot be verified)", fix
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        pub = load_pem_public_key(Path(key).read_bytes())
    except (OSError, ValueError) as exc:
        return "fail", f"model-signing key {key} unreadable: {exc}", fix
    if not isinstance(pub, Ed25519PublicKey):
        return "fail", f"model-signing key {key} is not an Ed25519 public key", fix
    return "pass", f"signing key pinned ({key.name})", ""


def check_model(cfg: NodeConfig, bench_n: int = 30) -> Check:
    path = Path(cfg.model.path) if cfg.model.path is not None else _default_model_dir()
    model_file = path / "model.tflite" if path.is_dir() or path.suffix != ".tflite" else path
    fix_missing = ("reinstall ShelfCast (`sudo /opt/shelfcast/lib/install.sh`) or point model.path at a release "
                   "directory (model.tflite + manifest.json); until then the node serves popularity by zone and hour")
    if not model_file.exists():
        return Check("model", "fail", f"model file {model_file} not found", fix_missing)
    key_status, key_detail, key_fix = _check_model_key(cfg)
    try:
        from edge.ranking.ranker import ModelError, Ranker, RecRequest
    except ImportError:
        detail, status, fix = _generic_model_check(model_file, bench_n)
    else:
        try:
            ranker = Ranker.load(model_file)
        except ModelError as exc:
            return Check("model", "fail", f"{model_file} refused: {exc}",
                         "re-fetch the release (the node keeps the previous one) or reinstall ShelfCast")
        except Exception as exc:
            return Check("model", "fail", f"{model_file} cannot be loaded: {exc}",
                         "reinstall ShelfCast: `sudo /opt/shelfcast/lib/install.sh`")
        vocab = list(ranker.vocabulary)
        lat = []
        for i in range(bench_n):
            req = RecRequest(session=[vocab[(i * 7919) % len(vocab)]] if vocab else [], k=10)
            t0 = time.perf_counter_ns()
            ranker.recommend(req)
            lat.append((time.perf_counter_ns() - t0) / 1000)
        p50 = statistics.median(lat)
        detail = (f"version {getattr(ranker, 'version', '?')}, {len(vocab)} items, sha256 verified; "
                  f"recommend p50 {p50:.0f} µs over {bench_n}")
        status, fix = ("pass", "") if p50 < 20_000 else (
            "warn", "the node is too slow to rank: check `shelfcast doctor` power/throttling, or a hot CPU")
    if status == "fail":
        return Check("model", status, detail, fix)
    detail = f"{detail}; {key_detail}{_served_release(cfg)}"
    if key_status == "fail" or (key_status == "warn" and status == "pass"):
        return Check("model", key_status, detail, key_fix)
    return Check("model", status, detail, fix)


def _served_release(cfg: NodeConfig) -> str:
    """A release the node installed is what it serves (models/active.json), not the model checked above: said, so
    a technician after an upgrade does not take the bundled model's version for a lost release."""
    try:
        pointer = json.loads((Path(cfg.node.data_dir) / "models" / "active.json").read_text())
    except (OSError, ValueError):
        return ""
    version = pointer.get("version") if isinstance(pointer, dict) else None
    return f"; the node serves installed release {version} (models/active.json)" if version else ""


def _generic_model_check(model_file: Path, bench_n: int) -> tuple[str, str, str]:
    """Without ``edge.ranking``: manifest + sha256, then load and time the raw interpreter."""
    man_path = model_file.with_name("manifest.json")
    try:
        man = json.loads(man_path.read_text())
    except (OSError, ValueError) as exc:
        return f"manifest {man_path} unreadable: {exc}", "fail", "re-fetch the release or reinstall ShelfCast"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    if man.get("sha256") != digest:
        return (f"sha256 mismatch for {model_file.name} (truncated or corrupted)", "fail",
                "re-fetch the release or reinstall ShelfCast")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return (f"version {man.get('version', '?')}, sha256 verified; not benchmarked (no LiteRT)", "warn",
                "reinstall the node's dependencies: `sudo /opt/shelfcast/lib/install.sh`")
    import numpy as np

    it = Interpreter(model_path=str(model_file), num_threads=1)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    lat = []
    for _ in range(bench_n):
        t0 = time.perf_counter_ns()
        it.invoke()
        lat.append((time.perf_counter_ns() - t0) / 1000)
    return (f"version {man.get('version', '?')}, sha256 verified; invoke p50 {statistics.median(lat):.0f} µs",
            "pass", "")


# -- shelves -------------------------------------------------------------------------------------------


def check_serial_permissions(paths: Iterable[str], access: Callable[[str, int], bool] = os.access) -> Check:
    """Every port exists and this process may read and write it (the node runs as ``shelfcast``)."""
    paths = list(paths)
    missing = [p for p in paths if not os.path.exists(p)]
    denied = [p for p in paths if p not in missing and not access(p, os.R_OK | os.W_OK)]
    if denied:
        return Check("shelf_permissions", "fail", f"no permission to open {', '.join(denied)}", DIALOUT_FIX)
    if missing:
        return Check("shelf_permissions", "fail", f"not present: {', '.join(missing)}",
                     "check the USB cable and the port name (`ls -l /dev/shelfcast/ /dev/serial/by-id/`); "
                     "shelves.ports in the config must name existing ports")
    return _ok("shelf_permissions", f"{len(paths)} port(s) readable and writable")


def _service_user_groups(user: str = SERVICE_USER) -> set[str] | None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrgid(pw.pw_gid).gr_name)
    return groups


def check_shelves(cfg: NodeConfig, access: Callable[[str, int], bool] = os.access,
                  query_firmware: bool = True) -> list[Check]:
    if not cfg.shelves.enabled:
        return [Check("shelves", "skip", "shelves.enabled is false", "")]
    explicit = [p.port for p in cfg.shelves.ports if p.port != "auto"]
    found: list[str] = []
    try:
        from firmware_bridge.driver import discover

        found = [f.path for f in discover(cfg.shelves.usb_ids)]
    except ImportError:
        from serial.tools import list_ports

        wanted = {u.lower() for u in cfg.shelves.usb_ids}
        found = [i.device for i in list_ports.comports()
                 if i.vid is not None and f"{i.vid:04x}:{i.pid:04x}" in wanted]
    stable = sorted(str(p) for p in Path("/dev/shelfcast").glob("shelf-*")) if Path("/dev/shelfcast").is_dir() else []
    ports = list(dict.fromkeys(explicit + [p for p in found if os.path.realpath(p) not in
                                           {os.path.realpath(e) for e in explicit}]))
    out: list[Check] = []
    groups = _service_user_groups()
    if groups is not None and "dialout" not in groups:
        out.append(Check("shelf_group", "fail", f"service user {SERVICE_USER} is not in the dialout group",
                         DIALOUT_FIX))
    if not ports:
        expected = len(cfg.layout.shelves)
        status = "fail" if expected else "warn"
        out.append(Check("shelves", status,
                         f"no shelf controller found (USB ids {', '.join(cfg.shelves.usb_ids)}); "
                         f"{expected} shelves in the layout",
                         "plug the shelf controllers in (USB data cable, not a charge-only one) and check "
                         "`ls /dev/shelfcast/`; a controller with another VID:PID goes in shelves.usb_ids, "
                         "then re-run the installer so udev names it"))
        return out
    perm = check_serial_permissions(ports, access)
    out.append(perm)
    if perm.status != "pass":
        return out
    versions: list[str] = []
    problems: list[str] = []
    if query_firmware:
        try:
            from firmware_bridge.flash import FlashError, query
        except ImportError:
            query = None  # type: ignore[assignment]
        if query is not None:
            for p in ports:
                try:
                    h = query(p, timeout=1.0)
                    if h.mode != 0:  # 1: its bootloader (an interrupted flash): it sends no weights
                        problems.append(f"{p}: controller {h.controller_id} is in its bootloader (fw "
                                        f"{h.firmware_str} kept) and sends no weights")
                    else:
                        versions.append(f"{h.controller_id} fw {h.firmware_str}")
                except FlashError as exc:
                    text = str(exc)
                    if "in use" in text or "busy" in text.lower() or "lock" in text.lower():
                        versions.append(f"{p} (in use by the running node)")
                    else:
                        problems.append(text)
                except Exception as exc:
                    problems.append(f"{p}: {exc}")
    if any(v.endswith("(in use by the running node)") for v in versions) and cfg.signage.enabled and cfg.signage.port:
        # the node holds the ports: what it knows of each controller (garbage, silence, bootloader) is the answer
        health = node_health(cfg)[2] or {}
        ctrls = (((health.get("rooms") or {}).get("shelves") or {}).get("controllers") or {})
        problems += [str(c["error"]) for c in ctrls.values() if isinstance(c, dict) and c.get("error")]
    detail = f"{len(ports)} controller port(s)"
    if stable:
        detail += f", {len(stable)} with stable names under /dev/shelfcast"
    if versions:
        detail += ": " + "; ".join(versions)
    if problems:
        out.append(Check("shelves", "warn", detail + "; " + "; ".join(problems),
                         "a port with no answering controller: check its power and cable, then "
                         "`shelfcast firmware list`; a controller stuck in its bootloader needs "
                         "`shelfcast firmware flash --port PORT IMAGE` again (it resumes) or a power-cycle"))
    else:
        out.append(_ok("shelves", detail))
    return out


# -- camera --------------------------------------------------------------------------------------------


def _floor_bounds(cfg: NodeConfig) -> tuple[float, float, float, float] | None:
    pts = [pt for z in cfg.layout.zones for pt in z.polygon]
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def calibration_problem(cfg: NodeConfig) -> str | None:
    """Why the homography is unusable, or None. Image corners must land on (or near) the floor plan."""
    h = cfg.camera.homography
    if h is None:
        return "no homography in camera.homography"
    flat = [v for row in h for v in row]
    if not all(math.isfinite(v) for v in flat):
        return "the homography has non-finite values"
    a, b, c = h[0]
    d, e, f = h[1]
    g, hh, i = h[2]
    det = a * (e * i - f * hh) - b * (d * i - f * g) + c * (d * hh - e * g)
    if abs(det) < 1e-15:
        return "the homography is singular (it maps the image to a line)"
    bounds = _floor_bounds(cfg)
    w, hgt = cfg.camera.width, cfg.camera.height
    mapped = []
    for u, v in ((0, 0), (w, 0), (w, hgt), (0, hgt), (w / 2, hgt / 2)):
        den = g * u + hh * v + i
        if abs(den) < 1e-12:
            return f"image point ({u}, {v}) maps to infinity (the horizon is inside the picture)"
        mapped.append(((a * u + b * v + c) / den, (d * u + e * v + f) / den))
    quad = mapped[:4]
    area = 0.5 * abs(sum(quad[k][0] * quad[(k + 1) % 4][1] - quad[(k + 1) % 4][0] * quad[k][1] for k in range(4)))
    if area < 1e-3:
        return f"the homography is singular (the whole picture maps to {area:.2g} m² of floor)"
    if bounds is not None:
        x0, y0, x1, y1 = bounds
        mx, my = max(2.0, (x1 - x0) * 0.5), max(2.0, (y1 - y0) * 0.5)
        cx, cy = mapped[-1]
        if not (x0 - mx <= cx <= x1 + mx and y0 - my <= cy <= y1 + my):
            return (f"the image centre maps to ({cx:.1f}, {cy:.1f}) m, outside the floor plan "
                    f"({x0:g}..{x1:g} × {y0:g}..{y1:g} m)")
    return None


def check_camera(cfg: NodeConfig, open_timeout_s: float = 3.0) -> list[Check]:
    cam = cfg.camera
    if not cam.enabled:
        return [Check("camera", "skip", "camera.enabled is false", "")]
    out: list[Check] = []
    src = cam.source
    if src == "synthetic":
        out.append(_ok("camera", "synthetic source (simulated shoppers, no device)"))
    else:
        groups = _service_user_groups()
        if groups is not None and "video" not in groups and "://" not in str(src):
            out.append(Check("camera_group", "fail", f"service user {SERVICE_USER} is not in the video group",
                             "`sudo usermod -aG video shelfcast`, then `sudo systemctl restart shelfcast`"))
        out.append(_probe_camera(src, open_timeout_s))
    fix = ("recalibrate: mark >= 4 floor points you can measure, read their pixels in a snapshot (`sudo shelfcast "
           "calibrate camera --config FILE --grab snapshot.png`, the node stopped), then `sudo shelfcast calibrate "
           "camera --config FILE --snapshot snapshot.png --point U,V:X,Y ... --write` (pixel U,V is floor X,Y "
           "metres; check camera-calibration.png), then restart the node")
    if src == "synthetic" and cam.homography is None:
        out.append(_ok("calibration", "synthetic source uses its built-in ground-truth homography"))
    else:
        problem = calibration_problem(cfg)
        if problem is None:
            out.append(_ok("calibration", "homography present and maps the image onto the floor plan"))
        else:
            out.append(Check("calibration", "fail", problem, fix))
    return out


def _probe_camera(src: str | int, timeout_s: float) -> Check:
    fix = ("check the camera cable/power and camera.source (`v4l2-ctl --list-devices` for USB cameras, the RTSP "
           "URL from the camera's web page); the service user needs the video group: "
           "`sudo usermod -aG video shelfcast`")
    dev = f"/dev/video{src}" if isinstance(src, int) or (isinstance(src, str) and src.isdigit()) else str(src)
    if dev.startswith("/dev/"):
        if not os.path.exists(dev):
            return Check("camera", "fail", f"{dev} does not exist", fix)
        if not os.access(dev, os.R_OK | os.W_OK):
            return Check("camera", "fail", f"no permission to open {dev}", fix)
    elif "://" not in str(src) and not os.path.exists(str(src)):
        return Check("camera", "fail", f"video file {src} not found", fix)
    if "://" in str(src):
        u = urlsplit(str(src))
        port = u.port or {"rtsp": 554, "http": 80, "https": 443}.get(u.scheme, 554)
        try:
            with socket.create_connection((u.hostname or "", port), timeout=timeout_s):
                pass
        except OSError as exc:
            return Check("camera", "fail", f"{u.scheme}://{u.hostname}:{port} unreachable ({exc})", fix)
    try:
        import cv2

        index: str | int = int(src) if isinstance(src, str) and src.isdigit() else src
        cap = cv2.VideoCapture(index)
        try:
            ok, frame = cap.read() if cap.isOpened() else (False, None)
        finally:
            cap.release()
    except Exception as exc:
        return Check("camera", "fail", f"{src}: cannot open ({exc})", fix)
    if not ok or frame is None:
        return Check("camera", "fail", f"{src}: opened but no frame arrived", fix)
    return _ok("camera", f"{src}: frame {frame.shape[1]}×{frame.shape[0]}")


# -- brokers -------------------------------------------------------------------------------------------


def _tls_context(b: BrokerSection) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
    if b.cert_file and b.key_file:
        ctx.load_cert_chain(str(b.cert_file), str(b.key_file))
    return ctx


def _cert_expiry_days(cert_file: Path) -> float | None:
    from edge.signage.http import cert_not_after

    not_after = cert_not_after(cert_file)
    return None if not_after is None else (not_after - datetime.now(UTC).timestamp()) / 86400


def check_broker(name: str, b: BrokerSection, timeout_s: float = 3.0) -> Check:
    if not b.url:
        if name == "cloud_broker":
            return Check(name, "warn", "no cloud broker configured (events stay in the outbox)",
                         "run `sudo shelfcast provision --cloud-broker mqtts://HOST:8883 ...`")
        return Check(name, "skip", "not configured", "")
    u = urlsplit(b.url)
    tls = u.scheme == "mqtts"
    host, port = u.hostname or "localhost", u.port or (8883 if tls else 1883)
    where = f"{host}:{port}"
    fix_net = (f"check that the broker runs (`sudo systemctl status mosquitto` for the local one) and that the "
               f"network and firewall let this node reach {where} (`nc -vz {host} {port}`)")
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return Check(name, "fail", f"{where} unreachable: {exc.strerror or exc}", fix_net)
    tls_detail = ""
    try:
        if tls:
            try:
                ctx = _tls_context(b)
            except (OSError, ssl.SSLError) as exc:
                return Check(name, "fail", f"{where}: TLS files unusable: {exc}",
                             "re-run `sudo shelfcast provision` or fix mqtt.cloud.ca_file/cert_file/key_file")
            try:
                with ctx.wrap_socket(sock, server_hostname=host) as tsock:
                    cipher = tsock.cipher()
                    tls_detail = f"{tsock.version()}, {cipher[0] if cipher else '?'}"
                    sock = None  # type: ignore[assignment]
            except ssl.SSLCertVerificationError as exc:
                msg = exc.verify_message or str(exc)
                if "not yet valid" in msg:
                    fix = f"{clock_problem()}: the broker's certificate is not valid yet; {CLOCK_FIX}"
                elif "expired" in msg:
                    fix = "the broker's certificate expired: renew it on the broker (or fix this node's clock)"
                elif "hostname" in msg.lower() or "IP address mismatch" in msg:
                    fix = f"the broker's certificate does not name {host}: use the host name on its certificate"
                else:
                    fix = "the broker's certificate is not signed by mqtt.cloud.ca_file: install the right CA " \
                          "(`shelfcast provision --ca-file FILE`)"
                return Check(name, "fail", f"{where}: TLS verification failed: {msg}", fix)
            except (ssl.SSLError, OSError) as exc:
                return Check(name, "fail", f"{where}: TLS handshake failed: {exc}",
                             "the broker may require a client certificate: provision one "
                             "(`shelfcast provision`, then have the CSR signed)")
    finally:
        if sock is not None:
            sock.close()
    rc, err = _mqtt_connack(b, host, port, tls, timeout_s)
    ms = (time.monotonic() - t0) * 1000
    if err:
        fix = ("the broker refused the login: check mqtt username/password or the client certificate"
               if rc is not None else
               "no CONNACK: the broker may require a client certificate or the port is not MQTT")
        return Check(name, "fail", f"{where}: {err}", fix)
    detail = f"{where} CONNACK ok in {ms:.0f} ms" + (f" ({tls_detail})" if tls_detail else "")
    if tls and b.cert_file:
        days = _cert_expiry_days(Path(b.cert_file))
        if days is not None and days < 30:
            return Check(name, "warn" if days > 0 else "fail", detail + f"; client certificate expires in {days:.0f} d",
                         "renew the node certificate: `sudo shelfcast provision --renew` and have the CSR signed")
        if days is not None:
            detail += f"; client cert valid {days:.0f} d"
    return _ok(name, detail)


def _mqtt_connack(b: BrokerSection, host: str, port: int, tls: bool, timeout_s: float) -> tuple[int | None, str]:
    """(reason code, error text or '') of one MQTT CONNECT with a short timeout."""
    import threading

    import paho.mqtt.client as mqtt

    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        result["rc"] = int(getattr(reason, "value", reason))
        result["text"] = str(reason)
        done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"shelfcast-doctor-{os.getpid()}",
                    protocol=mqtt.MQTTv311)
    c.on_connect = on_connect
    if b.username:
        c.username_pw_set(b.username, b.password.get_secret_value() if b.password else None)
    if tls:
        c.tls_set_context(_tls_context(b))
    try:
        c.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return None, f"MQTT connect failed: {exc}"
    c.loop_start()
    try:
        if not done.wait(timeout_s):
            return None, f"no CONNACK within {timeout_s:g} s"
    finally:
        with contextlib.suppress(Exception):
            c.disconnect()
        c.loop_stop()
    if result.get("rc", 0) != 0:
        return result["rc"], f"broker refused the connection: {result.get('text')}"
    return 0, ""


def check_brokers(cfg: NodeConfig, timeout_s: float = 3.0) -> list[Check]:
    return [check_broker("local_broker", cfg.mqtt.local, timeout_s), check_broker("cloud_broker", cfg.mqtt.cloud,
                                                                                  timeout_s)]


# -- clock, power, SD card -----------------------------------------------------------------------------


def _adjtimex_state() -> int | None:
    """Kernel clock state from adjtimex(2) (read-only, modes=0): 5 = TIME_ERROR = not synchronised."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; zeroed => modes = 0 (read only)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state


def check_clock(timedatectl: str | None = "timedatectl", *, at: float | None = None) -> Check:
    fix = ("enable time sync: `sudo timedatectl set-ntp true` and allow NTP (UDP 123) out, or set a local NTP "
           "server in /etc/systemd/timesyncd.conf; a Pi has no battery clock, so TLS fails until time is right, and "
           "until it syncs the popular items per hour learn no picks (/api/health popular_learning)")
    t = time.time() if at is None else at
    now = datetime.fromtimestamp(t, UTC)
    if looks_unset(t):  # the same floor the rooms use (edge.clock.BUILD_FLOOR), not a year of its own
        return Check("clock", "fail", f"the clock says {now:%Y-%m-%d}, before this software was built", fix)
    if timedatectl and shutil.which(timedatectl):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run([timedatectl, "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                               text=True, timeout=3)
            if r.returncode == 0 and r.stdout.strip() in ("yes", "no"):
                if r.stdout.strip() == "yes":
                    return _ok("clock", f"synchronised (timedatectl); {now:%Y-%m-%d %H:%M:%S} UTC")
                return Check("clock", "warn", "not synchronised (timedatectl NTPSynchronized=no)", fix)
    state = _adjtimex_state()
    if state is None:
        return Check("clock", "warn", "cannot tell whether the clock is synchronised (no timedatectl, no adjtimex)",
                     fix)
    if state == 5:
        return Check("clock", "warn", "kernel reports the clock unsynchronised (adjtimex TIME_ERROR)", fix)
    return _ok("clock", f"kernel clock synchronised (adjtimex state {state}); {now:%Y-%m-%d %H:%M:%S} UTC")


THROTTLE_BITS = {
    0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
    16: "under-voltage has occurred", 17: "frequency capping has occurred", 18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
THROTTLE_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


def _read_throttled(sysfs: Path, vcgencmd: str | None) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(sysfs.read_text().strip(), 16)
    if vcgencmd and shutil.which(vcgencmd):
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            r = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=3)
            if r.returncode == 0 and "=" in r.stdout:
                return int(r.stdout.strip().split("=", 1)[1], 16)
    return None


def check_power(sysfs: Path = THROTTLE_SYSFS, vcgencmd: str | None = "vcgencmd") -> Check:
    value = _read_throttled(sysfs, vcgencmd)
    if value is None:
        return Check("power", "skip", "no throttling report on this hardware (not a Raspberry Pi)", "")
    flags = [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]
    if not flags:
        return _ok("power", "no under-voltage or throttling (get_throttled=0x0)")
    fix = ("use the official 5.1 V power supply (5 V 3 A for a Pi 4, 5 V 5 A for a Pi 5) and a short thick cable; "
           "power USB cameras and shelf controllers from a powered hub; give the case airflow")
    status = "fail" if value & 0xF else "warn"
    return Check("power", status, f"get_throttled=0x{value:x}: {', '.join(flags)}", fix)


def check_sd_card(root: Path = Path("/"), sys_block: Path = Path("/sys/block")) -> Check:
    fix_ro = "the card was remounted read-only after errors: back up /etc/shelfcast and replace the SD card"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == str(root) and "ro" in parts[3].split(","):
                return Check("sd_card", "fail", f"{root} is mounted read-only", fix_ro)
    cards = sorted(sys_block.glob("mmcblk[0-9]")) if sys_block.is_dir() else []
    if not cards:
        return Check("sd_card", "skip", "no SD/eMMC card on this hardware", "")
    details = []
    for c in cards:
        dev = c / "device"
        life = _read(dev / "life_time")  # eMMC: "0x01 0x02" (10 % steps used), SD cards rarely expose it
        eol = _read(dev / "pre_eol_info")
        name = _read(dev / "name") or c.name
        if life:
            used = max(int(x, 16) for x in life.split())
            if used >= 0x0A or (eol and int(eol, 16) >= 0x03):
                return Check("sd_card", "fail", f"{c.name} ({name}) worn out: life_time {life}, pre_eol {eol}",
                             "replace the card with an industrial (pSLC) card before it fails")
            if used >= 0x08 or (eol and int(eol, 16) == 0x02):
                return Check("sd_card", "warn", f"{c.name} ({name}) {used * 10}% of rated wear used",
                             "plan a card replacement at the next visit")
            details.append(f"{c.name} ({name}) wear {used * 10}% or less")
        else:
            details.append(f"{c.name} ({name}) mounted read-write; wear not reported by this card")
    return _ok("sd_card", "; ".join(details))


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip() or None
    except OSError:
        return None


def check_service() -> Check:
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return Check("service", "skip", "systemd is not running here", "")
    try:
        r = subprocess.run(["systemctl", "is-active", "shelfcast.service"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("service", "warn", f"cannot ask systemd: {exc}", "")
    state = r.stdout.strip()
    if state == "active":
        return _ok("service", "shelfcast.service active")
    return Check("service", "fail", f"shelfcast.service is {state or 'unknown'}",
                 "read why: `journalctl -u shelfcast -n 50`; fix what it says, then "
                 "`sudo systemctl reset-failed shelfcast && sudo systemctl start shelfcast`")


def node_health(cfg: NodeConfig, timeout_s: float = 2.0) -> tuple[str, int | None, dict[str, Any] | None, str]:
    """(url, HTTP status, the running node's /api/health JSON, error) from its signage server."""
    import urllib.error
    import urllib.request

    sg = cfg.signage
    host = "127.0.0.1" if sg.host in ("0.0.0.0", "", "::") else sg.host
    base = f"http://{host}:{sg.port}"
    try:
        with urllib.request.urlopen(base + "/api/health", timeout=timeout_s) as r:
            return base + "/", r.status, json.loads(r.read() or b"{}"), ""
    except urllib.error.HTTPError as exc:
        body: dict[str, Any] | None = None
        with contextlib.suppress(Exception):
            body = json.loads(exc.read() or b"{}")
        return base + "/", exc.code, body, ""
    except (OSError, ValueError) as exc:
        return base + "/", None, None, str(getattr(exc, "reason", exc))


def check_signage(cfg: NodeConfig, timeout_s: float = 2.0) -> Check:
    """The page the kiosk shows answers, and the running node's own health (``/api/health``) is ok."""
    sg = cfg.signage
    if not sg.enabled:
        return Check("signage", "skip", "signage.enabled is false", "")
    if sg.port == 0:
        return Check("signage", "skip", "signage.port is 0 (a random port): nothing fixed to probe", "")
    url, code, health, err = node_health(cfg, timeout_s)
    if code is None:
        return Check("signage", "fail", f"{url} does not answer ({err})",
                     "the node serves the screens: start it (`sudo systemctl start shelfcast`) and read "
                     "`journalctl -u shelfcast -n 50`; another program on the port shows as 'address in use' there")
    if code == 404 or health is None:  # an older node without /api/health: the page answering is enough
        return _ok("signage", f"{url} answers (HTTP {code})")
    status = str(health.get("status", "ok"))
    raw_rooms = health.get("rooms")
    rooms: dict[str, Any] = raw_rooms if isinstance(raw_rooms, dict) else {}
    bad = sorted(f"{name}: {h.get('status')}" for name, h in rooms.items()
                 if isinstance(h, dict) and str(h.get("status", "ok")) not in ("ok", "closed", "disabled"))
    detail = f"{url} answers; running node reports {status}" + (f" ({', '.join(bad)})" if bad else "")
    if code >= 500 or status == "failed":
        return Check("signage", "fail", detail, "read `journalctl -u shelfcast -n 50`, fix the room named here, "
                     "restart the node; send a support bundle if it stays failed")
    if status != "ok":
        return Check("signage", "warn", detail, "a room is degraded (a link is down and retrying): the lines above "
                     "say which cable, device or broker; `journalctl -u shelfcast -n 50` has the details")
    return _ok("signage", detail + "; the kiosk unit shows the page on the attached screen")


def _service_user_reads(path: Path, user: str) -> bool | None:
    """Whether ``user`` may read ``path`` by its permission bits (None: no such user here, or no stat)."""
    try:
        pw = pwd.getpwnam(user)
        st = path.stat()
    except (KeyError, OSError):
        return None
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & 0o400)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = None
    if group is not None and group in (_service_user_groups(user) or set()):
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)


def check_signage_tls(cfg: NodeConfig, *, service_user: str = SERVICE_USER) -> Check:
    """``signage.tls_cert``/``tls_key`` (HTTPS for check-ins): they load and match, the service user can read them,
    and the certificate is not expired (FAIL) or within 30 days of it (WARN)."""
    from edge.signage.http import tls_context

    sg = cfg.signage
    name = "signage_tls"
    if sg.tls_cert is None or sg.tls_key is None:
        return Check(name, "skip", "signage.tls_cert is not set (HTTPS off)", "")
    cert, key = Path(sg.tls_cert), Path(sg.tls_key)
    files = f"signage.tls_cert {cert}, signage.tls_key {key}"
    try:
        tls_context(sg)
    except ValueError as exc:
        return Check(name, "fail", str(exc),
                     "fix the file named: a running node tries the files again every 30 s and starts HTTPS once they "
                     "load, no restart needed; until then it serves plain HTTP only"
                     + (" and refuses admin requests from other devices" if sg.admin_tls_only else ""))
    for what, path in (("signage.tls_key", key), ("signage.tls_cert", cert)):
        if _service_user_reads(path, service_user) is False:
            return Check(name, "fail", f"{what} {path} loads for {_whoami()} but the service user {service_user} "
                         "cannot read it: the node would serve no HTTPS",
                         f"`sudo chown root:{service_user} {path} && sudo chmod 640 {path}`; a running node "
                         "tries again every 30 s and starts HTTPS once it can read them, no restart needed")
    days = _cert_expiry_days(cert)
    if days is None:
        return Check(name, "fail", f"{files}: the certificate's dates cannot be read",
                     "replace signage.tls_cert with the PEM certificate issued for this node")
    renew = (f"have a new certificate issued for this node (the retailer's CA), put it at {cert} (its key at {key}): "
             "a running node uses it for new connections within 30 s, no restart needed (its log says "
             "'renewed certificate', or that HTTPS started where it had not); the check-in devices keep trusting "
             "the same CA")
    if days <= 0:
        return Check(name, "fail", f"{files}: the certificate expired {-days:.0f} d ago; check-in devices refuse it",
                     renew)
    port = f"HTTPS on port {sg.tls_port}" + (", admin requests HTTPS-only" if sg.admin_tls_only else "")
    if days < 30:
        return Check(name, "warn", f"{files}: the certificate expires in {days:.0f} d ({port})", renew)
    return _ok(name, f"{files}: load and match, valid {days:.0f} d more ({port})")


KIOSK_UNIT = "shelfcast-kiosk.service"
KIOSK_ENV = Path("/etc/shelfcast/kiosk.env")


def _env_file_value(text: str, key: str) -> str:
    """``key``'s value in a systemd ``EnvironmentFile=`` (comments skipped, quotes taken off, the last one wins)."""
    value = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k.strip() == key:
            v = v.strip()
            value = v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'" else v
    return value


def check_kiosk(cfg: NodeConfig | None, root: Path = Path("/")) -> Check:
    """An enabled kiosk unit with no SHELFCAST_KIOSK_URL shows only the welcome card (deploy/shelfcast-kiosk)."""
    units = root / "etc" / "systemd" / "system"
    if not any((root / d / KIOSK_UNIT).exists() for d in ("etc/systemd/system", "lib/systemd/system",
                                                          "usr/lib/systemd/system")):
        return Check("kiosk", "skip", f"{KIOSK_UNIT} is not installed (no screen wired to this node)", "")
    if not any(os.path.lexists(d / KIOSK_UNIT) for d in units.glob("*.wants")):  # `systemctl enable`'s link
        return Check("kiosk", "skip", f"{KIOSK_UNIT} is installed but not enabled: the attached screen shows "
                                      "nothing (`sudo systemctl enable --now shelfcast-kiosk` to show the page)", "")
    try:
        url = _env_file_value((root / KIOSK_ENV.relative_to("/")).read_text(errors="replace"),
                              "SHELFCAST_KIOSK_URL")
        missing = "has no SHELFCAST_KIOSK_URL"
    except FileNotFoundError:
        url, missing = "", "does not exist, so there is no SHELFCAST_KIOSK_URL"
    except OSError as exc:
        return Check("kiosk", "warn", f"cannot read {KIOSK_ENV} as {_whoami()} ({exc.strerror or exc})",
                     "run the doctor with sudo: `sudo shelfcast doctor`")
    if url:
        return _ok("kiosk", f"{KIOSK_UNIT} enabled; it shows {url} ({KIOSK_ENV})")
    port = cfg.signage.port if cfg is not None and cfg.signage.port else 8080
    ids = [s.id for s in cfg.layout.screens] if cfg is not None else []
    screen = ids[0] if len(ids) == 1 else "<screen id>"
    choose = f" (the config's screens: {', '.join(ids)})" if len(ids) > 1 else ""
    return Check("kiosk", "warn", f"{KIOSK_UNIT} is enabled but {KIOSK_ENV} {missing}: the attached screen "
                                  "shows only the welcome card",
                 f"add the line SHELFCAST_KIOSK_URL=http://127.0.0.1:{port}/screens/{screen} to {KIOSK_ENV}"
                 f"{choose}, then `sudo systemctl restart shelfcast-kiosk`")


# -- driver --------------------------------------------------------------------------------------------


def _guard(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    try:
        r = fn()
    except Exception as exc:  # a check must never crash the doctor
        return [Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                      "send a support bundle (`shelfcast support-bundle`) to the ShelfCast team")]
    return r if isinstance(r, list) else [r]


def run_checks(config_path: Path, *, access: Callable[[str, int], bool] = os.access, broker_timeout_s: float = 3.0,
               query_firmware: bool = True, throttle_sysfs: Path = THROTTLE_SYSFS, root: Path = Path("/")
               ) -> list[Check]:
    cfg_check, cfg = check_config(config_path)
    checks = [cfg_check]
    if cfg is None:
        for name in ("customer_salt", "data_dir", "database", "model", "shelves", "camera", "local_broker",
                     "cloud_broker", "signage"):
            # the config check above says why: unreadable (permissions, missing) or invalid
            checks.append(Check(name, "skip", f"needs the config, which is not usable ({cfg_check.status}): see "
                                              "the config line above", ""))
    else:
        data_dir = Path(cfg.node.data_dir)
        checks += _guard("customer_salt", lambda: check_customer_salt(cfg))
        checks += _guard("data_dir", lambda: check_data_dir(data_dir))
        checks += _guard("database", lambda: check_database(data_dir))
        checks += _guard("model", lambda: check_model(cfg))
        checks += _guard("shelves", lambda: check_shelves(cfg, access, query_firmware))
        checks += _guard("camera", lambda: check_camera(cfg))
        checks += _guard("brokers", lambda: check_brokers(cfg, broker_timeout_s))
        checks += _guard("signage", lambda: check_signage(cfg))
        if cfg.signage.tls_cert is not None:
            checks += _guard("signage_tls", lambda: check_signage_tls(cfg))
    checks += _guard("kiosk", lambda: check_kiosk(cfg, root))
    checks += _guard("clock", check_clock)
    checks += _guard("power", lambda: check_power(throttle_sysfs))
    checks += _guard("sd_card", check_sd_card)
    checks += _guard("service", check_service)
    return checks


_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render(checks: list[Check], header: str = "") -> str:
    lines = [header] if header else []
    for c in checks:
        lines.append(f"{_MARK.get(c.status, c.status.upper()):<5} {c.name:<18} {c.detail}")
        if c.status in ("fail", "warn") and c.fix:
            lines.append(f"{'':<5} {'':<18} fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "warn", "fail", "skip")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f"  (exit {exit_code(checks)})")
    return "\n".join(lines)


def register(reg: CommandRegistry) -> None:
    p = reg.command("doctor", "check the node and say what is wrong and how to fix it (exit 0 pass, 1 warn, "
                    "2 fail)", _doctor)
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"node config (default: $SHELFCAST_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help='print {"checks": [{"name", "status", "detail", "fix"}]}')
    p.add_argument("--no-firmware", action="store_true",
                   help="do not query shelf controllers for their firmware version (no serial traffic)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="broker timeout (default 3)")


def config_path_from(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("SHELFCAST_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _doctor(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.timeout > 60:
        raise UserError("--timeout must be between 0 and 60 seconds")
    path = config_path_from(args.config)
    checks = run_checks(path, broker_timeout_s=args.timeout, query_firmware=not args.no_firmware)
    if args.json:
        print_json({"checks": [c.to_dict() for c in checks]})
    else:
        from edge import __version__

        print(render(checks, f"ShelfCast {__version__} doctor: {path} (host {socket.gethostname()})"))
        sys.stdout.flush()
    return exit_code(checks)




if __name__ == "__main__":  # `python -m edge.doctor ...`: only these commands, without importing every room's CLI
    import edge.cli as _cli

    _cli.COMMAND_MODULES = ("edge.doctor",)
    raise SystemExit(_cli.main())
