//! Device-visible addresses.
//!
//! An IOVA is what a device puts on the bus; the IOMMU translates it to host memory.
//! It is a distinct type so it cannot be confused with a guest-physical address or a
//! host virtual address, even when a policy makes them numerically equal.

use std::fmt;

use crate::error::DmaError;

/// An I/O virtual address: the address a device uses for DMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    pub const fn checked_add(self, offset: u64) -> Option<Iova> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Iova(v)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A non-empty, non-wrapping range of IOVAs `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IovaRange {
    start: Iova,
    len: u64,
}

impl IovaRange {
    /// The range `[start, start + len)`; errors if `len` is zero or the range passes the
    /// end of the 64-bit address space.
    pub fn new(start: Iova, len: u64) -> Result<IovaRange, DmaError> {
        if len == 0 {
            return Err(DmaError::EmptyRange { start: start.0 });
        }
        // The last byte must be addressable; `start + len` may equal 2^64.
        if start.0.checked_add(len - 1).is_none() {
            return Err(DmaError::RangeOverflow {
                start: start.0,
                len,
            });
        }
        Ok(IovaRange { start, len })
    }

    /// The range `[start, last]`, inclusive, as IOMMUs report usable windows.
    pub fn from_inclusive(start: Iova, last: Iova) -> Result<IovaRange, DmaError> {
        if last < start {
            return Err(DmaError::EmptyRange { start: start.0 });
        }
        match (last.0 - start.0).checked_add(1) {
            Some(len) => IovaRange::new(start, len),
            None => Err(DmaError::RangeOverflow {
                start: start.0,
                len: u64::MAX,
            }),
        }
    }

    /// First address.
    pub const fn start(&self) -> Iova {
        self.start
    }

    /// Length in bytes (never zero).
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Always false: an `IovaRange` is never empty. Present for API symmetry.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Last address in the range (inclusive).
    pub const fn last(&self) -> Iova {
        Iova(self.start.0 + (self.len - 1))
    }

    /// One past the last address, or `None` if that is 2^64.
    pub const fn end(&self) -> Option<Iova> {
        self.start.checked_add(self.len)
    }

    /// Whether `iova` lies in the range.
    pub const fn contains(&self, iova: Iova) -> bool {
        iova.0 >= self.start.0 && iova.0 <= self.last().0
    }

    /// Whether `other` lies entirely within this range.
    pub const fn contains_range(&self, other: &IovaRange) -> bool {
        other.start.0 >= self.start.0 && other.last().0 <= self.last().0
    }

    /// Errors unless start and length are multiples of `align` (a power of two).
    pub fn check_alignment(&self, align: u64) -> Result<(), DmaError> {
        if !self.start.is_aligned(align) {
            return Err(DmaError::Misaligned {
                what: "iova",
                value: self.start.0,
                align,
            });
        }
        if self.len & (align - 1) != 0 {
            return Err(DmaError::Misaligned {
                what: "size",
                value: self.len,
                align,
            });
        }
        Ok(())
    }

    /// Whether the two ranges share at least one address.
    pub const fn overlaps(&self, other: &IovaRange) -> bool {
        self.start.0 <= other.last().0 && other.start.0 <= self.last().0
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x}]", self.start.0, self.last().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rejects_empty_and_wrapping() {
        assert!(IovaRange::new(Iova(0x1000), 0).is_err());
        assert!(IovaRange::new(Iova(u64::MAX), 2).is_err());
        let top = IovaRange::new(Iova(u64::MAX - 0xfff), 0x1000).unwrap();
        assert_eq!(top.last(), Iova(u64::MAX));
        assert_eq!(top.end(), None);
    }

    #[test]
    fn inclusive_matches_vfio_reporting() {
        let r = IovaRange::from_inclusive(Iova(0), Iova(0xfedf_ffff)).unwrap();
        assert_eq!(r.len(), 0xfee0_0000);
        assert!(IovaRange::from_inclusive(Iova(0), Iova(u64::MAX)).is_err());
        assert!(IovaRange::from_inclusive(Iova(2), Iova(1)).is_err());
    }

    #[test]
    fn overlap_and_containment() {
        let a = IovaRange::new(Iova(0x1000), 0x2000).unwrap();
        let b = IovaRange::new(Iova(0x2fff), 0x10).unwrap();
        let c = IovaRange::new(Iova(0x3000), 0x1000).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert!(a.contains(Iova(0x2fff)));
        assert!(!a.contains(Iova(0x3000)));
        assert!(a.contains_range(&IovaRange::new(Iova(0x1000), 0x2000).unwrap()));
        assert!(!a.contains_range(&b));
    }
}
