//! `EventFd`: the counter the kernel signals for an interrupt. Non-blocking, so it sits
//! in a mio event loop; its fd can also be duplicated and handed to another process
//! (SCM_RIGHTS) or to KVM as an irqfd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub struct EventFd(NixEventFd);

impl EventFd {
    /// A new eventfd with count 0.
    pub fn new() -> io::Result<EventFd> {
        let fd = NixEventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(EventFd(fd))
    }

    /// Take the pending count, resetting it to 0; `None` if nothing is pending.
    pub fn read(&self) -> io::Result<Option<u64>> {
        match self.0.read() {
            Ok(n) => Ok(Some(n)),
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Add 1 to the count (what the kernel does when the interrupt fires).
    pub fn signal(&self) -> io::Result<()> {
        self.0.write(1).map(drop).map_err(io::Error::from)
    }

    /// Wait up to `timeout` for the count to become non-zero, then take it. `None` on
    /// timeout. For tests and simple polling drivers; event loops register the fd.
    pub fn wait(&self, timeout: Duration) -> io::Result<Option<u64>> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).map_err(io::Error::other)?;
        let mut fds = [PollFd::new(self.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(None),
                Ok(_) => return self.read(),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A second fd for the same eventfd, to hand to another process or to an irqfd.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.as_fd().try_clone_to_owned()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<EventFd> for OwnedFd {
    fn from(e: EventFd) -> OwnedFd {
        e.0.into()
    }
}

impl Source for EventFd {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    #[test]
    fn counts_accumulate_and_reads_reset_them() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.read().unwrap(), None);
        e.signal().unwrap();
        e.signal().unwrap();
        assert_eq!(e.read().unwrap(), Some(2));
        assert_eq!(e.read().unwrap(), None);
    }

    #[test]
    fn wait_times_out_then_sees_a_signal_from_a_clone() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.wait(Duration::from_millis(10)).unwrap(), None);
        let dup = e.try_clone_fd().unwrap();
        nix::unistd::write(&dup, &1u64.to_ne_bytes()).unwrap();
        assert_eq!(e.wait(Duration::from_secs(5)).unwrap(), Some(1));
    }

    #[test]
    fn registers_with_mio() {
        let mut poll = Poll::new().unwrap();
        let mut e = EventFd::new().unwrap();
        poll.registry()
            .register(&mut e, Token(7), Interest::READABLE)
            .unwrap();
        e.signal().unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let tokens: Vec<_> = events.iter().map(|ev| ev.token()).collect();
        assert_eq!(tokens, vec![Token(7)]);
        assert_eq!(e.read().unwrap(), Some(1));
        poll.registry().deregister(&mut e).unwrap();
    }

    #[test]
    fn converts_into_an_owned_fd_that_still_works() {
        let e = EventFd::new().unwrap();
        e.signal().unwrap();
        let fd: OwnedFd = e.into();
        let mut b = [0u8; 8];
        nix::unistd::read(&fd, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 1);
    }
}
