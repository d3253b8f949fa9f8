//! `DevFn`: a function's address on the virtual root bus (device 0..32, function 0..8).

use std::fmt;

/// Devices on a bus.
pub const DEVICES_PER_BUS: u8 = 32;
/// Functions in a device.
pub const FUNCTIONS_PER_DEVICE: u8 = 8;

/// Device and function number on the root bus, packed as PCI does (device << 3 | function).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevFn(u8);

impl DevFn {
    /// Where the host bridge lives.
    pub const HOST_BRIDGE: DevFn = DevFn(0);

    /// Device `device` (0..32), function `function` (0..8); `None` if out of range.
    pub fn new(device: u8, function: u8) -> Option<Self> {
        (device < DEVICES_PER_BUS && function < FUNCTIONS_PER_DEVICE)
            .then_some(Self(device << 3 | function))
    }

    /// From the packed 8-bit form (every value is valid).
    pub fn from_raw(raw: u8) -> Self {
        Self(raw)
    }

    /// The packed 8-bit form.
    pub fn raw(self) -> u8 {
        self.0
    }

    /// Device number, 0..32.
    pub fn device(self) -> u8 {
        self.0 >> 3
    }

    /// Function number, 0..8.
    pub fn function(self) -> u8 {
        self.0 & 0x7
    }

    /// Every device/function number, in scan order.
    pub fn all() -> impl Iterator<Item = DevFn> {
        (0..=u8::MAX).map(DevFn)
    }
}

impl fmt::Display for DevFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{}", self.device(), self.function())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_pci() {
        let d = DevFn::new(0x1f, 3).unwrap();
        assert_eq!(d.raw(), 0xfb);
        assert_eq!((d.device(), d.function()), (0x1f, 3));
        assert_eq!(d.to_string(), "1f.3");
        assert_eq!(DevFn::new(32, 0), None);
        assert_eq!(DevFn::new(0, 8), None);
        assert_eq!(DevFn::all().count(), 256);
        assert_eq!(DevFn::from_raw(0x18), DevFn::new(3, 0).unwrap());
    }
}
