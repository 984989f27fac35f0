//! The kernel's device announcements (`NETLINK_KOBJECT_UEVENT`): which
//! devices appeared since the last look, without walking sysfs again. A
//! walk of `/sys/devices` is thousands of directory reads even on a small
//! VM, and coldplug would otherwise walk again after every driver it loads.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

/// The kernel's multicast group for uevents (udev rebroadcasts on 2).
const KERNEL_GROUP: u32 = 1;
/// Room for the bursts a bus driver causes (a NIC alone adds a device per
/// queue); an overflow is detected and answered with a sysfs walk.
const RECV_BUFFER: usize = 4 << 20;
/// A uevent is at most a page of `KEY=VALUE` strings (UEVENT_BUFFER_SIZE).
const MAX_MESSAGE: usize = 8192;

/// A socket subscribed to the kernel's uevents.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Subscribes. Everything the kernel announces from now on is queued
    /// until [`Listener::drain_added`] reads it.
    pub fn open() -> io::Result<Listener> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Forcing past rmem_max needs CAP_NET_ADMIN, which PID 1 has; the
        // default size only makes an overflow (and a walk) likelier.
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &RECV_BUFFER);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
        Ok(Listener { fd })
    }

    /// The `MODALIAS` of every device added since the last call. An error
    /// means events may have been lost (the queue overflowed): the caller
    /// must look at sysfs itself.
    pub fn drain_added(&self) -> io::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut buf) {
                Ok((n, from)) => {
                    // Only the kernel (port 0) speaks for devices; a
                    // process allowed to multicast here could otherwise
                    // make init load any module it ships.
                    if from.is_some_and(|a| a.pid() == 0) {
                        if let Some(alias) = added_modalias(&buf[..n]) {
                            out.insert(alias.to_string());
                        }
                    }
                }
                Err(Errno::EAGAIN) => return Ok(out),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The `MODALIAS` of an `add` uevent (`add@/devices/...\0ACTION=add\0...
/// MODALIAS=pci:v...\0`), if it carries one.
pub fn added_modalias(msg: &[u8]) -> Option<&str> {
    let mut fields = msg.split(|b| *b == 0);
    let header = fields.next()?;
    if !header.starts_with(b"add@") {
        return None;
    }
    fields
        .filter_map(|f| f.strip_prefix(b"MODALIAS="))
        .find(|v| !v.is_empty())
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modalias_of_an_add_event_is_read() {
        let msg = b"add@/devices/pci0000:00/0000:00:02.0/virtio0\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio0\0SUBSYSTEM=virtio\0\
MODALIAS=virtio:d00000001v00001AF4\0SEQNUM=1234\0";
        assert_eq!(added_modalias(msg), Some("virtio:d00000001v00001AF4"));
    }

    #[test]
    fn other_events_and_devices_without_an_alias_are_skipped() {
        let bind = b"bind@/devices/pci0000:00/0000:00:02.0\0ACTION=bind\0\
MODALIAS=pci:v00001AF4d00001000\0";
        assert_eq!(added_modalias(bind), None);
        let queue = b"add@/devices/virtual/net/eth0/queues/rx-0\0ACTION=add\0SUBSYSTEM=queues\0";
        assert_eq!(added_modalias(queue), None);
        assert_eq!(added_modalias(b"add@/x\0MODALIAS=\0"), None);
        assert_eq!(added_modalias(b""), None);
    }
}
