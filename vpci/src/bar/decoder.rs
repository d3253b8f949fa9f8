//! `BarDecoder`: which BAR answers which address, with no two decoding ranges overlapping.

use std::collections::BTreeMap;

use crate::bar::{AddressSpace, BarIndex};
use crate::bus::devfn::DevFn;

/// A BAR that currently decodes `[base, base + size)` in `space`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodedBar {
    /// The function owning the BAR.
    pub devfn: DevFn,
    /// Which of its BARs (or the ROM).
    pub bar: BarIndex,
    /// IO or memory.
    pub space: AddressSpace,
    /// Guest address the BAR is programmed at.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl DecodedBar {
    /// One past the last address (decoded ranges never wrap).
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `len` bytes at `address` lie inside the range.
    pub fn contains(&self, address: u64, len: u64) -> bool {
        address >= self.base && address.checked_add(len).is_some_and(|e| e <= self.end())
    }
}

/// Decoding ranges of every active BAR, per address space, kept disjoint.
#[derive(Clone, Debug, Default)]
pub struct BarDecoder {
    io: BTreeMap<u64, DecodedBar>,
    memory: BTreeMap<u64, DecodedBar>,
}

impl BarDecoder {
    /// Nothing decoding.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self, space: AddressSpace) -> &BTreeMap<u64, DecodedBar> {
        match space {
            AddressSpace::Io => &self.io,
            AddressSpace::Memory => &self.memory,
        }
    }

    fn map_mut(&mut self, space: AddressSpace) -> &mut BTreeMap<u64, DecodedBar> {
        match space {
            AddressSpace::Io => &mut self.io,
            AddressSpace::Memory => &mut self.memory,
        }
    }

    /// The active range that `[base, base + size)` would overlap, if any.
    pub fn conflict(&self, space: AddressSpace, base: u64, size: u64) -> Option<DecodedBar> {
        let end = base.checked_add(size)?;
        self.map(space)
            .range(..end)
            .next_back()
            .map(|(_, d)| *d)
            .filter(|d| d.end() > base)
    }

    /// Start decoding `bar`; refused (returning the range in the way) if it would
    /// overlap an active range, or if it is empty or wraps.
    pub fn insert(&mut self, bar: DecodedBar) -> Result<(), Option<DecodedBar>> {
        if bar.size == 0 || bar.base.checked_add(bar.size).is_none() {
            return Err(None);
        }
        if let Some(other) = self.conflict(bar.space, bar.base, bar.size) {
            return Err(Some(other));
        }
        self.map_mut(bar.space).insert(bar.base, bar);
        Ok(())
    }

    /// Stop decoding the range starting at `base` in `space`, if active.
    pub fn remove(&mut self, space: AddressSpace, base: u64) -> Option<DecodedBar> {
        self.map_mut(space).remove(&base)
    }

    /// The BAR decoding `address`, if any.
    pub fn lookup(&self, space: AddressSpace, address: u64) -> Option<DecodedBar> {
        self.map(space)
            .range(..=address)
            .next_back()
            .map(|(_, d)| *d)
            .filter(|d| address < d.end())
    }

    /// Every active range, IO first, each space in address order.
    pub fn iter(&self) -> impl Iterator<Item = &DecodedBar> {
        self.io.values().chain(self.memory.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(base: u64, size: u64) -> DecodedBar {
        DecodedBar {
            devfn: DevFn::new(1, 0).unwrap(),
            bar: BarIndex::new(0).unwrap(),
            space: AddressSpace::Memory,
            base,
            size,
        }
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut decoder = BarDecoder::new();
        decoder.insert(decoded(0x1000, 0x1000)).unwrap();
        decoder.insert(decoded(0x3000, 0x1000)).unwrap();
        assert_eq!(
            decoder.insert(decoded(0x1800, 0x1000)),
            Err(Some(decoded(0x1000, 0x1000)))
        );
        assert_eq!(
            decoder.insert(decoded(0x0, 0x4000)),
            Err(Some(decoded(0x3000, 0x1000)))
        );
        assert!(decoder.insert(decoded(0x2000, 0x1000)).is_ok());
        assert_eq!(decoder.insert(decoded(u64::MAX - 1, 4)), Err(None));
        let io = DecodedBar {
            space: AddressSpace::Io,
            ..decoded(0x1000, 0x20)
        };
        assert!(
            decoder.insert(io).is_ok(),
            "IO and memory are separate spaces"
        );
    }

    #[test]
    fn lookup_finds_the_owner() {
        let mut decoder = BarDecoder::new();
        decoder.insert(decoded(0x1000, 0x1000)).unwrap();
        assert_eq!(
            decoder.lookup(AddressSpace::Memory, 0x1fff).map(|d| d.base),
            Some(0x1000)
        );
        assert_eq!(decoder.lookup(AddressSpace::Memory, 0x2000), None);
        assert_eq!(decoder.lookup(AddressSpace::Memory, 0xfff), None);
        assert_eq!(decoder.lookup(AddressSpace::Io, 0x1000), None);
        assert!(decoder.remove(AddressSpace::Memory, 0x1000).is_some());
        assert_eq!(decoder.lookup(AddressSpace::Memory, 0x1000), None);
        assert!(decoded(0x1000, 0x1000).contains(0x1ffc, 4));
        assert!(!decoded(0x1000, 0x1000).contains(0x1ffe, 4));
    }
}
