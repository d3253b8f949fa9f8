//! `Bar`: a region that is one of the device's base address registers, with its kind
//! (IO ports or memory) taken from config space as VFIO presents it.

use std::ops::Deref;

use super::region::Region;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// IO ports: reached only through pread/pwrite.
    Io,
    /// Memory.
    Memory {
        /// A 64-bit BAR (the next BAR index holds its upper half).
        is_64bit: bool,
        /// Prefetchable.
        prefetchable: bool,
    },
}

impl BarKind {
    /// Decode the low bits of a BAR register.
    pub fn from_register(value: u32) -> BarKind {
        if value & 1 != 0 {
            BarKind::Io
        } else {
            BarKind::Memory {
                is_64bit: (value >> 1) & 3 == 2,
                prefetchable: value & 8 != 0,
            }
        }
    }

    /// True for an IO-port BAR.
    pub fn is_io(self) -> bool {
        self == BarKind::Io
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
        assert_eq!(BarKind::from_register(0x0000_01f1), BarKind::Io);
        assert_eq!(BarKind::from_register(0x1), BarKind::Io);
        assert_eq!(
            BarKind::from_register(0xfebc_0000),
            BarKind::Memory {
                is_64bit: false,
                prefetchable: false
            }
        );
        assert_eq!(
            BarKind::from_register(0xfe00_000c),
            BarKind::Memory {
                is_64bit: true,
                prefetchable: true
            }
        );
        assert!(!BarKind::from_register(0x4).is_io());
    }
}
