//! ECAM (PCIe enhanced configuration access mechanism) address decoding: each function's
//! 4 KiB of config space is memory-mapped at
//! `offset = bus << 20 | device << 15 | function << 12 | register`.

use crate::bus::devfn::DevFn;

/// ECAM bytes per bus: 32 devices x 8 functions x 4 KiB.
pub const BYTES_PER_BUS: u64 = 1 << 20;
const BUS_SHIFT: u32 = 20;
const DEVFN_SHIFT: u32 = 12;
const REGISTER_MASK: u64 = 0xfff;

/// The config register an ECAM offset names. `bus` is relative to the ECAM area's
/// first bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamAddress {
    /// Bus number, relative to the area's first bus.
    pub bus: u8,
    /// Device and function.
    pub devfn: DevFn,
    /// Config-space byte offset, below 4 KiB.
    pub register: u16,
}

impl EcamAddress {
    /// Decode an offset into an ECAM area of `buses` buses; `None` past its end.
    pub fn decode(offset: u64, buses: u16) -> Option<Self> {
        if offset >= u64::from(buses) * BYTES_PER_BUS {
            return None;
        }
        Some(Self {
            bus: (offset >> BUS_SHIFT) as u8,
            devfn: DevFn::from_raw((offset >> DEVFN_SHIFT) as u8),
            register: (offset & REGISTER_MASK) as u16,
        })
    }

    /// The ECAM offset of this register.
    pub fn offset(&self) -> u64 {
        u64::from(self.bus) << BUS_SHIFT
            | u64::from(self.devfn.raw()) << DEVFN_SHIFT
            | u64::from(self.register)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bus_device_function_register() {
        let a = EcamAddress::decode(0x0001_a104, 2).unwrap();
        assert_eq!(a.bus, 0);
        assert_eq!(a.devfn, DevFn::new(3, 2).unwrap());
        assert_eq!(a.register, 0x104);
        assert_eq!(a.offset(), 0x0001_a104);
        let b = EcamAddress::decode(0x0010_0000 | 0xf8_000 | 0x7000 | 0xffc, 2).unwrap();
        assert_eq!(
            (b.bus, b.devfn.device(), b.devfn.function(), b.register),
            (1, 31, 7, 0xffc)
        );
        assert_eq!(EcamAddress::decode(0x0020_0000, 2), None);
        assert!(EcamAddress::decode(0xfff_ffff, 256).is_some());
    }
}
