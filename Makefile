# Convenience targets; the scripts are the source of truth (they install what is missing).
.PHONY: run test build bench assets deb rpm packages check-packages

run:
	./run.sh
test:
	./test.sh
build:
	scripts/deps.sh
	cargo build --release --locked

# The end-to-end benchmark (benches/bench.py): journal and files to Kafka, against the
# in-process mock cluster and an Apache Kafka broker process; table on stdout, CSV in target/bench/.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--repeat 5 --set compression.type=zstd"
bench: build
	scripts/deps.sh --bench
	cargo build --release --locked --example librdkafka_floor
	python3 benches/bench.py $(BENCH_ARGS)

# Shell completions and man pages, generated from the CLI definition by the built binary.
assets: build
	rm -rf target/assets
	mkdir -p target/assets/man
	target/release/perapera completions bash > target/assets/perapera.bash
	target/release/perapera completions zsh > target/assets/_perapera
	target/release/perapera completions fish > target/assets/perapera.fish
	target/release/perapera man target/assets/man
	gzip -9n target/assets/man/*.1

# target/debian/perapera_<version>-1_<arch>.deb
deb: assets
	scripts/deps.sh --package
	rm -f target/debian/perapera_*.deb
	cargo deb --no-build --locked

# target/generate-rpm/perapera-<version>-1.<arch>.rpm
rpm: assets
	scripts/deps.sh --package
	rm -f target/generate-rpm/perapera-*.rpm
	cargo generate-rpm

packages: deb rpm

# Installs the .deb on this machine, checks it, removes and purges it; inspects the .rpm.
check-packages: packages
	scripts/check-packages.sh
