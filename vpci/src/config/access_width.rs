//! The width of a configuration-space access.

use std::fmt;

/// Width of a configuration access: PCI config cycles are 1, 2 or 4 bytes wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessWidth {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Word,
    /// 4 bytes.
    Dword,
}

impl AccessWidth {
    /// All widths, narrowest first.
    pub const ALL: [AccessWidth; 3] = [AccessWidth::Byte, AccessWidth::Word, AccessWidth::Dword];

    /// The width of an access of `len` bytes, if config space supports it.
    pub fn from_len(len: usize) -> Option<Self> {
        match len {
            1 => Some(Self::Byte),
            2 => Some(Self::Word),
            4 => Some(Self::Dword),
            _ => None,
        }
    }

    /// Number of bytes accessed.
    pub fn bytes(self) -> usize {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
        }
    }

    /// Mask covering the bytes of this width in a `u32`.
    pub fn mask(self) -> u32 {
        match self {
            Self::Byte => 0xff,
            Self::Word => 0xffff,
            Self::Dword => 0xffff_ffff,
        }
    }

    /// Whether `offset` is naturally aligned for this width.
    pub fn is_aligned(self, offset: u64) -> bool {
        offset.is_multiple_of(self.bytes() as u64)
    }
}

impl fmt::Display for AccessWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Byte => f.write_str("byte"),
            Self::Word => f.write_str("word"),
            Self::Dword => f.write_str("dword"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_round_trip_through_lengths() {
        for w in AccessWidth::ALL {
            assert_eq!(AccessWidth::from_len(w.bytes()), Some(w));
            assert_eq!(w.mask().count_ones() as usize, w.bytes() * 8);
        }
        assert_eq!(AccessWidth::from_len(3), None);
        assert_eq!(AccessWidth::from_len(8), None);
    }

    #[test]
    fn alignment_is_natural() {
        assert!(AccessWidth::Word.is_aligned(2));
        assert!(!AccessWidth::Word.is_aligned(3));
        assert!(AccessWidth::Dword.is_aligned(0x104));
        assert!(!AccessWidth::Dword.is_aligned(0x102));
        assert!(AccessWidth::Byte.is_aligned(0x3f));
    }
}
