//! A socket a process finds open at start, left to it across `exec` by the image it
//! replaced: how `udrv serve` hands its devices, sockets and clients to a newer
//! binary of itself (`udrv upgrade`) without closing anything the kernel would then
//! tear down.
//!
//! The predecessor names the fd on the successor's command line. Taking ownership of
//! an fd by number is only sound if nothing else in the process owns it; this module
//! lets that happen once per process, checks the fd is an open socket, and hands out
//! an owned [`UnixStream`].

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the socket at `fd`, inherited across `exec`. Succeeds once per
/// process; refuses an fd that is not an open socket (a wrong number on the command
/// line) with an error naming it.
pub fn take_inherited_socket(fd: RawFd) -> io::Result<UnixStream> {
    if fd < 3 {
        return Err(io::Error::other(format!(
            "fd {fd} is a standard stream, not an inherited socket"
        )));
    }
    // What the fd is, without owning or borrowing it yet.
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| io::Error::other(format!("fd {fd} is not open ({e}); was it inherited?")))?;
    if !target.to_string_lossy().starts_with("socket:") {
        return Err(io::Error::other(format!(
            "fd {fd} is {}, not a socket",
            target.display()
        )));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the inherited socket was taken already in this process",
        ));
    }
    // SAFETY: `fd` is open (its /proc entry exists) and is a socket the process inherited
    // across exec: nothing in this image opened it or owns it — it is not a standard
    // stream, this process takes an inherited socket only once (TAKEN), and no other
    // code in udrv makes an owned fd out of a number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec again: a later exec must not leak it.
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    Ok(UnixStream::from(owned))
}

/// Leaves `stream` open across the next `exec`, for [`take_inherited_socket`] in the
/// new image.
pub fn keep_across_exec(stream: &UnixStream) -> io::Result<()> {
    nix::fcntl::fcntl(
        stream,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map(drop)
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn only_an_open_socket_is_taken_and_only_once() {
        let file = tempfile::tempfile().unwrap();
        assert!(
            take_inherited_socket(file.as_raw_fd()).is_err(),
            "not a socket"
        );
        assert!(take_inherited_socket(1).is_err(), "stdout");
        let (a, b) = UnixStream::pair().unwrap();
        let raw = a.into_raw_fd();
        let taken = take_inherited_socket(raw).unwrap();
        (&taken).write_all(b"x").unwrap();
        let mut byte = [0u8];
        (&b).read_exact(&mut byte).unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        assert!(
            take_inherited_socket(c.as_raw_fd()).is_err(),
            "a second take"
        );
    }

    use std::io::{Read, Write};
}
