//! An AF_PACKET raw socket bound to one interface: frames written to it go through the
//! kernel's network stack (qdisc, driver) exactly as built. The kernel's e1000 driver
//! sends them in the transmit benchmark.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    sendto, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike,
};

/// A raw packet socket that sends on one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    to: LinkAddr,
}

impl PacketSocket {
    /// A socket sending on interface `ifname` (which must be up).
    pub fn open(ifname: &str) -> Result<PacketSocket> {
        let index = nix::net::if_::if_nametoindex(ifname)
            .with_context(|| format!("no interface {ifname}"))?;
        // Protocol 0: this socket only sends, it receives nothing.
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("socket(AF_PACKET, SOCK_RAW)")?;
        let sll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: 0,
            sll_ifindex: index as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `sll` is a fully initialised sockaddr_ll and the length passed is its
        // size; from_raw copies it and keeps no pointer.
        let to = unsafe {
            LinkAddr::from_raw(
                (&sll as *const libc::sockaddr_ll).cast(),
                Some(std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t),
            )
        }
        .context("building the sockaddr_ll")?;
        Ok(PacketSocket { fd, to })
    }

    /// Sends one frame (Ethernet header included). False when the device's queue is
    /// full (ENOBUFS): offer it again.
    pub fn send(&self, frame: &[u8]) -> Result<bool> {
        use std::os::fd::AsRawFd;
        match sendto(self.fd.as_raw_fd(), frame, &self.to, MsgFlags::empty()) {
            Ok(_) => Ok(true),
            Err(Errno::ENOBUFS) | Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e).context("sendto on the packet socket"),
        }
    }
}
