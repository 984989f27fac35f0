# osk: see README.md. `make test` is what CI runs.
CARGO ?= cargo
# KVM hangs on our machines; `osk run qemu --accel auto` would pick it.
export OSK_QEMU_ACCEL ?= tcg
# The package tests build a real package from the Debian mirror in the host's apt sources.
export OSK_TEST_NETWORK ?= 1
# Parallel VMs under TCG: each wants a core; more only slows all of them down.
E2E_THREADS ?= 2

.PHONY: build test lint unit e2e e2e-full bench run clippy fmt

build:
	$(CARGO) build --release --workspace

unit:
	$(CARGO) test --workspace --exclude osk-e2e

# Boots real VMs through `osk run qemu`: Debian kernel + busybox initramfses
# (tests/boot.rs), and the full-stack scenarios built from examples/
# (tests/scenarios.rs; the first run builds every package into
# target/e2e-cache/store).
e2e:
	$(CARGO) test -p osk-e2e -- --test-threads $(E2E_THREADS) --nocapture

# Only the full-stack scenarios.
e2e-full:
	$(CARGO) test -p osk-e2e --test scenarios -- --test-threads $(E2E_THREADS) --nocapture

# Formatting and clippy, warnings as errors; `make test` runs it first.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: lint unit e2e

# Build and boot timings against their floors; writes bench/RESULTS.md.
bench: bench-build
	$(CARGO) run -p osk-e2e --bin osk-bench -- --runs 5 --out bench/RESULTS.md

# Installs missing host packages (as root), builds examples/minimal.yml (the
# packages it needs are built on first use), boots it with the console
# attached and host port 8080 on guest port 80. Ctrl-a x quits QEMU.
run:
	@if [ "$$(id -u)" = 0 ]; then .ci/host-packages.sh; else .ci/host-packages.sh --check || true; fi
	$(CARGO) build -q -p osk-builder --bin osk
	target/debug/osk build --dir out --name minimal examples/minimal.yml
	target/debug/osk run qemu --publish 8080:80 out/minimal

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# `osk build` cold, warm, after a one-line change, with the segment cache
# dropped, gzip and zstd-max, vs find|cpio|zstd (bench/build.sh); with
# LINUXKIT=path/to/linuxkit, `linuxkit build` of the same manifest as well.
.PHONY: bench-build
bench-build:
	$(CARGO) build --release -p osk-builder --bin osk
	OSK=target/release/osk LINUXKIT="$(LINUXKIT)" bench/build.sh | tee bench/BUILD.md
