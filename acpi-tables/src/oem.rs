//! Who the tables say made them (the header's OEM fields).

/// OEM ID in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"UDRV  ";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"UDRVVBUS";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
