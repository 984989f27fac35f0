#!/bin/sh
# format.sh [-label LABEL] [DEVICE]
# Creates an ext4 filesystem labelled LABEL (default osk-data) on DEVICE, or
# on the first whole disk that carries no filesystem yet. A disk that already
# has one is left alone, so this is safe to run on every boot.
label=osk-data
while [ $# -gt 0 ]; do
	case "$1" in
	-label) label=$2; shift 2 ;;
	*) device=$1; shift ;;
	esac
done
if busybox blkid | grep -q "LABEL=\"$label\""; then
	echo "format: a filesystem labelled $label exists; nothing to do"
	exit 0
fi
if [ -z "$device" ]; then
	for d in /dev/vd? /dev/sd? /dev/xvd? /dev/nvme?n1; do
		[ -b "$d" ] || continue
		busybox blkid "$d" >/dev/null 2>&1 && continue
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
