"""``shelfcast provision`` and ``shelfcast support-bundle``: the technician's two other tools.

Provisioning gives a node its identity: store id, node id, cloud broker; an EC
P-256 key pair (Mosquitto/OpenSSL accept it for TLS client certificates on every
broker we target) with a CSR for the fleet CA to sign, or a certificate the
technician brings; the pinned Ed25519 key that signs model releases; a printed
label and a QR code PNG for the cabinet. It is idempotent: the key is kept
unless ``--renew``; the config is validated before it replaces the old one
(kept as ``*.bak``, 0600, without the literal secrets the new one replaced).

``--boot-partition DIR`` writes the same thing as a first-boot bundle onto a
mounted SD card's boot partition (``DIR/shelfcast/``); on first boot
``shelfcast-firstboot.service`` runs ``install.sh --firstboot`` which calls
``shelfcast provision --from-bundle`` and then deletes the private key from the
(FAT, world-readable) partition.

``support-bundle`` packs what a remote engineer needs — config with secrets
masked, recent logs, doctor output, versions, database row counts — and never
the database itself, keys or shopper data.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from edge.cli import CommandRegistry, UserError, print_json, sudo_user
from edge.config import (
    DEMO_CUSTOMER_SALT,
    DEMO_SALT_CHECKINS_REFUSED,
    ID_RE,
    MIN_ADMIN_TOKEN,
    ConfigError,
    NodeConfig,
    load_config,
    parse_config,
)

__all__ = [
    "BUNDLE_DIR",
    "ProvisionResult",
    "apply_bundle",
    "make_key_and_csr",
    "provision",
    "qr_payload",
    "register",
    "support_bundle",
    "write_qr_png",
]

DEFAULT_CONFIG = Path("/etc/shelfcast/shelfcast.yaml")
BUNDLE_DIR = "shelfcast"  # on the boot partition
SERVICE_USER = "shelfcast"
FINAL_KEYS_DIR = Path("/etc/shelfcast/keys")
INSTALLER = Path("/opt/shelfcast/lib/install.sh")  # on an installed node: re-renders the bridge, restarts the node
BASE_CONFIG: dict[str, Any] = {
    "node": {"data_dir": "/var/lib/shelfcast"},
    "mqtt": {"local": {"url": "mqtt://127.0.0.1:1883"}},
    "signage": {"host": "0.0.0.0", "port": 8080},
}
SECRET_KEYS = ("password", "admin_token", "customer_salt", "secret", "token")
SALT_FILE = "customer-salt"  # the retailer's fusion.customer_salt, private beside the node key
TOKEN_FILE = "admin-token"  # signage.admin_token (check-ins, refreshes), private beside the node key
PASSWORD_FILE = "mqtt-password"  # mqtt.cloud.password (a broker that wants a user name and password)
PRIVATE_FILES = (SALT_FILE, TOKEN_FILE, PASSWORD_FILE)  # secrets beside the key: 0600, off the boot partition
DEMO_SALT_WARNING = ("warning: fusion.customer_salt is the public demo salt, so stored and synced shopper ids can "
                     "be reversed; get the retailer's salt file from the cloud side and run `sudo shelfcast provision "
                     "--customer-salt FILE`")


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    config: Path
    store_id: str
    node_id: str
    cloud_broker: str | None
    key: Path
    csr: Path | None
    cert: Path | None
    ca: Path | None
    model_key: Path | None
    qr: Path | None
    fingerprint: str  # sha256 of the public key (DER), first 16 hex digits
    bundle: Path | None = None
    demo_salt: bool = False  # shopper ids are hashed with the public demo salt (no --customer-salt yet)
    admin_token: bool = False  # signage.admin_token is set: check-ins and refreshes are on
    timezone: str = ""  # node.timezone: the store's local hour and weekday (ranking features)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else v
        return out


# -- keys ----------------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    os.chmod(path, 0o600)


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def client_id(store_id: str, node_id: str) -> str:
    return f"shelfcast-{store_id}-{node_id}"


def make_key_and_csr(keys_dir: Path, store_id: str, node_id: str, renew: bool = False) -> tuple[Path, Path, str]:
    """EC P-256 key (kept if present unless ``renew``) and a CSR naming the node; returns (key, csr, fingerprint).

    The CSR's CN is the MQTT client id, so a broker with ``use_identity_as_username`` sees the node by name.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key_path = keys_dir / "node.key"
    key: Any
    if key_path.exists() and not renew:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UserError(f"{key_path} is not an EC key; move it aside or pass --renew")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, client_id(store_id, node_id)),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ShelfCast"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, store_id),
    ])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(name)
           .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
           .sign(key, hashes.SHA256()))
    csr_path = keys_dir / "node.csr"
    _atomic_write(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path, fingerprint(key.public_key())


def fingerprint(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _install_cert(src: Path, key_path: Path, dest: Path) -> None:
    """Take a signed certificate only if it belongs to our key (a swapped file is the classic field mistake)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(src.read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"--cert {src}: not a PEM certificate ({exc})") from None
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, pub) != \
            key.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise UserError(f"--cert {src} was issued for another key than {key_path}; have this node's CSR signed "
                        f"({key_path.with_name('node.csr')})")
    _atomic_write(dest, cert.public_bytes(serialization.Encoding.PEM))


def _install_model_key(src: Path, dest: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        pub = serialization.load_pem_public_key(src.read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"--model-key {src}: not a PEM public key ({exc}); ask store ops for the release "
                        "signing key (public part)") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise UserError(f"--model-key {src} is not an Ed25519 public key; model releases are signed with Ed25519")
    _atomic_write(dest, pub.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


# -- QR label ------------------------------------------------------------------------------------------


def qr_payload(store_id: str, node_id: str, fp: str) -> str:
    return json.dumps({"shelfcast": 1, "store": store_id, "node": node_id, "key": fp}, separators=(",", ":"))


def write_qr_png(path: Path, store_id: str, node_id: str, fp: str) -> Path:
    """A QR code (store, node, key fingerprint) with the ids printed under it, for the cabinet door."""
    try:
        import qrcode
        from PIL import Image, ImageDraw
    except ImportError:
        raise UserError("writing the QR label needs qrcode and pillow: "
                        "`sudo /opt/shelfcast/lib/install.sh` (or pass --no-qr)") from None
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    qr.add_data(qr_payload(store_id, node_id, fp))
    qr.make(fit=True)
    img = qr.make_image(fill_color="black", back_color="white").get_image().convert("RGB")
    w, h = img.size
    label = Image.new("RGB", (w, h + 56), "white")
    label.paste(img, (0, 0))
    draw = ImageDraw.Draw(label)
    draw.text((12, h + 4), f"store {store_id}", fill="black")
    draw.text((12, h + 20), f"node  {node_id}", fill="black")
    draw.text((12, h + 36), f"key   {fp}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    label.save(buf, format="PNG")
    _atomic_write(path, buf.getvalue())
    return path


# -- config --------------------------------------------------------------------------------------------


def _load_raw(path: Path) -> dict[str, Any]:
    if not path.exists():
        return json.loads(json.dumps(BASE_CONFIG))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({exc}); fix it or move it aside and provision again") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a mapping of sections; move it aside and provision again")
    return raw


def _write_config(path: Path, raw: dict[str, Any], check_raw: dict[str, Any] | None = None) -> NodeConfig:
    """Validate, keep the old one as ``*.bak``, write 0640; ``check_raw``: validate this instead (a bundle's
    config names file: secrets where they will be on the node, not where they are now)."""
    head = ("# ShelfCast node config, written by `shelfcast provision` "
            f"({time.strftime('%Y-%m-%d %H:%M:%S')}); check it with `shelfcast config validate`\n")
    text = head + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
    check = text if check_raw is None else head + yaml.safe_dump(check_raw, sort_keys=False, default_flow_style=None)
    cfg = parse_config(check, str(path))  # raises ConfigError: never write a config the node would refuse
    if path.exists():
        _keep_previous(path, raw)
    _atomic_write(path, text.encode(), 0o640)
    return cfg


def _keep_previous(path: Path, new_raw: dict[str, Any]) -> None:
    """``path`` kept as ``path.bak``: 0600 (the service never reads it), and without the literal secrets the new
    config no longer holds (a token or password rotated, or moved to a ``file:``): an old admin token or broker
    password must not linger on the card until the next provision. A secret the new config still holds stays (it
    adds no exposure), and a config that loses nothing is kept byte for byte, comments and all."""
    old_text = path.read_bytes()
    try:
        old_raw = yaml.safe_load(old_text)
    except yaml.YAMLError:
        old_raw = None
    dropped: list[str] = []
    if isinstance(old_raw, dict):
        old_raw = _drop_old_secrets(old_raw, new_raw, "", dropped)
    data = old_text
    if dropped:
        data = (f"# ShelfCast: the config before `shelfcast provision` of {time.strftime('%Y-%m-%d %H:%M:%S')}. "
                f"Removed from this copy: {', '.join(dropped)} (secrets the new config replaced); the live config "
                "has the current ones (`sudo shelfcast provision --admin-token FILE`, `--password-file FILE`, "
                "`--customer-salt FILE` set them)\n"
                + yaml.safe_dump(old_raw, sort_keys=False, default_flow_style=None)).encode()
    _write_private(path.with_name(path.name + ".bak"), data)


def _drop_old_secrets(old: dict[str, Any], new: Any, prefix: str, dropped: list[str]) -> dict[str, Any]:
    """``old`` without the literal secret values (keys named like ``SECRET_KEYS``; not ``file:``/``env:``
    references) that ``new`` does not hold at the same place; their dotted paths appended to ``dropped``."""
    new = new if isinstance(new, dict) else {}
    out: dict[str, Any] = {}
    for k, v in old.items():
        where = f"{prefix}{k}"
        if isinstance(v, dict):
            out[k] = _drop_old_secrets(v, new.get(k), where + ".", dropped)
        elif (any(s in str(k).lower() for s in SECRET_KEYS) and isinstance(v, str) and v.strip()
              and not v.startswith(("file:", "env:")) and new.get(k) != v):
            dropped.append(where)
        else:
            out[k] = v
    return out


def _read_text(src: Path, flag: str, hint: str = "") -> str:
    """The text of the file given as ``flag FILE``; one that is missing, unreadable or not text is a UserError
    naming the flag, the file and why (then ``hint``)."""
    try:
        return src.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise UserError(f"{flag} {src}: cannot read it ({why}){hint}") from None


def _read_salt(src: Path) -> str:
    """The retailer's customer salt from ``--customer-salt FILE`` (what the config loader's file: reads)."""
    salt = _read_text(src, "--customer-salt", "; give the salt file you got from the cloud side").strip()
    if not salt:
        raise UserError(f"--customer-salt {src} is empty; ask the cloud side for the retailer's salt file")
    if salt == DEMO_CUSTOMER_SALT:
        raise UserError(f"--customer-salt {src} holds the public demo salt; ask the cloud side for the retailer's "
                        "own salt file")
    return salt


def _read_token(src: Path) -> str:
    """The signage admin token from ``--admin-token FILE``: what check-in devices send as ``Bearer``."""
    token = _read_text(src, "--admin-token").strip()
    if len(token) < MIN_ADMIN_TOKEN or any(c.isspace() for c in token):
        raise UserError(f"--admin-token {src}: the token must be one word of at least {MIN_ADMIN_TOKEN} random "
                        f"characters (anyone on the store network may try to guess it); make one with "
                        f"`openssl rand -hex 16 > {src}`") from None
    return token


def _read_password(src: Path) -> str:
    """The cloud broker password from ``--password-file FILE`` (store ops hand it over with the user name)."""
    password = _read_text(src, "--password-file").strip("\r\n")
    if not password.strip():
        raise UserError(f"--password-file {src} is empty; put the cloud broker password from store ops in it")
    return password


def _relocate(obj: Any, old: str, new: str) -> Any:
    """``obj`` with every string starting with ``old`` starting with ``new`` instead."""
    if isinstance(obj, dict):
        return {k: _relocate(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relocate(v, old, new) for v in obj]
    return new + obj[len(old):] if isinstance(obj, str) and obj.startswith(old) else obj


def _check_id(value: str, what: str) -> str:
    if not re.fullmatch(ID_RE, value):
        raise UserError(f"{what} {value!r} is not valid: letters, digits, '.', '_' and '-', starting with a letter "
                        "or digit, at most 64 characters")
    return value


def _configured_broker(config_path: Path) -> str | None:
    with contextlib.suppress(UserError, OSError, AttributeError):
        raw = _load_raw(config_path) if os.path.isfile(config_path) else {}
        url = ((raw.get("mqtt") or {}).get("cloud") or {}).get("url")
        return str(url) if url else None
    return None


def _check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"--timezone {name!r} is not an IANA time zone name; use the store's, like America/Chicago "
                        "or Europe/Berlin (`timedatectl list-timezones` lists them)") from None
    return name


def _check_broker(url: str) -> str:
    if not re.fullmatch(r"mqtts?://[^/:\s]+(:\d{1,5})?/?", url):
        raise UserError(f"--cloud-broker {url!r} must look like mqtts://HOST:8883 (TLS) or mqtt://HOST:1883")
    return url


def provision(*, config_path: Path, keys_dir: Path, store_id: str, node_id: str, cloud_broker: str | None,
              cert: Path | None = None, ca_file: Path | None = None, model_key: Path | None = None,
              qr_path: Path | None = None, renew: bool = False, config_keys_dir: Path | None = None,
              username: str | None = None, customer_salt: Path | None = None,
              admin_token: Path | None = None, password: Path | None = None,
              timezone: str | None = None) -> ProvisionResult:
    """Write config + keys; ``config_keys_dir`` is where the keys will live when the config is used (bundles).

    ``customer_salt``: a file with the retailer's salt for hashed shopper ids (the same on every node of the
    retailer); copied private beside the key and referenced as ``fusion.customer_salt: file:…``.
    ``admin_token``: a file with the signage admin token (check-ins, refreshes), likewise as
    ``signage.admin_token: file:…``; ``password``: the cloud broker password, as ``mqtt.cloud.password: file:…``.
    """
    _check_id(store_id, "store id")
    _check_id(node_id, "node id")
    if timezone is not None:
        _check_timezone(timezone)
    if cloud_broker:
        _check_broker(cloud_broker)
    salt = _read_salt(customer_salt) if customer_salt is not None else None
    token = _read_token(admin_token) if admin_token is not None else None
    secret = _read_password(password) if password is not None else None
    if secret is not None and not (cloud_broker or _configured_broker(config_path)):
        raise UserError("--password-file is the cloud broker's password: give the broker too "
                        "(--cloud-broker mqtts://HOST:8883)")
    if cert is not None and not (cloud_broker or _configured_broker(config_path)):
        # installed but never referenced: the node would not use it, and the label would say it is in
        raise UserError(f"--cert {cert}: no cloud broker is configured, so nothing would use the certificate; give "
                        "the broker too (--cloud-broker mqtts://HOST:8883)")
    ref = config_keys_dir or keys_dir
    keys_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(keys_dir, 0o700)
    key_path, csr_path, fp = make_key_and_csr(keys_dir, store_id, node_id, renew)
    cert_path = keys_dir / "node.crt"
    if cert is not None:
        _install_cert(cert, key_path, cert_path)
    elif renew and cert_path.exists():
        cert_path.unlink()  # the old certificate belongs to the old key
    ca_path = keys_dir / "ca.crt"
    if ca_file is not None:
        try:
            data = ca_file.read_bytes()
        except OSError as exc:
            raise UserError(f"--ca-file {ca_file}: {exc.strerror}") from None
        if b"BEGIN CERTIFICATE" not in data:
            raise UserError(f"--ca-file {ca_file} is not a PEM certificate")
        _atomic_write(ca_path, data)
    mk_path = keys_dir / "model-signing.pub"
    if model_key is not None:
        _install_model_key(model_key, mk_path)
    if salt is not None:
        _write_private(keys_dir / SALT_FILE, (salt + "\n").encode())
    if token is not None:
        _write_private(keys_dir / TOKEN_FILE, (token + "\n").encode())
    if secret is not None:
        _write_private(keys_dir / PASSWORD_FILE, (secret + "\n").encode())

    raw = _load_raw(config_path)
    node = raw.setdefault("node", {})
    node["store_id"], node["node_id"] = store_id, node_id
    if timezone is not None:
        node["timezone"] = timezone
    mqtt = raw.setdefault("mqtt", {})
    cloud = mqtt.get("cloud") or {}
    if cloud_broker is not None:
        cloud["url"] = cloud_broker
    if cloud.get("url"):
        cloud["client_id"] = client_id(store_id, node_id)
        cloud["key_file"] = str(ref / "node.key")
        if cert_path.exists():
            cloud["cert_file"] = str(ref / "node.crt")
        else:
            cloud.pop("cert_file", None)
            cloud.pop("key_file", None)  # a key without its certificate is useless to TLS
        if ca_path.exists():
            cloud["ca_file"] = str(ref / "ca.crt")
        if username:
            cloud["username"] = username
        if secret is not None:
            cloud["password"] = f"file:{ref / PASSWORD_FILE}"
        mqtt["cloud"] = cloud
    if mk_path.exists():
        raw.setdefault("model", {})["public_key"] = str(ref / "model-signing.pub")
    if salt is not None:
        fusion = raw.get("fusion")
        fusion = fusion if isinstance(fusion, dict) else {}
        raw["fusion"] = {**fusion, "customer_salt": f"file:{ref / SALT_FILE}"}
    if token is not None:
        signage = raw.get("signage")
        signage = signage if isinstance(signage, dict) else {}
        raw["signage"] = {**signage, "admin_token": f"file:{ref / TOKEN_FILE}"}
    # a bundle: the file: secrets (salt, token) are read from where they are now, not where they will be
    check_raw = _relocate(raw, f"file:{ref}/", f"file:{keys_dir}/") if ref != keys_dir else None
    try:
        cfg = _write_config(config_path, raw, check_raw)
    except ConfigError as exc:
        raise UserError(f"the resulting config would be invalid:\n{exc.render()}") from None
    qr = write_qr_png(qr_path, store_id, node_id, fp) if qr_path is not None else None
    if config_keys_dir is None:
        hand_to_service_user(config_path, keys_dir)
    return ProvisionResult(config_path, store_id, node_id, cloud.get("url"), key_path, csr_path,
                           cert_path if cert_path.exists() else None, ca_path if ca_path.exists() else None,
                           mk_path if mk_path.exists() else None, qr, fp, demo_salt=cfg.fusion.uses_demo_salt(),
                           admin_token=cfg.signage.admin_token is not None, timezone=cfg.node.timezone)


def hand_to_service_user(config_path: Path, keys_dir: Path, user: str = SERVICE_USER) -> bool:
    """Run as root on a node: config root:shelfcast 0640, keys shelfcast-owned, so the service can read them.

    Without this a ``sudo shelfcast provision`` leaves root-only files the node cannot open. No-op when not
    root or when the service user does not exist (a laptop, a test).
    """
    if os.geteuid() != 0:
        return False
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return False
    os.chown(config_path, 0, pw.pw_gid)
    os.chmod(config_path, 0o640)
    for p in [keys_dir, *keys_dir.iterdir()]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return True


# -- first-boot bundle ---------------------------------------------------------------------------------


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_bundle(boot_dir: Path, **kw: Any) -> ProvisionResult:
    """Provision into ``boot_dir/shelfcast/`` (config + keys + label + firstboot.json with checksums)."""
    if not boot_dir.is_dir():
        raise UserError(f"--boot-partition {boot_dir} is not a directory; mount the card's boot partition "
                        "(bootfs) and give its mount point")
    bundle = boot_dir / BUNDLE_DIR
    res = provision(config_path=bundle / "shelfcast.yaml", keys_dir=bundle / "keys",
                    config_keys_dir=FINAL_KEYS_DIR, qr_path=bundle / "label.png", **kw)
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "firstboot.json"
                   and not p.name.endswith((".bak", ".tmp")))
    manifest = {"format": "shelfcast-firstboot/1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "store_id": res.store_id, "node_id": res.node_id,
                "files": {str(p.relative_to(bundle)): _sha256(p) for p in files}}
    _atomic_write(bundle / "firstboot.json", json.dumps(manifest, indent=2).encode())
    for stale in bundle.glob("*.bak"):
        stale.unlink()
    return replace(res, bundle=bundle)


def apply_bundle(bundle: Path, config_path: Path, keys_dir: Path) -> dict[str, Any]:
    """Install a first-boot bundle; then remove the private key from the boot partition and mark it done."""
    man_path = bundle / "firstboot.json"
    try:
        man = json.loads(man_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{man_path}: unreadable ({exc}); re-create the bundle with `shelfcast provision "
                        "--boot-partition`") from None
    if man.get("format") != "shelfcast-firstboot/1":
        raise UserError(f"{man_path}: unknown bundle format {man.get('format')!r}")
    for rel, digest in man.get("files", {}).items():
        p = bundle / rel
        if not p.is_file() or _sha256(p) != digest:
            raise UserError(f"bundle file {rel} is missing or damaged (checksum); re-create the bundle")
    raw = _load_raw(bundle / "shelfcast.yaml")
    keys_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(keys_dir, 0o700)
    for p in sorted((bundle / "keys").glob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name.endswith(".key") or p.name in PRIVATE_FILES:
                _write_private(keys_dir / p.name, data)
            else:
                _atomic_write(keys_dir / p.name, data)

    def remap(v: Any) -> Any:
        if isinstance(v, str) and v.startswith(str(FINAL_KEYS_DIR) + "/"):
            return str(keys_dir / Path(v).name)
        if isinstance(v, str) and v.startswith(f"file:{FINAL_KEYS_DIR}/"):  # a secret beside the key (the salt)
            return f"file:{keys_dir / Path(v[5:]).name}"
        if isinstance(v, dict):
            return {k: remap(x) for k, x in v.items()}
        return v

    _write_config(config_path, remap(raw))
    hand_to_service_user(config_path, keys_dir)
    if (bundle / "label.png").exists():
        shutil.copy2(bundle / "label.png", config_path.with_name("label.png"))
    # the boot partition is FAT and readable by anyone holding the card: the key, salt and token must not stay
    for p in [*(bundle / "keys").glob("*.key"), *(bundle / "keys" / name for name in PRIVATE_FILES)]:
        p.unlink(missing_ok=True)
    man_path.rename(bundle / "firstboot.done.json")
    return {"store_id": man["store_id"], "node_id": man["node_id"], "config": str(config_path)}


# -- support bundle ------------------------------------------------------------------------------------


def _mask(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("***" if any(s in str(k).lower() for s in SECRET_KEYS) and v not in (None, "") else _mask(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask(x) for x in obj]
    return obj


def _versions(cfg_model_dir: Path | None) -> dict[str, Any]:
    from importlib import metadata

    from edge import __version__

    out: dict[str, Any] = {"shelfcast": __version__, "python": sys.version.split()[0],
                           "platform": platform.platform(), "machine": platform.machine()}
    with contextlib.suppress(OSError):
        osr = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        out["os"] = osr.get("PRETTY_NAME", "").strip('"')
    out["packages"] = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                             if d.metadata["Name"])
    for p in (cfg_model_dir, ):
        if p is not None and (p / "manifest.json").exists():
            with contextlib.suppress(OSError, ValueError):
                m = json.loads((p / "manifest.json").read_text())
                out["model"] = {"version": m.get("version"), "sha256": m.get("sha256"), "created": m.get("created")}
    return out


def _journal(since: str, units: list[str]) -> str:
    if shutil.which("journalctl") is None:
        return "journalctl not available on this system\n"
    cmd = ["journalctl", "--no-pager", "-o", "short-iso", "--since", since]
    for u in units:
        cmd += ["-u", u]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"journalctl failed: {exc}\n"
    return r.stdout[-5_000_000:] + (r.stderr and f"\n[journalctl stderr]\n{r.stderr}")


def support_bundle(config_path: Path, out: Path, since: str = "-2d", log_files: list[Path] | None = None, *,
                   folder: str | None = None) -> Path:
    """A tar.gz for remote support, written over ``out``. Never: the database file, keys, raw shopper rows.
    ``folder``: the one folder its files are in (default ``shelfcast-support-<now>``; the CLI gives the default
    name's stamp and suffix, so that two bundles of one second unpack side by side)."""
    from edge.doctor import database_stats, render, run_checks

    members: dict[str, bytes] = {}
    cfg = None
    try:
        cfg = load_config(config_path)
        members["config.yaml"] = yaml.safe_dump(_mask(cfg.redacted()), sort_keys=False).encode()
    except ConfigError as exc:
        try:
            raw = yaml.safe_load(config_path.read_text())
            members["config.yaml"] = yaml.safe_dump(_mask(raw), sort_keys=False).encode()
        except (OSError, yaml.YAMLError):
            members["config.yaml"] = b"(unreadable)\n"
        members["config-problems.txt"] = exc.render().encode()
    checks = run_checks(config_path, query_firmware=False, broker_timeout_s=2.0)
    members["doctor.json"] = json.dumps({"checks": [c.to_dict() for c in checks]}, indent=2).encode()
    members["doctor.txt"] = render(checks).encode()
    model_dir = None
    if cfg is not None:
        from edge.doctor import _default_model_dir

        mp = Path(cfg.model.path) if cfg.model.path else _default_model_dir()
        model_dir = mp if mp.is_dir() else mp.parent
        db = Path(cfg.node.data_dir) / "shelfcast.db"
        stats: dict[str, Any]
        try:
            stats = database_stats(db) if db.exists() else {"path": str(db), "missing": True}
        except Exception as exc:  # a corrupt file: say so, do not fail the bundle
            stats = {"path": str(db), "error": str(exc)}
        stats["files"] = {p.name: p.stat().st_size for p in sorted(Path(cfg.node.data_dir).glob("*"))
                          if p.is_file()} if Path(cfg.node.data_dir).is_dir() else {}
        members["database.json"] = json.dumps(stats, indent=2).encode()
    if cfg is not None and cfg.signage.enabled and cfg.signage.port:
        from edge.doctor import node_health

        _, code, health, err = node_health(cfg)
        members["health.json"] = json.dumps(health if health is not None else {"http_status": code, "error": err},
                                            indent=2, default=str).encode()
    members["versions.json"] = json.dumps(_versions(model_dir), indent=2).encode()
    members["logs/journal.txt"] = _journal(since, ["shelfcast", "shelfcast-kiosk", "shelfcast-firstboot",
                                                   "mosquitto"]).encode()
    for lf in log_files or []:
        with contextlib.suppress(OSError):
            members[f"logs/{lf.name}"] = lf.read_bytes()[-5_000_000:]
    members["README.txt"] = (b"ShelfCast support bundle: config (secrets masked), doctor output, versions, database "
                             b"row counts and recent logs. It holds no database, no keys and no shopper data.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = folder or f"shelfcast-support-{time.strftime('%Y%m%dT%H%M%S')}"
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.chmod(out, 0o600)
    return out


# The bundles `support-bundle` writes under its default name pile up where a technician runs it (their home
# directory on the node's SD card: up to a few MB each, one per visit). After writing one, the newest KEEP_BUNDLES
# of this node's default-named bundles in that directory stay and older ones go. Only files this command wrote
# are candidates: a regular file named shelfcast-support-<this node>-<YYYYmmddTHHMMSS>[-N].tar.gz whose first
# member is in a shelfcast-support-<time>[-N]/ folder. Renamed bundles, other nodes' bundles, links, anything else
# stays. -N (2, 3, ...): the second, third... bundle of the same second (a script, or a technician running it
# twice quickly): the default name is created exclusively, never over an existing file; N orders them.
KEEP_BUNDLES = 5
_BUNDLE_TIME = re.compile(r"(\d{8}T\d{6})(?:-([1-9]\d{0,5}))?")
_BUNDLE_FOLDER = re.compile(r"shelfcast-support-\d{8}T\d{6}(?:-[1-9]\d{0,5})?/")
_BUNDLE_MAX_SAME_SECOND = 1000


def bundle_name(node_id: str, stamp: str) -> str:
    return f"shelfcast-support-{node_id}-{stamp}.tar.gz"


def create_bundle_file(directory: Path, node_id: str, stamp: str) -> tuple[Path, str]:
    """Create (empty, 0600, O_EXCL) the first default name of ``stamp`` that does not exist yet in ``directory``:
    ``bundle_name(node_id, stamp)``, else with ``-2``, ``-3``...; that path and its stamp with the suffix. Made at
    once, before the bundle's seconds of work, so a second run (or a link planted at the name) never shares it."""
    for n in range(1, _BUNDLE_MAX_SAME_SECOND + 1):
        tag = stamp if n == 1 else f"{stamp}-{n}"
        path = directory / bundle_name(node_id, tag)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        return path, tag
    raise UserError(f"{directory} already holds {_BUNDLE_MAX_SAME_SECOND} support bundles of {node_id} made at "
                    f"{stamp}: remove some, or pass --out FILE")


def _written_by_us(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
    except (OSError, tarfile.TarError, EOFError):
        return False
    return first is not None and _BUNDLE_FOLDER.match(first.name) is not None


def prune_support_bundles(directory: Path, node_id: str, keep: int = KEEP_BUNDLES) -> list[Path]:
    """Remove all but the newest ``keep`` (by the time in the name) of the bundles this command wrote for
    ``node_id`` under its default name in ``directory``; the removed paths. ``keep`` 0 keeps them all."""
    if keep <= 0:
        return []
    prefix, suffix = f"shelfcast-support-{node_id}-", ".tar.gz"
    found = []
    with contextlib.suppress(OSError):
        for p in directory.iterdir():
            stamp = p.name[len(prefix):-len(suffix)] if p.name.startswith(prefix) and p.name.endswith(suffix) else ""
            m = _BUNDLE_TIME.fullmatch(stamp)
            if m is not None and _written_by_us(p):
                found.append((m[1], int(m[2] or 1), p))  # a second's -2 after its first, -10 after its -9
    found.sort(reverse=True)
    removed = []
    for _, _, p in found[keep:]:
        with contextlib.suppress(OSError):  # gone already, or not ours to delete (another user's directory)
            p.unlink()
            removed.append(p)
    return removed


# -- CLI -----------------------------------------------------------------------------------------------


def register(reg: CommandRegistry) -> None:
    p = reg.command("provision", "give this node its identity: store, node, cloud broker, keys, QR label",
                    _provision)
    p.add_argument("--store-id", default=None, metavar="ID")
    p.add_argument("--node-id", default=None, metavar="ID")
    p.add_argument("--cloud-broker", default=None, metavar="URL", help="mqtts://HOST:8883 (or mqtt://HOST:1883)")
    p.add_argument("--timezone", default=None, metavar="NAME",
                   help="the store's IANA time zone, e.g. America/Chicago (node.timezone: the local hour and weekday "
                   "the ranking uses; default America/New_York)")
    p.add_argument("--username", default=None, help="MQTT user name at the cloud broker, if it wants one")
    p.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                   help="a file holding the cloud broker password for --username, if the broker wants one")
    p.add_argument("--cert", type=Path, default=None, metavar="FILE",
                   help="the node's signed client certificate (PEM), once the CA has signed node.csr")
    p.add_argument("--ca-file", type=Path, default=None, metavar="FILE", help="CA that signs the cloud broker (PEM)")
    p.add_argument("--model-key", type=Path, default=None, metavar="FILE",
                   help="Ed25519 public key (PEM) that signs model releases: pinned on the node")
    p.add_argument("--customer-salt", type=Path, default=None, metavar="FILE",
                   help="the retailer's salt for hashed shopper ids (a file from the cloud side, the same on every "
                   "node of the retailer); without it the public demo salt stays in use")
    p.add_argument("--admin-token", type=Path, default=None, metavar="FILE",
                   help=f"the signage admin token (>= {MIN_ADMIN_TOKEN} random characters, e.g. `openssl rand -hex "
                   "16 > FILE`) that check-in devices and refreshes send as 'Authorization: Bearer'; without it "
                   "the one configured stays (none: admin actions off)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"config to write (default: $SHELFCAST_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--keys-dir", type=Path, default=None, metavar="DIR",
                   help="where the key, CSR and certificates go (default: keys/ beside the config)")
    p.add_argument("--qr", type=Path, default=None, metavar="PNG", help="QR label path (default: label.png beside "
                   "the config)")
    p.add_argument("--no-qr", action="store_true", help="do not write the QR label")
    p.add_argument("--renew", action="store_true", help="make a new key pair (the old certificate is dropped)")
    p.add_argument("--boot-partition", type=Path, default=None, metavar="DIR",
                   help="write a first-boot bundle onto this mounted SD card boot partition instead")
    p.add_argument("--from-bundle", type=Path, default=None, metavar="DIR",
                   help="install a first-boot bundle (used by shelfcast-firstboot.service)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = reg.command("support-bundle", "pack config (secrets masked), logs, doctor output, versions and database "
                    "statistics into a tar.gz (no shopper data)", _support_bundle)
    p.add_argument("--config", type=Path, default=None, metavar="FILE")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="output file, written over if it exists (default: ./shelfcast-support-<node>-<time>.tar.gz, "
                   "with -2, -3... for a second bundle of the same second: the default name never overwrites)")
    p.add_argument("--since", default="-2d", help="journal window, journalctl --since syntax (default -2d); a "
                   "value starting with '-' is joined with '=': --since=-6h")
    p.add_argument("--log-file", type=Path, action="append", default=[], metavar="FILE",
                   help="also include this log file (repeatable)")
    p.add_argument("--keep", type=_keep_count, default=KEEP_BUNDLES, metavar="N",
                   help=f"after writing, keep the newest N bundles of this node under the default name "
                   f"(shelfcast-support-<node>-<time>.tar.gz) in the bundle's directory and remove older ones "
                   f"(default {KEEP_BUNDLES}; 0 keeps them all); other files are never removed")


def _keep_count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--keep wants a whole number >= 0 (0 keeps every bundle), not {value!r}")
    return n


def _readable(path: Path, how: str) -> bool:
    """True if ``path`` can be read, False if it is not there; a UserError naming sudo if this user may not read
    it (on a node /etc/shelfcast is 0750 root:shelfcast: Path.exists() itself raises PermissionError there)."""
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = f"uid {os.geteuid()}"
        raise UserError(f"cannot read {path} as {user} (it belongs to root and the {SERVICE_USER} user); run it "
                        f"with sudo: `sudo shelfcast {how}`") from None
    except OSError:
        return False


def _ask(prompt: str, default: str | None = None) -> str:
    suffix = f" [{default}]" if default else ""
    try:
        v = input(f"{prompt}{suffix}: ").strip()
    except EOFError:
        v = ""
    return v or (default or "")


def _config_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("SHELFCAST_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _provision(args: argparse.Namespace) -> int:
    config_path = _config_path(args.config)
    keys_dir = args.keys_dir or config_path.parent / "keys"
    if args.from_bundle is not None:
        info = apply_bundle(args.from_bundle, config_path, keys_dir)
        if args.json:
            print_json(info)
        else:
            print(f"provisioned {info['store_id']}/{info['node_id']} from {args.from_bundle} -> {config_path}")
        return 0
    existing: dict[str, Any] = {}
    if args.boot_partition is not None or _readable(config_path, "provision ..."):
        with contextlib.suppress(UserError, OSError):
            existing = _load_raw(config_path) if os.path.isfile(config_path) else {}
    node = existing.get("node") or {}
    cur_store = node.get("store_id") if node.get("store_id") != "unprovisioned" else None
    store_id, node_id, broker = args.store_id, args.node_id, args.cloud_broker
    cur_broker = ((existing.get("mqtt") or {}).get("cloud") or {}).get("url")
    timezone = args.timezone
    if sys.stdin.isatty() and not args.json:
        store_id = store_id or _ask("store id (as on the work order)", cur_store)
        node_id = node_id or _ask("node id (e.g. node-1)", node.get("node_id") or "node-1")
        if broker is None:
            broker = _ask("cloud broker (mqtts://HOST:8883, empty for none)", cur_broker) or None
        if timezone is None:
            timezone = _ask("store time zone (IANA name, e.g. America/Chicago)",
                            node.get("timezone") or "America/New_York")
    else:
        store_id = store_id or cur_store
        node_id = node_id or node.get("node_id")
        broker = broker if broker is not None else cur_broker
    missing = [f for f, v in (("--store-id", store_id), ("--node-id", node_id)) if not v]
    if missing:
        raise UserError(f"give {' and '.join(missing)} (or run it in a terminal to be asked)")
    assert store_id and node_id
    kw: dict[str, Any] = dict(store_id=store_id, node_id=node_id, cloud_broker=broker, cert=args.cert,
                              ca_file=args.ca_file, model_key=args.model_key, renew=args.renew,
                              username=args.username, customer_salt=args.customer_salt,
                              admin_token=args.admin_token, password=args.password_file, timezone=timezone)
    try:
        if args.boot_partition is not None:
            res = write_bundle(args.boot_partition, **kw)
        else:
            qr = None if args.no_qr else (args.qr or config_path.with_name("label.png"))
            res = provision(config_path=config_path, keys_dir=keys_dir, qr_path=qr, **kw)
    except PermissionError as exc:
        raise UserError(f"cannot write {exc.filename}: permission denied; run it with sudo") from None
    if res.demo_salt:  # with a cloud broker the node refuses raw-id check-ins until the salt is set
        print(f"warning: {DEMO_SALT_CHECKINS_REFUSED}" if res.cloud_broker else DEMO_SALT_WARNING, file=sys.stderr)
    if args.password_file is not None and (res.cloud_broker or "").startswith("mqtt://"):
        print(f"warning: {res.cloud_broker} is plain MQTT: the password goes over the network unencrypted; use the "
              "broker's TLS port (--cloud-broker mqtts://HOST:8883)", file=sys.stderr)
    if args.json:
        print_json(res.to_dict())
        return 0
    print(_label_text(res))
    if res.bundle is None and os.path.isfile(INSTALLER):
        # the running node and the broker bridge still use the old config until the installer re-renders and restarts
        print(f"next: `sudo {INSTALLER}` (renders the broker bridge from this config and restarts the node), "
              "then `sudo shelfcast doctor`")
    return 0


def _label_text(r: ProvisionResult) -> str:
    rows = [
        ("store", r.store_id), ("node", r.node_id), ("cloud broker", r.cloud_broker or "(none)"),
        ("time zone", r.timezone),
        ("key fingerprint", r.fingerprint), ("config", str(r.config)),
        ("CSR (have it signed)", str(r.csr) if r.cert is None else "signed certificate installed"),
        ("model signing key", str(r.model_key) if r.model_key else "NOT PINNED (--model-key FILE)"),
        ("customer salt", "DEMO SALT (--customer-salt FILE)" if r.demo_salt else "the retailer's"),
        ("admin token", "set" if r.admin_token else "none: check-ins off (--admin-token FILE)"),
        ("QR label", str(r.qr) if r.qr else "(none)"),
    ]
    if r.bundle is not None:
        rows.append(("first-boot bundle", f"{r.bundle} (eject the card, put it in the node, power on)"))
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * max(width + 50, max(width + len(v) + 4 for _, v in rows)) + "+"  # long paths fit inside
    out = [line, "| SHELFCAST NODE".ljust(len(line) - 1) + "|", line]
    out += [f"| {k.ljust(width)}  {v}".ljust(len(line) - 1) + "|" for k, v in rows]
    out.append(line)
    return "\n".join(out)


def _support_bundle(args: argparse.Namespace) -> int:
    config_path = _config_path(args.config)
    if not _readable(config_path, "support-bundle"):
        raise UserError(f"config {config_path} not found; pass --config FILE")
    out = args.out
    node = "node"
    with contextlib.suppress(Exception):
        node = load_config(config_path).node.node_id
    try:
        if out is None:  # a new file, never one there already (two runs in one second: -2)
            out, tag = create_bundle_file(Path.cwd(), node, time.strftime("%Y%m%dT%H%M%S"))
            try:
                path = support_bundle(config_path, out, args.since, args.log_file, folder=f"shelfcast-support-{tag}")
            except BaseException:
                out.unlink(missing_ok=True)  # not left empty under a bundle's name
                raise
        else:  # the user's own name: written over, as always
            path = support_bundle(config_path, out, args.since, args.log_file)
    except PermissionError as exc:
        raise UserError(f"cannot write {exc.filename}: permission denied; pick another --out") from None
    _give_to_sudo_user(path)
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB): send it to ShelfCast support")
    removed = prune_support_bundles(path.parent, node, args.keep)
    if removed:
        print(f"removed {len(removed)} older support bundle(s) of {node} from {path.parent} (the newest {args.keep} "
              f"stay; --keep 0 keeps all, a renamed bundle is never removed): "
              + ", ".join(p.name for p in removed))
    return 0


def _give_to_sudo_user(path: Path) -> None:
    """Under ``sudo`` the bundle (0600) would be root's, and the technician could not copy it off the node
    (scp as their own user): hand it to the user who ran sudo."""
    owner = sudo_user()
    if owner is not None:
        with contextlib.suppress(OSError):
            os.chown(path, *owner)


if __name__ == "__main__":  # `python -m edge.provision ...`: only these commands, without importing every room's CLI
    import edge.cli as _cli

    _cli.COMMAND_MODULES = ("edge.provision",)
    raise SystemExit(_cli.main())
