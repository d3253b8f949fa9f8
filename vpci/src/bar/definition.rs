//! Base address registers as a function declares them: which index, which kind, how big,
//! and how the guest-visible register encodes them.

use std::fmt;

use thiserror::Error;

use crate::config::regs::{bar, header, rom};

/// One of a type 0 function's address decoders: BAR0..=BAR5 or the expansion ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BarIndex(u8);

impl BarIndex {
    /// The expansion ROM base address register.
    pub const ROM: BarIndex = BarIndex(6);

    /// BAR `index` (0..=5); `None` for anything else.
    pub fn new(index: u8) -> Option<Self> {
        (index < header::BAR_COUNT as u8).then_some(Self(index))
    }

    /// BAR0..=BAR5 followed by the ROM.
    pub fn all() -> impl Iterator<Item = BarIndex> {
        (0..=6).map(BarIndex)
    }

    /// 0..=5 for BARs, 6 for the ROM.
    pub fn get(self) -> u8 {
        self.0
    }

    /// This is the expansion ROM, not BAR0..=BAR5.
    pub fn is_rom(self) -> bool {
        self == Self::ROM
    }

    /// Offset of this decoder's register in config space.
    pub fn config_offset(self) -> u16 {
        if self.is_rom() {
            header::ROM_ADDRESS
        } else {
            header::bar(self.0)
        }
    }
}

impl fmt::Display for BarIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_rom() {
            f.write_str("ROM")
        } else {
            write!(f, "BAR{}", self.0)
        }
    }
}

/// The address space a decoder claims addresses in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressSpace {
    /// IO ports (16-bit on x86).
    Io,
    /// Memory (MMIO) addresses.
    Memory,
}

/// What kind of BAR a function implements: udriver's, the same for a real device's BAR
/// and a virtual one.
pub use udriver::vfio::BarKind;

impl From<BarKind> for AddressSpace {
    /// The space a BAR of this kind claims addresses in.
    fn from(kind: BarKind) -> Self {
        match kind {
            BarKind::Io => Self::Io,
            BarKind::Memory32 { .. } | BarKind::Memory64 { .. } => Self::Memory,
        }
    }
}

/// A BAR as a function implements it: its kind and its size (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BarDefinition {
    /// IO, 32-bit or 64-bit memory, and prefetchability.
    pub kind: BarKind,
    /// Size in bytes, a power of two within the kind's limits.
    pub size: u64,
}

/// Smallest I/O BAR (the two low bits are flags).
pub const MIN_IO_BAR_SIZE: u64 = 4;
/// Largest I/O BAR: the whole 16-bit port space.
pub const MAX_IO_BAR_SIZE: u64 = 0x1_0000;
/// Smallest memory BAR (the four low bits are flags).
pub const MIN_MEMORY_BAR_SIZE: u64 = 16;
/// Largest 32-bit memory BAR: half the 32-bit space, as the register format allows.
pub const MAX_MEMORY32_BAR_SIZE: u64 = 1 << 31;
/// Largest 64-bit memory BAR.
pub const MAX_MEMORY64_BAR_SIZE: u64 = 1 << 63;

/// Why a BAR definition cannot be implemented.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BarError {
    /// A size that is not a power of two, or outside what the kind can encode.
    #[error("{index} ({kind}) size {size:#x}: not a power of two between {min:#x} and {max:#x}")]
    BadSize {
        /// The BAR.
        index: BarIndex,
        /// Its kind.
        kind: BarKind,
        /// The size asked for, in bytes.
        size: u64,
        /// Smallest size the kind allows.
        min: u64,
        /// Largest size the kind allows.
        max: u64,
    },
    /// A 64-bit BAR at BAR5, which has no register after it.
    #[error("{index}: a 64-bit BAR needs the next register for its upper half; use BAR0..=BAR4")]
    NoRoomForUpperHalf {
        /// The BAR.
        index: BarIndex,
    },
    /// A BAR at the register holding a 64-bit BAR's upper half.
    #[error("{index}: already the upper half of 64-bit {lower}; pick another index")]
    UpperHalfInUse {
        /// The BAR asked for.
        index: BarIndex,
        /// The 64-bit BAR whose upper half it is.
        lower: BarIndex,
    },
    /// A BAR (or ROM, or a 64-bit BAR's upper half) defined twice.
    #[error("{index}: already implemented; each BAR is defined once")]
    AlreadyDefined {
        /// The register already in use.
        index: BarIndex,
    },
    /// A ROM size that is not a power of two from 2 KiB to 2 GiB.
    #[error("ROM size {size:#x}: not a power of two between 0x800 and 0x80000000")]
    BadRomSize {
        /// The size asked for, in bytes.
        size: u64,
    },
}

