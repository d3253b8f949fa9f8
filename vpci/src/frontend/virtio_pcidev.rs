//! The virtio-pcidev wire format: User-Mode Linux's PCI over virtio.
//!
//! The specification is the Linux source: `include/uapi/linux/virtio_pcidev.h` and
//! `arch/um/drivers/virtio_pcidev.c`. Every message starts with a 16-byte header in
//! native (x86: little) endian,
//!
//! ```text
//! u8 op; u8 bar; u16 reserved; u32 size; u64 addr; u8 data[];
//! ```
//!
//! The command queue (0) carries config and BAR accesses from UML to the device; a read
//! is answered in the writable part of the same descriptor chain. The interrupt queue
//! (1) carries INT/MSI/PME messages back, written into buffers UML posts there.
//!
//! Parsing is pure and bounds-checked: any bytes give a [`Command`] or a
//! [`CommandError`], never a panic.
//!
//! # UML 7.2 quirks tolerated here
//!
//! - `memset_io` (UML's `virtio_pcidev_bar_set`) sends op `CFG_WRITE` with the BAR
//!   index in `bar`, the fill length in `size` and the fill byte in `data[0]`, instead
//!   of `MMIO_MEMSET`. A real config write always has `bar` 0, a `size` of 1, 2, 4 or 8,
//!   an offset aligned to it and inside the 4 KiB config space. So a `CFG_WRITE` with a
//!   non-zero `bar`, or one that is not a possible config access, is taken as a memset
//!   of that BAR. The one case that cannot be told apart — a 1/2/4/8-byte memset at an
//!   aligned offset below 4 KiB of BAR0 — is taken as the config write it looks like
//!   (neither e1000e nor ahci calls `memset_io`).
//! - `virtio_pcidev_send_cmd` sizes its inline buffer with `sizeof(pointer)`, so a
//!   write's data can arrive merged with the header in one descriptor, or split from
//!   it in another, and may be followed by stray bytes. The parser takes the readable
//!   bytes of the whole chain as one message and uses exactly `size` bytes of data.

use std::fmt;

use thiserror::Error;

use crate::bar::BarIndex;

/// Bytes of the header before `data`.
pub const HEADER_LEN: usize = 16;
/// Bytes of an interrupt message UML's irq buffers hold: the header and a 32-bit MSI
/// payload (`MAX_IRQ_MSG_SIZE`).
pub const IRQ_MESSAGE_LEN: usize = HEADER_LEN + 4;
/// The config space UML addresses per device.
pub const CONFIG_SPACE_LEN: u64 = 4096;
/// BARs UML can address (`um_pci_device::resptr`).
const BAR_COUNT: u8 = 6;

/// The `op` codes of `enum virtio_pcidev_ops`.
// Named as the enum's `VIRTIO_PCIDEV_OP_*` values in Linux
// include/uapi/linux/virtio_pcidev.h; the meaning of each is [`Command`]'s and
// [`IrqMessage`]'s.
#[allow(missing_docs)]
pub mod op {
    pub const RESERVED: u8 = 0;
    pub const CFG_READ: u8 = 1;
    pub const CFG_WRITE: u8 = 2;
    pub const MMIO_READ: u8 = 3;
    pub const MMIO_WRITE: u8 = 4;
    pub const MMIO_MEMSET: u8 = 5;
    pub const INT: u8 = 6;
    pub const MSI: u8 = 7;
    pub const PME: u8 = 8;
}

/// A message header as it is on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`op`]'s codes.
    pub op: u8,
    /// BAR index of an MMIO op (0 for config ops, but see UML's memset quirk).
    pub bar: u8,
    /// Zero on the wire; kept so encoding round-trips.
    pub reserved: u16,
    /// Bytes accessed (for memset: bytes filled).
    pub size: u32,
    /// Config-space offset, or byte offset within the BAR.
    pub addr: u64,
}

impl Header {
    /// Decode the first [`HEADER_LEN`] bytes of `bytes`, if there are that many.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            op: h[0],
            bar: h[1],
            reserved: u16::from_le_bytes([h[2], h[3]]),
            size: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            addr: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
        })
    }

    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.op;
        h[1] = self.bar;
        h[2..4].copy_from_slice(&self.reserved.to_le_bytes());
        h[4..8].copy_from_slice(&self.size.to_le_bytes());
        h[8..16].copy_from_slice(&self.addr.to_le_bytes());
        h
    }
}

