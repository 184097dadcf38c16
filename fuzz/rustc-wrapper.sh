#!/usr/bin/env bash
# Used as RUSTC by fuzz/run.sh. libsystemd-sys's build script links a probe program with
# the target's RUSTFLAGS; under cargo fuzz those carry SanitizerCoverage passes whose runtime
# (libFuzzer) the probe does not link, so the probe fails. For that one probe, drop the
# coverage flags; everything else is compiled exactly as cargo fuzz asks.
real="${PERAPERA_REAL_RUSTC:-rustc}"
for a in "$@"; do
    if [ "$a" = systemd_capabilities ]; then
        args=()
        for b in "$@"; do
            case "$b" in
                -Cpasses=sancov-module|-Cllvm-args=-sanitizer-coverage*) ;;
                *) args+=("$b") ;;
            esac
        done
        exec "$real" "${args[@]}"
    fi
done
exec "$real" "$@"
