//! Lines out of a byte stream, bounded: the control protocol's framing.

use super::control::{ProtocolError, MAX_LINE};

/// Bytes received and not yet split into lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
    /// Bytes of `pending` already searched for a newline.
    scanned: usize,
}

impl LineBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Whether bytes of an unfinished line are held.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next complete line (newline and a trailing `\r` removed), `None` until one
    /// has arrived. A line over [`MAX_LINE`] bytes is [`ProtocolError::TooLong`] as soon
    /// as that many bytes are held without a newline; the buffer then holds nothing
    /// useful and the stream should be closed.
    pub fn next_line(&mut self) -> Result<Option<String>, ProtocolError> {
        let Some(offset) = self.pending[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
        else {
            self.scanned = self.pending.len();
            if self.pending.len() > MAX_LINE {
                self.pending.clear();
                self.scanned = 0;
                return Err(ProtocolError::TooLong);
            }
            return Ok(None);
        };
        let end = self.scanned + offset;
        let mut line: Vec<u8> = self.pending.drain(..=end).collect();
        self.scanned = 0;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_LINE {
            return Err(ProtocolError::TooLong);
        }
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| ProtocolError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_and_within_reads() {
        let mut buffer = LineBuffer::new();
        buffer.push(b"{\"a\":");
        assert_eq!(buffer.next_line().unwrap(), None);
        assert!(buffer.has_partial());
        buffer.push(b"1}\n{\"b\":2}\r\n{\"c\"");
        assert_eq!(buffer.next_line().unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(buffer.next_line().unwrap().as_deref(), Some("{\"b\":2}"));
        assert_eq!(buffer.next_line().unwrap(), None);
        buffer.push(b":3}\n");
        assert_eq!(buffer.next_line().unwrap().as_deref(), Some("{\"c\":3}"));
        assert!(!buffer.has_partial());
    }

    #[test]
    fn an_oversize_line_is_refused_before_its_end_arrives() {
        let mut buffer = LineBuffer::new();
        let chunk = vec![b'x'; 4096];
        let mut refused = false;
        for _ in 0..(MAX_LINE / chunk.len() + 2) {
            buffer.push(&chunk);
            match buffer.next_line() {
                Ok(None) => {}
                Err(ProtocolError::TooLong) => {
                    refused = true;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(refused, "a line without end must be refused past MAX_LINE");
        assert!(!buffer.has_partial(), "the refused bytes are dropped");
    }

    #[test]
    fn an_oversize_line_arriving_whole_is_refused() {
        let mut buffer = LineBuffer::new();
        let mut line = vec![b'y'; MAX_LINE + 1];
        line.push(b'\n');
        buffer.push(&line);
        assert_eq!(buffer.next_line(), Err(ProtocolError::TooLong));
        let mut exact = vec![b'z'; MAX_LINE];
        exact.push(b'\n');
        buffer.push(&exact);
        assert_eq!(buffer.next_line().unwrap().map(|l| l.len()), Some(MAX_LINE));
    }

    #[test]
    fn invalid_utf8_is_an_error_and_the_next_line_still_parses() {
        let mut buffer = LineBuffer::new();
        buffer.push(b"\xff\xfe\n{}\n");
        assert_eq!(buffer.next_line(), Err(ProtocolError::NotUtf8));
        assert_eq!(buffer.next_line().unwrap().as_deref(), Some("{}"));
    }
}
