//! Legacy INTx routing of the root bus: which GSI each slot's INTA#..INTD# reaches.

use std::fmt;

use crate::bus::devfn::DEVICES_PER_BUS;

/// A PCI interrupt pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntxPin {
    A,
    B,
    C,
    D,
}

impl IntxPin {
    pub const ALL: [IntxPin; 4] = [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D];

    /// From the Interrupt Pin register (1..=4); `None` for 0 (no pin) or reserved values.
    pub fn from_register(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::A),
            2 => Some(Self::B),
            3 => Some(Self::C),
            4 => Some(Self::D),
            _ => None,
        }
    }

    /// 0 for INTA# .. 3 for INTD#.
    pub fn index(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for IntxPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INT{}#", (b'A' + self.index()) as char)
    }
}

/// One slot's pin and the GSI it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntxRoute {
    pub slot: u8,
    pub pin: IntxPin,
    pub gsi: u32,
}

/// The usual root-bus wiring: slot `s` pin `p` reaches GSI `first_gsi + (s + p) % count`,
/// which spreads the functions of neighbouring slots over the interrupt lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxSwizzle {
    pub first_gsi: u32,
    /// Number of GSIs used, at least 1.
    pub count: u32,
}

impl Default for IntxSwizzle {
    /// GSIs 16..=23, the IO APIC inputs a PC leaves to PCI.
    fn default() -> Self {
        Self {
            first_gsi: 16,
            count: 8,
        }
    }
}

impl IntxSwizzle {
    /// The GSI of `slot`'s `pin` (`None` if `count` is 0 or the GSI overflows).
    pub fn gsi(&self, slot: u8, pin: IntxPin) -> Option<u32> {
        let offset = (u32::from(slot) + u32::from(pin.index())).checked_rem(self.count)?;
        self.first_gsi.checked_add(offset)
    }

    /// A route for every slot 0..32 and every pin.
    pub fn routes(&self) -> Vec<IntxRoute> {
        (0..DEVICES_PER_BUS)
            .flat_map(|slot| IntxPin::ALL.into_iter().map(move |pin| (slot, pin)))
            .filter_map(|(slot, pin)| self.gsi(slot, pin).map(|gsi| IntxRoute { slot, pin, gsi }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swizzle_spreads_slots_over_gsis() {
        let s = IntxSwizzle::default();
        assert_eq!(s.gsi(0, IntxPin::A), Some(16));
        assert_eq!(s.gsi(3, IntxPin::B), Some(20));
        assert_eq!(s.gsi(7, IntxPin::D), Some(18));
        assert_eq!(s.routes().len(), 128);
        assert_eq!(
            IntxSwizzle {
                first_gsi: 16,
                count: 0
            }
            .gsi(0, IntxPin::A),
            None
        );
    }

    #[test]
    fn pins_decode_from_the_register() {
        assert_eq!(IntxPin::from_register(0), None);
        assert_eq!(IntxPin::from_register(2), Some(IntxPin::B));
        assert_eq!(IntxPin::from_register(5), None);
        assert_eq!(IntxPin::D.to_string(), "INTD#");
    }
}
