//! The RSDP (revision 2): the OS's entry point, pointing at the XSDT.

use crate::oem::OEM_ID;
use rvmm_acpi_tables::rsdp::Rsdp;

/// The RSDP is 36 bytes long.
pub(crate) const LEN: usize = 36;

/// The RSDP bytes pointing at the XSDT at `xsdt`; it has no RSDT.
pub(crate) fn build(xsdt: u64) -> Vec<u8> {
    crate::aml::encode(&Rsdp::new(OEM_ID, xsdt))
}
