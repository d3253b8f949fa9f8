//! What one image of `udrv serve` hands the next when it upgrades: a JSON document
//! and the fds it names, sent over a UNIX socket.
//!
//! Each layer that carries something (the daemon, a frontend, a vfio-user session,
//! its DMA table) puts its fds into an [`FdBag`] and records the [`FdSlot`]s in its
//! own serde state; its successor takes them out by slot. The bag crosses the socket
//! in chunks of [`FDS_PER_MESSAGE`] fds (the kernel passes at most 253 per message),
//! after the document.
//!
//! ```text
//! u64 document length (little endian), the document (JSON)
//! u32 fd count n, then n/FDS_PER_MESSAGE messages of one byte each carrying the fds
//! ```

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Fds sent with one message.
pub const FDS_PER_MESSAGE: usize = 200;

/// Largest document a successor accepts (a daemon with many devices and mappings
/// stays far below).
pub const MAX_DOCUMENT: u64 = 64 << 20;

/// Most fds a successor accepts.
pub const MAX_FDS: u32 = 1 << 16;

/// Where an fd sits in an [`FdBag`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdSlot(pub u32);

/// Why a handover could not be sent, received or taken apart.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The socket failed.
    #[error("handover socket: {0}")]
    Io(#[from] io::Error),
    /// The document or the fds are not what the sender said.
    #[error("handover: {0}")]
    Malformed(String),
    /// A served function could not be handed over or resumed.
    #[error(transparent)]
    Function(#[from] crate::passthrough::PassthroughError),
}

/// The fds a handover carries, by slot.
#[derive(Debug, Default)]
pub struct FdBag {
    fds: Vec<Option<OwnedFd>>,
}

impl FdBag {
    /// An empty bag.
    pub fn new() -> FdBag {
        FdBag::default()
    }

    /// Carries `fd`; its slot goes into the carrier's state.
    pub fn put(&mut self, fd: OwnedFd) -> FdSlot {
        self.fds.push(Some(fd));
        FdSlot((self.fds.len() - 1) as u32)
    }

    /// The fd in `slot`; each slot is taken once.
    pub fn take(&mut self, slot: FdSlot) -> Result<OwnedFd, HandoverError> {
        self.fds
            .get_mut(slot.0 as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                HandoverError::Malformed(format!(
                    "fd slot {} is empty or taken already ({} fds carried)",
                    slot.0,
                    self.fds.len()
                ))
            })
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether nothing is carried.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// Sends `document` and every fd of `bag` (a taken slot cannot be sent).
pub fn send(stream: &UnixStream, document: &[u8], bag: &FdBag) -> Result<(), HandoverError> {
    let fds: Vec<BorrowedFd<'_>> = bag
        .fds
        .iter()
        .map(|fd| {
            fd.as_ref()
                .map(AsFd::as_fd)
                .ok_or_else(|| HandoverError::Malformed("a slot was taken before sending".into()))
        })
        .collect::<Result<_, _>>()?;
    let mut writer = stream;
    writer.write_all(&(document.len() as u64).to_le_bytes())?;
    writer.write_all(document)?;
    writer.write_all(&(fds.len() as u32).to_le_bytes())?;
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
            return Err(HandoverError::Malformed(format!(
                "{} fds do not fit one message",
                chunk.len()
            )));
        }
        let sent = sendmsg(
            stream.as_fd(),
            &[IoSlice::new(&[0])],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from)?;
        if sent != 1 {
            return Err(HandoverError::Malformed(
                "a chunk of fds was not sent".into(),
            ));
        }
    }
    Ok(())
}

/// Receives what [`send`] sent.
pub fn receive(stream: &UnixStream) -> Result<(Vec<u8>, FdBag), HandoverError> {
    let mut reader = stream;
    let mut len = [0u8; 8];
    reader.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_DOCUMENT {
        return Err(HandoverError::Malformed(format!(
            "a {len}-byte document (at most {MAX_DOCUMENT})"
        )));
    }
    let mut document = vec![0u8; len as usize];
    reader.read_exact(&mut document)?;
    let mut count = [0u8; 4];
    reader.read_exact(&mut count)?;
    let count = u32::from_le_bytes(count);
    if count > MAX_FDS {
        return Err(HandoverError::Malformed(format!(
            "{count} fds (at most {MAX_FDS})"
        )));
    }
    let mut bag = FdBag::new();
    while bag.len() < count as usize {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let msg = recvmsg(
            stream.as_fd(),
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        if msg.bytes == 0 {
            return Err(HandoverError::Malformed(format!(
                "the sender closed after {} of {count} fds",
                bag.len()
            )));
        }
        let before = bag.len();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    bag.put(fd);
                }
            }
        }
        if bag.len() == before {
            return Err(HandoverError::Malformed(
                "a chunk arrived without its fds (out of fds? see ulimit -n)".into(),
            ));
        }
    }
    if bag.len() != count as usize {
        return Err(HandoverError::Malformed(format!(
            "{} fds arrived, {count} were announced",
            bag.len()
        )));
    }
    Ok((document, bag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    #[test]
    fn a_document_and_hundreds_of_fds_cross_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut bag = FdBag::new();
        let mut slots = Vec::new();
        let mut files = Vec::new();
        for i in 0..450u32 {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&i.to_le_bytes()).unwrap();
            slots.push(bag.put(file.try_clone().unwrap().into()));
            files.push(file);
        }
        let document = br#"{"devices":[]}"#.to_vec();
        let sender = std::thread::spawn(move || send(&a, &document, &bag));
        let (got, mut received) = receive(&b).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got, br#"{"devices":[]}"#);
        assert_eq!(received.len(), 450);
        for (i, slot) in slots.iter().enumerate().rev() {
            let mut file = std::fs::File::from(received.take(*slot).unwrap());
            file.rewind().unwrap();
            let mut n = [0u8; 4];
            file.read_exact(&mut n).unwrap();
            assert_eq!(u32::from_le_bytes(n), i as u32, "slot {i}");
        }
        assert!(received.take(slots[3]).is_err(), "a slot is taken once");
    }

    #[test]
    fn a_lying_or_truncated_sender_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&(MAX_DOCUMENT + 1).to_le_bytes()).unwrap();
        assert!(matches!(receive(&b), Err(HandoverError::Malformed(_))));
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&2u64.to_le_bytes()).unwrap();
        (&a).write_all(b"{}").unwrap();
        (&a).write_all(&3u32.to_le_bytes()).unwrap();
        (&a).write_all(&[0]).unwrap();
        drop(a);
        assert!(matches!(receive(&b), Err(HandoverError::Malformed(_))));
    }
}
