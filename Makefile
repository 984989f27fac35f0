# osk: see README.md. `make test` is what CI runs.
CARGO ?= cargo

.PHONY: build test unit clippy fmt

build:
	$(CARGO) build --release --workspace

unit:
	$(CARGO) test --workspace --exclude osk-e2e

test: unit

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Warm-cache `osk build` vs find|cpio|zstd over the same tree (bench/build.sh).
.PHONY: bench-build
bench-build:
	$(CARGO) build --release -p osk-builder --bin osk
	bench/build.sh
