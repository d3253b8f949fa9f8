//! The FACS: firmware/OS shared memory (global lock, waking vector), required with fixed
//! hardware. It is not checksummed and must be 64-byte aligned.

use rvmm_acpi_tables::facs::FACS;

/// Alignment the FADT's FIRMWARE_CTRL pointer requires.
pub(crate) const ALIGN: u64 = 64;

/// The FACS is 64 bytes long.
pub(crate) fn len() -> usize {
    FACS::len()
}

/// The FACS bytes.
pub(crate) fn build() -> Vec<u8> {
    crate::aml::encode(&FACS::new())
}
