"""Signed releases (models, catalogue/planogram/stock/profile snapshots) from MQTT to serving.

The path of a release, each step reported upstream (``…/release/status``):

1. ``manifest`` (retained, JSON: kind, version, sha256, size, chunks,
   signature) arrives and is checked as far as it alone decides (``on_manifest``:
   handled before, signature, version already handled, older by its signed
   fields, room on disk). Only then is its kind's chunk topic subscribed, until
   every chunk is staged: a release refused there costs its manifest, not its
   chunks. Chunks are ≤ 128 KB each, a JSON header + bytes.
2. ``staging``: each chunk is checked against its own sha256 and written to
   disk (temp file, fsync, rename) *before* the broker's PUBACK goes out, so a
   ``kill -9`` loses nothing: staged chunks stay on disk and unacknowledged
   ones are re-sent by the broker (persistent session). Staging resumes.
3. ``verified``: the chunks are read in order as one file (hard links, never
   joined on disk), size and sha256 checked, and the Ed25519 signature over
   (kind, version, sha256, size) checked against the key provisioned on the
   node (``model.public_key``). Unsigned, other key, wrong hash, truncated:
   refused. What a release unpacks to is capped (a snapshot's JSON by
   ``mqtt.sync.max_snapshot_mb``, a model archive by ``MAX_MODEL_MEMBERS`` and
   ``MAX_MODEL_UNPACKED``): a signed release must not exhaust RAM or card either.
4. models: unpacked into ``models/<version>/`` (temp dir, then one rename),
   ``loaded`` beside the serving model by the candidate loader (which refuses
   wrong input shapes), ``canary`` run (``edge.sync.canary``), then
   ``swapped``: one reference assignment (``recommender.model = new``) — no
   request is dropped, requests already scoring finish on the old model. The
   pointer ``models/active.json`` is replaced atomically, naming the previous
   model too, so a ``kill -9`` at any step leaves it pointing at a complete,
   verified model. After a swap the new model is on probation: scoring errors
   roll it back automatically; a ``rollback`` command does the same.
   Snapshots are validated against their schema and ``applied`` to the store.

A refused release leaves the serving model untouched and is remembered, so a
retained manifest re-delivered after a reconnect is not processed (nor
downloaded, nor reported) again; except a truncated / wrong-hash one
(``ReleaseError.retry``), whose staging stays and is checked again once a chunk
changes (the publisher's re-upload).

Anti-rollback (after ``verified``, before anything is installed or applied): a
correctly signed but *older* release (last month's retained one, or one
captured and re-published) is refused. Each kind has a mark, the newest release
it accepted (``sync/release_marks.json``, written atomically with fsync after a
swap / apply, never lowered by a rollback); a model must also be newer than the
model serving. Models are ordered by the ``created`` of the ``manifest.json``
inside the signed archive (covered by the signed sha256), else by the signed
version; snapshots by the signed version in natural order (digit runs as
numbers: 2026.11.30-v5 < 2026.11.30-v10). A version names one release: another
sha256 under a version already accepted is refused. Rolling back on purpose: the
``rollback`` command (never blocked: it does not touch the marks), or a newer
release carrying the old content.
"""

from __future__ import annotations

import base64
import bisect
import ctypes
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import tarfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from edge.sync.canary import CanaryOptions, CanarySet, run_canary
from edge.sync.inflate import InflateLimit, inflate_bounded
from edge.sync.prune import prune_models
from edge.sync.schemas import SNAPSHOTS, ChunkHeader, ReleaseManifest, describe_error
from edge.sync.topics import RELEASE_KINDS, Topics

__all__ = [
    "CHUNK_MAGIC",
    "CandidateLoader",
    "GuardedScorer",
    "Mark",
    "ReleaseError",
    "ReleaseManager",
    "key_id",
    "load_public_key",
    "order_refusal",
    "pack_chunk",
    "parse_chunk",
    "return_freed_memory",
    "sign_manifest",
    "version_key",
]

log = logging.getLogger(__name__)

CHUNK_MAGIC = b"SCC1"
CandidateLoader = Callable[[Path], Any]
Reporter = Callable[[str, str, str, bool, str], None]  # kind, version, step, ok, detail


class ReleaseError(Exception):
    def __init__(self, message: str, *, retry: bool = False, unsigned: bool = False) -> None:
        super().__init__(message)
        # retry: the staged bytes do not add up (truncated, wrong hash). That can be a stray chunk from someone
        # without the signing key as well as a broken upload, so the refusal is not remembered: the publisher's
        # next upload of the same release is staged afresh and installed.
        self.retry = retry
        # unsigned: the signature did not check out (or could not be checked: no key on the node). Anyone who can
        # publish can send that, so the refusal does not claim the version (the signed release under it still
        # gets in).
        self.unsigned = unsigned


