//! Word/DWord/QWord address-space resource descriptors (ACPI 6.5 section 6.4.3.5).
//!
//! rust-vmm's `AddressSpace` derives the length as `max - min + 1`, which overflows for a
//! range that starts at 0 and fills its width, and always uses the width of its type. Here the
//! range comes as base and size, so nothing is computed that could overflow, and the
//! descriptor is the narrowest (but at least `min_width`) that holds every field.

use crate::description::Window;
use rvmm_acpi_tables::{Aml, AmlSink};

const WORD_DESCRIPTOR: u8 = 0x88;
const DWORD_DESCRIPTOR: u8 = 0x87;
const QWORD_DESCRIPTOR: u8 = 0x8A;

const TYPE_MEMORY: u8 = 0;
const TYPE_IO: u8 = 1;
const TYPE_BUS_NUMBER: u8 = 2;

/// General flags: the range's minimum and maximum are fixed, positive decode.
const MIN_FIXED: u8 = 1 << 2;
const MAX_FIXED: u8 = 1 << 3;
const CONSUMER: u8 = 1 << 0;

/// IO type flags: the range covers ISA and non-ISA ports (EntireRange).
const IO_ENTIRE_RANGE: u8 = 3;
/// Memory type flags.
const MEMORY_READ_WRITE: u8 = 1 << 0;
const MEMORY_CACHEABLE: u8 = 1 << 1;

/// What an address-space descriptor describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// A range of bus numbers.
    BusNumber,
    /// A range of IO ports.
    Io,
    /// Read-write memory; `cacheable` sets the Cacheable attribute, else NonCacheable.
    Memory {
        /// Whether the memory may be cached.
        cacheable: bool,
    },
}

/// Whether the device decodes the range for children (a bridge window) or for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// The device decodes the range for what sits behind it (a bridge window).
    Producer,
    /// The device itself uses the range.
    Consumer,
}

/// One address-space descriptor for `window`.
#[derive(Clone, Copy, Debug)]
pub struct AddressSpace {
    kind: ResourceKind,
    usage: Usage,
    window: Window,
    width: usize,
}

impl AddressSpace {
    /// A descriptor of at least `min_width` bytes per field (2, 4 or 8); `None` if the
    /// window is empty, runs past `u64::MAX`, or its size does not fit even 64 bits' field
    /// (a window of all 2^64 addresses).
    pub fn new(kind: ResourceKind, usage: Usage, window: Window, min_width: usize) -> Option<Self> {
        let last = window.last()?;
        let needed = [window.base, last, window.size]
            .iter()
            .map(|&v| {
                if v <= u64::from(u16::MAX) {
                    2
                } else if v <= u64::from(u32::MAX) {
                    4
                } else {
                    8
                }
            })
            .max()
            .unwrap_or(2);
        let width = needed.max(min_width);
        matches!(width, 2 | 4 | 8).then_some(AddressSpace {
            kind,
            usage,
            window,
            width,
        })
    }

    /// Length in bytes of the encoded descriptor.
    pub fn encoded_len(&self) -> usize {
        3 + 3 + 5 * self.width
    }
}

impl Aml for AddressSpace {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let descriptor = match self.width {
            2 => WORD_DESCRIPTOR,
            4 => DWORD_DESCRIPTOR,
            _ => QWORD_DESCRIPTOR,
        };
        let (resource_type, type_flags) = match self.kind {
            ResourceKind::BusNumber => (TYPE_BUS_NUMBER, 0),
            ResourceKind::Io => (TYPE_IO, IO_ENTIRE_RANGE),
            ResourceKind::Memory { cacheable } => (
                TYPE_MEMORY,
                MEMORY_READ_WRITE | if cacheable { MEMORY_CACHEABLE } else { 0 },
            ),
        };
        let usage = match self.usage {
            Usage::Producer => 0,
            Usage::Consumer => CONSUMER,
        };
        sink.byte(descriptor);
        // The length field counts the bytes after itself.
        sink.word((3 + 5 * self.width) as u16);
        sink.byte(resource_type);
        sink.byte(MIN_FIXED | MAX_FIXED | usage);
        sink.byte(type_flags);
        // `new` checked that base, last and size fit `width` bytes.
        let last = self.window.last().unwrap_or(self.window.base);
        for value in [0, self.window.base, last, 0, self.window.size] {
            sink.vec(&value.to_le_bytes()[..self.width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aml::encode;

    #[test]
    fn bus_range_is_a_word_descriptor_with_length() {
        let bus = AddressSpace::new(
            ResourceKind::BusNumber,
            Usage::Producer,
            Window::inclusive(0, 255),
            2,
        )
        .unwrap();
        assert_eq!(
            encode(&bus),
            [0x88, 13, 0, 2, 0x0C, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0x00, 0x01]
        );
    }

    #[test]
    fn full_io_space_widens_to_dword_instead_of_overflowing() {
        let io = AddressSpace::new(
            ResourceKind::Io,
            Usage::Producer,
            Window::new(0, 0x1_0000),
            2,
        )
        .unwrap();
        let bytes = encode(&io);
        assert_eq!(bytes[0], DWORD_DESCRIPTOR);
        assert_eq!(bytes.len(), io.encoded_len());
        assert_eq!(&bytes[22..26], &0x1_0000u32.to_le_bytes());
    }

    #[test]
    fn range_ending_at_u64_max_encodes_exactly() {
        let w = Window::new(0xFFFF_FFFF_0000_0000, 0x1_0000_0000);
        let mem = AddressSpace::new(
            ResourceKind::Memory { cacheable: true },
            Usage::Producer,
            w,
            8,
        )
        .unwrap();
        let bytes = encode(&mem);
        assert_eq!(bytes.len(), 46);
        assert_eq!(&bytes[14..22], &w.base.to_le_bytes());
        assert_eq!(&bytes[22..30], &u64::MAX.to_le_bytes());
        assert_eq!(&bytes[38..46], &w.size.to_le_bytes());
    }

    #[test]
    fn whole_64_bit_space_and_empty_windows_are_refused() {
        let kind = ResourceKind::Memory { cacheable: false };
        assert!(AddressSpace::new(kind, Usage::Producer, Window::new(0, 0), 8).is_none());
        assert!(AddressSpace::new(kind, Usage::Producer, Window::new(2, u64::MAX), 8).is_none());
        assert!(
            AddressSpace::new(kind, Usage::Producer, Window::inclusive(0, u64::MAX), 8).is_none()
        );
    }
}
