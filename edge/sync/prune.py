"""Model release directories on the card: keep what serving and ``rollback`` need, remove the rest.

Every model release a node installs is unpacked into ``models/<version>/`` (``edge.sync.release``). Serving
needs the one ``models/active.json`` names; the ``rollback`` command (and the automatic rollback of a model on
probation) needs the previous one it names too. The anti-rollback marks are in ``sync/release_marks.json``,
not in these directories; the bundled model is in the install tree, not in the data dir. Everything else is
removed: older release directories, leftover ``.<version>.tmp`` dirs of an unpack a crash or a refused archive
interrupted, and ``.<name>.removing`` dirs of a removal a crash interrupted.

Only directories the release path made are removed (they hold its ``files.json``), plus those dot-dirs: a
directory a technician put there (``model.path``, say) stays. Called when nothing unpacks: at node start
before releases are handled, and on the release worker right after a model is activated (the one thread that
unpacks). It never raises: a removal that fails is a WARNING naming the path, and the activation stands.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PruneResult", "named_in_pointer", "prune_models"]

log = logging.getLogger(__name__)

POINTER = "active.json"
RELEASE_MARKER = "files.json"  # written into every unpacked release by ReleaseManager._unpack
LEFTOVER_SUFFIXES = (".tmp", ".removing")


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)  # release directories removed (names)
    leftovers: list[str] = field(default_factory=list)  # .tmp / .removing dirs removed (names)
    kept: list[str] = field(default_factory=list)  # release directories kept (names)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    freed: int = 0  # bytes
    skipped: str = ""  # why release directories were not pruned at all (an unreadable pointer)


def named_in_pointer(models_dir: Path) -> set[str] | None:
    """Directory names ``models/active.json`` names (the serving model and the previous one, for ``rollback``);
    an empty set without a pointer (the bundled model serves); None when it cannot be read (keep everything)."""
    try:
        pointer = json.loads((models_dir / POINTER).read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError):
        return None
    if not isinstance(pointer, dict):
        return None
    names: set[str] = set()
    for entry in (pointer, pointer.get("previous")):
        if not isinstance(entry, dict):
            continue
        # by the path's name and by the version (the same for releases; both kept if they ever differ)
        path = str(entry.get("path") or "")
        if path not in ("", "."):
            names.add(Path(path).name)
        if isinstance(entry.get("version"), str):
            names.add(entry["version"])
    return names


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _remove(models_dir: Path, d: Path, result: PruneResult) -> bool:
    """Rename ``d`` to ``.<name>.removing`` (one step: a crash never leaves a half-removed release looking like
    one), then remove it."""
    size = _size(d)
    target = d
    try:
        if not d.name.startswith("."):
            target = models_dir / f".{d.name}.removing"
            if target.exists():
                shutil.rmtree(target)
            os.rename(d, target)
        shutil.rmtree(target)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc.filename, str) and exc.filename not in (str(d), str(target)):
            why += f" at {exc.filename}"
        result.failed.append((str(target), why))
        log.warning("models: could not remove %s (%s); the node keeps serving, and the next start or model "
                    "activation tries again. To free the space now: `sudo systemctl stop shelfcast && sudo rm -rf "
                    "%s && sudo systemctl start shelfcast`", target, why, target)
        return False
    result.freed += size
    return True


def prune_models(models_dir: Path, keep: Iterable[Path | str | None] = ()) -> PruneResult:
    """Remove the model release directories ``models/active.json`` does not name, and leftover ``.tmp`` /
    ``.removing`` dirs, from ``models_dir``. ``keep``: more paths to keep (the configured ``model.path``). The
    caller guarantees nothing is being unpacked. Never raises; logs one INFO line when it removed something."""
    result = PruneResult()
    try:
        _prune(Path(models_dir), keep, result)
    except Exception as exc:  # a prune must never stop what called it (an activation, a start)
        result.failed.append((str(models_dir), f"{type(exc).__name__}: {exc}"))
        log.warning("models: pruning %s failed (%s: %s); the node keeps serving", models_dir,
                    type(exc).__name__, exc)
    return result


def _prune(models_dir: Path, keep: Iterable[Path | str | None], result: PruneResult) -> None:
    if not models_dir.is_dir():
        return
    base = models_dir.resolve()
    named = named_in_pointer(models_dir)
    keep_names: set[str] = set(named or ())
    for k in keep:
        if k:
            p = Path(k).resolve()
            if p.parent == base:
                keep_names.add(p.name)
            elif base in p.parents:  # a file inside a release directory
                keep_names.add(p.relative_to(base).parts[0])
    if named is None:
        result.skipped = f"{models_dir / POINTER} is unreadable"
        log.warning("models: %s is unreadable; no release directory is removed (only leftover unpacks) until a "
                    "model is activated again", models_dir / POINTER)
    for d in sorted(models_dir.iterdir()):
        if d.is_symlink() or not d.is_dir():
            continue
        if d.name.startswith(".") and d.name.endswith(LEFTOVER_SUFFIXES):
            if _remove(models_dir, d, result):
                result.leftovers.append(d.name)
            continue
        if d.name.startswith(".") or not (d / RELEASE_MARKER).is_file():
            continue  # not a release the node unpacked: not ours to remove
        if named is None or d.name in keep_names:
            result.kept.append(d.name)
            continue
        if _remove(models_dir, d, result):
            result.removed.append(d.name)
    if result.removed or result.leftovers:
        parts = []
        if result.removed:
            parts.append(f"{len(result.removed)} old release(s) ({', '.join(result.removed)})")
        if result.leftovers:
            parts.append(f"{len(result.leftovers)} leftover(s) of an interrupted unpack or removal "
                         f"({', '.join(result.leftovers)})")
        log.info("models: removed %s, %.1f MB freed; kept %s", " and ".join(parts), result.freed / (1 << 20),
                 ", ".join(result.kept) or "none (the bundled model serves)")
