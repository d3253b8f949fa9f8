//! UML's virtio-pcidev command messages: any bytes parse to a command or an error, and a
//! command says exactly what its header and data say.
//!
//! Oracles: no panic; a parsed command is within the limits the parser promises (config
//! accesses of 1/2/4/8 bytes, aligned, inside 4 KiB; BARs 0-5; non-empty BAR accesses;
//! write data exactly `size` bytes of the message); encoding the header back and parsing
//! again gives the same command; at most 64 KiB allocated per input (parsing allocates
//! nothing; the Display text is short).
#![no_main]

use libfuzzer_sys::fuzz_target;
use udrv_fuzz::bounded;
use vpci::frontend::virtio_pcidev::{self, op, Command, Header, CONFIG_SPACE_LEN, HEADER_LEN};

const MAX_LIVE_BYTES: usize = 64 << 10;

fuzz_target!(|data: &[u8]| bounded(MAX_LIVE_BYTES, || check(data)));

fn check(data: &[u8]) {
    let parsed = virtio_pcidev::parse(data);
    let Ok(command) = parsed else {
        let error = parsed.unwrap_err();
        assert!(error.to_string().len() < 512, "{error}");
        if data.len() >= HEADER_LEN {
            let header = Header::parse(data).expect("a header fits");
            assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
        }
        return;
    };
    let header = Header::parse(data).expect("a command has a header");
    assert_eq!(
        &header.encode()[..],
        &data[..HEADER_LEN],
        "header round trip"
    );
    let body = &data[HEADER_LEN..];
    match command {
        Command::ConfigRead { offset, size } => {
            assert_eq!(header.op, op::CFG_READ);
            config_access(u64::from(offset), size.bytes());
            assert_eq!(command.reply_len(), size.bytes());
        }
        Command::ConfigWrite {
            offset,
            size,
            value,
        } => {
            assert_eq!(header.op, op::CFG_WRITE);
            assert_eq!(header.bar, 0, "a config write names no BAR");
            config_access(u64::from(offset), size.bytes());
            let mut expected = [0u8; 8];
            expected[..size.bytes()].copy_from_slice(&body[..size.bytes()]);
            assert_eq!(value, u64::from_le_bytes(expected), "value is the data");
        }
        Command::MmioRead { bar, offset, len } => {
            assert_eq!(header.op, op::MMIO_READ);
            assert!(bar.get() < 6 && u32::from(bar.get()) == u32::from(header.bar));
            assert_eq!((offset, len), (header.addr, header.size));
            assert!(len > 0);
            assert_eq!(command.reply_len(), len as usize);
        }
        Command::MmioWrite { bar, offset, data } => {
            assert_eq!(header.op, op::MMIO_WRITE);
            assert!(bar.get() < 6 && bar.get() == header.bar);
            assert_eq!(offset, header.addr);
            assert!(!data.is_empty());
            assert_eq!(data.len(), header.size as usize, "exactly `size` bytes");
            assert_eq!(data, &body[..data.len()], "the bytes after the header");
        }
        Command::MmioMemset {
            bar,
            offset,
            len,
            value,
        } => {
            // MMIO_MEMSET, or UML 7.2's memset_io sent as a CFG_WRITE that cannot be one.
            assert!(header.op == op::MMIO_MEMSET || header.op == op::CFG_WRITE);
            assert!(bar.get() < 6 && bar.get() == header.bar);
            assert_eq!((offset, len, value), (header.addr, header.size, body[0]));
            assert!(len > 0);
        }
    }
    if !command.is_read() {
        assert_eq!(command.reply_len(), 0);
    }
    assert!(command.to_string().len() < 256);
    // The header and exactly the data the command used parse to the same command.
    let used = match command {
        Command::ConfigWrite { size, .. } => size.bytes(),
        Command::MmioWrite { data, .. } => data.len(),
        Command::MmioMemset { .. } => 1,
        Command::ConfigRead { .. } | Command::MmioRead { .. } => 0,
    };
    let again = virtio_pcidev::parse(&data[..HEADER_LEN + used]);
    assert_eq!(again, Ok(command), "trailing bytes change nothing");
}

fn config_access(offset: u64, size: usize) {
    assert!(matches!(size, 1 | 2 | 4 | 8), "size {size}");
    assert!(
        offset + size as u64 <= CONFIG_SPACE_LEN,
        "{offset:#x}+{size}"
    );
    assert_eq!(offset % size as u64, 0, "aligned");
}
