#!/usr/bin/env bash
# Removes ShelfCast from a node. Keeps the config, keys and data (/etc/shelfcast, /var/lib/shelfcast)
# and the service user unless --purge is given, so a reinstall picks up where it left off.
#
#   sudo /opt/shelfcast/lib/uninstall.sh            # program, units, rules, broker config
#   sudo /opt/shelfcast/lib/uninstall.sh --purge    # ... and config, keys, data and the service user
#   deploy/uninstall.sh --destdir /tmp/root         # from a scratch root (actions recorded, not run)
set -euo pipefail
# the whole script is one block, read before it runs: an upgrade that replaces this file mid-run is safe
{

PREFIX=/opt/shelfcast
CONFDIR=/etc/shelfcast
DATADIR=/var/lib/shelfcast
DESTDIR=""
PURGE=0
SERVICE_USER=shelfcast

while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$DESTDIR" ]; then
    [ -d "$DESTDIR" ] || { echo "uninstall.sh: --destdir $DESTDIR does not exist" >&2; exit 2; }
    DESTDIR="$(cd "$DESTDIR" && pwd)"
    [ "$DESTDIR" != "/" ] || DESTDIR=""
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: run it as root (sudo $0)" >&2; exit 1
fi
R="$DESTDIR"
LOG="$R/var/log/shelfcast-uninstall-actions.log"
run() {
    if [ -n "$DESTDIR" ]; then mkdir -p "$(dirname "$LOG")"; printf '%s\n' "$*" >>"$LOG"; else "$@" || true; fi
}

echo "==> stopping and disabling units"
run systemctl disable --now shelfcast-kiosk.service shelfcast.service shelfcast-firstboot.service

echo "==> removing installed files"
MANIFEST="$R$PREFIX/install-manifest.txt"
if [ -f "$MANIFEST" ]; then
    while read -r f; do
        [ -n "$f" ] || continue
        case "$f" in "$CONFDIR"/*|"$DATADIR"/*) continue ;; esac  # never data or config here
        rm -f "$R$f"
    done <"$MANIFEST"
fi
for f in /etc/systemd/system/shelfcast.service /etc/systemd/system/shelfcast-kiosk.service \
         /etc/systemd/system/shelfcast-firstboot.service /etc/udev/rules.d/99-shelfcast.rules \
         /etc/mosquitto/conf.d/shelfcast.conf /etc/systemd/journald.conf.d/shelfcast.conf \
         /usr/local/bin/shelfcast; do
    rm -f "$R$f"
done
rm -rf "$R/etc/mosquitto/certs/shelfcast" "$R$PREFIX"
run systemctl daemon-reload
run udevadm control --reload-rules
run systemctl restart mosquitto.service systemd-journald.service

if [ "$PURGE" = 1 ]; then
    echo "==> purging config, keys and data"
    rm -rf "$R$CONFDIR" "$R$DATADIR"
    run userdel "$SERVICE_USER"
else
    echo "    kept $CONFDIR (config, keys) and $DATADIR (data); --purge removes them"
fi
echo "==> ShelfCast removed"
exit 0
}
