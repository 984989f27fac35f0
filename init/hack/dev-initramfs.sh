#!/bin/sh
# Developer tool: builds a hand-made initramfs around a static osk-init, to
# boot it in QEMU without the osk builder. Needs root (mknod, chown), apt-get,
# cpio, busybox-static. See init/README.md ("Booting it by hand").
#
#   init/hack/dev-initramfs.sh OUTDIR OSK_INIT OSKCTL
#
# Writes OUTDIR/kernel and OUTDIR/initrd.img. Debian packages are cached in
# OUTDIR/debs (apt-get download, from the host's configured apt sources).
set -eu
OUT=${1:?usage: $0 OUTDIR OSK_INIT OSKCTL}
INIT=${2:?osk-init binary}
CTL=${3:?oskctl binary}
INIT=$(realpath "$INIT"); CTL=$(realpath "$CTL")
mkdir -p "$OUT/debs"
OUT=$(cd "$OUT" && pwd)
DEBS=$OUT/debs

cd "$DEBS"
ls linux-image-6.1.0-*-amd64_*.deb >/dev/null 2>&1 || {
    # The newest plain amd64 kernel the apt sources know about.
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
    apt-get download "$pkg"
}
ls containerd_*.deb >/dev/null 2>&1 || apt-get download containerd
ls runc_*.deb >/dev/null 2>&1 || apt-get download runc
rm -rf "$OUT/x"; mkdir -p "$OUT/x"
for d in linux-image-6.1.0-*-amd64_*.deb containerd_*.deb runc_*.deb; do dpkg-deb -x "$d" "$OUT/x"; done
KVER=$(ls "$OUT/x/lib/modules")
cp "$OUT/x/boot/vmlinuz-$KVER" "$OUT/kernel"

R=$OUT/root
rm -rf "$R"; mkdir -p "$R"
cd "$R"
mkdir -p bin usr/bin usr/sbin lib64 lib/x86_64-linux-gnu etc/osk dev proc sys run tmp var containers/onboot containers/services containers/onshutdown
mknod -m 600 dev/console c 5 1
install -m 755 "$INIT" init
install -m 755 "$CTL" usr/bin/oskctl
cp /bin/busybox bin/busybox
ln -s busybox bin/sh
for b in containerd containerd-shim-runc-v2 ctr; do cp "$OUT/x/usr/bin/$b" usr/bin/; done
cp "$OUT/x/usr/sbin/runc" usr/sbin/runc
ln -s ../sbin/runc usr/bin/runc
# Shared libraries of the Debian binaries, from the host (same release).
for lib in $(ldd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/sbin/runc usr/bin/ctr | awk '/=>/ {print $3}' | sort -u); do
    cp -L "$lib" lib/x86_64-linux-gnu/
done
cp -L /lib64/ld-linux-x86-64.so.2 lib64/
echo "127.0.0.1 localhost" > etc/hosts
: > etc/resolv.conf
echo osk-dev > etc/hostname

# Modules: virtio for QEMU, button+evdev for the ACPI power button, veth.
MODS="virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_net net_failover failover virtio_blk virtio_console virtio_rng button evdev veth"
for m in $MODS; do
    f=$(find "$OUT/x/lib/modules/$KVER" \( -name "$m.ko" -o -name "$(echo "$m" | tr _ -).ko" \) | head -1)
    [ -n "$f" ] || { echo "module $m not found" >&2; exit 1; }
    dest=lib/modules/$KVER/${f#"$OUT/x/lib/modules/$KVER/"}
    mkdir -p "$(dirname "$dest")"; cp "$f" "$dest"
done
printf '%s\n' $MODS > etc/osk/modules

# A LinuxKit-like OCI spec: host network, own pid/ipc/uts/mount namespaces.
spec() { # spec ARGS_JSON [extra namespaces json]
    cat <<JSON
{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0},"args":$1,
 "env":["PATH=/bin"],"cwd":"/","capabilities":{"bounding":["CAP_NET_BIND_SERVICE","CAP_KILL","CAP_CHOWN","CAP_SETUID","CAP_SETGID","CAP_NET_ADMIN","CAP_NET_RAW"],
 "effective":["CAP_NET_BIND_SERVICE","CAP_KILL","CAP_CHOWN","CAP_SETUID","CAP_SETGID","CAP_NET_ADMIN","CAP_NET_RAW"],"permitted":["CAP_NET_BIND_SERVICE","CAP_KILL","CAP_CHOWN","CAP_SETUID","CAP_SETGID","CAP_NET_ADMIN","CAP_NET_RAW"]},
 "noNewPrivileges":true},
 "root":{"path":"rootfs","readonly":true},"hostname":"osk",
 "mounts":[{"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
  {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
  {"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid","nodev","mode=1777"]},
  {"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]}],
 "linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}${2:-}],
  "maskedPaths":["/proc/kcore","/proc/keys","/proc/timer_list"],"readonlyPaths":["/proc/sys","/proc/sysrq-trigger"]}}
JSON
}
bundle() { # bundle DIR ARGS_JSON RUNTIME_JSON [extra namespaces]
    mkdir -p "$1/rootfs/bin" "$1/rootfs/www" "$1/rootfs/proc" "$1/rootfs/dev" "$1/rootfs/sys" "$1/rootfs/tmp"
    # One busybox for all bundles: hard links, as the osk builder stores images.
    ln "$R/bin/busybox" "$1/rootfs/bin/busybox"
    ln -s busybox "$1/rootfs/bin/sh"
    spec "$2" "${4:-}" > "$1/config.json"
    echo "$3" > "$1/runtime.json"
}
bundle containers/onboot/000-hello '["/bin/busybox","sh","-c","echo hello from onboot; busybox uname -r"]' '{"timeout":20}'
# QEMU user networking without a DHCP client: static address.
bundle containers/onboot/001-net '["/bin/busybox","sh","-c","busybox ip link set eth0 up && busybox ip addr add 10.0.2.15/24 dev eth0 && busybox ip route add default via 10.0.2.2 && busybox ip addr show eth0"]' '{}'
bundle containers/onshutdown/000-bye '["/bin/busybox","echo","bye from onshutdown"]' '{}'
bundle containers/services/web '["/bin/busybox","httpd","-f","-v","-p","8080","-h","/www"]' '{"restart":"always","stopGracePeriod":3}'
echo "hello from osk" > containers/services/web/rootfs/www/index.html
bundle containers/services/ticker '["/bin/busybox","sh","-c","while true; do echo tick; sleep 5; done"]' \
    '{"dependsOn":["web"],"mkdir":["/var/lib/ticker"],"cgroups":["osk/ticker"],"bindNS":{"net":"/run/netns/ticker"},"interfaces":[{"name":"eth1","add":"veth","peer":"veth-ticker"}]}' \
    ',{"type":"network"}'

find . | LC_ALL=C sort | cpio --quiet -o -H newc -R +0:+0 > "$OUT/initrd.img"
echo "$OUT/kernel $OUT/initrd.img ($(du -h "$OUT/initrd.img" | cut -f1))"
