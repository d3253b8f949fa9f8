//! The MCFG: one ECAM entry per root bridge.

use crate::description::Description;
use crate::oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use rvmm_acpi_tables::mcfg::MCFG;

/// The MCFG bytes for `d` (already validated).
pub(crate) fn build(d: &Description) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for b in &d.root_bridges {
        // The entry's address is where bus 0 of the segment would be; validation checked
        // that it does not underflow.
        let base = b.mcfg_base().unwrap_or(b.ecam.base);
        mcfg.add_ecam(base, b.segment, b.buses.first, b.buses.last);
    }
    crate::aml::encode(&mcfg)
}
