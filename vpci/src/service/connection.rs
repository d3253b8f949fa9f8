//! One client of the control socket, on the daemon's side: bytes in, lines out of them,
//! responses queued until the socket takes them.

use std::io::{self, Read, Write};

use mio::net::UnixStream;

use super::control::ProtocolError;
use super::control_socket::Peer;
use super::framing::LineBuffer;

/// Answers a client may leave unread before it is disconnected: one that sends
/// requests without reading the answers must not grow the daemon without bound.
pub(crate) const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Most bytes of requests read before they are answered: a client that writes
/// requests as fast as they are read, and never reads the answers, is cut off once
/// its answers pass [`MAX_PENDING_OUTPUT`] instead of having all of them read first.
pub(crate) const READ_BATCH: usize = 64 << 10;

/// A control connection.
pub(crate) struct Connection {
    pub(crate) stream: UnixStream,
    pub(crate) peer: Peer,
    input: LineBuffer,
    output: Vec<u8>,
    /// No more requests are read: the peer closed its side, or sent a line too long
    /// to find the next one after.
    closing: bool,
}

/// What reading found.
pub(crate) enum Incoming {
    /// A complete line.
    Line(String),
    /// A line that is not a message; answer it, and close if the error says so.
    Bad(ProtocolError),
}

impl Connection {
    pub(crate) fn new(stream: UnixStream, peer: Peer) -> Self {
        Self {
            stream,
            peer,
            input: LineBuffer::new(),
            output: Vec::new(),
            closing: false,
        }
    }

    /// Reads what the socket holds, up to [`READ_BATCH`] bytes, and returns the
    /// complete lines in it and whether more may be waiting (the batch filled before
    /// the socket ran dry). A line over the limit ends reading for good.
    pub(crate) fn receive(&mut self) -> io::Result<(Vec<Incoming>, bool)> {
        let mut chunk = [0u8; 4096];
        let mut incoming = Vec::new();
        let mut read = 0;
        while !self.closing {
            if read >= READ_BATCH {
                return Ok((incoming, true));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closing = true,
                Ok(n) => {
                    read += n;
                    self.input.push(&chunk[..n]);
                    // Split as we go, so an endless line is refused at the limit
                    // rather than buffered whole.
                    self.split(&mut incoming);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((incoming, false))
    }

    fn split(&mut self, incoming: &mut Vec<Incoming>) {
        loop {
            match self.input.next_line() {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => incoming.push(Incoming::Line(line)),
                Ok(None) => return,
                Err(e @ ProtocolError::TooLong) => {
                    incoming.push(Incoming::Bad(e));
                    self.closing = true;
                    return;
                }
                Err(e) => incoming.push(Incoming::Bad(e)),
            }
        }
    }

    /// Queues one response line.
    pub(crate) fn queue(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.push(b'\n');
    }

    /// Writes what the socket takes; whether output is still pending.
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Bytes of answers not yet taken by the socket.
    pub(crate) fn pending(&self) -> usize {
        self.output.len()
    }

    /// Done: nothing more will be read and everything was written.
    pub(crate) fn finished(&self) -> bool {
        self.closing && self.output.is_empty()
    }
}
