#!/bin/sh
# format.sh [-label LABEL] [DEVICE]
# Creates an ext4 filesystem labelled LABEL (default osk-data) on DEVICE, or
# on the first whole disk that is blank. A filesystem with that label already
# present means nothing to do, so this is safe to run on every boot.
# Blank means the first MiB is zeros (no partition table, no superblock):
# Debian's busybox has no blkid applet, and a disk holding anything is never
# formatted.
label=osk-data
while [ $# -gt 0 ]; do
	case "$1" in
	-label) label=$2; shift 2 ;;
	*) device=$1; shift ;;
	esac
done
blank() {
	[ "$(busybox head -c 1048576 "$1" | busybox tr -d '\000' | busybox wc -c)" = 0 ]
}
if existing=$(busybox findfs "LABEL=$label" 2>/dev/null); then
	echo "format: $existing is labelled $label already; nothing to do"
	exit 0
fi
if [ -n "$device" ]; then
	if ! blank "$device"; then
		echo "format: $device is not blank and not labelled $label; leaving it alone" >&2
		exit 1
	fi
else
	for d in /dev/vd? /dev/sd? /dev/xvd? /dev/nvme?n1; do
		[ -b "$d" ] || continue
		blank "$d" || continue
		device=$d
		break
	done
fi
if [ -z "$device" ]; then
	echo "format: no blank disk found" >&2
	exit 1
fi
echo "format: creating ext4 ($label) on $device"
exec mkfs.ext4 -q -F -L "$label" "$device"
