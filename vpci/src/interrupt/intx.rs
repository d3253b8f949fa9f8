//! Legacy INTx routing of the root bus: which GSI each slot's INTA#..INTD# reaches.
//!
//! A pin and a slot's route are the ones the firmware tables describe
//! ([`acpi_tables::IntxPin`], [`acpi_tables::IntxRoute`]), so the bus hands its routes
//! to the tables as they are.

pub use acpi_tables::{IntxPin, IntxRoute};

use crate::bus::devfn::DEVICES_PER_BUS;

/// The usual root-bus wiring: slot `s` pin `p` reaches GSI `first_gsi + (s + p) % count`,
/// which spreads the functions of neighbouring slots over the interrupt lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxSwizzle {
    /// First GSI of the range the pins are spread over.
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
}
