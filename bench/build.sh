#!/usr/bin/env bash
# Times `osk build` of a manifest with several services: cold (empty spool
# and segment cache), warm (store, spool and segments warm, no previous
# output), with the segment cache dropped, a rebuild after a one-line change
# of a `files` entry, gzip and zstd-max, against the floor
# `find | cpio -o -H newc | zstd -19 --long=27` over the same extracted tree;
# prints wall time, peak RSS and output size for each. Images are made from
# host directories (no registry needed) and imported with `osk cache import`.
# With LINUXKIT=path/to/linuxkit, `linuxkit build` of the same manifest on
# the same images is timed too (see linuxkit_column).
#
#   bench/build.sh            # uses target/release/osk (built if missing)
#   OSK=path/to/osk LINUXKIT=path/to/linuxkit bench/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OSK=${OSK:-target/release/osk}
[ -x "$OSK" ] || cargo build --release -p osk-builder --bin osk
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)"; exit 1; }

W=$(mktemp -d "${TMPDIR:-/tmp}/osk-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
STORE=$W/store

# mkimage NAME DEST_PREFIX SRC_DIR [FILE...]: a one-layer gzip image of SRC_DIR
# placed under DEST_PREFIX, imported into the store as NAME.
mkimage() {
    local name=$1 prefix=$2 src=$3 l=$W/layout-${1//[:\/]/_} root=$W/root-${1//[:\/]/_}
    mkdir -p "$l/blobs/sha256" "$root/$prefix"
    if [ -n "$src" ]; then cp -a "$src/." "$root/$prefix/"; fi
    shift 3
    for f in "$@"; do cp -a "$f" "$root/"; done
    tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$W/layer.tar" .
    local diff; diff=$(sha256sum <"$W/layer.tar" | cut -d' ' -f1)
    gzip -1 -n <"$W/layer.tar" >"$W/layer.tgz"
    local ld ls; ld=$(sha256sum <"$W/layer.tgz" | cut -d' ' -f1); ls=$(stat -c %s "$W/layer.tgz")
    mv "$W/layer.tgz" "$l/blobs/sha256/$ld"
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" >"$W/config.json"
    local cd cs; cd=$(sha256sum <"$W/config.json" | cut -d' ' -f1); cs=$(stat -c %s "$W/config.json")
    mv "$W/config.json" "$l/blobs/sha256/$cd"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" >"$W/manifest.json"
    local md ms; md=$(sha256sum <"$W/manifest.json" | cut -d' ' -f1); ms=$(stat -c %s "$W/manifest.json")
    mv "$W/manifest.json" "$l/blobs/sha256/$md"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' "$md" "$ms" "$name" >"$l/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$l/oci-layout"
    "$OSK" --cache "$STORE" cache import "$l" --as "$name" >/dev/null
    rm -rf "$root" "$W/layer.tar"
}

echo "making images..." >&2
head -c 8M /dev/zero | tr '\0' 'k' >"$W/kernel"            # stand-in bzImage
mkdir -p "$W/mods/lib/modules/6.1.0"; cp -a /usr/lib/python3.11/. "$W/mods/lib/modules/6.1.0/"
tar -C "$W/mods" --sort=name -cf "$W/kernel.tar" . && rm -rf "$W/mods"
mkimage bench/kernel:1 . "" "$W/kernel" "$W/kernel.tar"
mkimage bench/init:1 usr/lib/python3 /usr/lib/python3
mkimage bench/small:1 usr/share/perl /usr/share/perl
mkimage bench/big:1 usr/lib/gcc /usr/lib/gcc
cat >"$W/bench.yml" <<'YML'
kernel:
  image: bench/kernel:1
  cmdline: console=ttyS0
init:
  - bench/init:1
onboot:
  - name: setup
    image: bench/small:1
services:
  - name: a
    image: bench/small:1
  - name: b
    image: bench/small:1
  - name: c
    image: bench/big:1
  - name: d
    image: bench/big:1
files:
  - path: etc/motd
    contents: hello
YML

# measure LABEL CMD...: wall seconds and peak RSS (KiB) via GNU time.
measure() {
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    read -r wall rss <"$W/time"
    printf '%s %s %s\n' "$label" "$wall" "$rss"
}

BUILD=("$OSK" --cache "$STORE" build --dir "$W/out" --name bench "$W/bench.yml")
echo "cold build (fills the spool and the segment cache)..." >&2
cold=$(measure cold "${BUILD[@]}")
rm -rf "$W/out"
warm=$(measure warm "${BUILD[@]}")
size_osk=$(stat -c %s "$W/out/bench-initrd.img")
echo "warm build with the segment cache dropped..." >&2
rm -rf "$STORE/segments" "$W/out"
nosegs=$(measure nosegs "${BUILD[@]}")
# One line changed: a files entry's contents, in a copy of the manifest.
sed 's/contents: hello/contents: hello again/' "$W/bench.yml" >"$W/bench2.yml"
grep -q 'hello again' "$W/bench2.yml"
rebuild=$(measure rebuild "$OSK" --cache "$STORE" build --dir "$W/out" --name bench "$W/bench2.yml")
measure warm-gzip "${BUILD[@]}" --compress gzip >/dev/null # fills its segments
warm_gz=$(measure warm-gzip "${BUILD[@]}" --compress gzip)
size_gz=$(stat -c %s "$W/out/bench-initrd.img")
echo "zstd-max (one archive, compressed whole)..." >&2
max=$(measure zstd-max "${BUILD[@]}" --compress zstd-max)
size_max=$(stat -c %s "$W/out/bench-initrd.img")

# LinuxKit's column: the same images exported from osk's store as OCI
# archives and imported into a LinuxKit cache, then the same manifests.
lk="" lk_rebuild="" lk_note=""
linuxkit_column() {
    if [ -z "${LINUXKIT:-}" ] || [ ! -x "${LINUXKIT:-}" ]; then
        lk_note="linuxkit not available: set LINUXKIT to a linuxkit binary (go build in its src/cmd/linuxkit) to time it here"
        return
    fi
    local img cache=$W/lk-cache
    for img in bench/kernel:1 bench/init:1 bench/small:1 bench/big:1; do
        if ! "$OSK" --cache "$STORE" cache export "$img" -o "$W/lk.tar" >/dev/null 2>&1 ||
            ! "$LINUXKIT" cache import --cache "$cache" "$W/lk.tar" >/dev/null 2>&1; then
            lk_note="linuxkit not available: importing $img into its cache failed"
            return
        fi
    done
    local lkb=("$LINUXKIT" build --cache "$cache" --docker=false --format kernel+initrd --dir "$W/lk-out" --name bench)
    mkdir -p "$W/lk-out"
    if ! lk=$(measure linuxkit "${lkb[@]}" "$W/bench.yml"); then
        lk="" lk_note="linuxkit not available: its build failed"
        return
    fi
    lk_rebuild=$(measure linuxkit-rebuild "${lkb[@]}" "$W/bench2.yml") || lk_rebuild=""
    lk_note="linuxkit: $("$LINUXKIT" version 2>/dev/null | head -1)"
}
linuxkit_column

# The floor: the same tree, extracted, archived and compressed by the classic
# tools with zstd-max's parameters (builder/src/initramfs/compress.rs: level
# 19, 2^27 window with long matching, chain log 23, one thread).
mkdir -p "$W/x"
"${BUILD[@]}" --compress none 2>/dev/null
(cd "$W/x" && cpio -idm --quiet <"$W/out/bench-initrd.img")
raw=$(du -sb --apparent-size "$W/x" | cut -f1)
floor() { cd "$W/x" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -q -19 --long=27 --zstd=clog=23 --single-thread -c >"$W/floor.zst"; }
export -f floor; export W
flo=$(measure floor bash -c floor)
size_floor=$(stat -c %s "$W/floor.zst")

mb() { echo "scale=1; $1/1048576" | bc; }
line() { # LABEL "label wall rss_kib" SIZE_BYTES
    set -- "$1" $2 "${3:-}"
    printf '%-34s %8s %12s %9s\n' "$1" "$3" "$(mb $(($4 * 1024)))" "${5:+$(mb "$5")}"
}
wall() { echo "$1" | cut -d' ' -f2; }
ratio() { awk -v a="$(wall "$1")" -v b="$(wall "$2")" 'BEGIN { printf "%.3f", a / b }'; }
cat <<EOF
# osk build benchmark

Produced by \`make bench-build\` (\`bench/build.sh\`) on $(date -u +%F), $(nproc) CPUs,
load average $(cut -d' ' -f1-3 /proc/loadavg) at the end: \`osk build\` of a
manifest with a kernel, an init image, an onboot container and four
services, against the floor \`find | cpio -o -H newc | zstd -19 --long=27
--zstd=clog=23 --single-thread\` (zstd-max's parameters) over the same tree.
"warm": store, spool and segment cache warm, no previous output;
"segments dropped": every segment compressed again; "rebuild": after a
one-line change of a \`files\` entry.

\`\`\`
EOF
printf '%-34s %8s %12s %9s\n' "what" "wall s" "peak RSS MB" "size MB"
line "osk build, cold spool+segments" "$cold"
line "osk build, warm" "$warm" "$size_osk"
line "osk build, segments dropped" "$nosegs"
line "osk build, rebuild after 1 line" "$rebuild"
line "osk build, warm, gzip" "$warm_gz" "$size_gz"
line "osk build, zstd-max" "$max" "$size_max"
if [ -n "$lk" ]; then
    line "linuxkit build" "$lk" "$(stat -c %s "$W/lk-out/bench-initrd.img")"
    [ -n "$lk_rebuild" ] && line "linuxkit build, after 1 line" "$lk_rebuild"
fi
line "find|cpio|zstd (floor)" "$flo" "$size_floor"
printf '\nuncompressed tree %s MB\n' "$(mb "$raw")"
printf 'ratios: warm/floor %s, rebuild/floor %s, zstd-max/floor %s' \
    "$(ratio "$warm" "$flo")" "$(ratio "$rebuild" "$flo")" "$(ratio "$max" "$flo")"
if [ -n "$lk" ]; then
    printf ', warm/linuxkit %s' "$(ratio "$warm" "$lk")"
    [ -n "$lk_rebuild" ] && printf ', rebuild/linuxkit rebuild %s' "$(ratio "$rebuild" "$lk_rebuild")"
fi
printf '\n%s\n' "$lk_note"
cat <<'EOF'
```

The default writes one zstd frame per segment (each image placed under
`containers/`, each top-level directory, the loose top-level files) and
keeps each in `STORE/segments` under the hash of its entries and settings,
so a warm build or a rebuild copies what did not change. Segments missing
from the cache are compressed in parallel, each by one thread (so the bytes
do not depend on the machine), as many at once as a 200 MB budget allows.
`zstd-max` is one frame over the whole tree, whose long window also finds
copies across images: the smallest output, compressed whole every time.
EOF
