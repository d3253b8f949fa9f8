//! The XSDT: 64-bit pointers to every table but the DSDT and FACS (the FADT points to those).

use crate::oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use rvmm_acpi_tables::xsdt::XSDT;

/// Header plus one 8-byte pointer per table.
pub(crate) fn len(entries: usize) -> usize {
    36 + 8 * entries
}

/// The XSDT bytes pointing at `tables`.
pub(crate) fn build(tables: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &address in tables {
        xsdt.add_entry(address);
    }
    crate::aml::encode(&xsdt)
}
