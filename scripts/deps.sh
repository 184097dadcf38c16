#!/usr/bin/env bash
# Installs what building perapera needs on Debian 12, only when it is missing; with
# --package also what building and checking its .deb/.rpm needs, with --test everything the
# test suite needs (which includes packaging), with --bench what `make bench` needs (the
# journal writer, Apache Kafka, a Kafka client). Used by ./run.sh, ./test.sh and the Makefile.
set -euo pipefail

want_test=0
want_package=0
want_bench=0
case "${1:-}" in
--test) want_test=1; want_package=1 ;;
--package) want_package=1 ;;
--bench) want_bench=1 ;;
esac

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

packages=(build-essential pkg-config libsystemd-dev zlib1g-dev libssl-dev python3)
[ $want_test -eq 1 ] && packages+=(python3-pip)
[ $want_test -eq 1 ] && packages+=(systemd systemd-journal-remote)
[ $want_bench -eq 1 ] && packages+=(python3-pip systemd systemd-journal-remote)
# rpm inspects the .rpm; promtool (package prometheus) checks and unit-tests the alert rules.
[ $want_package -eq 1 ] && packages+=(rpm)
[ $want_test -eq 1 ] && packages+=(prometheus)
# A JDK and Maven for Apache Kafka (the jars come from Maven Central, below).
if [ $want_test -eq 1 ] || [ $want_bench -eq 1 ]; then
    command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null 2>&1 || packages+=(maven)
fi
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
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo not found; install a Rust toolchain (>= 1.89) with rustup first" >&2
    exit 1
fi

if [ $want_package -eq 1 ]; then
    if ! cargo deb --version 2>/dev/null | grep -q "3.8.0"; then
        echo "deps: installing cargo-deb 3.8.0 (about 1 minute, once)" >&2
        cargo install --locked cargo-deb --version 3.8.0
    fi
    if ! cargo generate-rpm --version 2>/dev/null | grep -q "0.21.1"; then
        echo "deps: installing cargo-generate-rpm 0.21.1 (about 2.5 minutes, once)" >&2
        cargo install --locked cargo-generate-rpm --version 0.21.1
    fi
fi

if [ $want_test -eq 1 ] || [ $want_bench -eq 1 ]; then
    # Apache Kafka (broker and tools, KRaft) for the end-to-end tests: the jars of the
    # version pinned in tests/kafka/pom.xml and their runtime dependencies, once (a copy of
    # the pom marks a complete collection; another pom collects again).
    libs=target/kafka/libs
    if ! cmp -s tests/kafka/pom.xml "$libs/.complete" 2>/dev/null; then
        echo "deps: collecting Apache Kafka's jars with Maven into $libs (about 20 s, once)" >&2
        rm -rf "$libs"
        mkdir -p "$libs"
        mvn -B -q -f tests/kafka/pom.xml \
            org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$PWD/$libs"
        cp tests/kafka/pom.xml "$libs/.complete"
    fi
    # An independent Kafka client for the end-to-end tests and the benchmark's count.
    if ! python3 -c "import confluent_kafka, msgpack" 2>/dev/null; then
        echo "deps: installing confluent-kafka and msgpack from PyPI" >&2
        python3 -m pip install --quiet confluent-kafka msgpack 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages confluent-kafka msgpack
    fi
fi

if [ $want_test -eq 1 ]; then
    # cargo fuzz, for the fuzz targets (fuzz/run.sh, on the stable toolchain).
    if ! cargo fuzz --version 2>/dev/null | grep -q "0.13.2"; then
        echo "deps: installing cargo-fuzz 0.13.2 (about 1.5 minutes, once)" >&2
        cargo install --locked cargo-fuzz --version 0.13.2
    fi
    # The reference Prometheus text-format parser, for the /metrics tests.
    if ! python3 -c "import prometheus_client" 2>/dev/null; then
        echo "deps: installing prometheus_client from PyPI" >&2
        python3 -m pip install --quiet prometheus_client 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages prometheus_client
    fi
    # The Kubernetes OpenAPI schemas (bundled, offline) for the manifest check.
    if ! python3 -c "import kubernetes_validate" 2>/dev/null; then
        echo "deps: installing kubernetes-validate from PyPI" >&2
        python3 -m pip install --quiet kubernetes-validate 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages kubernetes-validate
    fi
    # Independent Forward-protocol senders: Python fluent-logger, Node @fluent-org/logger.
    if ! python3 -c "import fluent.sender" 2>/dev/null; then
        echo "deps: installing fluent-logger from PyPI" >&2
        python3 -m pip install --quiet fluent-logger 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages fluent-logger
    fi
    if [ ! -d tests/node/node_modules/@fluent-org/logger ] || [ ! -d tests/node/node_modules/@grafana/schema ] \
        || [ ! -d tests/node/node_modules/typescript ]; then
        echo "deps: installing @fluent-org/logger, typescript and @grafana/schema from npm (tests/node)" >&2
        (cd tests/node && npm ci --silent --no-audit --no-fund)
    fi
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
