//! `_PRT` in GSI form: one entry per slot and pin of the root bus, source `Zero`, source
//! index the GSI (ACPI 6.5 section 6.2.13). The OS treats such GSIs as level, active low.

use crate::description::{IntxPin, IntxRouting, SLOTS};
use rvmm_acpi_tables::aml::{Package, PackageBuilder, ZERO};

/// The `_PRT` package for `routing`, or the first slot and pin without a route.
pub fn routing_table(routing: &IntxRouting) -> Result<PackageBuilder, (u8, IntxPin)> {
    let mut table = PackageBuilder::new();
    for slot in 0..SLOTS {
        // Function number 0xFFFF: any function of the slot.
        let address = (u32::from(slot) << 16) | 0xFFFF;
        for pin in IntxPin::ALL {
            let gsi = routing.gsi(slot, pin).ok_or((slot, pin))?;
            let pin_number = pin.index();
            table.add_element(&Package::new(vec![&address, &pin_number, &ZERO, &gsi]));
        }
    }
    Ok(table)
}
