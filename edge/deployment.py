"""Files the installer renders from the node's config: udev rules and the local Mosquitto config.

Why in Python and not in ``install.sh``: the values come from the validated
YAML config (``shelves.usb_ids``, ``mqtt.cloud``), and shell cannot parse
YAML safely. ``deploy/install.sh`` calls ``python -m edge.deployment`` from
the node's venv; ``shelfcast provision`` uses the same functions so the
bridge always matches the provisioned cloud broker.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from edge.config import DEMO_SALT_CHECKINS_REFUSED, NodeConfig, load_config

__all__ = [
    "LOCAL_BROKER_PORT",
    "MOSQUITTO_CERT_DIR",
    "main",
    "render_mosquitto_conf",
    "render_udev_rules",
]

LOCAL_BROKER_PORT = 1883
MOSQUITTO_CERT_DIR = Path("/etc/mosquitto/certs/shelfcast")


def render_udev_rules(usb_ids: list[str], group: str = "dialout") -> str:
    """Stable names ``/dev/shelfcast/shelf-<serial>`` for every shelf controller (by USB VID:PID).

    ``ID_SERIAL_SHORT`` comes from udev's usb_id builtin (60-serial.rules), which runs before
    this 99- file; a controller without a USB serial number falls back to its kernel name.
    ``TAG+="systemd"`` makes a ``dev-shelfcast-shelf\\x2d….device`` unit, so units can wait for it.
    """
    lines = [
        "# ShelfCast shelf controllers: stable names under /dev/shelfcast/ (rendered by deploy/install.sh",
        "# from shelves.usb_ids in /etc/shelfcast/shelfcast.yaml; re-run the installer after changing them).",
    ]
    for vp in usb_ids:
        vid, pid = (s.lower() for s in vp.split(":"))
        match = f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{vid}", ATTRS{{idProduct}}=="{pid}"'
        perms = f'GROUP="{group}", MODE="0660", TAG+="systemd"'
        lines.append(f'{match}, ENV{{ID_SERIAL_SHORT}}=="?*", SYMLINK+="shelfcast/shelf-$env{{ID_SERIAL_SHORT}}", '
                     f"{perms}")
        lines.append(f'{match}, ENV{{ID_SERIAL_SHORT}}!="?*", SYMLINK+="shelfcast/shelf-%k", {perms}')
    return "\n".join(lines) + "\n"


def _host_port(url: str) -> tuple[str, int, bool]:
    u = urlsplit(url)
    tls = u.scheme == "mqtts"
    return u.hostname or "localhost", u.port or (8883 if tls else 1883), tls


def render_mosquitto_conf(config: NodeConfig, cert_dir: Path = MOSQUITTO_CERT_DIR,
                          port: int = LOCAL_BROKER_PORT) -> str:
    """A loopback-only local broker and, when a cloud broker is provisioned, a bridge to it.

    The node's sync room talks to the cloud itself (its own client, outbox and releases), so the
    bridge must not duplicate that traffic over the store's uplink: it carries only
    ``<prefix>/<store>/<node>/local/#`` both ways (a namespace for local-only clients: Home
    Assistant, shell tools, a second screen box) and ``.../signage/status`` up (screen
    availability, a few retained messages) — never the per-shopper ``screens/*/recommendations``
    sets, events, commands or model chunks. QoS 1 with a persistent session (``cleansession
    false``) so messages survive link outages in Mosquitto's queue.
    TLS files are copies under ``cert_dir`` readable by the ``mosquitto`` user (the installer
    copies them there; the node's own copies stay private to the ``shelfcast`` user).
    """
    n = config.node
    lines = [
        "# ShelfCast local broker (rendered by deploy/install.sh from /etc/shelfcast/shelfcast.yaml; edits are",
        "# overwritten: change the node config and re-run `sudo /opt/shelfcast/lib/install.sh`).",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "max_queued_messages 100000",
        "autosave_interval 60",
        # Nagle's algorithm held small retained screen sets back (bench e2e: MQTT push p99 18 ms -> 4 ms)
        "set_tcp_nodelay true",
    ]
    cloud = config.mqtt.cloud
    if cloud.url:
        host, cport, tls = _host_port(cloud.url)
        base = f"{config.mqtt.topic_prefix}/{n.store_id}/{n.node_id}"
        lines += [
            "",
            "# Bridge to the cloud broker (mqtt.cloud in the node config)",
            "connection shelfcast-cloud",
            f"address {host}:{cport}",
            f"remote_clientid {cloud.client_id or f'shelfcast-{n.store_id}-{n.node_id}'}-bridge",
            f"local_clientid shelfcast-bridge-{n.node_id}",
            "bridge_protocol_version mqttv311",
            "cleansession false",
            "try_private true",
            "restart_timeout 2 60",
            "keepalive_interval 60",
            "notifications true",
            f"notification_topic {base}/bridge/state",
            f"topic {base}/local/# both 1",
            f"topic {base}/signage/status out 1",
        ]
        if cloud.username:
            lines.append(f"remote_username {cloud.username}")
        if cloud.password is not None:
            lines.append(f"remote_password {cloud.password.get_secret_value()}")
        if tls:
            lines.append(f"bridge_cafile {cert_dir / 'ca.crt'}" if cloud.ca_file else
                         "bridge_capath /etc/ssl/certs")
            if cloud.cert_file and cloud.key_file:
                lines += [f"bridge_certfile {cert_dir / 'node.crt'}", f"bridge_keyfile {cert_dir / 'node.key'}"]
            lines.append("bridge_insecure false")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.deployment", description=__doc__)
    ap.add_argument("what", choices=["udev", "mosquitto", "tls-files", "validate", "render"])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--cert-dir", type=Path, default=MOSQUITTO_CERT_DIR)
    ap.add_argument("--out-dir", type=Path, default=None, help="render: write udev.rules, mosquitto.conf, tls-files")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    if args.what == "validate":  # quicker than `shelfcast config validate` (no command modules to import)
        print(f"{args.config}: valid")
        if cfg.refuses_raw_checkins():  # on stderr: the installer shows it before an upgrade replaces anything
            print(f"    note: {DEMO_SALT_CHECKINS_REFUSED}", file=sys.stderr)
    elif args.what == "render":  # everything at once: one interpreter start instead of three
        if args.out_dir is None:
            ap.error("render needs --out-dir")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "udev.rules").write_text(render_udev_rules(cfg.shelves.usb_ids))
        _write_private(args.out_dir / "mosquitto.conf", render_mosquitto_conf(cfg, args.cert_dir))
        (args.out_dir / "tls-files").write_text("".join(f"{src} {name}\n" for src, name in _tls_files(cfg)))
    elif args.what == "udev":
        sys.stdout.write(render_udev_rules(cfg.shelves.usb_ids))
    elif args.what == "mosquitto":
        sys.stdout.write(render_mosquitto_conf(cfg, args.cert_dir))
    else:  # the TLS files the bridge needs, as "SOURCE DEST-NAME" lines, for the installer to copy
        for src, name in _tls_files(cfg):
            print(f"{src} {name}")
    return 0


def _write_private(path: Path, text: str) -> None:
    """0600 from the first byte: the broker config may hold the bridge's remote_password (mqtt.cloud.password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: narrow it too
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _tls_files(cfg: NodeConfig) -> list[tuple[Path, str]]:
    c = cfg.mqtt.cloud
    if not (c.url and c.url.startswith("mqtts://")):
        return []
    pairs = [(c.ca_file, "ca.crt")]
    if c.cert_file and c.key_file:
        pairs += [(c.cert_file, "node.crt"), (c.key_file, "node.key")]
    return [(Path(src), name) for src, name in pairs if src is not None]


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except Exception as exc:  # ConfigError and friends: every problem, for the installer's log
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
