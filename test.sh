#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, and the integration tests against
# real journal files, librdkafka's mock cluster and a tansu broker process.
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh --test
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked -- --test-threads 2
