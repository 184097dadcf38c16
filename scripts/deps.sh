#!/usr/bin/env bash
# Installs what building (and, with --test, testing) perapera needs on Debian 12, only when
# it is missing. Used by ./run.sh and ./test.sh.
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

packages=(build-essential pkg-config libsystemd-dev zlib1g-dev libssl-dev python3)
[ $want_test -eq 1 ] && packages+=(python3-pip)
[ $want_test -eq 1 ] && packages+=(systemd systemd-journal-remote)
# Node and npm: Debian's packages unless a node is already installed some other way (e.g.
# NodeSource's nodejs, which ships its own npm and conflicts with Debian's npm package).
if [ $want_test -eq 1 ]; then
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo not found; install a Rust toolchain (>= 1.89) with rustup first" >&2
    exit 1
fi

if [ $want_test -eq 1 ]; then
    # tansu: a Kafka-API-compatible broker process for the end-to-end tests.
    tansu="${TANSU:-$HOME/.cargo/bin/tansu}"
    if ! "$tansu" --version 2>/dev/null | grep -q "0.6.0"; then
        echo "deps: installing tansu 0.6.0 (about 10 minutes on 2 cores, once)" >&2
        cargo install tansu --locked --version 0.6.0 --features dynostore,libsql
    fi
    # An independent Kafka client for the end-to-end tests.
    if ! python3 -c "import confluent_kafka, msgpack" 2>/dev/null; then
        echo "deps: installing confluent-kafka and msgpack from PyPI" >&2
        python3 -m pip install --quiet confluent-kafka msgpack 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages confluent-kafka msgpack
    fi
    # Independent Forward-protocol senders: Python fluent-logger, Node @fluent-org/logger.
    if ! python3 -c "import fluent.sender" 2>/dev/null; then
        echo "deps: installing fluent-logger from PyPI" >&2
        python3 -m pip install --quiet fluent-logger 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages fluent-logger
    fi
    if [ ! -d tests/node/node_modules/@fluent-org/logger ]; then
        echo "deps: installing @fluent-org/logger from npm (tests/node)" >&2
        (cd tests/node && npm ci --silent --no-audit --no-fund)
    fi
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
