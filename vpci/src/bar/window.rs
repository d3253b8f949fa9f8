//! Address windows the root bridge forwards to the bus (IO, MEM32, MEM64), and placing
//! BARs in them the way firmware does: naturally aligned, lowest free address first.

use std::fmt;
use std::ops::Range;

/// `size` bytes of address space from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressWindow {
    /// First address.
    pub base: u64,
    /// Length in bytes (IO ports for an IO window).
    pub size: u64,
}

impl AddressWindow {
    /// `size` bytes from `base`, unchecked: a window may wrap (see [`AddressWindow::end`]).
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last address, or `None` if the window wraps past `u64::MAX`.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }

    /// Whether `[base, base + size)` lies entirely inside this window.
    pub fn contains(&self, base: u64, size: u64) -> bool {
        match (base.checked_add(size), self.end()) {
            (Some(end), Some(window_end)) => size > 0 && base >= self.base && end <= window_end,
            _ => false,
        }
    }

    /// Whether the two windows share an address.
    pub fn overlaps(&self, other: &AddressWindow) -> bool {
        let a_end = self.end().unwrap_or(u64::MAX);
        let b_end = other.end().unwrap_or(u64::MAX);
        self.size > 0 && other.size > 0 && self.base < b_end && other.base < a_end
    }

    /// The lowest `size`-aligned base inside this window where `size` bytes avoid
    /// every range in `occupied`. `size` must be a power of two.
    pub fn find_free(&self, size: u64, occupied: &[Range<u64>]) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let window_end = self.end()?;
        let align = |a: u64| a.checked_next_multiple_of(size);
        let mut sorted: Vec<&Range<u64>> = occupied.iter().filter(|r| r.start < r.end).collect();
        sorted.sort_by_key(|r| r.start);
        let mut candidate = align(self.base)?;
        for range in sorted {
            let end = candidate.checked_add(size)?;
            if range.end <= candidate {
                continue;
            }
            if range.start >= end {
                break;
            }
            candidate = align(range.end)?;
        }
        let end = candidate.checked_add(size)?;
        (end <= window_end).then_some(candidate)
    }
}

impl fmt::Display for AddressWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end() {
            Some(end) if self.size > 0 => write!(f, "{:#x}-{:#x}", self.base, end - 1),
            _ => write!(f, "{:#x}+{:#x}", self.base, self.size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_is_exact_and_overflow_safe() {
        let w = AddressWindow::new(0x1000, 0x1000);
        assert!(w.contains(0x1000, 0x1000));
        assert!(w.contains(0x1ff0, 0x10));
        assert!(!w.contains(0x1ff0, 0x20));
        assert!(!w.contains(0xff0, 0x20));
        assert!(!w.contains(0x1800, 0));
        assert!(!w.contains(u64::MAX, 2));
        assert_eq!(w.to_string(), "0x1000-0x1fff");
    }

    #[test]
    fn placement_is_aligned_and_fills_gaps() {
        let w = AddressWindow::new(0xc000_0000, 0x100_0000);
        assert_eq!(w.find_free(0x1000, &[]), Some(0xc000_0000));
        let taken = [0xc000_0000..0xc000_1000, 0xc000_4000..0xc000_8000];
        assert_eq!(w.find_free(0x1000, &taken), Some(0xc000_1000));
        assert_eq!(w.find_free(0x4000, &taken), Some(0xc000_8000));
        assert_eq!(w.find_free(0x2000, &taken), Some(0xc000_2000));
        assert_eq!(w.find_free(0x200_0000, &[]), None);
        assert_eq!(w.find_free(0x3000, &[]), None, "not a power of two");
        let unaligned = AddressWindow::new(0xd00, 0xf300);
        assert_eq!(unaligned.find_free(0x100, &[]), Some(0xd00));
        assert_eq!(unaligned.find_free(0x1000, &[]), Some(0x1000));
    }

    #[test]
    fn windows_overlap_when_they_share_an_address() {
        let a = AddressWindow::new(0x1000, 0x1000);
        assert!(a.overlaps(&AddressWindow::new(0x1fff, 1)));
        assert!(!a.overlaps(&AddressWindow::new(0x2000, 1)));
        assert!(!a.overlaps(&AddressWindow::new(0x1800, 0)));
    }
}