/// A config access width UML sends: 1, 2, 4 or 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAccessSize(u8);

impl ConfigAccessSize {
    fn new(size: u32) -> Option<Self> {
        matches!(size, 1 | 2 | 4 | 8).then_some(Self(size as u8))
    }

    /// Bytes accessed.
    pub fn bytes(self) -> usize {
        usize::from(self.0)
    }
}

/// A command from UML's command queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Read `size` config bytes at `offset`; answer them little-endian.
    ConfigRead {
        /// Config-space offset, aligned to `size`, below 4 KiB.
        offset: u16,
        /// Access width.
        size: ConfigAccessSize,
    },
    /// Write the low `size` bytes of `value` at `offset`.
    ConfigWrite {
        /// Config-space offset, aligned to `size`, below 4 KiB.
        offset: u16,
        /// Access width.
        size: ConfigAccessSize,
        /// The bytes written, little-endian, zero above `size`.
        value: u64,
    },
    /// Read `len` bytes at `offset` in `bar`; answer them.
    MmioRead {
        /// BAR0..=BAR5.
        bar: BarIndex,
        /// Byte offset within the BAR.
        offset: u64,
        /// Bytes to read, at least 1.
        len: u32,
    },
    /// Write `data` at `offset` in `bar`.
    MmioWrite {
        /// BAR0..=BAR5.
        bar: BarIndex,
        /// Byte offset within the BAR.
        offset: u64,
        /// The bytes, borrowed from the message (at least 1).
        data: &'a [u8],
    },
    /// Fill `len` bytes at `offset` in `bar` with `value` (also UML 7.2's mislabelled
    /// `CFG_WRITE`, see the module docs).
    MmioMemset {
        /// BAR0..=BAR5.
        bar: BarIndex,
        /// Byte offset within the BAR.
        offset: u64,
        /// Bytes to fill, at least 1.
        len: u32,
        /// The fill byte.
        value: u8,
    },
}

impl Command<'_> {
    /// Whether UML waits for the answer (reads) rather than posting the command.
    pub fn is_read(&self) -> bool {
        matches!(self, Self::ConfigRead { .. } | Self::MmioRead { .. })
    }

    /// Bytes of answer UML expects in the writable part of the chain.
    pub fn reply_len(&self) -> usize {
        match self {
            Self::ConfigRead { size, .. } => size.bytes(),
            Self::MmioRead { len, .. } => *len as usize,
            _ => 0,
        }
    }
}

impl fmt::Display for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConfigRead { offset, size } => {
                write!(f, "config read of {} at {offset:#x}", size.bytes())
            }
            Self::ConfigWrite {
                offset,
                size,
                value,
            } => write!(
                f,
                "config write of {} ({value:#x}) at {offset:#x}",
                size.bytes()
            ),
            Self::MmioRead { bar, offset, len } => {
                write!(f, "{bar} read of {len} at {offset:#x}")
            }
            Self::MmioWrite { bar, offset, data } => {
                write!(f, "{bar} write of {} at {offset:#x}", data.len())
            }
            Self::MmioMemset {
                bar,
                offset,
                len,
                value,
            } => write!(f, "{bar} memset of {len} x {value:#04x} at {offset:#x}"),
        }
    }
}

/// Why bytes from the command queue are not a command.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    /// Fewer bytes than a header.
    #[error("message of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short {
        /// Readable bytes in the chain.
        len: usize,
    },
    /// An op that is not a command (an interrupt-queue op, reserved or unknown).
    #[error("op {op} is not a command (1..=5 are: CFG_READ, CFG_WRITE, MMIO_READ, MMIO_WRITE, MMIO_MEMSET)")]
    UnknownOp {
        /// The header's op.
        op: u8,
    },
    /// A config read no config cycle could be (bad width, unaligned, past 4 KiB).
    #[error("config access of {size} bytes at {addr:#x}: needs 1, 2, 4 or 8 bytes, naturally aligned, inside the 4 KiB config space")]
    BadConfigAccess {
        /// The header's size.
        size: u32,
        /// The header's addr.
        addr: u64,
    },
    /// A BAR index above 5.
    #[error("BAR index {bar} does not exist (UML addresses BAR0..=BAR5)")]
    BadBar {
        /// The header's bar.
        bar: u8,
    },
    /// A config or BAR write, or a memset, with fewer data bytes than it needs.
    #[error("op {op} carries {have} data bytes, needs {need}")]
    MissingData {
        /// The header's op.
        op: u8,
        /// Data bytes after the header.
        have: usize,
        /// Data bytes the op needs.
        need: usize,
    },
    /// A BAR read, write or memset of 0 bytes.
    #[error("BAR access of 0 bytes at {addr:#x}")]
    Empty {
        /// The header's addr.
        addr: u64,
    },
}

