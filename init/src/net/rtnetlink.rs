//! Raw rtnetlink and interface ioctls: the leaf behind [`super::Links`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::Links;

/// [`Links`] on the running kernel.
pub struct Rtnetlink;

impl Links for Rtnetlink {
    fn delete_link(&self, name: &str) -> io::Result<()> {
        delete_link(name)
    }
    fn create_veth(&self, name: &str, peer: &str, pid: u32) -> io::Result<()> {
        create_veth(name, peer, pid)
    }
    fn move_link(&self, name: &str, pid: u32) -> io::Result<()> {
        move_link(name, pid)
    }
}

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd or -1; we own it on success.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Brings an interface up (SIOCSIFFLAGS |= IFF_UP).
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name);
    // The request's C type differs by libc (glibc: unsigned long, musl: int).
    let (get, set) = (
        libc::SIOCGIFFLAGS as libc::Ioctl,
        libc::SIOCSIFFLAGS as libc::Ioctl,
    );
    // SAFETY: the ioctls read/write the ifreq we own, sized as the kernel expects.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), get, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), set, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    ifr
}

// rtnetlink constants not all exported by libc.
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;

/// A netlink attribute builder (nested attributes patch their length).
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn align(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.0
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.align();
    }
    fn str(&mut self, ty: u16, s: &str) {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(ty, &d);
    }
    fn begin(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }
    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn ifinfo(&mut self, index: i32) {
        // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32
        let mut h = [0u8; 16];
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        self.0.extend_from_slice(&h);
    }
}

/// Sends one RTM_NEWLINK request and checks the kernel's ack.
fn newlink(body: Msg, flags: u16) -> io::Result<()> {
    request(libc::RTM_NEWLINK, body, flags)
}

/// Deletes a root-namespace link (and so its veth peer), if it exists.
fn delete_link(name: &str) -> io::Result<()> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(());
    };
    let mut m = Msg::default();
    m.ifinfo(index as i32);
    request(libc::RTM_DELLINK, m, 0)
}

fn request(msg_type: u16, body: Msg, flags: u16) -> io::Result<()> {
    let sock = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    let mut m = Vec::with_capacity(16 + body.0.len());
    m.extend_from_slice(&((16 + body.0.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16 | flags).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&body.0);
    // SAFETY: sockaddr_nl is plain old data; zero means "the kernel".
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: buffers and address are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            m.as_ptr().cast(),
            m.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        return Err(io::Error::last_os_error());
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let err = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
    }
    Ok(())
}

/// Creates a veth pair: `name` inside the network namespace of `pid`,
/// `peer` in the root namespace.
fn create_veth(name: &str, peer: &str, pid: u32) -> io::Result<()> {
    let mut m = Msg::default();
    m.ifinfo(0);
    m.str(IFLA_IFNAME, peer);
    let li = m.begin(IFLA_LINKINFO);
    m.str(IFLA_INFO_KIND, "veth");
    let data = m.begin(IFLA_INFO_DATA);
    let p = m.begin(VETH_INFO_PEER);
    m.ifinfo(0);
    m.str(IFLA_IFNAME, name);
    m.attr(IFLA_NET_NS_PID, &pid.to_ne_bytes());
    m.end(p);
    m.end(data);
    m.end(li);
    newlink(m, (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16)
}

/// Moves an existing root-namespace interface into the namespace of `pid`.
fn move_link(name: &str, pid: u32) -> io::Result<()> {
    let index =
        nix::net::if_::if_nametoindex(name).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let mut m = Msg::default();
    m.ifinfo(index as i32);
    m.attr(IFLA_NET_NS_PID, &pid.to_ne_bytes());
    newlink(m, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_carry_their_length() {
        let mut m = Msg::default();
        let at = m.begin(IFLA_LINKINFO);
        m.str(IFLA_INFO_KIND, "veth");
        m.end(at);
        // 4 (nest header) + 4 (attr header) + "veth\0" padded to 8.
        assert_eq!(u16::from_ne_bytes([m.0[0], m.0[1]]), 16);
        assert_eq!(m.0.len(), 16);
    }
}
