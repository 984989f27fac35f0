#!/bin/sh
# Starts a respawning getty on every console= named on the kernel command line.
# INSECURE=true logs root in without a password (as LinuxKit's getty does).

# A root password hash provided by the host wins over the locked default.
if [ -f /hostroot/etc/getty.shadow ]; then
	cp /hostroot/etc/getty.shadow /etc/shadow
	echo >> /etc/shadow
fi

login_opts=""
if [ "$INSECURE" = "true" ]; then
	login_opts="-n -l /usr/bin/autologin"
fi

started=""
for opt in $(cat /proc/cmdline); do
	case "$opt" in
	console=*) ;;
	*) continue ;;
	esac
	spec=${opt#console=}
	tty=${spec%%,*}
	speed=${spec#*,}
	[ "$speed" = "$spec" ] && speed=115200
	speed=${speed%%[!0-9]*}
	case " $started " in *" $tty "*) continue ;; esac
	started="$started $tty"
	if [ ! -c "/dev/$tty" ]; then
		echo "getty: /dev/$tty is not a character device; no getty for it" > /dev/console
		continue
	fi
	echo "getty: starting getty on $tty"
	( while true; do setsid getty $login_opts -L "$speed" "$tty" vt100; sleep 1; done ) &
done
[ -n "$started" ] || { echo "getty: no console= on the kernel command line" > /dev/console; exit 1; }
wait
