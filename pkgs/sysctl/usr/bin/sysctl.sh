#!/bin/sh
# Applies every /etc/sysctl.d/*.conf in order; a key this kernel lacks is
# reported and skipped rather than failing the boot.
status=0
for f in /etc/sysctl.d/*.conf; do
	[ -f "$f" ] || continue
	grep -v '^[[:space:]]*\(#\|$\)' "$f" | while IFS='=' read -r key value; do
		key=$(echo $key)
		value=$(echo $value)
		busybox sysctl -w "$key=$value" >/dev/null || echo "sysctl: cannot set $key (from $f)"
	done
done
exit $status
