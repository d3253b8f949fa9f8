//! Messages on the socket: read buffered with their file descriptors (the size a
//! header announces is bounded before anything is allocated for it), and replies
//! sent with theirs.

use std::io::{self, IoSlice, IoSliceMut, Write};
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
    /// The message's header.
    pub header: Header,
    /// More fds came than [`MAX_MSG_FDS`] (the kernel dropped the rest), or fds came
    /// after the header's first byte: the message is refused.
    pub fd_refusal: Option<Refusal>,
    /// The fds that came with the message, in order.
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

/// Bytes asked of the kernel per read: many small messages (a burst of posted
/// writes) come in one call.
const READ_CHUNK: usize = 64 * 1024;

/// File descriptors that came with one read, and where in the buffer that read's
/// bytes lie.
#[derive(Debug)]
struct FdRead {
    start: usize,
    end: usize,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// Reads messages off a stream socket, usually one read per message.
///
/// Reads are buffered, so a read may hold the end of one message and the start of
/// the next; the file descriptors it brought must go to the right message. The kernel
/// gives them with the bytes of the `sendmsg` that carried them, and ends a read right
/// after those bytes. A client sends a message's fds with its first bytes, so a
/// read's fds belong to the last message whose header starts in it. fds that arrive
/// in a read where no header starts (sent in the middle of a message) refuse the
/// message they arrived in.
#[derive(Debug)]
pub struct MessageReader {
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    pending: Vec<FdRead>,
}

impl Default for MessageReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageReader {
    /// An empty reader with a 64 KiB buffer.
    pub fn new() -> MessageReader {
        MessageReader {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            pending: Vec::new(),
        }
    }

    /// Whether bytes of a next message are already read (a wait for the socket to
    /// become readable would miss them).
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Read until `want` unparsed bytes are buffered.
    fn fill(&mut self, stream: &UnixStream, want: usize) -> Result<(), ReadError> {
        if self.start + want > self.buf.len() {
            // Move what is unparsed to the front; grow only for a large message
            // (bounded by the header check before this is called).
            self.buf.copy_within(self.start..self.end, 0);
            for r in &mut self.pending {
                r.start = r.start.saturating_sub(self.start);
                r.end -= self.start;
            }
            self.end -= self.start;
            self.start = 0;
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MSG_FDS))];
        while self.end - self.start < want {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
            let msg = recvmsg(
                stream.as_fd(),
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            for cmsg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = cmsg {
                    fds.extend(received);
                }
            }
            let truncated = msg.flags.contains(ReturnFlags::CTRUNC);
            if !fds.is_empty() || truncated {
                self.pending.push(FdRead {
                    start: self.end,
                    end: self.end + msg.bytes,
                    fds,
                    truncated,
                });
            }
            if msg.bytes == 0 {
                return Err(if self.end == self.start {
                    ReadError::Closed
                } else {
                    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
            self.end += msg.bytes;
        }
        Ok(())
    }

    /// The next message: its header, payload and fds.
    pub fn next(&mut self, stream: &UnixStream) -> Result<(Incoming, &[u8]), ReadError> {
        self.fill(stream, HEADER_SIZE)?;
        let mut head = [0u8; HEADER_SIZE];
        head.copy_from_slice(&self.buf[self.start..self.start + HEADER_SIZE]);
        let header = Header::parse(&head);
        let len = match header.payload_len() {
            Ok(len) => len,
            Err(refusal) => return Err(ReadError::BadHeader(header, refusal)),
        };
        self.fill(stream, HEADER_SIZE + len)?;
        let (m, e) = (self.start, self.start + HEADER_SIZE + len);
        let mut fds = Vec::new();
        let mut fd_refusal = None;
        // A read that ends within this message started no later message: its fds
        // are this message's.
        while self.pending.first().is_some_and(|r| r.end <= e) {
            let r = self.pending.remove(0);
            if r.start > m {
                fd_refusal = Some(Refusal::new(
                    Errno::EINVAL,
                    "file descriptors arrived inside a message, not with its start".to_string(),
                ));
            }
            if r.truncated {
                fd_refusal = Some(Refusal::new(
                    Errno::EINVAL,
                    format!(
                        "more than {MAX_MSG_FDS} file descriptors in one message (max_msg_fds)"
                    ),
                ));
            }
            fds.extend(r.fds);
        }
        self.start = e;
        let payload_at = m + HEADER_SIZE;
        if self.start == self.end {
            // Everything read is parsed (and so no read's fds are pending): the next
            // read starts at the front.
            self.start = 0;
            self.end = 0;
        }
        let payload = &self.buf[payload_at..e];
        Ok((
            Incoming {
                header,
                fd_refusal,
                fds,
            },
            payload,
        ))
    }
}

/// Send `header` and `reply` (its fds as SCM_RIGHTS with the first byte).
pub fn send_reply(stream: &UnixStream, header: &Header, reply: &Reply) -> io::Result<()> {
    let head = header.encode();
    let total = head.len() + reply.payload.len();
    let iov = [IoSlice::new(&head), IoSlice::new(&reply.payload)];
    let sent = if reply.fds.is_empty() {
        // Most replies: a plain writev, no ancillary data to set up.
        (&*stream).write_vectored(&iov)?
    } else {
        let borrowed: Vec<BorrowedFd<'_>> = reply.fds.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MSG_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(io::Error::other(format!(
                "{} fds do not fit one message",
                borrowed.len()
            )));
        }
        sendmsg(stream.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL).map_err(io::Error::from)?
    };
    if sent < total {
        // The rest, without fds (they went with the first byte).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(command: u16, payload: &[u8]) -> (Header, Vec<u8>) {
        let header = Header {
            id: command,
            command,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: 0,
            error: 0,
        };
        (header, payload.to_vec())
    }

    fn send(stream: &UnixStream, command: u16, payload: &[u8], fds: Vec<OwnedFd>) {
        let (header, payload) = message(command, payload);
        send_reply(stream, &header, &Reply { payload, fds }).unwrap();
    }

    fn fd() -> OwnedFd {
        OwnedFd::from(udriver::vfio::EventFd::new().unwrap())
    }

    #[test]
    fn vfio_user_buffered_reads_give_each_message_its_own_fds() {
        let (client, server) = UnixStream::pair().unwrap();
        // Pipelined before the server reads: one read takes several messages.
        send(&client, 13, &[], Vec::new());
        send(&client, 2, &[7u8; 32], vec![fd()]);
        send(&client, 10, &[1u8; 20], Vec::new());
        send(&client, 8, &[2u8; 20], vec![fd(), fd()]);
        let mut reader = MessageReader::new();
        let expect = [(13u16, 0usize, 0usize), (2, 32, 1), (10, 20, 0), (8, 20, 2)];
        for (command, len, nfds) in expect {
            let (incoming, payload) = reader.next(&server).unwrap();
            assert_eq!(incoming.header.command, command);
            assert_eq!(payload.len(), len);
            assert_eq!(incoming.fds.len(), nfds, "command {command}");
            assert!(incoming.fd_refusal.is_none());
        }
        drop(client);
        assert!(matches!(reader.next(&server), Err(ReadError::Closed)));
    }

    #[test]
    fn vfio_user_a_message_cut_short_ends_the_stream_with_an_error() {
        let (client, server) = UnixStream::pair().unwrap();
        (&client)
            .write_all(&message(9, &[0u8; 16]).0.encode())
            .unwrap();
        drop(client);
        let mut reader = MessageReader::new();
        assert!(matches!(reader.next(&server), Err(ReadError::Io(_))));
    }
}
