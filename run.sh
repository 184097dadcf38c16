#!/usr/bin/env bash
# Quick start: build perapera and run it on its embedded default (the local systemd journal,
# shipped as JSON lines to stdout; no Kafka needed). Extra arguments go to `perapera run`,
# e.g. ./run.sh -c packaging/perapera.toml
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh
cargo build --release --locked
exec target/release/perapera run "$@"
