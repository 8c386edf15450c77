#!/usr/bin/env bash
# ShelfCast node installer for Raspberry Pi OS Bookworm 64-bit and Debian 12.
#
#   sudo deploy/install.sh                      # install or upgrade this checkout (idempotent)
#   sudo deploy/install.sh --source shelfcast-0.3.2-py3-none-any.whl
#   deploy/install.sh --destdir /tmp/root       # into a scratch root; nothing outside it is touched
#   sudo /opt/shelfcast/lib/install.sh --firstboot [--boot-dir /boot/firmware]
#   sudo /opt/shelfcast/lib/install.sh --rollback   # back to the ShelfCast before the last upgrade
#
# What it does: apt packages (python3-venv, mosquitto, chromium, cage); the `shelfcast` service user in
# the dialout and video groups; a venv with ShelfCast and the node's runtime dependencies only (no
# TensorFlow: plain `pip install SOURCE`, no extras); /etc/shelfcast (config, keys) and /var/lib/shelfcast
# (data); udev rules naming shelf controllers /dev/shelfcast/shelf-<serial> (from shelves.usb_ids);
# a loopback Mosquitto with a bridge to the cloud broker (from mqtt.cloud); journald size limits; /tmp
# and the node's caches on tmpfs; the systemd units. Running it again changes nothing that is already
# right and never overwrites an existing config (a newer template lands beside it as *.dist). A new
# ShelfCast goes into a new venv, $PREFIX/venvs/<version>-<time>, beside the one the node runs;
# $PREFIX/venv (a symlink) is switched to it at the node's restart, the replaced one kept for --rollback. The
# systemd units and the kiosk launcher a run installs are kept with the venv they were installed for
# ($PREFIX/venvs/<id>/shelfcast-system/), so --rollback puts back the ones of the version it goes back to.
#
# --destdir DIR: every file goes under DIR; apt-get, useradd, usermod, chown, systemctl and udevadm are
# not run but recorded, one per line, in DIR/<prefix>/install-actions.log (an image builder replays them
# in a chroot). Nothing installed names DIR (venv script #! lines, pyvenv.cfg, .pyc): it runs once DIR is
# the root. Exit codes: 0 ok, 1 failed, 2 bad usage.
set -euo pipefail
# the whole script is one block, read before it runs: an upgrade that replaces this file mid-run is safe
{

PREFIX=/opt/shelfcast
CONFDIR=/etc/shelfcast
DATADIR=/var/lib/shelfcast
DESTDIR=""
SOURCE=""
CONFIG_IN=""
PYTHON=python3
VENV_OPTS=""
PIP_OPTS=""
INHERIT_SITE=""
WITH_KIOSK=1
WITH_APT=1
FIRSTBOOT=0
ROLLBACK=0
BOOT_DIR=/boot/firmware
SERVICE_USER=shelfcast
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --destdir DIR        install into a scratch root (no effect outside DIR)
  --prefix DIR         program files (default $PREFIX)
  --source PATH        what pip installs: a checkout or a wheel (default: the checkout holding this script)
  --config FILE        node config to install when none is there yet (default: deploy/etc/shelfcast.yaml)
  --python EXE         interpreter for the venv (default python3; Python >= 3.11)
  --venv-options STR   extra options for 'python -m venv' (e.g. --system-site-packages); used when a venv is
                       created (first install, another --python); an upgrade copies the installed one
  --pip-options STR    extra options for pip install (e.g. '--no-index --find-links /media/wheels')
  --inherit-site DIR   add DIR (a site-packages) to the venv's path: CI and offline images only
  --no-kiosk           do not install or enable the Chromium kiosk unit
  --no-apt             do not install Debian packages (they are there already)
  --firstboot          consume the provisioning bundle on the boot partition, then exit
  --rollback           switch the node back to the venv before the last upgrade (kept as $PREFIX/venv.previous)
                       and put back the systemd units and kiosk launcher installed with it, restart it, then
                       exit; run again to go forward
  --boot-dir DIR       the mounted boot partition (default $BOOT_DIR)
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
NEW=""        # the new venv being built, until it is switched in
SWITCHED=0
BUILD_DIR=""  # pip's private build directory, while it builds
# a run that stops before the switch (pip failed, a config the new code refuses, any step) removes the venv it was
# building: the node keeps the one it runs, and nothing half-built is left on the card
trap 'rc=$?; [ -z "$BUILD_DIR" ] || rm -rf "$BUILD_DIR"
    if [ "$rc" != 0 ] && [ -n "$NEW" ] && [ "$SWITCHED" = 0 ] && [ -e "$NEW" ]; then
    rm -rf "$NEW"; echo "install.sh: removed the unfinished new venv; $VENV is the one the node ran before" >&2; fi' EXIT
# a system command that fails (apt-get, useradd, systemctl, a full disk...) stops the script under set -e with
# only that command's own words; say where it stopped and that a re-run after the fix is the way on
trap 'rc=$?; echo "install.sh: stopped at line $LINENO (\`$BASH_COMMAND\` exited $rc): the steps before it are in place, none after it; fix what it says above and run the installer again (it is idempotent)" >&2' ERR

while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --config) CONFIG_IN="${2:?--config needs a file}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --venv-options) VENV_OPTS="${2-}"; shift 2 ;;
        --pip-options) PIP_OPTS="${2-}"; shift 2 ;;
        --inherit-site) INHERIT_SITE="${2:?--inherit-site needs a directory}"; shift 2 ;;
        --no-kiosk) WITH_KIOSK=0; shift ;;
        --no-apt) WITH_APT=0; shift ;;
        --firstboot) FIRSTBOOT=1; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        --boot-dir) BOOT_DIR="${2:?--boot-dir needs a directory}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$PREFIX" in /*) ;; *) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;; esac
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR" || die "cannot create --destdir $DESTDIR"
    DESTDIR="$(cd "$DESTDIR" && pwd)"
    [ "$DESTDIR" != "/" ] || DESTDIR=""
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run it as root (sudo $0 $*), or use --destdir DIR to install into a scratch root"
fi

VENV="$PREFIX/venv"    # a symlink to the venv in use, $VENVS/<id>
VENVS="$PREFIX/venvs"
R="$DESTDIR"  # the root every path is written under
LOG="$R$PREFIX/install-actions.log"
MANIFEST="$R$PREFIX/install-manifest.txt"

say() { echo "==> $*"; }

# run CMD...: system-wide actions; in destdir mode recorded instead of run
run() {
    if [ -n "$DESTDIR" ]; then
        mkdir -p "$(dirname "$LOG")"
        printf '%s\n' "$*" >>"$LOG"
    else
        "$@"
    fi
}

# put SRC DEST MODE: install a file (DEST without DESTDIR) only if its content or mode differs
put() {
    local src="$1" dest="$2" mode="$3" target="$R$2"
    mkdir -p "$(dirname "$target")"
    if [ -f "$target" ] && cmp -s "$src" "$target" && [ "$(stat -c %a "$target")" = "$mode" ]; then
        :
    else
        install -m "$mode" "$src" "$target"
        echo "    wrote $dest"
    fi
    grep -qxF "$dest" "$MANIFEST" 2>/dev/null || echo "$dest" >>"$MANIFEST"
}

# put_text DEST MODE <<< text
put_text() {
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    put "$tmp" "$1" "$2"
    rm -f "$tmp"
}

# unit_text FILE: a unit with the default paths rewritten for this prefix/config dir
unit_text() {
    sed -e "s#/opt/shelfcast#$PREFIX#g" -e "s#/etc/shelfcast#$CONFDIR#g" -e "s#/var/lib/shelfcast#$DATADIR#g" "$1"
}

PY="$R$VENV/bin/python"
CONFIG="$CONFDIR/shelfcast.yaml"

render_broker_and_udev() {
    # udev rules and the local broker (with its cloud bridge) come from the node config
    local tmp certdir=/etc/mosquitto/certs/shelfcast src name file
    tmp="$(mktemp -d)"
    "$PY" -m edge.deployment render --config "$R$CONFIG" --out-dir "$tmp" \
        || die "cannot render udev rules and the broker config from $R$CONFIG"
    put "$tmp/udev.rules" /etc/udev/rules.d/99-shelfcast.rules 644
    # 0640 root:mosquitto: the bridge's remote_password (mqtt.cloud.password) is in it; mosquitto reads it
    put "$tmp/mosquitto.conf" /etc/mosquitto/conf.d/shelfcast.conf 640
    if [ -n "$DESTDIR" ] || getent group mosquitto >/dev/null 2>&1; then
        run chown root:mosquitto /etc/mosquitto/conf.d/shelfcast.conf
    else
        echo "    note: no mosquitto group (is mosquitto installed? sudo apt-get install -y mosquitto);" \
             "/etc/mosquitto/conf.d/shelfcast.conf stays root-only"
    fi
    while read -r src name; do
        [ -n "$src" ] || continue
        case "$src" in "$R"/*) file="$src" ;; *) file="$R$src" ;; esac
        [ -f "$file" ] || die "mqtt.cloud names $src but it does not exist; run \`shelfcast provision\` again"
        put "$file" "$certdir/$name" 600
        run chown mosquitto:mosquitto "$certdir/$name"
    done <"$tmp/tls-files"
    rm -rf "$tmp"
    run udevadm control --reload-rules
    run udevadm trigger --subsystem-match=tty --action=add
}

# make_paths_final: the new venv was built at DIR$PREFIX/venvs/<id> but runs as $PREFIX/venv (the link the units,
# the `shelfcast` links and a technician's `activate` name) once it is switched in and, with --destdir, once DIR
# is the card's root. venv and pip write their absolute location into what they install (the #! line of every
# venv/bin script, pyvenv.cfg, the activate scripts, the source path in each .pyc), so the build path is made
# $PREFIX/venv in each and DIR is taken out: text files are replaced (a new file renamed over the old one, never
# written in place: the files the new venv shares with the previous one by hard link stay as they are), .pyc
# files that name the build path are compiled again under the final one (pip ran with --no-compile, so this
# compiles what it installed once). Only files not shared with the previous venv (link count 1) can name the new
# build path, so an upgrade reads only what pip and venv wrote. Every venv names $PREFIX/venv: the previous one
# kept for a rollback is right again the moment the link points back at it. The venv's own python still runs from
# its build path (it finds its venv by its own location), which is how the rest of this script runs it.
make_paths_final() {
    "$PY" - "$R" "$1" "$VENV" <<'PYEOF' || die "cannot make the paths in $1 final ($VENV)"
import compileall
import glob
import os
import shutil
import sys

root, build, final = sys.argv[1], sys.argv[2], sys.argv[3]
subs = [(build.encode(), final.encode())]
if root:
    subs.append(((root + "/").encode(), b"/"))
text = links = stale = 0
for d, dirs, files in os.walk(build):
    for name in dirs + files:
        path = os.path.join(d, name)
        if os.path.islink(path):
            target = new = os.readlink(path)
            if new == build or new.startswith(build + "/"):
                new = final + new[len(build):]
            elif root and new.startswith(root + "/"):
                new = new[len(root):]
            if new != target:
                os.symlink(new, path + ".final")
                os.replace(path + ".final", path)
                links += 1
            continue
        if name not in files or os.lstat(path).st_nlink > 1:
            continue  # a hard link shared with the previous venv: it names the final paths already
        with open(path, "rb") as f:
            data = f.read()
        if not any(old in data for old, _ in subs):
            continue
        if name.endswith(".pyc"):
            os.unlink(path)  # compiled again below, naming its final path
            stale += 1
        elif b"\0" in data:
            print(f"    note: {path} names {build} and is not text; left as is")
        else:
            for old, new_bytes in subs:
                data = data.replace(old, new_bytes)
            with open(path + ".final", "wb") as f:
                f.write(data)
            shutil.copymode(path, path + ".final")  # the #! scripts stay executable
            os.replace(path + ".final", path)
            text += 1
for lib in glob.glob(os.path.join(build, "lib", "python3*")):
    compileall.compile_dir(lib, quiet=2, stripdir=build, prependdir=final)
if text or links or stale:
    print(f"    paths made final ({final}): {text} text files, {links} links, {stale} .pyc compiled again")
PYEOF
}

# switch_venv: $VENV (a symlink) to the new venv, by one rename; a real directory there (a node installed before
# 2026-12-01) is first moved to $VENVS, named by its version and creation time, and becomes the previous venv,
# which $VENV.previous (a symlink) names
PREV_ID=""
switch_venv() {
    local link="$R$VENV" ver
    if [ -L "$link" ]; then
        PREV_ID="$(basename "$(readlink "$link")")"
    elif [ -d "$link" ]; then
        ver="$("$link/bin/python" -P -c 'import edge; print(edge.__version__)' 2>/dev/null | tr -cd 'A-Za-z0-9.+_-' || true)"
        PREV_ID="${ver:+$ver-}$(date -u -r "$link/pyvenv.cfg" +%Y%m%dT%H%M%SZ 2>/dev/null || echo before)"
        [ ! -e "$R$VENVS/$PREV_ID" ] || PREV_ID="$PREV_ID-$$"
        mv -T "$link" "$R$VENVS/$PREV_ID"
        echo "    moved the venv of the previous layout to $VENVS/$PREV_ID"
    fi
    ln -sfn "venvs/$NEW_ID" "$link.switch"
    mv -T "$link.switch" "$link"
    SWITCHED=1
    if [ -n "$PREV_ID" ] && [ "$PREV_ID" != "$NEW_ID" ]; then  # what --rollback goes back to
        ln -sfn "venvs/$PREV_ID" "$link.switch"
        mv -T "$link.switch" "$link.previous"
    fi
    echo "    $VENV -> venvs/$NEW_ID${PREV_ID:+ (previous: venvs/$PREV_ID, kept for a rollback)}"
}

# prune_venvs: keep the venv in use and the previous one; older ones and unfinished ones (a power cut during an
# install) go
prune_venvs() {
    local d
    for d in "$R$VENVS"/*; do
        [ -d "$d" ] || continue
        case "$(basename "$d")" in "$NEW_ID"|"$PREV_ID") continue ;; esac
        rm -rf "$d"
        echo "    removed the older venv $VENVS/$(basename "$d")"
    done
}

# The systemd units and the kiosk launcher their ExecStart runs belong to the ShelfCast they were installed with:
# an older program under a newer unit (new ExecStart flags, limits, sandboxing, a unit it does not know) is not
# what was tested. Each run keeps a copy of the ones it installed in the venv it installed them for,
# <venv>/$SYSTEM_COPY/<the file's path>; --rollback puts that copy back. A re-run that keeps the installed ShelfCast
# (--source -, the installer's own copy) installs them from that copy too, so a re-run after a rollback (a new
# config: `shelfcast provision` asks for one) does not bring the newer units back.
SYSTEM_COPY=shelfcast-system
UNITS="shelfcast.service shelfcast-firstboot.service"  # the units this run installs (deploy/systemd/)
[ "$WITH_KIOSK" = 0 ] || UNITS="$UNITS shelfcast-kiosk.service"
system_files() {  # system_files UNIT...: the files kept with a venv (final paths): these units and the launcher
    local u
    for u in "$@"; do echo "/etc/systemd/system/$u"; done
    echo "$PREFIX/bin/shelfcast-kiosk"
}
# keep_system_files VENVDIR FILE...: copy the installed FILEs into VENVDIR/$SYSTEM_COPY, replacing the copy there
# (a new tree renamed over the old: a copy that came by hard link from the previous venv is never written through)
keep_system_files() {
    local dir="$1/$SYSTEM_COPY" f
    shift
    rm -rf "$dir.new"
    mkdir -p "$dir.new"
    for f in "$@"; do
        [ -f "$R$f" ] || continue
        mkdir -p "$dir.new$(dirname "$f")"
        cp -p "$R$f" "$dir.new$f"
    done
    rm -rf "$dir"
    mv -T "$dir.new" "$dir"
}
# restore_system_files VENVDIR: put back the units and launcher kept with VENVDIR (the venv --rollback goes back
# to); units of ours it did not install are stopped, disabled and removed, units it installed that are not there
# now are enabled; systemd reloads them. Says what it changed.
restore_system_files() {
    local kept="$1/$SYSTEM_COPY" name="venvs/$(basename "$1")" f dest changed=0 removed=0 unit
    say "systemd units and kiosk launcher of $name"
    if ! [ -d "$kept" ]; then
        echo "    note: $name keeps no copy of its units (installed by an installer before 0.3.1): the units stay" \
             "as the newer installer wrote them; for the old version's units run its installer (technician" \
             "guide, section 8)"
        return 0
    fi
    local added=""
    while IFS= read -r -d '' f; do
        dest="${f#"$kept"}"
        if [ -f "$R$dest" ] && cmp -s "$f" "$R$dest" && [ "$(stat -c %a "$f")" = "$(stat -c %a "$R$dest")" ]; then
            continue
        fi
        case "$dest" in /etc/systemd/system/*) [ -e "$R$dest" ] || added="$added $(basename "$dest")" ;; esac
        put "$f" "$dest" "$(stat -c %a "$f")"
        changed=$((changed + 1))
    done < <(find "$kept" -type f -print0 | sort -z)
    for f in "$R"/etc/systemd/system/shelfcast*.service "$R"/etc/systemd/system/shelfcast*.timer; do
        [ -f "$f" ] || continue
        unit="$(basename "$f")"
        [ ! -e "$kept/etc/systemd/system/$unit" ] || continue
        run systemctl disable --now "$unit"
        rm -f "$f"
        echo "    removed /etc/systemd/system/$unit ($name did not install it; stopped and disabled)"
        removed=$((removed + 1))
    done
    if [ "$changed" = 0 ] && [ "$removed" = 0 ]; then
        echo "    the installed units and launcher are $name's already"
        return 0
    fi
    run systemctl daemon-reload
    for unit in $added; do
        run systemctl enable "$unit"
    done
    local gone=""
    [ "$removed" = 0 ] || gone=", removed $removed unit(s)"
    echo "    put back $changed file(s) as $name installed them$gone; systemctl daemon-reload${added:+; enabled$added}"
}

if [ "$FIRSTBOOT" = 1 ]; then
    BUNDLE="$R$BOOT_DIR/shelfcast"
    [ -f "$BUNDLE/firstboot.json" ] || { say "no first-boot bundle in $BUNDLE; nothing to do"; exit 0; }
    say "provisioning from $BUNDLE"
    "$PY" -m edge.provision provision --from-bundle "$BUNDLE" --config "$R$CONFIG" --keys-dir "$R$CONFDIR/keys" \
        || die "the first-boot bundle was refused; see the journal: journalctl -u shelfcast-firstboot"
    run chown -R "root:$SERVICE_USER" "$CONFDIR"
    run chown -R "$SERVICE_USER:$SERVICE_USER" "$CONFDIR/keys"  # the node reads its key and certificates
    render_broker_and_udev
    # Not `systemctl restart`: shelfcast-firstboot.service is ordered Before=mosquitto.service, so at boot
    # mosquitto's start job waits for this one, and a restart job we waited for would wait for us: a deadlock
    # until TimeoutStartSec. At boot mosquitto is not running yet and starts after us with the new config
    # (try-restart does nothing); on a running node (the unit or this script run by hand) it restarts once
    # we are done. --no-block: queue the job, never wait for it.
    run systemctl --no-block try-restart mosquitto.service
    say "first boot done"
    exit 0
fi

if [ "$ROLLBACK" = 1 ]; then
    # the program, with the systemd units and kiosk launcher installed with it; udev rules, the broker config and
    # these helper scripts stay as the last run wrote them (for those, run the old version's installer: technician
    # guide, section 8)
    if ! [ -L "$R$VENV" ] || ! [ -L "$R$VENV.previous" ] || ! [ -x "$R$VENV.previous/bin/python" ]; then
        die "no previous venv to go back to ($VENV.previous): only an upgrade by this installer keeps one. Roll" \
            "back by running the old version's installer (sudo ./deploy/install.sh in its checkout, or --source" \
            "its wheel): technician guide, section 8"
    fi
    rm -f "$LOG"
    NEW_ID="$(basename "$(readlink "$R$VENV.previous")")"
    say "rollback: $VENV -> venvs/$NEW_ID (from venvs/$(basename "$(readlink "$R$VENV")"))"
    OLD_PY="$R$VENV.previous/bin/python"
    "$OLD_PY" -P -m edge.deployment validate --config "$R$CONFIG" >/dev/null \
        || die "the config $CONFIG is not valid for the ShelfCast in $VENVS/$NEW_ID (listed above): take out what" \
               "you added for the newer version, then run --rollback again; nothing was changed"
    # a database the newer version migrated: the older code refuses it at start; say so now, with the way back
    "$OLD_PY" -P - "$R" "$R$CONFIG" <<'PYEOF' || die "nothing was changed: restore the database first (above), then run --rollback again"
import sqlite3
import sys

try:
    from edge.config import load_config
    from edge.store import SCHEMA_VERSION
    db = sys.argv[1] + str(load_config(sys.argv[2]).node.data_dir / "shelfcast.db")
except Exception:  # an older ShelfCast than this check knows: its node says it at start
    sys.exit(0)
try:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        version = c.execute("PRAGMA user_version").fetchone()[0]
except sqlite3.Error:
    sys.exit(0)  # no database yet, or one the node itself will judge
if version > SCHEMA_VERSION:
    final = db[len(sys.argv[1]):]
    print(f"install.sh: {final} has schema version {version}, newer than the ShelfCast you go back to "
          f"({SCHEMA_VERSION}); the newer one migrated it. Restore the copy it made before migrating (what the node "
          f"recorded since is lost): sudo systemctl stop shelfcast && sudo cp -p {final}.v{SCHEMA_VERSION}.bak "
          f"{final} && sudo rm -f {final}-wal {final}-shm", file=sys.stderr)
    sys.exit(1)
PYEOF
    # the venv left keeps the units it runs under now (one installed before 0.3.1 has no copy yet): what going
    # forward again puts back
    CUR_DIR="$(readlink -f "$R$VENV")"
    if ! [ -d "$CUR_DIR/$SYSTEM_COPY" ]; then
        # shellcheck disable=SC2046
        keep_system_files "$CUR_DIR" $(system_files $UNITS)  # (those not installed are skipped)
    fi
    restore_system_files "$(readlink -f "$R$VENV.previous")"
    run systemctl stop shelfcast.service
    switch_venv
    run systemctl start shelfcast.service
    [ "$WITH_KIOSK" = 0 ] || run systemctl --no-block try-restart shelfcast-kiosk.service
    say "rolled back to ShelfCast $("$R$VENV/bin/python" -P -c 'import edge; print(edge.__version__)');" \
        "--rollback again goes forward to venvs/$PREV_ID"
    exit 0
fi

if [ -z "$SOURCE" ]; then
    if [ -f "$HERE/../pyproject.toml" ]; then
        SOURCE="$(cd "$HERE/.." && pwd)"  # run from a checkout: install that checkout
    elif [ -x "$PY" ]; then
        SOURCE=-  # run as $PREFIX/lib/install.sh: keep the installed ShelfCast, redo the rest
    else
        die "give --source PATH (a ShelfCast checkout or wheel)"
    fi
fi
[ "$SOURCE" = - ] || [ -e "$SOURCE" ] || die "--source $SOURCE does not exist"
# absolute: pip reads a bare relative directory (--source shelfcast-new) as a package name to download
case "$SOURCE" in -|/*) ;; *) SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")" ;; esac
[ -n "$CONFIG_IN" ] || CONFIG_IN="$HERE/etc/shelfcast.yaml"
[ -f "$CONFIG_IN" ] || die "--config $CONFIG_IN does not exist"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: sudo apt-get install -y python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "ShelfCast needs Python >= 3.11 (Raspberry Pi OS Bookworm / Debian 12 ship 3.11)"

mkdir -p "$R$PREFIX"
rm -f "$LOG"  # the actions log describes the last run only

say "system packages"
if [ -z "$DESTDIR" ] && [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    case "${VERSION_CODENAME:-}" in
        bookworm) ;;
        *) echo "    note: made for Debian 12 / Raspberry Pi OS Bookworm; this is ${PRETTY_NAME:-unknown}" ;;
    esac
fi
if [ "$WITH_APT" = 1 ]; then
    PKGS="python3-venv python3-pip mosquitto mosquitto-clients ca-certificates"
    BROWSER_PKG=chromium
    if [ -z "$DESTDIR" ] && ! apt-cache show chromium >/dev/null 2>&1; then
        BROWSER_PKG=chromium-browser  # older Raspberry Pi OS Bookworm images name it so
    fi
    # xwayland: Debian's cage 0.1.4 declares no dependency on it, but refuses to start without /usr/bin/Xwayland
    [ "$WITH_KIOSK" = 0 ] || PKGS="$PKGS $BROWSER_PKG cage xwayland"
    run apt-get update -qq
    # shellcheck disable=SC2086
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS
fi

say "service user $SERVICE_USER (groups dialout, video)"
if [ -n "$DESTDIR" ] || ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --home-dir "$DATADIR" --no-create-home --shell /usr/sbin/nologin \
        --user-group "$SERVICE_USER"
fi
run usermod -aG dialout,video "$SERVICE_USER"
if [ "$WITH_KIOSK" = 1 ]; then
    run usermod -aG render,input,tty "$SERVICE_USER"
fi

say "directories"
mkdir -p "$R$CONFDIR/keys" "$R$DATADIR" "$R$PREFIX/bin" "$R$PREFIX/lib" "$R$PREFIX/share/doc"
chmod 750 "$R$CONFDIR" "$R$DATADIR"
chmod 700 "$R$CONFDIR/keys"
run chown "root:$SERVICE_USER" "$CONFDIR"
run chown "$SERVICE_USER:$SERVICE_USER" "$CONFDIR/keys" "$DATADIR"

# An upgrade checks the node's existing config with the ShelfCast about to be installed *before* pip replaces
# the running one: a key made stricter (signage.admin_token >= 16 characters) used to be found only after the
# venv held the new code, so the node kept running until its next restart and then refused to start. The new
# code is imported from SOURCE itself (a checkout, or a wheel: a pure-Python wheel is importable as a zip) with
# the installed venv's dependencies; if it cannot be imported that way the config is checked after pip.
if [ "$SOURCE" != - ] && [ -f "$R$CONFIG" ] && [ -x "$PY" ]; then
    say "config $CONFIG checked with the ShelfCast in $SOURCE, before anything is replaced"
    # imported from SOURCE, not the installed one (a relative --source, a symlink: compared as real paths)
    probe='import os, sys, edge, edge.deployment
r = os.path.realpath
sys.exit(not r(edge.__file__).startswith(r(sys.argv[1]) + "/"))'
    if PYTHONPATH="$SOURCE" PYTHONDONTWRITEBYTECODE=1 "$PY" -P -c "$probe" "$SOURCE" >/dev/null 2>&1; then
        PYTHONPATH="$SOURCE" PYTHONDONTWRITEBYTECODE=1 "$PY" -P -m edge.deployment validate --config "$R$CONFIG" \
            >/dev/null \
            || die "the config $CONFIG is not valid for the ShelfCast in $SOURCE (listed above); nothing was" \
                   "replaced: the installed ShelfCast and the running node are as they were. Fix what is listed" \
                   "(the installed \`shelfcast config validate\` still passes it: the rule is new), then run the" \
                   "installer again"
    else
        echo "    note: the new ShelfCast cannot be imported before it is installed; the config is checked after"
    fi
fi

say "venv $VENV (ShelfCast + runtime dependencies, no extras)"
# The node never runs on a half-installed venv: the new ShelfCast goes into a new venv beside the one the node
# runs ($VENVS/<version>-<time>), seeded with hard links to the installed one (no space, no download: pip only
# replaces what changed, and pip unlinks a file before writing it, so the shared files never change), and
# $VENV, a symlink, is switched to it by one rename when the node is stopped for its restart. Until then a node
# restart (crash, watchdog, power cut) starts the old venv, whole; a pip that fails leaves it serving. The
# previous venv is kept for a rollback, older ones are removed. A node installed before 2026-12-01 has a real
# directory at $VENV: it is moved to $VENVS at the switch and becomes the previous venv.
# inherit_site SITE: the --inherit-site line, written as a new file (the old one may be a link shared with the
# previous venv)
inherit_site() {
    [ -n "$INHERIT_SITE" ] || return 0
    local site
    site="$("$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$INHERIT_SITE" >"$site/shelfcast-inherit.pth.new"
    mv -f "$site/shelfcast-inherit.pth.new" "$site/shelfcast-inherit.pth"
}
# copy_source DIR DEST: the files of the checkout DIR that a build reads, into DEST (a new directory)
copy_source() {
    local src="$1" dest="$2" git=(git -c safe.directory="$1" -C "$1")
    mkdir -p "$dest"
    if command -v git >/dev/null 2>&1 && "${git[@]}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # tracked files as they are in the working tree, and files git does not ignore (a new module)
        "${git[@]}" ls-files -z --cached --others --exclude-standard \
            | tar -C "$src" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$dest" -xf - || return 1
        if [ -f "$dest/pyproject.toml" ] || [ -f "$dest/setup.py" ]; then return 0; fi
        rm -rf "$dest"; mkdir -p "$dest"  # not the project git knows (a copy inside another checkout): all of it
    fi
    tar -C "$src" --exclude-vcs --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=./.venv --exclude=./venv --exclude='./.*_cache' --exclude=./.hypothesis --exclude=./models/work \
        -cf - . | tar -C "$dest" -xf -
}
NEW_ID=""
if [ "$SOURCE" = - ]; then
    inherit_site "$PY"
    echo "    keeping the installed ShelfCast (--source PATH to upgrade)"
else
    # <version>-<UTC time>: `ls $VENVS` tells a technician which is which
    ver="$(PYTHONPATH="$SOURCE" PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -P -c 'import edge; print(edge.__version__)' 2>/dev/null | tr -cd 'A-Za-z0-9.+_-' || true)"
    NEW_ID="${ver:+$ver-}$(date -u +%Y%m%dT%H%M%SZ)"
    n=1; base="$NEW_ID"
    while [ -e "$R$VENVS/$NEW_ID" ]; do n=$((n + 1)); NEW_ID="$base-$n"; done
    NEW="$R$VENVS/$NEW_ID"
    mkdir -p "$R$VENVS"
    # the installed venv is a seed only if it runs the same interpreter (a venv is made for one Python)
    if [ -x "$PY" ] && [ "$(readlink -f "$PY")" = "$(readlink -f "$(command -v "$PYTHON")")" ]; then
        cp -al "$(readlink -f "$R$VENV")" "$NEW" 2>/dev/null || { rm -rf "$NEW"; cp -a "$(readlink -f "$R$VENV")" "$NEW"; } \
            || die "cannot copy the installed venv to $VENVS/$NEW_ID (disk full? df -h $PREFIX); nothing was replaced"
        echo "    new venv $VENVS/$NEW_ID, seeded from the installed one"
    else
        # shellcheck disable=SC2086
        "$PYTHON" -m venv $VENV_OPTS "$NEW" || die "cannot create the venv: sudo apt-get install -y python3-venv"
        echo "    new venv $VENVS/$NEW_ID"
    fi
    PY="$NEW/bin/python"  # from here on the new ShelfCast; the node runs the installed one until the switch
    inherit_site "$PY"
    # A checkout is built by setuptools in the checkout itself (build/, shelfcast.egg-info): two installs from one
    # checkout at once (two scratch roots, an image builder beside a technician) wrote and removed the same files,
    # and one could get a wheel with files missing. pip builds a private copy instead (what git tracks plus new
    # files it does not ignore; without git, all but build output, caches and venvs), and nothing is written
    # into the checkout.
    PIP_SOURCE="$SOURCE"
    if [ -d "$SOURCE" ]; then
        BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/shelfcast-build.XXXXXX")" \
            || die "cannot make a build directory in ${TMPDIR:-/tmp} (df -h ${TMPDIR:-/tmp})"
        copy_source "$SOURCE" "$BUILD_DIR/src" \
            || die "cannot copy $SOURCE to the build directory $BUILD_DIR/src (disk full? df -h ${TMPDIR:-/tmp});" \
                   "nothing was replaced"
        PIP_SOURCE="$BUILD_DIR/src"
    fi
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-compile $PIP_OPTS \
        "$PIP_SOURCE" \
        || die "pip could not install $SOURCE (its words are above); nothing was replaced: the node keeps running" \
               "the installed ShelfCast. Check the network (or pass --pip-options '--no-index --find-links DIR'" \
               "with the wheels) and free space (df -h $PREFIX), then run the installer again"
    rm -rf "$BUILD_DIR"; BUILD_DIR=""
    make_paths_final "$NEW"
fi
"$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tensorflow") is not None and not __import__("os").environ.get("SHELFCAST_ALLOW_TF"))' \
    || echo "    note: tensorflow is importable in the venv; a node does not need it"
ln -sfn "$VENV/bin/shelfcast" "$R$PREFIX/bin/shelfcast"
grep -qxF "$PREFIX/bin/shelfcast" "$MANIFEST" 2>/dev/null || echo "$PREFIX/bin/shelfcast" >>"$MANIFEST"
mkdir -p "$R/usr/local/bin"
ln -sfn "$VENV/bin/shelfcast" "$R/usr/local/bin/shelfcast"
grep -qxF /usr/local/bin/shelfcast "$MANIFEST" || echo /usr/local/bin/shelfcast >>"$MANIFEST"

say "config $CONFIG"
if [ -f "$R$CONFIG" ]; then
    tmp="$(mktemp)"; cp "$CONFIG_IN" "$tmp"
    # the template when it differs from the config; one left by an older run that matches no more is stale: removed
    if ! cmp -s "$tmp" "$R$CONFIG"; then install -m 640 "$tmp" "$R$CONFIG.dist"; else rm -f "$R$CONFIG.dist"; fi
    rm -f "$tmp"
    echo "    kept the existing config (template beside it as $CONFIG.dist when different)"
else
    install -m 640 "$CONFIG_IN" "$R$CONFIG"
    echo "    wrote $CONFIG"
fi
run chown "root:$SERVICE_USER" "$CONFIG"
if [ -n "$NEW" ]; then
    "$PY" -m edge.deployment validate --config "$R$CONFIG" >/dev/null \
        || die "the config $CONFIG is not valid for the ShelfCast in $SOURCE (listed above); nothing was replaced:" \
               "the node keeps running the installed ShelfCast. Fix what is listed, then run the installer again"
else
    "$PY" -m edge.deployment validate --config "$R$CONFIG" >/dev/null \
        || die "the config $CONFIG is not valid; fix what is listed above, then run the installer again"
fi

# a re-run that keeps the installed ShelfCast installs the units and launcher kept with it (after a --rollback:
# the older ones)
KEPT=""
if [ "$SOURCE" = - ] && [ -d "$(readlink -f "$R$VENV")/$SYSTEM_COPY" ]; then
    KEPT="$(readlink -f "$R$VENV")/$SYSTEM_COPY"
fi

say "helper scripts and docs"
# the installer keeps a copy of itself and what it installs from, so `$PREFIX/lib/install.sh` re-runs it
put "$HERE/install.sh" "$PREFIX/lib/install.sh" 755
put "$HERE/uninstall.sh" "$PREFIX/lib/uninstall.sh" 755
put "$HERE/shelfcast-kiosk" "$PREFIX/lib/shelfcast-kiosk" 755
if [ -n "$KEPT" ] && [ -f "$KEPT$PREFIX/bin/shelfcast-kiosk" ]; then
    put "$KEPT$PREFIX/bin/shelfcast-kiosk" "$PREFIX/bin/shelfcast-kiosk" 755
else
    put "$HERE/shelfcast-kiosk" "$PREFIX/bin/shelfcast-kiosk" 755
fi
for f in "$HERE"/systemd/*.service "$HERE"/etc/*; do
    put "$f" "$PREFIX/lib/${f#"$HERE"/}" 644
done
if [ -f "$HERE/../docs/technician-guide.md" ]; then
    put "$HERE/../docs/technician-guide.md" "$PREFIX/share/doc/technician-guide.md" 644
fi

say "udev rules and local broker"
render_broker_and_udev

say "journald limits, tmpfs"
put "$HERE/etc/journald-shelfcast.conf" /etc/systemd/journald.conf.d/shelfcast.conf 644
run systemctl enable /usr/share/systemd/tmp.mount  # /tmp on tmpfs (Debian ships the unit, disabled)

say "systemd units"
INSTALLED_UNITS=""
for u in $UNITS; do
    if [ -n "$KEPT" ] && [ -f "$KEPT/etc/systemd/system/$u" ]; then
        put "$KEPT/etc/systemd/system/$u" "/etc/systemd/system/$u" 644
    elif [ -n "$KEPT" ] && [ "$u" != shelfcast-kiosk.service ]; then
        continue  # a unit the installed ShelfCast did not install (after a --rollback: one only the newer has)
    else
        unit_text "$HERE/systemd/$u" | put_text "/etc/systemd/system/$u" 644
    fi
    INSTALLED_UNITS="$INSTALLED_UNITS $u"
done
# shellcheck disable=SC2046,SC2086
keep_system_files "${NEW:-$(readlink -f "$R$VENV")}" $(system_files $INSTALLED_UNITS)
run systemctl daemon-reload
run systemctl restart systemd-journald.service
run systemctl enable mosquitto.service shelfcast-firstboot.service shelfcast.service
run systemctl restart mosquitto.service
[ "$WITH_KIOSK" = 0 ] || run systemctl enable shelfcast-kiosk.service
if [ -n "$NEW" ]; then
    # stopped, switched, started: the old node never sees the new files, the new one never the old; the switch
    # itself is one rename (no time added to the restart)
    run systemctl stop shelfcast.service
    switch_venv
    run systemctl start shelfcast.service
    prune_venvs
else
    run systemctl restart shelfcast.service
fi
if [ "$WITH_KIOSK" = 1 ] && [ "$SOURCE" != - ]; then
    # a new ShelfCast: the attached screen's page was loaded from the old one, and a page from before the
    # self-reload (0310387) never loads the new code by itself (nor does a running launcher); a kiosk that is
    # running restarts (its launcher shows the welcome card until the node answers), one that is not is left so
    run systemctl --no-block try-restart shelfcast-kiosk.service
fi

say "done: ShelfCast $("$PY" -c 'import edge; print(edge.__version__)') in $R$VENV"
# the config was validated above; which store it names decides the next step (a re-run after step 3 of the
# guide, an upgrade or a restored /etc/shelfcast is provisioned already: provisioning again is not the advice)
STORE="$("$PY" -c 'import sys, yaml; print(((yaml.safe_load(open(sys.argv[1])) or {}).get("node") or {}).get("store_id") or "unprovisioned")' "$R$CONFIG" 2>/dev/null || echo unprovisioned)"
if [ "$WITH_KIOSK" = 1 ] && ! grep -Eqs '^[[:space:]]*SHELFCAST_KIOSK_URL=[[:space:]]*[^[:space:]"'"'"']' "$R$CONFDIR/kiosk.env"; then
    # the kiosk unit is enabled but has no page to show: the attached screen keeps the welcome card (90d0c6e)
    echo "    screen: the attached screen shows a welcome card until /etc/shelfcast/kiosk.env has the line" \
         "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/<screen id>; then sudo systemctl restart shelfcast-kiosk"
fi
if [ "$STORE" = unprovisioned ]; then
    echo "    next: sudo shelfcast provision, then shelfcast doctor (docs: $PREFIX/share/doc/technician-guide.md)"
else
    echo "    next: sudo shelfcast doctor (provisioned for store $STORE; docs: $PREFIX/share/doc/technician-guide.md)"
fi
exit 0
}
