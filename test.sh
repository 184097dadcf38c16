#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, the integration tests against
# real journal files, librdkafka's mock cluster and Apache Kafka (KRaft), the fuzz targets
# for 60 s each, the benchmark harness on small data, then builds the .deb and .rpm and checks them (as root this installs,
# removes and purges the .deb here; PERAPERA_SKIP_PACKAGES=1 skips that step).
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh --test
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# The module graph: no import circle, no file over 500 lines of code.
python3 scripts/modgraph.py src
cargo test --locked -- --test-threads 2
cat target/chaos-report.txt target/exactly-once-report.txt
# Every fuzz target for 60 s (PERAPERA_FUZZ_SECONDS overrides), two at a time.
fuzz/run.sh "${PERAPERA_FUZZ_SECONDS:-60}"
# The benchmark harness on small data, so that `make bench` keeps working (no targets checked).
cargo build --release --locked --bins --example librdkafka_floor
python3 benches/bench.py --smoke
if [ "${PERAPERA_SKIP_PACKAGES:-0}" != 1 ]; then
    make --no-print-directory check-packages
fi
