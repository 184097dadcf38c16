#!/usr/bin/env bash
# Builds the fuzz targets with cargo fuzz and runs each for SECONDS (default 60), two at a
# time (one per core), from the committed seeds (fuzz/seeds/TARGET) plus the corpus grown by
# earlier runs (fuzz/corpus/TARGET). Exits non-zero if any target finds a crash; the input
# is in fuzz/artifacts/TARGET/. Used by ./test.sh.
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass its -Z flags. The
# targets link perapera without its kafka and journal features (no librdkafka, no
# libsystemd: neither is exercised). They are safe Rust, so AddressSanitizer is off
# (--sanitizer none: about 10 times the executions per second); panics, overflow checks
# and debug assertions (all on) are what catch bugs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
targets=(config_parse checkpoint_read line_parsers forward_decode)

export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none
bin=target/x86_64-unknown-linux-gnu/release

run() {
    local t="$1"
    mkdir -p "corpus/$t" "artifacts/$t"
    if "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -timeout=10 -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"artifacts/$t.log" 2>&1; then
        echo "fuzz: $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "artifacts/$t.log" | grep -o '[0-9]*$') runs in ${seconds}s, no crash"
    else
        echo "fuzz: $t: CRASH (input in fuzz/artifacts/$t/):" >&2
        tail -40 "artifacts/$t.log" >&2
        return 1
    fi
}

failed=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    pids=()
    for t in "${targets[@]:i:2}"; do
        run "$t" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || failed=1
    done
done
exit $failed
