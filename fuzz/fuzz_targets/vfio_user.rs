//! vfio-user as a client drives it: a sequence of messages (header, payload, file
//! descriptors: memfds standing in for guest RAM and eventfds) handled by a `Session`
//! over a passthrough function on a fake e1000e or ich9-ahci, DMA recorded by
//! `RecordingMapper`; then the client goes away and the session ends.
//!
//! The message framing is the listener's: a header whose size cannot be accepted ends
//! the connection (the listener replies and disconnects), anything else is handled.
//!
//! Oracles: no panic; every message is answered (a reply echoing its id and command,
//! sized as its payload, an error reply with an errno and no payload), or gets no reply
//! only when it asked for none, or closes the connection; a reply stays within
//! `MAX_MESSAGE_SIZE` and `MAX_MSG_FDS`; the device is never reached out of range and
//! its own BARs, decode enables and MSI/MSI-X registers never change; after the session
//! ends nothing stays mapped for DMA, bus mastering is off and no client eventfd is
//! wired; at most 8 MiB live per input (a read answers at most 1 MiB), at most 256
//! messages and 4 file descriptors per message.
#![no_main]

use std::os::fd::OwnedFd;
use std::sync::Arc;

use dma::RecordingMapper;
use libfuzzer_sys::fuzz_target;
use udrv_fuzz::fake_passthrough::{protected_bytes, served_function};
use udrv_fuzz::{bounded, Input};
use vpci::frontend::vfio_user::protocol::{
    flags, Header, Reply, HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_MSG_FDS,
};
use vpci::frontend::vfio_user::{Outcome, Session, SessionOptions};

const MAX_LIVE_BYTES: usize = 8 << 20;
const MAX_MESSAGES: usize = 256;
const BUS_MASTER: u8 = 1 << 2;

fuzz_target!(|data: &[u8]| bounded(MAX_LIVE_BYTES, || run(data)));

fn memfd(len: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"guest-ram", nix::sys::memfd::MFdFlags::empty())
        .expect("memfd_create");
    nix::unistd::ftruncate(&fd, len as i64).expect("ftruncate");
    fd
}

fn eventfd() -> OwnedFd {
    nix::sys::eventfd::EventFd::new().expect("eventfd").into()
}

fn check_reply(request: &Header, header: &Header, reply: &Reply) {
    assert_eq!(
        (header.id, header.command),
        (request.id, request.command),
        "echo"
    );
    assert_eq!(header.flags & flags::TYPE_MASK, flags::TYPE_REPLY);
    assert_eq!(
        header.size as usize,
        HEADER_SIZE + reply.payload.len(),
        "reply size"
    );
    assert!(
        header.size as usize <= MAX_MESSAGE_SIZE,
        "reply of {} bytes",
        header.size
    );
    assert!(reply.fds.len() <= MAX_MSG_FDS);
    if header.flags & flags::ERROR != 0 {
        assert_ne!(header.error, 0, "an error reply carries an errno");
        assert!(reply.payload.is_empty() && reply.fds.is_empty());
    } else {
        assert_eq!(header.error, 0);
    }
}

fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.u8();
    let (device, function, msi) = served_function(setup & 1 != 0);
    let mapper = Arc::new(RecordingMapper::new().with_max_mappings(1024));
    let options = SessionOptions {
        direct_mmio: setup & 2 != 0,
        ..SessionOptions::default()
    };
    let mut session = Session::new(function, mapper.clone(), options).expect("a session starts");
    let protected = protected_bytes(&device.0, &msi);

    for _ in 0..MAX_MESSAGES {
        if input.is_empty() {
            break;
        }
        let shape = input.u8();
        let id = input.u16();
        // Mostly a command of the spec (1-18), sometimes any number.
        let command = if shape & 0x80 == 0 {
            u16::from(input.u8() % 20)
        } else {
            input.u16()
        };
        let flag_bits = u32::from(input.u8()) & (flags::TYPE_MASK | flags::NO_REPLY | flags::ERROR);
        let len = usize::from(input.u16());
        let payload = input.bytes(len).to_vec();
        // The size the header claims: the payload's, or (rarely) anything.
        let size = if shape & 0x40 == 0 {
            (HEADER_SIZE + payload.len()) as u32
        } else {
            input.u32()
        };
        let header = Header {
            id,
            command,
            size,
            flags: flag_bits,
            error: 0,
        };
        let Ok(payload_len) = header.payload_len() else {
            // The listener refuses the header and disconnects.
            break;
        };
        if payload_len != payload.len() {
            // The client sent fewer bytes than it claimed: the listener waits for the
            // rest until the client goes away.
            break;
        }
        let fds: Vec<OwnedFd> = (0..shape % 5)
            .map(|i| {
                if (shape >> (4 + i % 2)) & 1 == 0 {
                    memfd(u64::from(input.u16()) * 4096)
                } else {
                    eventfd()
                }
            })
            .collect();
        let outcome = session.handle(&header, &payload, fds);
        match &outcome {
            Outcome::Reply(h, reply) => {
                assert!(
                    !header.no_reply(),
                    "answered a message that asked for no reply"
                );
                check_reply(&header, h, reply);
            }
            Outcome::Nothing => assert!(header.no_reply(), "no answer to {header:?}"),
            Outcome::Disconnect(reply) => {
                if let Some((h, reply)) = reply {
                    check_reply(&header, h, reply);
                }
            }
        }
        assert_eq!(
            protected_bytes(&device.0, &msi),
            protected,
            "the device's own registers were written"
        );
        if matches!(outcome, Outcome::Disconnect(_)) {
            break;
        }
    }

    let status = session.status();
    assert!(status.messages <= MAX_MESSAGES as u64);
    let function = session
        .end()
        .expect("the session ends with the device back");
    assert_eq!(
        mapper.mapped_bytes(),
        0,
        "DMA left mapped after the client went away"
    );
    assert_eq!(mapper.mapping_count(), 0);
    let device = function.into_device();
    let command = device.0.config.lock().unwrap()[0x04];
    assert_eq!(command & BUS_MASTER, 0, "bus mastering left on");
    assert!(
        device.0.client_fds.lock().unwrap().is_empty(),
        "client eventfds left wired"
    );
}
