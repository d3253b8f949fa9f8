//! Messages on the socket: one header read with its file descriptors, then exactly
//! the payload the header announces (bounded before anything is allocated), and
//! replies sent with theirs.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use super::protocol::{Header, Refusal, Reply, HEADER_SIZE, MAX_MSG_FDS};

/// A message as it came off the socket.
#[derive(Debug)]
pub struct Incoming {
    pub header: Header,
    /// More fds came than [`MAX_MSG_FDS`] (the kernel dropped the rest), or fds came
    /// after the header's first byte: the message is refused.
    pub fd_refusal: Option<Refusal>,
    pub fds: Vec<OwnedFd>,
}

/// What ended reading.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (between messages).
    Closed,
    /// The header cannot be trusted (its size is impossible): answer and disconnect.
    BadHeader(Header, Refusal),
    /// The socket failed, or closed mid-message.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// Read the next message's header and fds into `payload` (resized to the payload).
pub fn read_message(stream: &mut UnixStream, payload: &mut Vec<u8>) -> Result<Incoming, ReadError> {
    let mut head = [0u8; HEADER_SIZE];
    let mut got = 0;
    let mut fds = Vec::new();
    let mut fd_refusal = None;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MSG_FDS))];
    while got < HEADER_SIZE {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut head[got..])];
        let msg = recvmsg(
            stream.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let before = fds.len();
        for cmsg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            fd_refusal = Some(Refusal::new(
                Errno::EINVAL,
                format!("more than {MAX_MSG_FDS} file descriptors in one message (max_msg_fds)"),
            ));
        }
        if got > 0 && fds.len() > before {
            fd_refusal = Some(Refusal::new(
                Errno::EINVAL,
                "file descriptors arrived inside a header".to_string(),
            ));
        }
        if msg.bytes == 0 {
            return Err(if got == 0 {
                ReadError::Closed
            } else {
                ReadError::Io(io::ErrorKind::UnexpectedEof.into())
            });
        }
        got += msg.bytes;
    }
    let header = Header::parse(&head);
    let len = match header.payload_len() {
        Ok(len) => len,
        Err(refusal) => return Err(ReadError::BadHeader(header, refusal)),
    };
    payload.clear();
    payload.resize(len, 0);
    stream.read_exact(payload)?;
    Ok(Incoming {
        header,
        fd_refusal,
        fds,
    })
}

/// Send `header` and `reply` (its fds as SCM_RIGHTS with the first byte).
pub fn send_reply(stream: &UnixStream, header: &Header, reply: &Reply) -> io::Result<()> {
    let head = header.encode();
    let total = head.len() + reply.payload.len();
    let borrowed: Vec<BorrowedFd<'_>> = reply.fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MSG_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other(format!(
            "{} fds do not fit one message",
            borrowed.len()
        )));
    }
    let iov = [IoSlice::new(&head), IoSlice::new(&reply.payload)];
    let sent = sendmsg(stream.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)
        .map_err(io::Error::from)?;
    if sent < total {
        // The rest without fds (they went with the first byte).
        let rest: Vec<u8> = head
            .iter()
            .chain(&reply.payload)
            .skip(sent)
            .copied()
            .collect();
        (&*stream).write_all(&rest)?;
    }
    Ok(())
}
