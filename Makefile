# osk: see README.md. `make test` is what CI runs.
CARGO ?= cargo
# KVM hangs on our machines; `osk run qemu --accel auto` would pick it.
export OSK_QEMU_ACCEL ?= tcg
# The package tests build a real package from the Debian mirror in the host's apt sources.
export OSK_TEST_NETWORK ?= 1
# Parallel VMs under TCG: each wants a core; more only slows all of them down.
E2E_THREADS ?= 2

.PHONY: build test unit e2e e2e-full bench run clippy fmt

build:
	$(CARGO) build --release --workspace

unit:
	$(CARGO) test --workspace --exclude osk-e2e

# Boots real VMs (Debian kernel + busybox initramfs) through `osk run qemu`.
# The full-stack scenarios are #[ignore]d until osk build and osk-init land.
e2e:
	$(CARGO) test -p osk-e2e -- --test-threads $(E2E_THREADS)

# The seven full-stack scenarios (need osk build + osk-init).
e2e-full:
	$(CARGO) test -p osk-e2e --test scenarios -- --ignored --test-threads 1

test: unit e2e

# Build and boot timings against their floors; writes bench/RESULTS.md.
bench: bench-build
	$(CARGO) run -p osk-e2e --bin osk-bench -- --runs 5 --out bench/RESULTS.md

# Later: install host packages, `osk pkg build` the packages, `osk build`
# examples/minimal.yml, boot it. Until osk build exists this only says so.
run:
	@$(CARGO) build -q -p osk-builder --bin osk
	@if ! target/debug/osk build --help >/dev/null 2>&1; then \
	  echo "make run: \`osk build\` does not exist yet, so there is no examples/minimal.yml image to boot."; \
	  echo "Boot any kernel+initrd today with: target/debug/osk run qemu --accel tcg out/NAME"; \
	  echo "(needs out/NAME-kernel and out/NAME-initrd.img; Ctrl-a x quits)."; \
	  exit 1; \
	fi
	target/debug/osk build --dir out --name minimal examples/minimal.yml
	target/debug/osk run qemu --publish 8080:80 out/minimal

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Warm-cache `osk build` vs find|cpio|zstd over the same tree (bench/build.sh).
.PHONY: bench-build
bench-build:
	$(CARGO) build --release -p osk-builder --bin osk
	bench/build.sh | tee bench/BUILD.md
