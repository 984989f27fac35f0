#!/bin/sh
# swap.sh --path FILE --size SIZE [--if-memory-below SIZE]
# Makes FILE a swap file of SIZE (K, M, G or T; binary units) and enables it.
# With --if-memory-below, only when MemTotal is below that. Safe on every
# boot: the file is made once, and a swap file already there is only
# enabled (or left alone when it already is). FILE's folder must be on a
# mounted disk: below the tmpfs /var the "swap" would be RAM itself.
bb=busybox
die() { echo "swap: $*" >&2; exit 1; }
usage() { echo "usage: swap.sh --path FILE --size SIZE[K|M|G] [--if-memory-below SIZE[K|M|G]]" >&2; exit 2; }

# bytes SIZE: SIZE with an optional K, M, G or T suffix, in bytes; empty if bad.
bytes() {
	case "$1" in
	*[!0-9KMGTkmgt]* | "" | [KMGTkmgt]* | *[KMGTkmgt]?*) return ;;
	*[Kk]) echo $((${1%?} * 1024)) ;;
	*[Mm]) echo $((${1%?} * 1048576)) ;;
	*[Gg]) echo $((${1%?} * 1073741824)) ;;
	*[Tt]) echo $((${1%?} * 1099511627776)) ;;
	*) echo "$1" ;;
	esac
}

while [ $# -gt 0 ]; do
	[ $# -ge 2 ] || usage
	case "$1" in
	--path) path=$2 ;;
	--size) size_arg=$2 ;;
	--if-memory-below) below_arg=$2 ;;
	*) echo "swap: unknown option $1" >&2; usage ;;
	esac
	shift 2
done
[ -n "$path" ] && [ -n "$size_arg" ] || usage
case "$path" in
/*) ;;
*) die "--path $path: give an absolute path" ;;
esac
size=$(bytes "$size_arg")
[ -n "$size" ] && [ "$size" -gt 0 ] || die "--size $size_arg: give a size such as 512M or 1G"
# Below a page or two there is nothing to swap to; mkswap refuses it anyway.
[ "$size" -ge 1048576 ] || die "--size $size_arg: a swap file needs at least 1M"

if [ -n "$below_arg" ]; then
	below=$(bytes "$below_arg")
	[ -n "$below" ] || die "--if-memory-below $below_arg: give a size such as 4G"
	kb=$($bb awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)
	[ -n "$kb" ] || die "no MemTotal in /proc/meminfo"
	mem=$((kb * 1024))
	if [ "$mem" -ge "$below" ]; then
		echo "swap: $((kb / 1024)) MiB of memory is not below $below_arg; no swap file"
		exit 0
	fi
fi

dir=$($bb dirname "$path")
[ -d "$dir" ] || die "$dir (the folder of $path) does not exist; mount the data disk there first"
# The filesystem holding the folder must be a disk, not tmpfs (RAM).
fstype=$($bb stat -f -c %T "$dir")
source=$($bb df -P "$dir" | $bb awk 'NR == 2 { print $1 }')
case "$fstype:$source" in
tmpfs:* | ramfs:* | *:[!/]* | *:)
	die "$dir is not on a mounted disk ($fstype, $source): a swap file there would use RAM; mount a data disk on $dir or a folder above it (pkgs/format, pkgs/mount) first" ;;
esac

# signature FILE: true if FILE has mkswap's SWAPSPACE2 at the end of its
# first page (4 KiB, or 64 KiB on some arm64 kernels).
signature() {
	for page in 4096 16384 65536; do
		[ "$($bb dd if="$1" bs=1 skip=$((page - 10)) count=10 2>/dev/null)" = SWAPSPACE2 ] && return 0
	done
	return 1
}

if [ -e "$path" ]; then
	[ -f "$path" ] || die "$path exists and is not a regular file; remove it or choose another --path"
	have=$($bb stat -c %s "$path")
	[ "$have" = "$size" ] || die "$path exists with $have bytes, not $size ($size_arg); remove it (swapoff first if in use) to make it anew"
	signature "$path" || die "$path exists and is not a swap file; remove it or choose another --path"
	echo "swap: $path is a swap file of $size_arg already"
else
	# Built beside its final name and renamed when done: a power cut leaves a
	# stray .tmp, never a half-made swap file at $path.
	tmp=$path.tmp
	$bb rm -f "$tmp"
	umask 077
	echo "swap: creating $path ($size_arg) on $source"
	# swapon refuses files with holes: allocate every block.
	if ! $bb fallocate -l "$size" "$tmp" 2>/dev/null; then
		$bb rm -f "$tmp"
		$bb dd if=/dev/zero of="$tmp" bs=1048576 count=$((size / 1048576)) 2>/dev/null ||
			{ $bb rm -f "$tmp"; die "cannot write $tmp (is the disk full?)"; }
		rest=$((size % 1048576))
		if [ "$rest" -gt 0 ]; then
			$bb dd if=/dev/zero bs="$rest" count=1 2>/dev/null >>"$tmp" ||
				{ $bb rm -f "$tmp"; die "cannot write $tmp (is the disk full?)"; }
		fi
	fi
	$bb chmod 0600 "$tmp"
	$bb mkswap "$tmp" >/dev/null || { $bb rm -f "$tmp"; die "mkswap $tmp failed"; }
	$bb sync
	$bb mv "$tmp" "$path" || die "cannot rename $tmp to $path"
fi
$bb chmod 0600 "$path"
# Already on (a second run): the kernel says EBUSY. /proc/swaps is no help:
# it names a file another container enabled relative to that container's
# (gone) mounts.
if ! err=$($bb swapon "$path" 2>&1); then
	case "$err" in
	*busy*) echo "swap: $path is in use already"; exit 0 ;;
	esac
	die "swapon $path failed: $err"
fi
echo "swap: $path on ($((size / 1048576)) MiB)"