impl BarDefinition {
    /// A BAR of `kind` and `size` bytes, checked when it is added to a layout.
    pub fn new(kind: BarKind, size: u64) -> Self {
        Self { kind, size }
    }

    /// Check that `index` can hold this BAR with its size.
    pub fn validate(&self, index: BarIndex) -> Result<(), BarError> {
        let (min, max) = match self.kind {
            BarKind::Io => (MIN_IO_BAR_SIZE, MAX_IO_BAR_SIZE),
            BarKind::Memory32 { .. } => (MIN_MEMORY_BAR_SIZE, MAX_MEMORY32_BAR_SIZE),
            BarKind::Memory64 { .. } => (MIN_MEMORY_BAR_SIZE, MAX_MEMORY64_BAR_SIZE),
        };
        if !self.size.is_power_of_two() || self.size < min || self.size > max {
            return Err(BarError::BadSize {
                index,
                kind: self.kind,
                size: self.size,
                min,
                max,
            });
        }
        if self.kind.is_64bit() && index.get() + 1 >= header::BAR_COUNT as u8 {
            return Err(BarError::NoRoomForUpperHalf { index });
        }
        Ok(())
    }

    /// Writable bits of the low register: the address bits above the size.
    pub fn low_writable_mask(&self) -> u32 {
        let size_mask = !(self.size - 1);
        let address_bits = match self.kind {
            BarKind::Io => bar::IO_ADDRESS_MASK,
            _ => bar::MEMORY_ADDRESS_MASK,
        };
        (size_mask as u32) & address_bits
    }

    /// Writable bits of the upper register of a 64-bit BAR.
    pub fn high_writable_mask(&self) -> u32 {
        (!(self.size - 1) >> 32) as u32
    }

    /// The address a guest programmed, from the low (and, for 64-bit, high) register.
    pub fn address_from_registers(&self, low: u32, high: u32) -> u64 {
        match self.kind {
            BarKind::Io => u64::from(low & bar::IO_ADDRESS_MASK),
            BarKind::Memory32 { .. } => u64::from(low & bar::MEMORY_ADDRESS_MASK),
            BarKind::Memory64 { .. } => {
                u64::from(low & bar::MEMORY_ADDRESS_MASK) | (u64::from(high) << 32)
            }
        }
    }
}

/// Check an expansion ROM size.
pub fn validate_rom_size(size: u64) -> Result<(), BarError> {
    if !size.is_power_of_two() || size < u64::from(rom::MIN_SIZE) || size > 1 << 31 {
        return Err(BarError::BadRomSize { size });
    }
    Ok(())
}

/// Writable bits of a ROM BAR register of `size` bytes: address bits and the enable bit.
pub fn rom_writable_mask(size: u64) -> u32 {
    ((!(size - 1)) as u32 & rom::ADDRESS_MASK) | rom::ENABLE
}

/// All of a function's decoders: which BARs exist and the ROM's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarLayout {
    bars: [Option<BarDefinition>; header::BAR_COUNT],
    rom_size: Option<u64>,
}

impl BarLayout {
    /// No BARs and no ROM.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add BAR `index`; refuses overlaps with a 64-bit pair and invalid sizes.
    pub fn set(&mut self, index: BarIndex, definition: BarDefinition) -> Result<(), BarError> {
        if index.is_rom() {
            return self.set_rom(definition.size);
        }
        definition.validate(index)?;
        let i = usize::from(index.get());
        if self.bars[i].is_some() {
            return Err(BarError::AlreadyDefined { index });
        }
        if let Some(lower) = self.upper_half_of(index) {
            return Err(BarError::UpperHalfInUse { index, lower });
        }
        if definition.kind.is_64bit() && self.bars[i + 1].is_some() {
            return Err(BarError::AlreadyDefined {
                index: BarIndex(index.get() + 1),
            });
        }
        self.bars[i] = Some(definition);
        Ok(())
    }

    /// Add an expansion ROM of `size` bytes.
    pub fn set_rom(&mut self, size: u64) -> Result<(), BarError> {
        validate_rom_size(size)?;
        if self.rom_size.is_some() {
            return Err(BarError::AlreadyDefined {
                index: BarIndex::ROM,
            });
        }
        self.rom_size = Some(size);
        Ok(())
    }

