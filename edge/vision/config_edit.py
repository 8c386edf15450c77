"""Put ``camera.homography`` into a node config file (``shelfcast calibrate camera --write``).

Only that value changes: the rest of the text, comments included, stays as it was. A one-line flow-style camera
section (``camera: {enabled: true, source: 0}``, as ``shelfcast provision`` writes it) becomes a block section
with the same entries plus ``homography:``. The file is replaced atomically and keeps its mode, owner and group:
on a node it is root:shelfcast 0640 and the service (user ``shelfcast``) must still be able to read it.
"""

from __future__ import annotations

import copy
import grp
import os
import pwd
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["flow_matrix", "replace_keeping_owner", "set_homography", "yaml_number"]


def yaml_number(v: float) -> str:
    """``repr`` of the float, spelled so that YAML 1.1 (PyYAML) reads it back as the same float, not a string."""
    s = repr(float(v))
    if "e" in s and "." not in s:  # 1e-05 is a string to PyYAML; 1.0e-05 is a float
        mant, exp = s.split("e")
        s = f"{mant}.0e{exp}"
    return s


def flow_matrix(h: list[list[float]]) -> str:
    return "[" + ", ".join("[" + ", ".join(yaml_number(v) for v in row) + "]" for row in h) + "]"


def set_homography(text: str, h: list[list[float]]) -> str | None:
    """The config text with ``camera.homography`` set to ``h``; None when it cannot be placed safely.

    Every candidate is checked: it must load as the same YAML data as ``text`` with only
    ``camera.homography`` set, otherwise the next way is tried (and None when none fits).
    """
    try:
        old = yaml.safe_load(text) if text.strip() else None
        root = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError:
        return None
    if old is None:
        old = {}
    if not isinstance(old, dict) or not isinstance(old.get("camera", {}), dict):
        return None
    expected = copy.deepcopy(old)
    expected.setdefault("camera", {})["homography"] = h
    for candidate in _candidates(text, root, h):
        if candidate is not None and _loads_as(candidate, expected):
            return candidate
    return None


def _loads_as(text: str, expected: dict[str, Any]) -> bool:
    try:
        return bool(yaml.safe_load(text) == expected)
    except yaml.YAMLError:
        return False


def _candidates(text: str, root: yaml.Node | None, h: list[list[float]]) -> list[str | None]:
    m = flow_matrix(h)
    lines = text.splitlines(keepends=True)
    if root is None:  # empty, or only comments
        sep = "" if text.endswith("\n") or not text else "\n"
        return [text + sep + f"camera:\n  homography: {m}\n"]
    if not isinstance(root, yaml.MappingNode):
        return []
    pair = next(((k, v) for k, v in root.value if k.value == "camera"), None)
    if pair is None:
        if root.flow_style:
            return []
        sep = "" if text.endswith("\n") else "\n"
        return [text + sep + f"camera:\n  homography: {m}\n"]
    key, cam = pair
    if not isinstance(cam, yaml.MappingNode):
        return []
    old_pair = next(((k, v) for k, v in cam.value if k.value == "homography"), None)
    if old_pair is not None:  # replace just the value, block or flow
        hkey, hom = old_pair
        start = _offset(lines, hom.start_mark.line, hom.start_mark.column)
        end = _offset(lines, *_end(hom))
        key_end = _offset(lines, hkey.end_mark.line, hkey.end_mark.column)
        same_line = text[:start] + m + text[end:]
        if text[key_end:start].strip() == ":":  # a block value on the next lines: put the new one beside the key
            return [text[:key_end] + ": " + m + text[end:], same_line]
        return [same_line]
    if not cam.flow_style:  # block section: a new first entry at the entries' indent
        first = cam.value[0][0]
        at = _offset(lines, first.start_mark.line, 0)
        return [text[:at] + " " * first.start_mark.column + f"homography: {m}\n" + text[at:]]
    return [None if root.flow_style else _flow_to_block(text, lines, key, cam, m), _into_flow(text, lines, cam, m)]


def _flow_to_block(text: str, lines: list[str], key: yaml.Node, cam: yaml.MappingNode, m: str) -> str | None:
    """``camera: {a: 1, b: x}  # c`` on one line -> ``camera:  # c`` + one indented line per entry + homography."""
    line = key.start_mark.line
    if cam.start_mark.line != line or cam.end_mark.line != line:
        return None
    line_start = _offset(lines, line, 0)
    line_end = line_start + len(lines[line])
    cam_start = _offset(lines, line, cam.start_mark.column)
    cam_end = _offset(lines, line, cam.end_mark.column)
    rest = text[cam_end:line_end].strip()
    if rest and not rest.startswith("#"):
        return None
    indent = " " * (key.start_mark.column + 2)
    out = [text[line_start:cam_start].rstrip() + (f"  {rest}" if rest else "") + "\n"]
    for k, v in cam.value:
        ktext = text[_offset(lines, line, k.start_mark.column):_offset(lines, line, k.end_mark.column)]
        vtext = text[_offset(lines, line, v.start_mark.column):_offset(lines, line, v.end_mark.column)]
        out.append(f"{indent}{ktext}: {vtext}".rstrip() + "\n")
    out.append(f"{indent}homography: {m}\n")
    return text[:line_start] + "".join(out) + text[line_end:]


def _into_flow(text: str, lines: list[str], cam: yaml.MappingNode, m: str) -> str | None:
    """``{a: 1}`` -> ``{a: 1, homography: [...]}`` (multi-line or otherwise unusual flow sections)."""
    if cam.value:
        last = cam.value[-1][1]
        at = _offset(lines, last.end_mark.line, last.end_mark.column)
        return text[:at] + f", homography: {m}" + text[at:]
    end = _offset(lines, cam.end_mark.line, cam.end_mark.column)
    if text[end - 1:end] != "}":
        return None
    return text[:end - 1] + f"homography: {m}" + text[end - 1:]


def _end(node: yaml.Node) -> tuple[int, int]:
    """Where the node's own text ends: a block collection's end mark is the next token, so use its last item's."""
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _end(node.value[-1])
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return _end(node.value[-1][1])
    return node.end_mark.line, node.end_mark.column


def _offset(lines: list[str], line: int, col: int) -> int:
    return sum(len(x) for x in lines[:line]) + col


def _owner(uid: int, gid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def replace_keeping_owner(path: Path, text: str) -> list[str]:
    """Atomically replace the file behind ``path`` with ``text``, keeping its mode, owner and group.

    A symlink is followed (the link stays a link). The owner and group are copied with ``os.chown`` before the
    rename; when that is not permitted (not root, not a member of the group) the file is written anyway and the
    returned warning says what to run. Raises OSError when the file cannot be written at all.
    """
    real = Path(os.path.realpath(path))
    st = os.stat(real)
    fd, tmp = tempfile.mkstemp(dir=str(real.parent), prefix=".shelfcast-", suffix=".yaml")
    warnings: list[str] = []
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        now = os.stat(tmp)
        if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                try:  # the group alone is allowed when we own the file and belong to the group
                    os.chown(tmp, -1, st.st_gid)
                except PermissionError:
                    pass
                now = os.stat(tmp)
                was = _owner(st.st_uid, st.st_gid)
                warnings.append(f"{path} was owned by {was} and is now {_owner(now.st_uid, now.st_gid)} (changing "
                                f"the owner needs root): the node may not be able to read it; run "
                                f"`sudo chown {was} {path}`")
        os.chmod(tmp, stat.S_IMODE(st.st_mode))  # after chown, which may clear set-id bits
        os.replace(tmp, real)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return warnings
