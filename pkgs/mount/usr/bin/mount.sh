#!/bin/sh
# mount.sh [-label LABEL | -device DEV] TARGET
# Mounts the filesystem (ext4) at TARGET, which must be below a shared bind
# of the host (/var here), so the mount is visible to the host and services.
while [ $# -gt 1 ]; do
	case "$1" in
	-label) source="LABEL=$2"; shift 2 ;;
	-device) source=$2; shift 2 ;;
	*) echo "mount: unknown option $1" >&2; exit 2 ;;
	esac
done
target=$1
[ -n "$target" ] || { echo "usage: mount.sh [-label L | -device D] TARGET" >&2; exit 2; }
[ -n "$source" ] || source="LABEL=osk-data"
case "$source" in
LABEL=*) dev=$(busybox findfs "$source") || { echo "mount: no filesystem with $source" >&2; exit 1; } ;;
*) dev=$source ;;
esac
mkdir -p "$target"
echo "mount: $dev on $target"
exec busybox mount -t ext4 "$dev" "$target"
