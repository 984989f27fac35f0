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
