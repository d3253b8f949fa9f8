//! `Bar`: a region that is one of the device's base address registers, with its kind
//! (IO ports or memory) taken from config space as VFIO presents it.

use std::fmt;
use std::ops::Deref;

use super::region::Region;

/// Flag bits in the low bits of a BAR register (PCI Local Bus spec, 6.2.5.1).
const SPACE_IO: u32 = 1 << 0;
const MEMORY_TYPE_MASK: u32 = 0x3 << 1;
const MEMORY_TYPE_32: u32 = 0x0 << 1;
const MEMORY_TYPE_64: u32 = 0x2 << 1;
const PREFETCHABLE: u32 = 1 << 3;

/// What a BAR decodes: the one kind for a real device's BAR (as VFIO shows it) and a
/// virtual function's (as vpci presents it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// IO ports: reached only through pread/pwrite.
    Io,
    /// Memory that must be placed below 4 GiB.
    Memory32 {
        /// Reads have no side effects; the space may be prefetched and merged.
        prefetchable: bool,
    },
    /// Memory occupying this register and the next one, which holds the upper half of
    /// the address.
    Memory64 {
        /// Reads have no side effects; the space may be prefetched and merged.
        prefetchable: bool,
    },
}

impl BarKind {
    /// Decode a BAR register's flag bits; `None` for a reserved memory type.
    pub fn from_register(value: u32) -> Option<Self> {
        if value & SPACE_IO != 0 {
            return Some(Self::Io);
        }
        let prefetchable = value & PREFETCHABLE != 0;
        match value & MEMORY_TYPE_MASK {
            MEMORY_TYPE_32 => Some(Self::Memory32 { prefetchable }),
            MEMORY_TYPE_64 => Some(Self::Memory64 { prefetchable }),
            _ => None,
        }
    }

    /// As [`from_register`](Self::from_register), but a reserved memory type reads as
    /// 32-bit memory: a real device's BAR is taken as the device shows it, and what
    /// udriver needs is whether it decodes memory or IO ports.
    pub(crate) fn from_device_register(value: u32) -> Self {
        Self::from_register(value).unwrap_or(Self::Memory32 {
            prefetchable: value & PREFETCHABLE != 0,
        })
    }

    /// The read-only flag bits this kind shows in the low bits of its register.
    pub fn flags(self) -> u32 {
        let prefetch = |p: bool| if p { PREFETCHABLE } else { 0 };
        match self {
            Self::Io => SPACE_IO,
            Self::Memory32 { prefetchable } => MEMORY_TYPE_32 | prefetch(prefetchable),
            Self::Memory64 { prefetchable } => MEMORY_TYPE_64 | prefetch(prefetchable),
        }
    }

    /// True for an IO-port BAR.
    pub fn is_io(self) -> bool {
        self == Self::Io
    }

    /// True for a 64-bit memory BAR (the next BAR index holds its upper half).
    pub fn is_64bit(self) -> bool {
        matches!(self, Self::Memory64 { .. })
    }

    /// True for prefetchable memory.
    pub fn is_prefetchable(self) -> bool {
        matches!(
            self,
            Self::Memory32 { prefetchable: true } | Self::Memory64 { prefetchable: true }
        )
    }
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io => f.write_str("io"),
            Self::Memory32 { prefetchable } => {
                write!(f, "mem32{}", if *prefetchable { " pref" } else { "" })
            }
            Self::Memory64 { prefetchable } => {
                write!(f, "mem64{}", if *prefetchable { " pref" } else { "" })
            }
        }
    }
}

/// One BAR of a device: a [`Region`] (all its accessors via `Deref`) plus what it
/// decodes. IO-port BARs are never mmap'd; memory BARs are, where VFIO allows it.
#[derive(Debug)]
pub struct Bar {
    index: u8,
    kind: BarKind,
    region: Region,
}

impl Bar {
    pub(crate) fn new(index: u8, kind: BarKind, region: Region) -> Bar {
        Bar {
            index,
            kind,
            region,
        }
    }

    /// BAR number, 0..=5.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// IO or memory, 32 or 64 bit.
    pub fn kind(&self) -> BarKind {
        self.kind
    }

    /// The region, for code that takes any region.
    pub fn region(&self) -> &Region {
        &self.region
    }
}

impl Deref for Bar {
    type Target = Region;

    fn deref(&self) -> &Region {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bar_register_low_bits() {
        assert_eq!(BarKind::from_register(0x0000_01f1), Some(BarKind::Io));
        assert_eq!(BarKind::from_register(0x1), Some(BarKind::Io));
        assert_eq!(
            BarKind::from_register(0xfebc_0000),
            Some(BarKind::Memory32 {
                prefetchable: false
            })
        );
        assert_eq!(
            BarKind::from_register(0xfe00_000c),
            Some(BarKind::Memory64 { prefetchable: true })
        );
        assert!(!BarKind::from_device_register(0x4).is_io());
        assert!(BarKind::from_device_register(0x4).is_64bit());
    }

    #[test]
    fn a_device_register_with_a_reserved_memory_type_reads_as_32_bit_memory() {
        assert_eq!(BarKind::from_register(0x2), None);
        assert_eq!(
            BarKind::from_device_register(0xfe00_000a),
            BarKind::Memory32 { prefetchable: true }
        );
        assert_eq!(
            BarKind::from_device_register(0x6),
            BarKind::Memory32 {
                prefetchable: false
            }
        );
    }

    #[test]
    fn kinds_round_trip_through_flags() {
        for kind in [
            BarKind::Io,
            BarKind::Memory32 {
                prefetchable: false,
            },
            BarKind::Memory32 { prefetchable: true },
            BarKind::Memory64 {
                prefetchable: false,
            },
            BarKind::Memory64 { prefetchable: true },
        ] {
            assert_eq!(BarKind::from_register(kind.flags()), Some(kind));
            assert_eq!(BarKind::from_device_register(kind.flags()), kind);
        }
    }
}
