//! `ConfigOverlay`: which config bits a passthrough function keeps virtually and which
//! are the real device's.
//!
//! A guest read merges the two: virtual bits from the function's [`ConfigSpace`],
//! the others read from the device. A guest write updates the virtual bits (through
//! the space's masks) and forwards the others; where one access mixes both, the
//! virtual bits are written to the device with the device's own values, so that e.g.
//! a command write carries bus mastering through but leaves the device's real
//! decode enables alone.
//!
//! [`ConfigSpace`]: crate::ConfigSpace

use crate::config::access_width::AccessWidth;

/// Per-bit: set = kept virtually, clear = the device's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigOverlay {
    virtual_bits: Vec<u8>,
}

impl ConfigOverlay {
    /// An overlay of `len` bytes where every bit is the device's.
    pub fn new(len: usize) -> Self {
        Self {
            virtual_bits: vec![0; len],
        }
    }

    /// Keep `len` whole bytes from `offset` virtually (clamped to the space).
    pub fn virtualise(&mut self, offset: u16, len: u16) {
        let start = usize::from(offset).min(self.virtual_bits.len());
        let end = (usize::from(offset) + usize::from(len)).min(self.virtual_bits.len());
        self.virtual_bits[start..end].fill(0xff);
    }

    /// Set (`virtual_bits = true`) or clear the bits of `mask` in the register of
    /// `width` at `offset`.
    pub fn set_bits(&mut self, offset: u16, width: AccessWidth, mask: u32, virtual_bits: bool) {
        for i in 0..width.bytes() {
            let Some(byte) = self.virtual_bits.get_mut(usize::from(offset) + i) else {
                return;
            };
            let m = (mask >> (8 * i)) as u8;
            if virtual_bits {
                *byte |= m;
            } else {
                *byte &= !m;
            }
        }
    }

    /// The virtual bits of an access of `width` at `offset` (bytes past the end count
    /// as virtual: the device is never asked about them).
    pub fn mask(&self, offset: u16, width: AccessWidth) -> u32 {
        (0..width.bytes()).fold(0, |acc, i| {
            let byte = self
                .virtual_bits
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0xff);
            acc | (u32::from(byte) << (8 * i))
        })
    }

    /// Whether the whole access is virtual.
    pub fn is_virtual(&self, offset: u16, width: AccessWidth) -> bool {
        self.mask(offset, width) == width.mask()
    }

    /// The guest's view: virtual bits from `virtual_value`, the rest from `device_value`.
    pub fn merge(virtual_mask: u32, virtual_value: u32, device_value: u32) -> u32 {
        (virtual_value & virtual_mask) | (device_value & !virtual_mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessWidth::{Byte, Dword, Word};

    #[test]
    fn bits_and_bytes_combine_into_masks() {
        let mut overlay = ConfigOverlay::new(0x100);
        assert_eq!(overlay.mask(0x04, Dword), 0);
        overlay.virtualise(0x00, 0x40);
        overlay.set_bits(0x04, Word, 0x0404, false);
        overlay.set_bits(0x06, Word, !0x0010, false);
        assert_eq!(overlay.mask(0x04, Dword), 0x0010_fbfb);
        assert_eq!(overlay.mask(0x05, Byte), 0xfb);
        assert!(overlay.is_virtual(0x10, Dword));
        assert!(!overlay.is_virtual(0x40, Byte));
        overlay.set_bits(0x40, Word, 0x00f0, true);
        assert_eq!(overlay.mask(0x40, Dword), 0x00f0);
    }

    #[test]
    fn bytes_past_the_end_are_virtual() {
        let mut overlay = ConfigOverlay::new(0x100);
        overlay.virtualise(0xfe, 0x10);
        overlay.set_bits(0xff, Word, 0, true);
        assert_eq!(overlay.mask(0xfc, Dword), 0xffff_0000);
        assert!(overlay.is_virtual(0x100, Dword));
    }

    #[test]
    fn merge_takes_virtual_bits_from_the_model() {
        // Decode bits from the model, bus master (bit 2) from the device.
        assert_eq!(ConfigOverlay::merge(0xfffb, 0x0003, 0x0146), 0x0007);
        assert_eq!(ConfigOverlay::merge(0, 1, 2), 2);
        assert_eq!(ConfigOverlay::merge(u32::MAX, 1, 2), 1);
    }
}