fn bar_index(bar: u8) -> Result<BarIndex, CommandError> {
    if bar >= BAR_COUNT {
        return Err(CommandError::BadBar { bar });
    }
    BarIndex::new(bar).ok_or(CommandError::BadBar { bar })
}

fn data_of(op: u8, data: &[u8], need: usize) -> Result<&[u8], CommandError> {
    data.get(..need).ok_or(CommandError::MissingData {
        op,
        have: data.len(),
        need,
    })
}

/// A config access of `size` at `addr`, if it is one a config cycle can be.
fn config_access(size: u32, addr: u64) -> Option<(u16, ConfigAccessSize)> {
    let size = ConfigAccessSize::new(size)?;
    let bytes = size.bytes() as u64;
    let inside = addr
        .checked_add(bytes)
        .is_some_and(|end| end <= CONFIG_SPACE_LEN);
    (inside && addr.is_multiple_of(bytes)).then_some((addr as u16, size))
}

/// Parse one command from the readable bytes of a command-queue chain.
pub fn parse(bytes: &[u8]) -> Result<Command<'_>, CommandError> {
    let header = Header::parse(bytes).ok_or(CommandError::Short { len: bytes.len() })?;
    let data = &bytes[HEADER_LEN..];
    let Header {
        op,
        bar,
        size,
        addr,
        ..
    } = header;
    match op {
        op::CFG_READ => {
            let (offset, size) =
                config_access(size, addr).ok_or(CommandError::BadConfigAccess { size, addr })?;
            Ok(Command::ConfigRead { offset, size })
        }
        op::CFG_WRITE => match config_access(size, addr).filter(|_| bar == 0) {
            Some((offset, size)) => {
                let data = data_of(op, data, size.bytes())?;
                let mut value = [0u8; 8];
                value[..data.len()].copy_from_slice(data);
                Ok(Command::ConfigWrite {
                    offset,
                    size,
                    value: u64::from_le_bytes(value),
                })
            }
            // UML 7.2's memset_io: see the module docs.
            None => memset(op, bar, size, addr, data),
        },
        op::MMIO_READ => {
            let bar = bar_index(bar)?;
            if size == 0 {
                return Err(CommandError::Empty { addr });
            }
            Ok(Command::MmioRead {
                bar,
                offset: addr,
                len: size,
            })
        }
        op::MMIO_WRITE => {
            let bar = bar_index(bar)?;
            if size == 0 {
                return Err(CommandError::Empty { addr });
            }
            let data = data_of(op, data, size as usize)?;
            Ok(Command::MmioWrite {
                bar,
                offset: addr,
                data,
            })
        }
        op::MMIO_MEMSET => memset(op, bar, size, addr, data),
        op => Err(CommandError::UnknownOp { op }),
    }
}

fn memset(
    op: u8,
    bar: u8,
    size: u32,
    addr: u64,
    data: &[u8],
) -> Result<Command<'static>, CommandError> {
    let bar = bar_index(bar)?;
    if size == 0 {
        return Err(CommandError::Empty { addr });
    }
    let value = data_of(op, data, 1)?[0];
    Ok(Command::MmioMemset {
        bar,
        offset: addr,
        len: size,
        value,
    })
}

/// A message for UML's interrupt queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMessage {
    /// INTx pin 1..=4 asserted (UML has no usable INTx; kept for completeness).
    Int {
        /// 1 = INTA# .. 4 = INTD#.
        pin: u8,
    },
    /// The 32-bit write an MSI/MSI-X vector makes. UML takes `data` as its IRQ number.
    Msi {
        /// The vector's message address.
        address: u64,
        /// The vector's message data.
        data: u32,
    },
    /// PME# asserted.
    Pme,
}

