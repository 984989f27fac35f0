#!/bin/sh
# The docker service's main process, under docker-init (tini).
#
# A dockerd that dies (a crash, `kill -9`) is started again here, within a
# second, while its containerd and the containers keep running: dockerd
# finds them again (live-restore in /etc/docker/daemon.json). `oskctl
# restart docker` and shutdown stop the whole service: dockerd first, then
# every process left (containerd, shims, containers) gets SIGTERM, and osk's
# grace period ends with SIGKILL.
stopping=
stop() {
    stopping=1
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid"
    # Everyone but us and docker-init: containers, shims, containerd.
    kill -TERM -1 2>/dev/null
    sleep 2
    exit 0
}
trap stop TERM INT

# Host folders (`osk run qemu --share`) at the paths they have on the host,
# so `docker run -v "$PWD":/src` means the same folder on both sides: the
# table osk-init mounted them from, each mirrored from the machine's root
# (bound at /host) into this namespace, where dockerd resolves binds.
shares=/sys/firmware/qemu_fw_cfg/by_name/opt/org.osk/shares/raw
if [ -r "$shares" ]; then
    tab=$(printf '\t')
    while IFS="$tab" read -r tag mode path; do
        [ -n "$path" ] && [ -d "/host$path" ] || continue
        mkdir -p "$path" && mount --rbind "/host$path" "$path" ||
            echo "docker.sh: share $tag not mirrored at $path" >&2
    done < "$shares"
fi

# The bridge's netfilter hook: dockerd would load it too, but asks first.
/usr/sbin/modprobe -q br_netfilter || echo "docker.sh: br_netfilter did not load" >&2

while :; do
    /usr/sbin/dockerd "$@" &
    pid=$!
    wait "$pid"
    status=$?
    [ -n "$stopping" ] && break
    echo "docker.sh: dockerd exited ($status); starting it again in 1 s" >&2
    sleep 1
done
