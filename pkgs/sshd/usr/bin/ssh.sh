#!/bin/sh
# Generates missing host keys (never baked into the image), picks up
# authorized keys from the boot config, then runs sshd in the foreground.
set -e
mkdir -p /run/sshd /root/.ssh
chmod 0700 /root/.ssh
for t in ed25519 ecdsa rsa; do
	k=/etc/ssh/ssh_host_${t}_key
	[ -f "$k" ] || ssh-keygen -q -t "$t" -N "" -f "$k"
done
if [ -f /run/config/ssh/authorized_keys ]; then
	cp /run/config/ssh/authorized_keys /root/.ssh/authorized_keys
	chmod 0600 /root/.ssh/authorized_keys
fi
exec /usr/sbin/sshd -D -e
