//! The control protocol as the daemon reads it: bytes arrive in reads of up to 4 KiB
//! (as `Connection::receive` takes them), `LineBuffer` splits them into lines, and each
//! line is decoded as a request (the daemon's side) and as a response (the client's).
//!
//! Oracles: no panic; the framing agrees with a plain model of it (lines split at `\n`, a
//! trailing `\r` dropped, a line over `MAX_LINE` refused, a partial line refused once
//! `MAX_LINE` bytes are held without a newline, after which the connection reads no
//! more); at most `MAX_LINE` + 4 KiB held unsplit; a decoded request or response
//! encodes to one line that decodes to the same value; at most 8 MiB live per input
//! (one 64 KiB line decoded into JSON values is most of it); at most 256 KiB sent
//! per input, so lines up to the limit and past it occur while work stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udrv_fuzz::{bounded, Input};
use vpci::service::control::{decode_response, encode_response, ProtocolError, MAX_LINE};
use vpci::service::{LineBuffer, Request};

const MAX_LIVE_BYTES: usize = 8 << 20;
/// What `Connection::receive` reads at once.
const READ_CHUNK: usize = 4096;
/// Bytes one input may send: lines to the limit and past it, and a few more.
const MAX_SENT: usize = 256 << 10;

fuzz_target!(|data: &[u8]| bounded(MAX_LIVE_BYTES, || run(data)));

/// The daemon's side of one connection and a model of its framing.
struct Connection {
    buffer: LineBuffer,
    /// Bytes pushed and not yet returned as lines, as the model keeps them.
    model: Vec<u8>,
    /// Bytes of `model` known to hold no newline.
    scanned: usize,
    closed: bool,
}

fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut connection = Connection {
        buffer: LineBuffer::new(),
        model: Vec::new(),
        scanned: 0,
        closed: false,
    };
    let mut sent = 0usize;
    let mut stream = Vec::new();
    while !input.is_empty() && !connection.closed && sent < MAX_SENT {
        stream.clear();
        match input.u8() % 4 {
            // Literal bytes.
            0 => {
                let len = usize::from(input.u8());
                stream.extend_from_slice(input.bytes(len));
            }
            // A run of one byte: long lines without long inputs.
            1 => {
                let byte = input.u8();
                let len = usize::from(input.u16()) * 4;
                stream.resize(len, byte);
            }
            // A line end.
            2 => stream.extend_from_slice(if input.bool() { b"\r\n" } else { b"\n" }),
            // The rest of the input, as it is.
            _ => stream.extend_from_slice(input.rest()),
        }
        let stream = &stream[..stream.len().min(MAX_SENT - sent)];
        sent += stream.len();
        for chunk in stream.chunks(READ_CHUNK) {
            connection.receive(chunk);
            if connection.closed {
                break;
            }
        }
    }
}

impl Connection {
    fn receive(&mut self, chunk: &[u8]) {
        self.buffer.push(chunk);
        self.model.extend_from_slice(chunk);
        loop {
            let got = self.buffer.next_line();
            let expected = self.expect_line();
            assert_eq!(got, expected, "framing disagrees with the model");
            match got {
                Ok(Some(line)) => decode(&line),
                Ok(None) => break,
                Err(ProtocolError::TooLong) => {
                    self.closed = true;
                    return;
                }
                Err(_) => {}
            }
        }
        assert!(
            self.model.len() <= MAX_LINE + READ_CHUNK,
            "{} bytes held without a newline",
            self.model.len()
        );
        assert_eq!(self.buffer.has_partial(), !self.model.is_empty());
    }

    /// The next line by the protocol's definition.
    fn expect_line(&mut self) -> Result<Option<String>, ProtocolError> {
        let Some(end) = self.model[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.model.len();
            if self.model.len() > MAX_LINE {
                self.model.clear();
                self.scanned = 0;
                return Err(ProtocolError::TooLong);
            }
            return Ok(None);
        };
        let end = self.scanned + end;
        self.scanned = 0;
        let mut line: Vec<u8> = self.model.drain(..=end).collect();
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

fn decode(line: &str) {
    assert!(line.len() <= MAX_LINE && !line.contains('\n'));
    match Request::decode(line) {
        Ok(request) => {
            let encoded = request.encode();
            assert!(!encoded.contains('\n'), "one line: {encoded:?}");
            assert_eq!(
                Request::decode(&encoded).as_ref(),
                Ok(&request),
                "{encoded}"
            );
            // The log line names the request.
            assert!(request.to_string().starts_with(request.op()));
        }
        Err(error) => assert!(!matches!(
            error,
            ProtocolError::TooLong | ProtocolError::NotUtf8 | ProtocolError::BadResponse(_)
        )),
    }
    if let Ok(response) = decode_response(line) {
        let encoded = encode_response(&response);
        assert!(!encoded.contains('\n'), "one line: {encoded:?}");
        assert_eq!(
            decode_response(&encoded).as_ref(),
            Ok(&response),
            "{encoded}"
        );
    }
}
