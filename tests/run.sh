#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian 12 / Raspberry Pi OS machine, then run
# ruff, mypy and the whole test suite. Idempotent: re-running skips what is already there.
#   bash tests/run.sh            (extra pytest arguments are passed through)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null || need_apt+=(mosquitto mosquitto-clients)
command -v chromium >/dev/null || need_apt+=(chromium chromium-driver)
command -v socat >/dev/null || need_apt+=(socat)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,train]"

echo "== ruff"; .venv/bin/ruff check edge firmware_bridge models tests
echo "== mypy"; .venv/bin/mypy edge firmware_bridge models
echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
