#!/usr/bin/env bash
# Installs the host packages osk's build, tests and `make run` need, if any
# is missing. Used by .ci/run (CI) and `make run`. Needs root (or sudo).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Host packages, and why each is needed:
#   protobuf-compiler  protoc, for containerd's gRPC API (osk-init's client, build.rs)
#   qemu-system-x86    `osk run qemu` and every end-to-end test
#   qemu-system-arm    qemu-system-aarch64: `osk run qemu` of arm64 builds (test/tests/arm64.rs)
#   qemu-efi-aarch64   AAVMF, UEFI firmware for `osk run qemu --uefi` of arm64 builds
#   qemu-utils         qemu-img, for `osk run qemu --disk ...,format=qcow2`
#   ovmf               UEFI firmware for `osk run qemu --uefi`
#   cpio               reading initramfs archives in tests; the build-benchmark floor
#   zstd               the build-benchmark floor (find | cpio | zstd)
#   busybox-static     the userland of the test and benchmark-floor initramfses
#   openssh-client     ssh/ssh-keygen for the sshd end-to-end scenarios
#   skopeo, umoci      OCI image tooling used by package builds and their tests
#   docker-registry    a local OCI registry for push/pull tests (none is reachable)
#   time               /usr/bin/time -f: peak memory in the build benchmark
#   ca-certificates    HTTPS to the Debian mirror and crates.io
#   debian-archive-keyring  verifies the mirror's InRelease (osk pkg lock)
#   lz4                decompresses the kernel's legacy lz4 initramfs in a round-trip test
#   binutils           objdump -h: checks the UKI's PE sections (build --format uki)
#   gdisk              sgdisk -v: checks the GPT of the disk formats
#   dosfstools, mtools fsck.vfat -n, mcopy: check the ESP and read its UKI back; the Pi card's boot files (test/tests/rpi.rs)
#   fdisk              sfdisk --json: check the Pi card's MBR (build --format rpi4)
#   xorriso            -report_el_torito and -extract: check the hybrid ISO (build --format iso)
PACKAGES=(protobuf-compiler qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils ovmf cpio zstd lz4 busybox-static
  openssh-client skopeo umoci docker-registry time ca-certificates debian-archive-keyring
  binutils gdisk dosfstools mtools fdisk xorriso)

# --update: refresh apt's lists even when nothing is missing (CI: the e2e
# tests `apt-get download` Debian's current kernel package, so the lists must
# be fresh). --check: only list what is missing; exit 1 if anything is.
update= check=
case "${1:-}" in
--update) update=1 ;;
--check) check=1 ;;
esac

# Rust targets, and why each is needed (rustup, not apt):
#   aarch64-unknown-linux-musl  osk's own binaries in arm64 images (osk pkg build --arch arm64),
#                               static musl linked by the toolchain's rust-lld: no cross gcc
RUST_TARGETS=(aarch64-unknown-linux-musl)
if command -v rustup >/dev/null; then
  for t in "${RUST_TARGETS[@]}"; do
    rustup target list --installed | grep -qx "$t" && continue
    if [ -n "$check" ]; then
      echo "missing Rust target: $t (run rustup target add $t)" >&2
      exit 1
    fi
    rustup target add "$t"
  done
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
# The docker CLI alone (test/tests/docker.rs drives an osk VM's dockerd with
# it): taken out of Debian's docker.io without installing that package,
# whose dockerd must not run on the host.
docker_cli=
command -v docker >/dev/null || docker_cli=1
if [ -n "$check" ]; then
  [ ${#missing[@]} = 0 ] && [ -z "$docker_cli" ] && exit 0
  [ ${#missing[@]} = 0 ] || echo "missing host packages: ${missing[*]} (run .ci/host-packages.sh as root)" >&2
  [ -z "$docker_cli" ] || echo "missing: the docker CLI (run .ci/host-packages.sh as root)" >&2
  exit 1
fi
if [ ${#missing[@]} = 0 ] && [ -z "$update" ] && [ -z "$docker_cli" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -q
if [ ${#missing[@]} != 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ -n "$docker_cli" ]; then
  echo "installing: the docker CLI from docker.io (the package itself is not installed)"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q docker.io && dpkg-deb -x docker.io_*.deb root)
  $SUDO install -m 0755 "$tmp/root/usr/bin/docker" /usr/local/bin/docker
  rm -rf "$tmp"
fi