    /// The definition of BAR `index` (the ROM shows as a 32-bit, non-prefetchable BAR).
    pub fn get(&self, index: BarIndex) -> Option<BarDefinition> {
        if index.is_rom() {
            self.rom_size.map(|size| BarDefinition {
                kind: BarKind::Memory32 {
                    prefetchable: false,
                },
                size,
            })
        } else {
            self.bars[usize::from(index.get())]
        }
    }

    /// The expansion ROM's size in bytes, if there is one.
    pub fn rom_size(&self) -> Option<u64> {
        self.rom_size
    }

    /// If `index` is the upper half of a 64-bit BAR, the index of its lower half.
    pub fn upper_half_of(&self, index: BarIndex) -> Option<BarIndex> {
        let i = index.get();
        if index.is_rom() || i == 0 {
            return None;
        }
        let lower = BarIndex(i - 1);
        self.get(lower).filter(|d| d.kind.is_64bit()).map(|_| lower)
    }

    /// Every implemented decoder, BARs first, then the ROM.
    pub fn iter(&self) -> impl Iterator<Item = (BarIndex, BarDefinition)> + '_ {
        BarIndex::all().filter_map(|i| self.get(i).map(|d| (i, d)))
    }

    /// Whether no decoder is implemented.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem64(size: u64) -> BarDefinition {
        BarDefinition::new(BarKind::Memory64 { prefetchable: true }, size)
    }

    #[test]
    fn sizes_must_be_powers_of_two_in_range() {
        let b0 = BarIndex::new(0).unwrap();
        assert!(BarDefinition::new(BarKind::Io, 0x20).validate(b0).is_ok());
        assert!(BarDefinition::new(BarKind::Io, 0x30).validate(b0).is_err());
        assert!(BarDefinition::new(BarKind::Io, 2).validate(b0).is_err());
        let mem32 = BarKind::Memory32 {
            prefetchable: false,
        };
        assert!(BarDefinition::new(mem32, 8).validate(b0).is_err());
        assert!(BarDefinition::new(mem32, 1 << 32).validate(b0).is_err());
        assert!(mem64(1 << 36).validate(b0).is_ok());
        let err = mem64(0x1000)
            .validate(BarIndex::new(5).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("BAR5"), "{err}");
    }

    #[test]
    fn masks_encode_the_size() {
        let d = BarDefinition::new(
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x2_0000,
        );
        assert_eq!(d.low_writable_mask(), 0xfffe_0000);
        let io = BarDefinition::new(BarKind::Io, 0x40);
        assert_eq!(io.low_writable_mask(), 0xffff_ffc0);
        let big = mem64(1 << 33);
        assert_eq!(big.low_writable_mask(), 0);
        assert_eq!(big.high_writable_mask(), 0xffff_fffe);
        assert_eq!(rom_writable_mask(0x1_0000), 0xffff_0001);
    }

    #[test]
    fn addresses_decode_per_kind() {
        assert_eq!(
            mem64(0x1000).address_from_registers(0xfebc_000c, 0x1),
            0x1_febc_0000
        );
        let io = BarDefinition::new(BarKind::Io, 0x20);
        assert_eq!(io.address_from_registers(0xc041, 0xffff_ffff), 0xc040);
    }

    #[test]
    fn layout_refuses_overlapping_pairs() {
        let mut layout = BarLayout::new();
        layout
            .set(BarIndex::new(2).unwrap(), mem64(0x4000))
            .unwrap();
        let io = BarDefinition::new(BarKind::Io, 0x20);
        assert!(matches!(
            layout.set(BarIndex::new(3).unwrap(), io),
            Err(BarError::UpperHalfInUse { .. })
        ));
        layout.set(BarIndex::new(0).unwrap(), io).unwrap();
        assert!(matches!(
            layout.set(BarIndex::new(1).unwrap(), mem64(0x1000)),
            Err(BarError::AlreadyDefined { .. })
        ));
        layout.set_rom(0x8000).unwrap();
        let indices: Vec<u8> = layout.iter().map(|(i, _)| i.get()).collect();
        assert_eq!(indices, vec![0, 2, 6]);
        assert_eq!(
            layout.upper_half_of(BarIndex::new(3).unwrap()),
            BarIndex::new(2)
        );
    }
}