impl IrqMessage {
    /// The message's bytes: the header, and the 32-bit payload for MSI (zeros
    /// otherwise, which UML ignores).
    pub fn encode(&self) -> [u8; IRQ_MESSAGE_LEN] {
        let (header, payload) = match *self {
            Self::Int { pin } => (
                Header {
                    op: op::INT,
                    addr: pin.into(),
                    ..Header::default()
                },
                0,
            ),
            Self::Msi { address, data } => (
                Header {
                    op: op::MSI,
                    size: 4,
                    addr: address,
                    ..Header::default()
                },
                data,
            ),
            Self::Pme => (
                Header {
                    op: op::PME,
                    ..Header::default()
                },
                0,
            ),
        };
        let mut bytes = [0u8; IRQ_MESSAGE_LEN];
        bytes[..HEADER_LEN].copy_from_slice(&header.encode());
        bytes[HEADER_LEN..].copy_from_slice(&payload.to_le_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(op: u8, bar: u8, size: u32, addr: u64, data: &[u8]) -> Vec<u8> {
        let mut bytes = Header {
            op,
            bar,
            reserved: 0,
            size,
            addr,
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(data);
        bytes
    }

    fn bar(i: u8) -> BarIndex {
        BarIndex::new(i).unwrap()
    }

    #[test]
    fn header_round_trips_in_uml_layout() {
        let h = Header {
            op: 3,
            bar: 5,
            reserved: 0xbeef,
            size: 0x1234_5678,
            addr: 0x0102_0304_0506_0708,
        };
        let bytes = h.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(bytes[1], 5);
        assert_eq!(&bytes[4..8], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(bytes[8], 0x08);
        assert_eq!(Header::parse(&bytes), Some(h));
        assert_eq!(Header::parse(&bytes[..15]), None);
    }

    #[test]
    fn config_reads_and_writes_as_uml_sends_them() {
        // virtio_pcidev_cfgspace_read: a bare header, size 1/2/4/8.
        assert_eq!(
            parse(&message(op::CFG_READ, 0, 4, 0x10, &[])),
            Ok(Command::ConfigRead {
                offset: 0x10,
                size: ConfigAccessSize(4)
            })
        );
        // virtio_pcidev_cfgspace_write: header + 8 data bytes whatever the size.
        let bytes = message(
            op::CFG_WRITE,
            0,
            2,
            0x4,
            &[0x06, 0x01, 0xaa, 0xbb, 0, 0, 0, 0],
        );
        let cmd = parse(&bytes);
        assert_eq!(
            cmd,
            Ok(Command::ConfigWrite {
                offset: 4,
                size: ConfigAccessSize(2),
                value: 0x0106
            })
        );
        let bytes = message(
            op::CFG_WRITE,
            0,
            8,
            0x18,
            &0x1122_3344_5566_7788u64.to_le_bytes(),
        );
        let cmd = parse(&bytes);
        assert!(matches!(
            cmd,
            Ok(Command::ConfigWrite {
                value: 0x1122_3344_5566_7788,
                ..
            })
        ));
    }

    #[test]
    fn impossible_config_reads_are_refused() {
        for (size, addr) in [
            (3, 0),
            (4, 2),
            (4, 4094),
            (16, 0),
            (0, 0),
            (1, 4096),
            (8, u64::MAX - 3),
        ] {
            assert_eq!(
                parse(&message(op::CFG_READ, 0, size, addr, &[])),
                Err(CommandError::BadConfigAccess { size, addr }),
                "size {size} at {addr:#x}"
            );
        }
    }

    #[test]
    fn uml_memset_io_is_told_from_a_config_write() {
        // virtio_pcidev_bar_set: CFG_WRITE, bar = BAR index, size = fill length, one
        // data byte (padded to 8 by the struct).
        let bytes = message(op::CFG_WRITE, 5, 0x200, 0x100, &[0xab, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse(&bytes),
            Ok(Command::MmioMemset {
                bar: bar(5),
                offset: 0x100,
                len: 0x200,
                value: 0xab
            })
        );
        // BAR0 with a length no config access has.
        assert!(matches!(
            parse(&message(op::CFG_WRITE, 0, 3, 0x10, &[7])),
            Ok(Command::MmioMemset {
                len: 3,
                value: 7,
                ..
            })
        ));
        // BAR0 beyond the config space.
        assert!(matches!(
            parse(&message(op::CFG_WRITE, 0, 4, 0x1_0000, &[7])),
            Ok(Command::MmioMemset {
                offset: 0x1_0000,
                ..
            })
        ));
        // The ambiguous case is the config write it looks like.
        assert!(matches!(
            parse(&message(op::CFG_WRITE, 0, 4, 0x10, &[7, 0, 0, 0])),
            Ok(Command::ConfigWrite { offset: 0x10, .. })
        ));
        // A memset to a BAR UML cannot have.
        assert_eq!(
            parse(&message(op::CFG_WRITE, 6, 4, 0, &[7])),
            Err(CommandError::BadBar { bar: 6 })
        );
    }

    #[test]
    fn mmio_commands_use_exactly_size_bytes() {
        assert_eq!(
            parse(&message(op::MMIO_READ, 3, 8, 0x2000, &[])),
            Ok(Command::MmioRead {
                bar: bar(3),
                offset: 0x2000,
                len: 8
            })
        );
        // memcpy_toio of 12 bytes: UML 7.2 merges the data into the header's buffer
        // and may leave stray bytes after it.
        let data: Vec<u8> = (1..=12).collect();
        let mut tail = data.clone();
        tail.extend_from_slice(&[0xee; 4]);
        let bytes = message(op::MMIO_WRITE, 0, 12, 0x40, &tail);
        assert_eq!(
            parse(&bytes),
            Ok(Command::MmioWrite {
                bar: bar(0),
                offset: 0x40,
                data: &data
            })
        );
        assert_eq!(
            parse(&message(op::MMIO_WRITE, 0, 12, 0x40, &data[..11])),
            Err(CommandError::MissingData {
                op: op::MMIO_WRITE,
                have: 11,
                need: 12
            })
        );
        assert!(matches!(
            parse(&message(op::MMIO_MEMSET, 1, 64, 0, &[0x5a])),
            Ok(Command::MmioMemset {
                len: 64,
                value: 0x5a,
                ..
            })
        ));
        assert_eq!(
            parse(&message(op::MMIO_READ, 0, 0, 0x40, &[])),
            Err(CommandError::Empty { addr: 0x40 })
        );
    }

    #[test]
    fn non_commands_are_refused() {
        assert_eq!(parse(&[1, 0, 0]), Err(CommandError::Short { len: 3 }));
        for op in [op::RESERVED, op::INT, op::MSI, op::PME, 0xff] {
            assert_eq!(
                parse(&message(op, 0, 4, 0, &[0; 4])),
                Err(CommandError::UnknownOp { op })
            );
        }
    }

    #[test]
    fn msi_messages_are_what_uml_decodes() {
        let bytes = IrqMessage::Msi {
            address: 0xa0000,
            data: 37,
        }
        .encode();
        // virtio_pcidev_handle_irq_message: op MSI, size 4 -> le32 data is the IRQ.
        let h = Header::parse(&bytes).unwrap();
        assert_eq!((h.op, h.size, h.addr), (op::MSI, 4, 0xa0000));
        assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()), 37);
        let int = Header::parse(&IrqMessage::Int { pin: 1 }.encode()).unwrap();
        assert_eq!((int.op, int.addr), (op::INT, 1));
        assert_eq!(
            Header::parse(&IrqMessage::Pme.encode()).unwrap().op,
            op::PME
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(cmd) = parse(&bytes) {
                // Whatever parses is self-consistent.
                prop_assert!(bytes.len() >= HEADER_LEN);
                if let Command::MmioWrite { data, .. } = cmd {
                    prop_assert!(data.len() <= bytes.len() - HEADER_LEN);
                }
                let _ = cmd.to_string();
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(op in 0u8..10, bar in any::<u8>(), size in any::<u32>(),
                                         addr in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..16)) {
            let bytes = message(op, bar, size, addr, &data);
            match parse(&bytes) {
                Ok(Command::ConfigRead { offset, size }) | Ok(Command::ConfigWrite { offset, size, .. }) => {
                    prop_assert!(u64::from(offset) + size.bytes() as u64 <= CONFIG_SPACE_LEN);
                }
                Ok(Command::MmioWrite { data: d, .. }) => prop_assert_eq!(d.len(), size as usize),
                Ok(_) | Err(_) => {}
            }
        }
    }
}