# -- keys and signatures ------------------------------------------------------------
def load_public_key(path: Path) -> Ed25519PublicKey:
    """PEM (SubjectPublicKeyInfo) or the raw 32-byte key as base64/hex text."""
    data = Path(path).read_bytes()
    if b"BEGIN" in data:
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ReleaseError(f"{path} is not an Ed25519 public key")
        return key
    text = data.strip().decode()
    raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text)
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(fields: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``fields`` with ``signature`` and ``key_id`` (the publisher's side)."""
    unsigned = ReleaseManifest.model_validate({**fields, "signature": "x"})
    sig = private.sign(unsigned.signed_message())
    return {**fields, "signature": base64.b64encode(sig).decode(), "key_id": key_id(private.public_key())}


# -- memory -------------------------------------------------------------------------
_TRIM: Any = None  # glibc's malloc_trim, looked up once (False: this C library has none)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def return_freed_memory() -> int | None:
    """Give the pages the C heap holds free back to the OS (glibc ``malloc_trim(0)``, every arena); the RSS it
    returned in bytes, or None where the C library has no ``malloc_trim`` (musl, macOS).

    Why: a model is ~23 MB of numpy arrays and LiteRT buffers, mostly ``malloc``'d (numpy's large arrays land on
    the heap once glibc's dynamic mmap threshold has risen, and the release worker's allocations in its own
    arena). When a swap drops the model before the previous one, glibc keeps its pages (freed chunks below live
    ones are never handed back by ``free``): in the session-12 soak each release cost ~+22 MB of RSS although the
    dropped model's objects were collected. Called on the release worker after a model is dropped: ~1 ms, and
    ctypes releases the GIL meanwhile (a thread that mallocs may wait for the arena being trimmed)."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = getattr(ctypes.CDLL(None), "malloc_trim", False)
        except OSError:
            _TRIM = False
        if _TRIM:
            _TRIM.argtypes = [ctypes.c_size_t]
            _TRIM.restype = ctypes.c_int
    if not _TRIM:
        return None
    before = _rss_bytes()
    _TRIM(0)
    after = _rss_bytes()
    return max(0, before - after) if before is not None and after is not None else 0


# -- chunks -------------------------------------------------------------------------
def pack_chunk(kind: str, version: str, index: int, count: int, data: bytes) -> bytes:
    header = json.dumps({"kind": kind, "version": version, "index": index, "count": count,
                         "sha256": hashlib.sha256(data).hexdigest()}, separators=(",", ":")).encode()
    return CHUNK_MAGIC + struct.pack(">H", len(header)) + header + data


def parse_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    if len(payload) < 6 or payload[:4] != CHUNK_MAGIC:
        raise ReleaseError("not a release chunk (missing SCC1 header)")
    (hlen,) = struct.unpack(">H", payload[4:6])
    try:
        header = ChunkHeader.model_validate_json(payload[6:6 + hlen])
    except ValidationError as exc:
        raise ReleaseError(f"bad chunk header: {describe_error(exc)}") from None
    data = payload[6 + hlen:]
    if hashlib.sha256(data).hexdigest() != header.sha256:
        raise ReleaseError(f"chunk {header.index} of {header.kind} {header.version} is corrupt (sha256 mismatch)")
    return header, data


def _chunk_path(d: Path, index: int) -> Path:
    """Where a release's chunk ``index`` is staged (``_stage`` reads the number back from the file's stem)."""
    return d / f"{index:06d}.chunk"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "files.json":
            with open(p, "rb") as f:  # streamed: a model file can be hundreds of MB
                out[str(p.relative_to(root))] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


ASSEMBLED = "release.assembled"  # the chunks joined into one file: only where the data dir has no hard links
WORK = ".work"  # hard links to the staged chunks a release is verified and installed from (see ``_assemble``)
_READ = 1 << 20  # read / decompress buffer: what a release costs in RAM while it is assembled and unpacked
# what a release may unpack to (the release is signed, but a bad cloud build or a stolen key must not fill the
# node's RAM or card): a snapshot's JSON (decompressed) is capped by ``max_snapshot_bytes`` (mqtt.sync.max_snapshot_mb);
# a model archive by these
MAX_SNAPSHOT_BYTES = 32 << 20
MAX_MODEL_MEMBERS = 1000  # files and dirs in a model archive (a real one holds 4)
MAX_MODEL_UNPACKED = 512 << 20  # what a model archive's files add up to (the manifest's own size cap)
MAX_MODEL_MANIFEST = 16 << 20  # the manifest.json inside it, read whole (the shipped one is 161 KB)
# releases remembered in releases.json: the ones whose signature checked out, and apart from them (so that a flood
# of junk can only push out junk) the ones refused for a missing or bad signature, which anyone can send
REMEMBER_SIGNED = 500
REMEMBER_UNSIGNED = 200


class TooLarge(ValueError):
    """What a release unpacks to is above its limit."""


# -- anti-rollback: is a release newer than what the node accepted / serves? ----------------
@dataclass(frozen=True)
class Mark:
    """A release as the anti-rollback rule orders it: the signed version and sha256 and, for a model, the
    ``created`` and weight hashes of the ``manifest.json`` inside the verified archive (trusted: the signed
    sha256 covers it). ``sha256`` is empty for the bundled model (not a release)."""

    version: str
    sha256: str = ""
    created: float | None = None
    created_text: str = ""
    weights: str = ""
    legacy: bool = False  # taken from releases.json (applied before marks existed): ordered only where it can be

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "created": self.created,
                "created_text": self.created_text, "weights": self.weights, "legacy": self.legacy, "t": time.time()}

    @classmethod
    def from_json(cls, d: Any) -> Mark | None:
        if not isinstance(d, dict) or not isinstance(d.get("version"), str):
            return None
        created = d.get("created")
        return cls(d["version"], str(d.get("sha256") or ""),
                   float(created) if isinstance(created, int | float) else None,
                   str(d.get("created_text") or ""), str(d.get("weights") or ""), bool(d.get("legacy")))

    def describe(self) -> str:
        return self.version + (f" (created {self.created_text})" if self.created_text else "")


_TOKENS = re.compile(r"\d+|\D+")


def version_key(mark: Mark) -> tuple[tuple[int, int, str], ...] | None:
    """Natural order of a signed version (digit runs compare as numbers: 2026.11.30-v5 < 2026.11.30-v10 <
    2026.12.01). None for the old default version of a release, the first 12 hex of its sha256: a hash has no
    order."""
    if mark.sha256 and mark.version == mark.sha256[:12]:
        return None
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _TOKENS.findall(mark.version))


def _version_order(a: Mark, b: Mark) -> int | None:
    """1 / -1 / 0: ``a``'s version is newer / older / the same as ``b``'s; None when they cannot be ordered (a
    hash, or they first differ in text rather than in a number: another naming scheme, e.g. v7 and 2026.12.01)."""
    ka, kb = version_key(a), version_key(b)
    if ka is None or kb is None:
        return None
    for x, y in zip(ka, kb, strict=False):
        if x != y:
            return (1 if x[1] > y[1] else -1) if x[0] == y[0] == 0 else None
    return (len(ka) > len(kb)) - (len(ka) < len(kb))


def _parse_created(value: Any) -> tuple[float | None, str]:
    """A model manifest's ``created`` (ISO 8601, as ``models.export`` writes it, or Unix seconds)."""
    if isinstance(value, bool):
        return None, ""
    if isinstance(value, int | float):
        try:
            return float(value), datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            return None, ""
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None, ""
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp(), value
    return None, ""


def _manifest_mark(version: str, sha256: str, man: Any) -> Mark:
    if not isinstance(man, dict):
        return Mark(version, sha256)
    created, text = _parse_created(man.get("created"))
    weights = "|".join(str(man.get(k) or "") for k in ("sha256", "side_sha256", "stage2_sha256")) \
        if man.get("sha256") else ""
    return Mark(version, sha256, created, text, weights)


def _archived_manifest(parts: list[Path]) -> Any:
    """The ``manifest.json`` inside a (verified) model tar, read from its staged chunks, or None. Reads the tar
    headers (at most ``MAX_MODEL_MEMBERS``) and that member only, never the archive whole."""
    try:
        with _open_parts(parts) as raw, tarfile.open(fileobj=raw) as tf:
            for n, member in enumerate(_members(tf)):
                if n >= MAX_MODEL_MEMBERS:
                    return None
                if member.isfile() and member.name.removeprefix("./") == "manifest.json" \
                        and member.size <= MAX_MODEL_MANIFEST:
                    f = tf.extractfile(member)
                    return json.loads(f.read()) if f is not None else None
    except (tarfile.TarError, ValueError, OSError, EOFError):
        return None
    return None


def _members(tf: tarfile.TarFile) -> Any:
    """A tar's members one at a time (``getmembers()`` reads every header first: a tar of a million empty files
    would cost hundreds of MB of RAM before anything is checked)."""
    while (member := tf.next()) is not None:
        yield member


def order_refusal(cand: Mark, ref: Mark, what: str) -> str | None:
    """Why ``cand`` may not follow ``ref`` (``what`` names ``ref``, e.g. "the serving"); None when it is newer.

    Models with a trusted ``created`` on both sides compare by it (a tie only with the same weights: the same
    model re-published); else the signed versions compare in natural order. A version already accepted names
    that release: another sha256 under it is refused (TUF's rule too), unless it carries the same weights.
    Versions that cannot be ordered are refused after a release accepted under these rules, and let through
    after the bundled model or a release from before them (nothing trusted to order by)."""
    same_weights = bool(cand.weights) and cand.weights == ref.weights
    if cand.version == ref.version:
        if same_weights:
            return None
        theirs = f"sha256 {ref.sha256[:12]}…" if ref.sha256 else "the bundled model"
        return (f"release {cand.version} (sha256 {cand.sha256[:12]}…) is not {what} {cand.version} ({theirs}): "
                "a version names one release, so another build under it is refused; publish it under a new version")
    if cand.created is not None and ref.created is not None:
        if cand.created > ref.created or (cand.created == ref.created and same_weights):
            return None
        tie = " (the same created, other weights)" if cand.created == ref.created else ""
        return f"release {cand.describe()} is older than {what} {ref.describe()}{tie}"
    order = _version_order(cand, ref)
    if order is not None:
        return None if order > 0 else \
            f"release {cand.version} is older than {what} {ref.describe()} (versions compare in natural order)"
    if not ref.sha256 or ref.legacy or version_key(ref) is None:
        return None  # nothing trusted to order against
    if version_key(cand) is None:
        return (f"release {cand.version} has a hash for a version, which has no order, and {what} is "
                f"{ref.version}: publish it with a date-stamped --version (the default of `shelfcast model "
                "publish`)")
    return (f"release {cand.version} cannot be ordered after {what} {ref.version} (they differ in text, not in a "
            f"number): publish it under a version that continues the numbering of {ref.version}")


_UNSIGNED = ("refused: unsigned release", "refused: bad signature", "refused: no signing key",
             "refused: the provisioned key")


def _claims(rec: Any) -> bool:
    """Whether a ``releases.json`` record claims its version (see ``ReleaseManager._seen``)."""
    if not isinstance(rec, dict):
        return True
    if "claims" in rec:
        return bool(rec["claims"])
    return not str(rec.get("outcome", "")).startswith(_UNSIGNED)


class GuardedScorer:
    """Wraps a freshly swapped model: scoring errors during probation trigger a rollback."""

    def __init__(self, inner: Any, on_failure: Callable[[str], None], *, max_errors: int = 3,
                 probation_s: float = 600.0) -> None:
        self.inner = inner
        self.version: str = getattr(inner, "version", "unknown")
        self._on_failure = on_failure
        self._max_errors = max_errors
        self._until = time.monotonic() + probation_s
        self.errors = 0
        self._tripped = False

    def score(self, *args: Any, **kw: Any) -> Any:
        try:
            return self.inner.score(*args, **kw)
        except Exception as exc:
            self.errors += 1
            if not self._tripped and self.errors >= self._max_errors and time.monotonic() < self._until:
                self._tripped = True
                self._on_failure(f"{self.errors} scoring errors during probation (last: {type(exc).__name__}: {exc})")
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class ModelSlot:
    version: str
    path: Path | None  # None: the bundled model (no release directory; no models/active.json)
    scorer: Any


class ReleaseManager:
    """Owns staging, verification, canary, swap and rollback. Thread-safe; heavy steps run on one worker."""

    def __init__(self, data_dir: Path, *, public_key: Path | None, loader: CandidateLoader | None,
                 get_model: Callable[[], Any], set_model: Callable[[Any], None], report: Reporter,
                 canary: CanarySet | None = None, canary_options: CanaryOptions | None = None,
                 apply_snapshot: Callable[[str, BaseModel], None] | None = None,
                 on_registered: Callable[[str, str, str, str, bool, str], None] | None = None,
                 mono: Callable[[], float] = time.monotonic, topics: Topics | None = None,
                 subscribe: Callable[[list[str]], Any] | None = None,
                 unsubscribe: Callable[[list[str]], Any] | None = None,
                 resubscribe: Callable[[list[str]], Any] | None = None,
                 reserve_bytes: int = 16 << 20, max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
        self.root = Path(data_dir)
        self.staging = self.root / "sync" / "staging"
        self.models_dir = self.root / "models"
        self.public_key_path = public_key
        self.loader = loader
        self.get_model = get_model
        self.set_model = set_model
        self.report = report
        self.canary = canary
        self.canary_options = canary_options or CanaryOptions()
        self.apply_snapshot = apply_snapshot
        self.on_registered = on_registered
        self._lock = threading.RLock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-release")
        self._busy: set[tuple[str, str]] = set()
        self._staging_reported: set[tuple[str, str]] = set()
        self._stall_reported: dict[tuple[str, str], float] = {}
        # staging activity in monotonic time (a Pi's wall clock steps when NTP syncs: file mtimes would make a
        # download in progress look a day old, or hide a real stall); a dir from before a restart counts from when
        # this process first looks at it
        self._mono = mono
        self._activity: dict[tuple[str, str], float] = {}
        self.previous: ModelSlot | None = None
        self.current: ModelSlot | None = None
        self.stats = {"chunks": 0, "chunks_skipped": 0, "refused": 0, "applied": 0, "rollbacks": 0,
                      "older_refused": 0, "not_downloaded": 0, "too_large": 0, "chunks_unexpected": 0}
        # chunk topics are listened to only while a release that passed the checks at its announcement is being
        # staged (subscribe / unsubscribe on the link; the room wires them): a release refused there, or
        # accepted before, costs its manifest and not a byte of its chunks
        self.topics = topics
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._resubscribe = resubscribe  # subscribe again, the broker sending the retained messages anew
        self._want: dict[tuple[str, str], set[str]] = {}
        self._listening: set[str] = set()
        self._connected = False
        self.reserve_bytes = reserve_bytes  # kept free beside a download (the store keeps writing)
        self.max_snapshot_bytes = max_snapshot_bytes  # a snapshot's JSON, decompressed (it is parsed whole)
        self._space_reported: set[str] = set()
        # chunk writes per staged release, and the count a truncated / wrong-hash refusal saw: that staging stays
        # (and listened to) and is checked again once a chunk changes (the publisher's re-upload; its chunks may
        # come after the old ones the broker retained, sent again when the node subscribes)
        self._gen: dict[tuple[str, str], int] = {}
        self._failed_gen: dict[tuple[str, str], int] = {}
        # what is staged, in memory (the manifest, the chunk numbers on disk), so a chunk costs O(1) to count:
        # reading the staging dir for each chunk made staging quadratic (2,000 chunks: 29 s of the link thread)
        self._man: dict[tuple[str, str], ReleaseManifest] = {}
        self._have: dict[tuple[str, str], set[int]] = {}
        self.staging.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._done = self._load_done()
        self.marks: dict[str, Mark] = self._load_marks()
        self.keep_models: set[Path] = set()  # more model dirs the prune keeps (the configured model.path)

    # -- bookkeeping of what was already handled -------------------------------------------
    def _done_path(self) -> Path:
        return self.root / "sync" / "releases.json"

    def _load_done(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(json.loads(self._done_path().read_text()))
        except (OSError, ValueError):
            return {}

    def _mark_done(self, kind: str, version: str, sha: str, outcome: str, **extra: Any) -> None:
        with self._lock:
            key, rec = f"{kind}/{version}/{sha}", {"outcome": outcome, "t": time.time(), **extra}
            if not _claims(rec) and key in self._done and _claims(self._done[key]):
                return  # a copy of a signed release with a bad signature: what was decided for the signed one stays
            self._done[key] = rec
            # two pools, each keeping its newest: a release that failed the signature check (anyone who can publish
            # can send one) never pushes out one that passed it, so a flood of junk manifests cannot make the node
            # forget a refused release and download it again
            for signed, cap in ((True, REMEMBER_SIGNED), (False, REMEMBER_UNSIGNED)):
                pool = [k for k, rec in self._done.items() if _claims(rec) == signed]
                if len(pool) > cap:
                    for k in sorted(pool, key=lambda k: float(self._done[k].get("t") or 0))[:-cap]:
                        del self._done[k]
            _atomic_write(self._done_path(), json.dumps(self._done).encode())

    def _seen(self, kind: str, version: str, sha: str | None = None) -> bool:
        """Handled: ``kind``/``version``/``sha``; without ``sha``, the version is claimed by a release handled here
        (accepted, or refused for what its signed fields say: a refusal for a missing or bad signature claims no
        version, as anyone who can publish can send one)."""
        if sha is not None:
            return f"{kind}/{version}/{sha}" in self._done
        return any(k.startswith(f"{kind}/{version}/") and _claims(rec) for k, rec in self._done.items())

    def _handled(self, m: ReleaseManifest) -> bool:
        """This announcement was handled: skip it (no report, no download). A refusal decided at an announcement
        holds for that signature under the key this node trusts now: provisioning the key (or re-signing)
        re-checks it."""
        rec = self._done.get(f"{m.kind}/{m.version}/{m.sha256}")
        if rec is None:
            return False
        if "sig" in rec:
            return bool(rec["sig"] == (m.signature or "") and rec.get("key") == self._trusted_key())
        return True

    def _trusted_key(self) -> str:
        try:
            return key_id(load_public_key(self.public_key_path)) if self.public_key_path is not None else ""
        except (OSError, ValueError, ReleaseError):
            return ""

    # -- anti-rollback marks: the newest release accepted per kind ---------------------------
    def _marks_path(self) -> Path:
        return self.root / "sync" / "release_marks.json"

    def _load_marks(self) -> dict[str, Mark]:
        marks: dict[str, Mark] = {}
        try:
            raw = json.loads(self._marks_path().read_text())
            for kind, d in (raw.items() if isinstance(raw, dict) else []):
                mark = Mark.from_json(d)
                if mark is not None:
                    marks[kind] = mark
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s); ordering releases by the ones remembered in %s and the serving "
                      "model", self._marks_path(), exc, self._done_path().name)
        # a kind without a mark (a node from before marks, or a lost file): the newest release it applied
        seeded: dict[str, Mark] = {}
        for key, rec in self._done.items():
            kind, _, rest = key.partition("/")
            version, _, sha = rest.rpartition("/")
            if kind in marks or not str(rec.get("outcome", "")).startswith("applied"):
                continue
            cand = Mark(version, sha, legacy=True)
            vk, best = version_key(cand), seeded.get(kind)
            if vk is not None and (best is None or vk > (version_key(best) or ())):
                seeded[kind] = cand
        return {**seeded, **marks}

    def _set_mark(self, kind: str, mark: Mark) -> None:
        with self._lock:
            self.marks[kind] = mark
            _atomic_write(self._marks_path(), json.dumps({k: v.to_json() for k, v in self.marks.items()}).encode())

    def _serving_mark(self) -> Mark | None:
        """The model serving now: a release (its files on disk) or the bundled model."""
        cur = self.current
        if cur is not None and cur.path is not None:
            try:
                files = json.loads((cur.path / "files.json").read_text())
                man = json.loads((cur.path / "manifest.json").read_text())
            except (OSError, ValueError):
                files, man = {}, None
            return _manifest_mark(cur.version, str(files.get("sha256") or ""), man)
        model = _unguard(self.get_model())
        version = getattr(model, "version", None) if model is not None else None
        if not version:
            return None
        man = getattr(model, "manifest", None)
        if man is None:
            man = getattr(getattr(model, "ranker", None), "manifest", None)
        return _manifest_mark(str(version), "", man)

    def _candidate(self, m: ReleaseManifest, parts: list[Path]) -> Mark:
        man = _archived_manifest(parts) if m.kind == "model" and m.format == "tar" else None
        return _manifest_mark(m.version, m.sha256, man)

    def _check_order(self, cand: Mark, kind: str, *, announced: bool = False) -> bool:
        """Refuse (ReleaseError) a release not newer than the kind's mark or, for a model, the serving one.
        False: this very release was accepted before (nothing to do: a rollback since then stays).

        ``announced``: ``cand`` is from the announcement alone (signed version and sha256, no archive). Only what
        that decides is refused: every other kind exactly as after the download; a model only against a reference
        without a ``created`` and under another version, since the ``created`` (and weights) inside its archive
        would decide the rest (the announcement's own ``created`` is not signed, so it is not used)."""
        refs: list[tuple[Mark, str]] = []
        if kind == "model":
            serving = self._serving_mark()
            if serving is not None:
                refs.append((serving, "the serving"))
        mark = self.marks.get(kind)
        if mark is not None:
            refs.append((mark, "the newest accepted"))
        if any(ref.sha256 == cand.sha256 for ref, _ in refs):
            return False
        for ref, what in refs:
            if announced and kind == "model" and (ref.created is not None or ref.version == cand.version):
                continue
            why = order_refusal(cand, ref, what)
            if why is not None:
                self.stats["older_refused"] += 1
                if kind == "model":
                    how = ("publish the old model under a new version (`shelfcast model publish --model DIR "
                           "--version NEW` gives it a new created), or send the node the `rollback` command "
                           "(back to its previous model)")
                else:
                    how = (f"publish the old snapshot under a newer version (`shelfcast model publish --kind {kind} "
                           "--model FILE --version NEW`)")
                raise ReleaseError(f"{why}; to roll back on purpose, {how}")
        return True

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=False)

    # -- messages (link thread; must be quick and durable before returning) -----------------
    def on_manifest(self, kind: str, payload: bytes, source: str | None = None) -> None:
        """An announcement (``source``: the topic it came on). What it alone decides is decided here, before a
        byte of the release is downloaded: handled before (skipped, silently), unsigned or not signed by the
        provisioned key, another build under a version handled here, older than the kind's mark / the serving
        model as far as the signed fields tell (``_check_order(announced=True)``), no room on the disk. Such a
        refusal is reported once and remembered by kind/version/sha256 (with the signature and the trusted key),
        never accepted early, and marks nothing: the checks after the download stay the authority. A release
        that passes is listened to: its chunk topic is subscribed until all its chunks are staged."""
        if not payload:
            return  # a cleared retained manifest
        try:
            m = ReleaseManifest.model_validate_json(payload)
        except ValidationError as exc:
            raise ReleaseError(f"malformed {kind} manifest: {describe_error(exc)}") from None
        if m.kind != kind:
            raise ReleaseError(f"manifest for {m.kind!r} arrived on the {kind!r} topic")
        if self._handled(m):
            return
        try:
            self._check_signature(m)
            if self._seen(kind, m.version):  # its chunks would be skipped as handled: say why instead of stalling
                raise ReleaseError(f"{kind} {m.version} was handled here already, with another sha256 than this "
                                   f"manifest's ({m.sha256[:12]}…): a version names one release, so another build "
                                   "under it is refused; publish it under a new version")
            if not self._check_order(Mark(m.version, m.sha256), kind, announced=True):
                log.info("release %s %s (sha256 %s…) is the one accepted before; not downloaded", kind, m.version,
                         m.sha256[:12])
                return
        except ReleaseError as exc:
            self._refuse_announced(m, exc)
            return
        if not self._room_for(m):
            return
        d = self.staging / kind / m.version
        d.mkdir(parents=True, exist_ok=True)
        self._activity[(kind, m.version)] = self._mono()
        self._prune_staging(kind, keep=m.version)
        filters = self._chunk_filters(kind, source)
        if source is not None:  # announced on the node's and the store's topic: its chunks may come on either
            if (d / "source").exists():
                filters |= self._source_filters(kind, m.version)
            _atomic_write(d / "source", "\n".join(sorted(filters)).encode())
        _atomic_write(d / "manifest.json", payload)
        self._man[(kind, m.version)] = m
        self.report(kind, m.version, "manifest", True, f"{m.size} bytes in {m.chunks} chunks")
        with self._lock:
            held = filters & self._listening  # subscribed already (another release of this kind is staging)
        self._listen(kind, m.version, filters)
        if held and self._resubscribe is not None:
            # its chunks may have come before its manifest (publishers send them first) and were not staged:
            # subscribe again with the retained messages sent, so the broker sends this release's chunks
            self._resubscribe(sorted(held))
        self._maybe_complete(kind, m.version)

    def _refuse_announced(self, m: ReleaseManifest, exc: ReleaseError) -> None:
        self.stats["refused"] += 1
        self.stats["not_downloaded"] += 1
        detail = f"{exc} (refused at its announcement: nothing was downloaded)"
        log.debug("release %s %s refused: %s", m.kind, m.version, detail)  # the report is the log line
        self.report(m.kind, m.version, "refused", False, detail)
        self._mark_done(m.kind, m.version, m.sha256, f"refused: {exc}", sig=m.signature or "",
                        key=self._trusted_key(), claims=not exc.unsigned)
        if m.kind == "model" and self.on_registered is not None:
            self.on_registered(m.version, "", m.sha256, "refused", False, str(exc)[:500])

    def _room_for(self, m: ReleaseManifest) -> bool:
        """Whether the data dir has room for the release (its chunks; a model installed beside them: a tar
        unpacked, a single file copied, straight from the chunks) and ``reserve_bytes`` more. A snapshot is read
        from its chunks into RAM. If not, it is not downloaded: reported once, not remembered (free space, then
        re-publish)."""
        d = self.staging / m.kind / m.version
        have = sum(p.stat().st_size for p in d.glob("*.chunk")) if d.is_dir() else 0
        install = m.size if m.kind == "model" else 0
        need = max(0, m.size - have) + install + self.reserve_bytes
        try:
            free = shutil.disk_usage(self.staging).free
        except OSError:
            return True
        key = f"{m.kind}/{m.version}/{m.sha256}"
        if free >= need:
            self._space_reported.discard(key)
            return True
        if key not in self._space_reported:
            self._space_reported.add(key)
            self.stats["not_downloaded"] += 1
            mb = 1 << 20
            self.report(m.kind, m.version, "refused", False,
                        f"no room: {m.kind} {m.version} needs {need / mb:.0f} MB free in {self.root} ("
                        f"{m.size / mb:.1f} MB of chunks"
                        f"{', as much again to install the model' if install else ''}, "
                        f"{self.reserve_bytes / mb:.0f} MB kept for "
                        f"the store), there are {free / mb:.0f} MB; "
                        "not downloaded: free some space (old backups, logs), then re-publish the release to retry")
        return False

    # -- which chunk topics to listen to ---------------------------------------------------------
    def _chunk_filters(self, kind: str, source: str | None) -> set[str]:
        """The chunk topic filter beside the manifest topic ``source``; without one (staged by an older node),
        the kind's chunk topics of this node and of its store."""
        if source is not None and source.endswith("/manifest"):
            return {source.removesuffix("manifest") + "chunk/+"}
        if self.topics is None:
            return set()
        return {f"{base}/release/{kind}/chunk/+" for base in (self.topics.base, self.topics.store_base)}

    def _source_filters(self, kind: str, version: str) -> set[str]:
        """The chunk topic filters a staged release was announced with (kept in its staging dir)."""
        try:
            return set((self.staging / kind / version / "source").read_text().split())
        except OSError:
            return self._chunk_filters(kind, None)

    def _all_chunk_filters(self) -> set[str]:
        if self.topics is None:
            return set()
        out = set()
        for base in (self.topics.base, self.topics.store_base):
            out.add(f"{base}/release/+/chunk/+")  # what nodes before 2026-12-01 subscribed for good
            out |= {f"{base}/release/{k}/chunk/+" for k in RELEASE_KINDS}
        return out

    def _listen(self, kind: str, version: str, filters: set[str]) -> None:
        with self._lock:
            self._want[(kind, version)] = set(filters)
            self._sync_listen()

    def _unlisten(self, kind: str, version: str) -> None:
        with self._lock:
            if self._want.pop((kind, version), None) is not None:
                self._sync_listen()

    def _sync_listen(self) -> None:
        want = set().union(*self._want.values()) if self._want else set()
        if not self._connected:
            return
        gone, new = sorted(self._listening - want), sorted(want - self._listening)
        if gone and self._unsubscribe is not None:
            self._unsubscribe(gone)
        if new and self._subscribe is not None:
            self._subscribe(new)
        self._listening = want

    def listening(self) -> set[str]:
        """The chunk topic filters subscribed now."""
        with self._lock:
            return set(self._listening)

    def on_connected(self, session_present: bool) -> None:
        """(Link thread, after each CONNACK.) Subscribe the chunk topics of the releases being staged; on a resumed
        session, first drop any other chunk subscription it holds (from an earlier run, or the wildcard every
        node subscribed for good before 2026-12-01)."""
        with self._lock:
            self._connected = True
            want = set().union(*self._want.values()) if self._want else set()
            stale = sorted(self._all_chunk_filters() - want)
            if session_present and stale and self._unsubscribe is not None:
                self._unsubscribe(stale)
            if want and self._subscribe is not None:
                self._subscribe(sorted(want))
            self._listening = want

    def on_disconnected(self) -> None:
        with self._lock:
            self._connected = False
            self._listening = set()

    def on_chunk(self, kind: str, index: int, payload: bytes) -> None:
        if not payload:
            return
        header, data = parse_chunk(payload)
        if header.kind != kind or header.index != index:
            raise ReleaseError(f"chunk header ({header.kind} #{header.index}) does not match its topic "
                               f"({kind} #{index})")
        if header.index >= header.count:
            raise ReleaseError(f"chunk #{header.index} of {kind} {header.version} is beyond its own count "
                               f"({header.count}); ignored")
        if self._seen(kind, header.version):
            self.stats["chunks_skipped"] += 1
            return
        m = self._staged_manifest(kind, header.version)
        if m is None or index >= m.chunks:
            # not a chunk of a release announced and accepted here (its manifest staged): anyone who can publish
            # can send chunks of made-up versions or numbers, and each one written would stay on the card. Not
            # written; a release's own chunks come again when its manifest is accepted (``on_manifest``).
            self.stats["chunks_unexpected"] += 1
            return
        d = self.staging / kind / header.version
        d.mkdir(parents=True, exist_ok=True)
        self._activity[(kind, header.version)] = self._mono()
        path = _chunk_path(d, index)
        if path.exists() and path.read_bytes() == data:
            self.stats["chunks_skipped"] += 1
        else:  # new, or another copy of this chunk number: the latest wins (it is what the broker now retains)
            _atomic_write(path, data)
            self.stats["chunks"] += 1
            key = (kind, header.version)
            self._gen[key] = self._gen.get(key, 0) + 1
            with self._lock:
                self._chunks_on_disk(kind, header.version).add(index)
            if (kind, header.version) not in self._staging_reported:
                self._staging_reported.add((kind, header.version))
                self.report(kind, header.version, "staging", True, f"staging {header.count} chunks to disk")
        self._maybe_complete(kind, header.version)

    def _staged_manifest(self, kind: str, version: str) -> ReleaseManifest | None:
        """The manifest of ``kind``/``version`` if it was accepted at its announcement (staged), else None."""
        m = self._man.get((kind, version))
        if m is None and (self.staging / kind / version / "manifest.json").exists():
            try:
                m, _ = self.staged(kind, version)
            except (OSError, ValueError):
                return None
            if m is not None:
                self._man[(kind, version)] = m
        return m

    def _prune_staging(self, kind: str, keep: str) -> None:
        """Drop staging dirs of releases already handled, or untouched for a day (superseded, never completed)."""
        base = self.staging / kind
        for d in base.iterdir() if base.exists() else []:
            if d.name == keep or not d.is_dir():
                continue
            if self._idle(kind, d.name) > 86400 or self._seen(kind, d.name):
                shutil.rmtree(d, ignore_errors=True)
                self._activity.pop((kind, d.name), None)
                self._forget(kind, d.name)
                self._unlisten(kind, d.name)

    def _idle(self, kind: str, version: str) -> float:
        """Seconds (monotonic) since the staging of ``kind``/``version`` last moved in this process."""
        now = self._mono()
        return now - self._activity.setdefault((kind, version), now)

    def staged(self, kind: str, version: str) -> tuple[ReleaseManifest | None, int]:
        d = self.staging / kind / version
        mp = d / "manifest.json"
        m = ReleaseManifest.model_validate_json(mp.read_bytes()) if mp.exists() else None
        if m is None:
            return None, len(list(d.glob("*.chunk"))) if d.exists() else 0
        # only the chunks the manifest names count: a stray chunk file (another upload of this version, or one
        # published by someone without the signing key) must neither complete nor truncate the release
        return m, sum(1 for i in range(m.chunks) if _chunk_path(d, i).exists())

    def _chunks_on_disk(self, kind: str, version: str) -> set[int]:
        key = (kind, version)
        have = self._have.get(key)
        if have is None:
            d = self.staging / kind / version
            have = {int(p.stem) for p in d.glob("*.chunk") if p.stem.isdigit()} if d.is_dir() else set()
            self._have[key] = have
        return have

    def _forget(self, kind: str, version: str) -> None:
        """Drop what is kept in memory about a staging dir that is gone."""
        key = (kind, version)
        self._gen.pop(key, None)
        self._failed_gen.pop(key, None)
        self._man.pop(key, None)
        self._have.pop(key, None)

    def _maybe_complete(self, kind: str, version: str) -> None:
        key = (kind, version)
        m = self._man.get(key)
        if m is None:
            m, _ = self.staged(kind, version)
            if m is None:
                return
            self._man[key] = m
        with self._lock:  # the worker checks again after a retry refusal while the link thread stages
            have = self._chunks_on_disk(kind, version)
            # only the chunks the manifest names count (see ``staged``); counted only once there can be enough
            if len(have) < m.chunks or sum(1 for i in have if i < m.chunks) < m.chunks:
                return
        if key in self._failed_gen and self._failed_gen[key] == self._gen.get(key, 0):
            return  # these very chunks were refused as truncated / wrong hash: wait for one to change
        self._unlisten(kind, version)  # all staged: its chunk topic is not needed any more
        with self._lock:
            if (kind, version) in self._busy:
                return
            self._busy.add((kind, version))
        self._worker.submit(self._process, kind, version)

    def resume(self) -> None:
        """At start: finish any release whose chunks were all staged before a restart; listen for the rest of
        the ones still missing chunks."""
        for kind_dir in self.staging.iterdir() if self.staging.exists() else []:
            for d in kind_dir.iterdir():
                if d.is_dir():
                    try:
                        self._maybe_complete(kind_dir.name, d.name)
                        m, n = self.staged(kind_dir.name, d.name)
                        if m is not None and n < m.chunks and not self._seen(kind_dir.name, d.name):
                            self._listen(kind_dir.name, d.name, self._source_filters(kind_dir.name, d.name))
                    except Exception as exc:
                        log.warning("cannot resume staged release %s: %s", d, exc)

    def check_stalled(self, after_s: float = 600.0, every_s: float = 3600.0, drop_s: float = 86400.0) -> list[str]:
        """Report (at most hourly) releases whose staging has not moved for ``after_s``: which chunks are missing.
        One that has not moved for ``drop_s`` (a day) is dropped, and its chunk topic no longer listened to."""
        out = []
        now = self._mono()
        for kind_dir in self.staging.iterdir() if self.staging.exists() else []:
            for d in kind_dir.iterdir():
                try:
                    m, n = self.staged(kind_dir.name, d.name)
                except (OSError, ValueError):
                    continue
                idle = self._idle(kind_dir.name, d.name)
                key = (kind_dir.name, d.name)
                with self._lock:
                    busy = key in self._busy
                if idle > drop_s and not busy and (m is None or n < m.chunks or key in self._failed_gen):
                    shutil.rmtree(d, ignore_errors=True)
                    self._activity.pop(key, None)
                    self._forget(*key)
                    self._unlisten(*key)
                    if m is not None:
                        detail = (f"dropped: {n} of {m.chunks} chunks staged, none for {idle / 3600:.0f} h; no longer "
                                  "listening for its chunks (re-publish the release)")
                        self.report(kind_dir.name, d.name, "staging", False, detail)
                        out.append(detail)
                    continue
                if m is None or n >= m.chunks or idle < after_s:
                    continue
                if key in self._stall_reported and now - self._stall_reported[key] < every_s:
                    continue
                self._stall_reported[key] = now
                have = {int(p.stem) for p in d.glob("*.chunk")}
                missing = [i for i in range(m.chunks) if i not in have]
                shown = ", ".join(str(i) for i in missing[:20]) + (" …" if len(missing) > 20 else "")
                detail = (f"stalled: {n} of {m.chunks} chunks staged, none for {idle / 60:.0f} min; missing {shown} "
                          "(re-publish the release)")
                self.report(kind_dir.name, d.name, "staging", False, detail)
                out.append(detail)
        return out

    def wait_idle(self, timeout: float = 30.0) -> None:
        self._worker.submit(lambda: None).result(timeout)

    # -- the worker ------------------------------------------------------------------------
    def _process(self, kind: str, version: str) -> None:
        d = self.staging / kind / version
        m: ReleaseManifest | None = None
        gen0 = self._gen.get((kind, version), 0)
        keep = False
        try:
            m, _ = self.staged(kind, version)
            assert m is not None
            self._check_signature(m)  # before a byte is assembled; checked again after (the key may change)
            parts, digest = self._assemble(d, m)
            self._verify(m, digest)
            self.report(kind, version, "verified", True, f"sha256 {m.sha256[:12]}…, signed by {m.key_id or '?'}")
            cand = self._candidate(m, parts)
            if not self._check_order(cand, kind):
                log.info("release %s %s (sha256 %s…) was accepted before; nothing to do", kind, version,
                         m.sha256[:12])
                self._mark_done(kind, version, m.sha256, "applied")
                return
            if kind == "model":
                self._install_model(m, parts)
            else:
                self._apply(m, parts)
            self.stats["applied"] += 1
            try:  # bookkeeping after the fact: the release is applied (a model: serving) whatever happens here
                self._set_mark(kind, cand)
                self._mark_done(kind, version, m.sha256, "applied")
            except OSError as exc:
                log.error("release %s %s is applied, but its anti-rollback mark could not be saved: %s", kind,
                          version, exc)
                self.report(kind, version, "mark", False,
                            f"applied, but the anti-rollback mark could not be saved in {self.root / 'sync'} "
                            f"({exc.strerror or exc}); free some space: until it is saved, a restart forgets that "
                            "older releases must be refused")
        except ReleaseError as exc:
            self.stats["refused"] += 1
            log.debug("release %s %s refused: %s", kind, version, exc)  # the report is the log line (room)
            self.report(kind, version, "refused", False, str(exc) + (" (re-publish the release to retry)"
                                                                     if exc.retry else ""))
            if exc.retry:
                (d / ASSEMBLED).unlink(missing_ok=True)  # the chunks stay (and are read again), not the file
                shutil.rmtree(d / WORK, ignore_errors=True)
                self._staging_reported.discard((kind, version))
                keep = True
                self._failed_gen[(kind, version)] = gen0
            else:
                self._mark_done(kind, version, m.sha256 if m else "unknown", f"refused: {exc}",
                                **({"claims": False, "sig": m.signature or "", "key": self._trusted_key()}
                                   if exc.unsigned and m is not None else {}))
            if kind == "model" and self.on_registered is not None:
                self.on_registered(version, "", m.sha256 if m else "", "refused", False, str(exc)[:500])
        except Exception as exc:
            self.stats["refused"] += 1
            log.exception("release %s %s failed", kind, version)
            self.report(kind, version, "failed", False, f"{type(exc).__name__}: {exc}")
            self._mark_done(kind, version, m.sha256 if m else "unknown", f"failed: {exc}")
        finally:
            if not keep:
                shutil.rmtree(d, ignore_errors=True)
                self._forget(kind, version)
            with self._lock:
                self._busy.discard((kind, version))
            if keep:  # listen for the re-upload; a chunk that changed meanwhile is checked at once
                self._listen(kind, version, self._source_filters(kind, version))
                if self._gen.get((kind, version), 0) != gen0:
                    self._maybe_complete(kind, version)
            else:
                self._unlisten(kind, version)
            if kind == "model":  # the model before the previous one (or a refused candidate) was dropped
                self._return_memory(f"model {version}")

    def _return_memory(self, what: str) -> None:
        """After a model is dropped: its freed pages back to the OS (``return_freed_memory``), said in the log."""
        returned = return_freed_memory()
        if returned:
            log.log(logging.INFO if returned >= 1 << 20 else logging.DEBUG,
                    "%s: %.1f MB of freed memory returned to the OS", what, returned / (1 << 20))

    def _assemble(self, d: Path, m: ReleaseManifest) -> tuple[list[Path], str]:
        """The files the release is read from, in order, and its sha256 (hashed ``_READ`` bytes at a time: the
        release is never in RAM, and never joined into one file on disk).

        They are hard links to the staged chunks, taken first, in ``.work/`` of the staging dir: a chunk the
        link thread stages meanwhile (another copy of that number) replaces the name, not the file linked, so
        what is installed is what was hashed; and a link costs no room, so a model takes its chunks plus its
        installed copy on disk (a tar is unpacked straight from the chunks), not three times its size. The
        chunks stay until the release is handled: a ``kill -9`` here loses nothing (the next start reads them
        again)."""
        parts = [_chunk_path(d, i) for i in range(m.chunks)]
        have = sum(1 for p in parts if p.exists())
        if have != m.chunks:
            raise ReleaseError(f"truncated: {have} of {m.chunks} chunks staged", retry=True)
        work = d / WORK
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir()
            linked = []
            for p in parts:
                os.link(p, work / p.name)
                linked.append(work / p.name)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ReleaseError(f"no room to read {m.kind} {m.version} in {d}: {exc.strerror}; free some space "
                                   "(old backups, logs), then re-publish the release to retry", retry=True) from None
            log.info("no hard links in %s (%s): joining the chunks of %s %s into one file", d, exc, m.kind,
                     m.version)
            return self._join(d, m, parts)
        size = sum(p.stat().st_size for p in linked)
        if size != m.size:
            shutil.rmtree(work, ignore_errors=True)
            raise ReleaseError(f"truncated: the chunks add up to {'more than ' if size > m.size else ''}{size} "
                               f"bytes, the manifest says {m.size}", retry=True)
        h = hashlib.sha256()
        with _open_parts(linked) as f:
            while block := f.read(_READ):
                h.update(block)
        return linked, h.hexdigest()

    def _join(self, d: Path, m: ReleaseManifest, parts: list[Path]) -> tuple[list[Path], str]:
        """Where the data dir has no hard links: the staged chunks joined into one file (``release.assembled``)
        and its sha256, hashed as it is written (``_READ`` bytes at a time; the file is rewritten after a
        ``kill -9``). A model then takes its size three times on disk while it is installed."""
        out = d / ASSEMBLED
        h = hashlib.sha256()
        size = 0
        try:
            with open(out, "wb") as f:
                for p in parts:
                    with open(p, "rb") as c:
                        while block := c.read(_READ):
                            size += len(block)
                            if size > m.size:
                                break
                            h.update(block)
                            f.write(block)
                    if size > m.size:
                        break
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            out.unlink(missing_ok=True)
            mb = 1 << 20
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ReleaseError(f"no room to assemble {m.kind} {m.version} ({m.size / mb:.1f} MB) in {d}: "
                                   f"{exc.strerror}; free some space (old backups, logs), then re-publish the "
                                   "release to retry", retry=True) from None
            raise ReleaseError(f"cannot assemble {m.kind} {m.version} in {d}: {exc}; if this repeats, check the "
                               "SD card (`sudo shelfcast doctor`)", retry=True) from None
        if size != m.size:
            out.unlink(missing_ok=True)
            raise ReleaseError(f"truncated: the chunks add up to {'more than ' if size > m.size else ''}{size} "
                               f"bytes, the manifest says {m.size}", retry=True)
        return [out], h.hexdigest()

    def _verify(self, m: ReleaseManifest, digest: str) -> None:
        """``digest``: the sha256 ``_assemble`` computed while it wrote the assembled file (only this worker
        writes it: a chunk re-delivered meanwhile cannot change what was verified)."""
        if digest != m.sha256:
            raise ReleaseError(f"wrong hash: sha256 of the release is {digest[:16]}…, the manifest says "
                               f"{m.sha256[:16]}…", retry=True)
        self._check_signature(m)

    def _check_signature(self, m: ReleaseManifest) -> None:
        """The Ed25519 signature over (kind, version, sha256, size): all it needs is in the manifest, so it is
        checked at the announcement and again after the download (the key may have changed meanwhile)."""
        if not m.signature:
            raise ReleaseError("unsigned release refused (the manifest has no signature)", unsigned=True)
        if self.public_key_path is None:
            raise ReleaseError("no signing key provisioned on this node (set model.public_key); releases "
                               "cannot be verified and are refused", unsigned=True)
        try:
            pub = load_public_key(self.public_key_path)
        except (OSError, ValueError, ReleaseError) as exc:
            raise ReleaseError(f"the provisioned key model.public_key ({self.public_key_path}) cannot be "
                               f"read: {exc}", unsigned=True) from None
        try:
            sig = base64.b64decode(m.signature, validate=True)
            pub.verify(sig, m.signed_message())
        except (InvalidSignature, ValueError):
            other = f" (signed by key {m.key_id}, this node trusts {key_id(pub)})" if m.key_id else ""
            raise ReleaseError(f"bad signature: not signed by the provisioned key{other}", unsigned=True) from None

    # -- snapshots -----------------------------------------------------------------------------
    def _apply(self, m: ReleaseManifest, parts: list[Path]) -> None:
        schema = SNAPSHOTS.get(m.kind)
        if schema is None:
            raise ReleaseError(f"unknown release kind {m.kind!r}")
        limit = self.max_snapshot_bytes
        try:
            # the compressed release is streamed from its chunks; the JSON it holds is parsed whole (the snapshot
            # schema validates one document), so it is capped: a zlib bomb (a 1 MB message can inflate to GBs)
            # stops at the limit, not when the RAM is gone
            data = _inflate(parts, limit) if m.format == "json+zlib" else _read_all(parts, limit)
            snap = schema.model_validate_json(data)
        except TooLarge:
            self.stats["too_large"] += 1
            mb = 1 << 20
            raise ReleaseError(
                f"{m.kind} snapshot {m.version} is larger than {limit / mb:.0f} MB as JSON (the limit, "
                "mqtt.sync.max_snapshot_mb): not applied, the store keeps what it has; publish it in parts "
                "(catalogue and profiles snapshots add to what the node has) or as deltas, or raise "
                "mqtt.sync.max_snapshot_mb on a node with the RAM for it (parsing takes about 10 times the size) "
                "and re-publish it under a new version") from None
        except (zlib.error, ValidationError) as exc:
            detail = describe_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ReleaseError(f"{m.kind} snapshot does not match its schema: {detail}") from None
        if self.apply_snapshot is None:
            raise ReleaseError(f"this node cannot apply {m.kind} snapshots")
        self.apply_snapshot(m.kind, snap)
        self.report(m.kind, m.version, "applied", True, "snapshot applied")

    # -- models --------------------------------------------------------------------------------
    def _unpack(self, m: ReleaseManifest, parts: list[Path]) -> Path:
        final = self.models_dir / m.version
        if final.exists() and self._intact(final):
            return final
        tmp = self.models_dir / f".{m.version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            if m.format == "tar":
                try:
                    self._untar(m, parts, tmp)
                except ReleaseError:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            elif len(parts) == 1 and parts[0].name == ASSEMBLED:  # joined (no hard links): moved, not copied
                _move(parts[0], tmp / "model.tflite")
            else:  # copied from the chunks, a block at a time
                with _open_parts(parts) as src, open(tmp / "model.tflite", "wb") as dst:
                    shutil.copyfileobj(src, dst, _READ)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ReleaseError(f"no room to install {m.kind} {m.version} in {self.models_dir}: "
                                   f"{exc.strerror}; free some space (old backups, logs), then re-publish the "
                                   "release to retry", retry=True) from None
            raise
        files = _tree_digest(tmp)
        (tmp / "files.json").write_text(json.dumps({"version": m.version, "sha256": m.sha256, "files": files}))
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.models_dir)
        return final

    def _untar(self, m: ReleaseManifest, parts: list[Path], tmp: Path) -> None:
        """Unpack a model archive into ``tmp`` straight from its chunks, member by member, in blocks. Checked
        first, from the headers: files and directories only (no links, devices or sparse files), at most
        ``MAX_MODEL_MEMBERS`` of them, adding up to at most ``MAX_MODEL_UNPACKED`` (and, for a compressed tar,
        to what the disk has room for); ``filter="data"`` keeps every path inside ``tmp``."""
        mb = 1 << 20
        try:
            with _open_parts(parts) as raw, tarfile.open(fileobj=raw) as tf:
                members: list[tarfile.TarInfo] = []
                total = 0
                for member in _members(tf):
                    if len(members) >= MAX_MODEL_MEMBERS:
                        raise ReleaseError(f"model archive holds more than {MAX_MODEL_MEMBERS} entries (a model "
                                           "is a few files): not installed; publish the model directory as "
                                           "`shelfcast model export` writes it")
                    if not (member.isfile() or member.isdir()):
                        raise ReleaseError(f"model archive holds a non-file entry {member.name!r}")
                    if member.issparse():
                        raise ReleaseError(f"model archive holds a sparse file {member.name!r}: not installed; "
                                           "publish it as a plain file")
                    total += member.size
                    if total > MAX_MODEL_UNPACKED:
                        raise ReleaseError(f"model archive unpacks to more than {MAX_MODEL_UNPACKED / mb:.0f} MB "
                                           "(the limit): not installed")
                    members.append(member)
                if total > m.size:  # a compressed archive: more than the room check counted
                    free = shutil.disk_usage(self.models_dir).free
                    if free < total + self.reserve_bytes:
                        raise ReleaseError(f"no room to unpack {m.kind} {m.version}: it unpacks to "
                                           f"{total / mb:.0f} MB, there are {free / mb:.0f} MB free in "
                                           f"{self.models_dir}; free some space, then re-publish the release to "
                                           "retry", retry=True)
                tf.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ReleaseError(f"model archive unreadable: {exc}") from None

    @staticmethod
    def _intact(path: Path) -> bool:
        try:
            meta = json.loads((path / "files.json").read_text())
            return bool(meta["files"]) and _tree_digest(path) == meta["files"]
        except (OSError, ValueError, KeyError):
            return False

    def _load(self, path: Path) -> Any:
        if self.loader is None:
            raise ReleaseError("no model loader on this node (edge.ranking is not installed)")
        try:
            return self.loader(path)
        except Exception as exc:
            raise ReleaseError(f"the model does not load: {exc}") from None

    def _install_model(self, m: ReleaseManifest, parts: list[Path]) -> None:
        path = self._unpack(m, parts)
        self.report("model", m.version, "staged", True, f"unpacked to {path.name}")
        new = self._load(path)
        self.report("model", m.version, "loaded", True, f"loaded beside {self._serving_version()}")
        reqs = self.canary.requests() if self.canary is not None else []
        old = self.get_model()
        result = run_canary(_unguard(old), new, reqs, self.canary_options)
        self.report("model", m.version, "canary", result.ok, result.detail)
        if not result.ok:
            shutil.rmtree(path, ignore_errors=True)
            raise ReleaseError(f"canary failed: {result.detail}")
        self._swap(ModelSlot(m.version, path, new), m.sha256)
        prune_models(self.models_dir, self.keep_models)  # on this worker: nothing unpacks; never raises

    def _serving_version(self) -> str:
        cur = self.get_model()
        return str(getattr(cur, "version", None) or "the popularity fallback")

    def _swap(self, slot: ModelSlot, sha: str) -> None:
        with self._lock:
            old_model = self.get_model()
            prev = self.current or (ModelSlot(str(getattr(old_model, "version", "bundled")), None, old_model)
                                    if old_model is not None else None)
            pointer = {"version": slot.version, "path": str(slot.path), "sha256": sha, "t": time.time(),
                       "previous": None if prev is None or prev.path is None else
                       {"version": prev.version, "path": str(prev.path)}}
            _atomic_write(self.models_dir / "active.json", json.dumps(pointer).encode())
            t0 = time.perf_counter()
            self.set_model(GuardedScorer(slot.scorer, self._auto_rollback))  # one reference assignment
            swap_ms = (time.perf_counter() - t0) * 1000
            self.previous, self.current = prev, slot
        if self.on_registered is not None:
            self.on_registered(slot.version, str(slot.path or ""), sha, "active", True, "")
        self.report("model", slot.version, "swapped", True,
                    f"serving {slot.version} (previous {prev.version if prev else 'none'} kept; swap {swap_ms:.3f} ms)")

    def _auto_rollback(self, why: str) -> None:
        self._worker.submit(self.rollback, f"automatic: {why}")

    def rollback_async(self, why: str) -> Future[tuple[bool, str]]:
        """Roll back on the release worker (after any release in progress)."""
        return self._worker.submit(self.rollback, why)

    def rollback(self, why: str = "on command") -> tuple[bool, str]:
        with self._lock:
            prev, cur = self.previous, self.current
            if prev is None:
                return False, "no previous model to roll back to"
            self.set_model(prev.scorer)
            pointer = {"version": prev.version, "path": str(prev.path), "t": time.time(),
                       "previous": None if cur is None or cur.path is None else
                       {"version": cur.version, "path": str(cur.path)},
                       "rolled_back": cur.version if cur else None}
            if prev.path is not None:
                _atomic_write(self.models_dir / "active.json", json.dumps(pointer).encode())
            else:  # back to the bundled model: no pointer means "the bundled one"
                try:
                    (self.models_dir / "active.json").unlink()
                    _fsync_dir(self.models_dir)
                except FileNotFoundError:
                    pass
            self.current = prev if prev.path is not None else None
            self.previous = cur
            self.stats["rollbacks"] += 1
        detail = f"rolled back from {cur.version if cur else '?'} to {prev.version} ({why})"
        log.warning("model %s", detail)
        self.report("model", cur.version if cur else "?", "rolled_back", True, detail)
        if self.on_registered is not None and cur is not None:
            self.on_registered(cur.version, str(cur.path or ""), "", "rolled_back", False, why)
        return True, detail

    def activate_on_boot(self) -> str | None:
        """Serve the model ``active.json`` names (if intact and loadable), else its previous; else keep what runs."""
        served = self._activate_on_boot()
        if served is not None:  # the bundled model, loaded before, is dropped when both released ones load
            self._return_memory(f"boot on model {served}")
        return served

    def _activate_on_boot(self) -> str | None:
        pointer_path = self.models_dir / "active.json"
        try:
            pointer = json.loads(pointer_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            log.error("models/active.json is unreadable; serving the bundled model")
            return None
        if str(pointer.get("path", "")) in ("", "."):
            # written by a rollback to the bundled model before 2026-12-01 (the bundled model's "path" was "."):
            # the bundled model is what was asked for, not the model rolled back from
            return None
        bundled = self.get_model()
        prev_ptr = pointer.get("previous")
        candidates = [pointer] + ([prev_ptr] if prev_ptr and str(prev_ptr.get("path", "")) not in ("", ".") else [])
        for i, c in enumerate(candidates):
            path = Path(c["path"])
            if not path.is_dir() or not self._intact(path):
                log.error("model %s at %s is incomplete or damaged; trying the next one", c["version"], path)
                continue
            try:
                scorer = self._load(path)
            except ReleaseError as exc:
                log.error("model %s does not load (%s); trying the next one", c["version"], exc)
                continue
            with self._lock:
                self.set_model(scorer)
                self.current = ModelSlot(c["version"], path, scorer)
                prev = candidates[1] if i == 0 and len(candidates) > 1 else None
                self.previous = None
                if prev is not None and Path(prev["path"]).is_dir() and self._intact(Path(prev["path"])):
                    try:
                        self.previous = ModelSlot(prev["version"], Path(prev["path"]), self._load(Path(prev["path"])))
                    except ReleaseError:
                        self.previous = None
                elif bundled is not None:
                    self.previous = ModelSlot(str(getattr(bundled, "version", "bundled")), None, bundled)
            return str(c["version"])
        return None

    def health(self) -> dict[str, Any]:
        return {"serving": self._serving_version(), "previous": self.previous.version if self.previous else None,
                "marks": {k: v.version for k, v in sorted(self.marks.items())}, **self.stats}


class _Parts(io.RawIOBase):
    """Files read one after another as one seekable file: a release's staged chunks, never joined on disk."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._paths = paths
        self._ends: list[int] = []
        end = 0
        for p in paths:
            end += p.stat().st_size
            self._ends.append(end)
        self._pos = 0
        self._i = -1
        self._f: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._ends[-1] if self._ends else 0}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        i = bisect.bisect_right(self._ends, self._pos)
        if i >= len(self._paths):
            return 0
        if i != self._i:
            if self._f is not None:
                self._f.close()
            self._f, self._i = open(self._paths[i], "rb"), i  # noqa: SIM115 - kept open across reads
        assert self._f is not None
        self._f.seek(self._pos - (self._ends[i - 1] if i else 0))
        view = memoryview(b)
        n = self._f.readinto(view[:self._ends[i] - self._pos])
        if not n:
            raise OSError(f"{self._paths[i]} is shorter than when the release was read")
        self._pos += n
        return n

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        super().close()


def _open_parts(parts: list[Path]) -> io.BufferedReader:
    return io.BufferedReader(_Parts(parts), 1 << 16)


def _inflate(parts: list[Path], limit: int) -> bytearray:
    """A zlib-compressed release, decompressed from its chunks ``_READ`` bytes at a time (the compressed copy is
    never whole in RAM), at most ``limit`` bytes of it (``TooLarge`` past that: a zlib bomb stops there)."""
    with _open_parts(parts) as f:
        try:
            return inflate_bounded(iter(lambda: f.read(_READ), b""), limit)  # a bytearray: pydantic parses it as is
        except InflateLimit:
            raise TooLarge(f"more than {limit} bytes decompressed") from None


def _read_all(parts: list[Path], limit: int) -> bytes:
    """An uncompressed release, whole, if it is at most ``limit`` bytes."""
    if sum(p.stat().st_size for p in parts) > limit:
        raise TooLarge(f"more than {limit} bytes")
    with _open_parts(parts) as f:
        return f.read()


def _move(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest`` (the same file system: both under the data dir), else copy it in blocks."""
    try:
        os.replace(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
        src.unlink(missing_ok=True)


def _unguard(model: Any) -> Any:
    return model.inner if isinstance(model, GuardedScorer) else model
