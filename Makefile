# Convenience targets; the scripts are the source of truth (they install what is missing).
.PHONY: run test build
run:
	./run.sh
test:
	./test.sh
build:
	cargo build --release --locked
