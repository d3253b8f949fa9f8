//! Standard PCI/PCIe configuration-space register layout: offsets, bit fields and
//! capability IDs, as defined by the PCI Local Bus and PCI Express Base specifications.
//!
//! Every other module names registers through these constants rather than numbers.

// The constants carry the specs' own register and field names: PCI Local Bus 3.0
// chapter 6 (6.1 header, 6.2.2 command, 6.2.3 status, 6.2.5 BARs and expansion ROM,
// 6.7 capability list, 6.8 MSI/MSI-X), PCI Bus Power Management 1.2 section 3.2,
// PCI Express Base 4.0 chapter 7 (PCIe capability, AER, DSN, VSEC) and the PCI Code
// and ID Assignment spec for IDs. A doc is written where the spec name alone does not
// say the unit or how the value is used.
#![allow(missing_docs)]

/// Size of conventional PCI configuration space.
pub const CONFIG_SPACE_SIZE: usize = 0x100;
/// Size of PCI Express extended configuration space.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 0x1000;

/// Type 0 (endpoint) header register offsets.
pub mod header {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface, the low byte of the 24-bit class code.
    pub const CLASS_PROG_IF: u16 = 0x09;
    pub const CLASS_SUBCLASS: u16 = 0x0a;
    pub const CLASS_BASE: u16 = 0x0b;
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    pub const LATENCY_TIMER: u16 = 0x0d;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BIST: u16 = 0x0f;
    /// First of the six base address registers, each 4 bytes.
    pub const BAR0: u16 = 0x10;
    pub const CARDBUS_CIS: u16 = 0x28;
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    pub const ROM_ADDRESS: u16 = 0x30;
    pub const CAPABILITY_POINTER: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
    pub const INTERRUPT_PIN: u16 = 0x3d;
    pub const MIN_GRANT: u16 = 0x3e;
    pub const MAX_LATENCY: u16 = 0x3f;
    /// End of the type 0 header; capabilities start at or after this offset.
    pub const END: u16 = 0x40;

    /// Number of base address registers in a type 0 header.
    pub const BAR_COUNT: usize = 6;

    /// Offset of base address register `index` (0..=5).
    pub const fn bar(index: u8) -> u16 {
        BAR0 + 4 * index as u16
    }
}

/// Header type register bits.
pub mod header_type {
    /// Header layout bits (NORMAL, BRIDGE, CARDBUS), without MULTI_FUNCTION.
    pub const LAYOUT_MASK: u8 = 0x7f;
    pub const NORMAL: u8 = 0x00;
    pub const BRIDGE: u8 = 0x01;
    pub const CARDBUS: u8 = 0x02;
    /// Set in function 0 when the device implements functions other than 0.
    pub const MULTI_FUNCTION: u8 = 0x80;
}

/// Command register bits.
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const SPECIAL_CYCLES: u16 = 1 << 3;
    pub const MEMORY_WRITE_INVALIDATE: u16 = 1 << 4;
    pub const VGA_PALETTE_SNOOP: u16 = 1 << 5;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const SERR_ENABLE: u16 = 1 << 8;
    pub const FAST_BACK_TO_BACK: u16 = 1 << 9;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    pub const IMMEDIATE_READINESS: u16 = 1 << 0;
    pub const INTERRUPT: u16 = 1 << 3;
    pub const CAPABILITY_LIST: u16 = 1 << 4;
    pub const CAPABLE_66MHZ: u16 = 1 << 5;
    pub const FAST_BACK_TO_BACK: u16 = 1 << 7;
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    /// DEVSEL timing field (read-only, 0 = fast).
    pub const DEVSEL_MASK: u16 = 0x3 << 9;
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// The error bits software clears by writing 1.
    pub const ERROR_BITS: u16 = MASTER_DATA_PARITY_ERROR
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY_ERROR;
}

/// Base address register bits.
pub mod bar {
    /// Set for an I/O BAR, clear for a memory BAR.
    pub const SPACE_IO: u32 = 1 << 0;
    pub const MEMORY_TYPE_MASK: u32 = 0x3 << 1;
    pub const MEMORY_TYPE_32: u32 = 0x0 << 1;
    pub const MEMORY_TYPE_64: u32 = 0x2 << 1;
    pub const PREFETCHABLE: u32 = 1 << 3;
    /// Address bits of an I/O BAR.
    pub const IO_ADDRESS_MASK: u32 = !0x3;
    /// Address bits of a memory BAR (low dword).
    pub const MEMORY_ADDRESS_MASK: u32 = !0xf;
}

/// Expansion ROM base address register bits.
pub mod rom {
    pub const ENABLE: u32 = 1 << 0;
    pub const ADDRESS_MASK: u32 = !0x7ff;
    /// Smallest ROM a ROM BAR can describe.
    pub const MIN_SIZE: u32 = 0x800;
}

/// Capability list: header layout and IDs (PCI Code and ID Assignment spec).
pub mod cap {
    /// Offset of the ID byte within a capability.
    pub const ID: u16 = 0;
    /// Offset of the next-pointer byte within a capability.
    pub const NEXT: u16 = 1;
    /// Size of the ID + next header.
    pub const HEADER_SIZE: u16 = 2;
    /// Low two bits of a next pointer are reserved.
    pub const POINTER_MASK: u8 = 0xfc;

    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const AGP: u8 = 0x02;
    pub const VPD: u8 = 0x03;
    pub const SLOT_ID: u8 = 0x04;
    pub const MSI: u8 = 0x05;
    pub const HOT_SWAP: u8 = 0x06;
    pub const PCIX: u8 = 0x07;
    pub const HYPERTRANSPORT: u8 = 0x08;
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    pub const DEBUG_PORT: u8 = 0x0a;
    pub const SUBSYSTEM_VENDOR: u8 = 0x0d;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
    pub const SATA: u8 = 0x12;
    pub const ADVANCED_FEATURES: u8 = 0x13;
    pub const ENHANCED_ALLOCATION: u8 = 0x14;
}

/// Extended capability list (PCIe, at 0x100 and above): header layout and IDs.
pub mod ext_cap {
    /// Offset of the first extended capability.
    pub const START: u16 = 0x100;
    /// Size of the 32-bit extended capability header.
    pub const HEADER_SIZE: u16 = 4;
    /// Capability ID bits of the header dword.
    pub const ID_MASK: u32 = 0xffff;
    pub const VERSION_SHIFT: u32 = 16;
    /// Version bits, applied after shifting by [`VERSION_SHIFT`].
    pub const VERSION_MASK: u32 = 0xf;
    pub const NEXT_SHIFT: u32 = 20;
    /// Next-capability offset bits, applied after shifting by [`NEXT_SHIFT`]; the low
    /// two are reserved.
    pub const NEXT_MASK: u32 = 0xffc;

    /// Build an extended capability header dword.
    pub const fn header(id: u16, version: u8, next: u16) -> u32 {
        id as u32
            | ((version as u32 & VERSION_MASK) << VERSION_SHIFT)
            | ((next as u32 & NEXT_MASK) << NEXT_SHIFT)
    }

    /// A placeholder ID (no capability) used to keep the chain valid at 0x100.
    pub const NULL: u16 = 0x0000;
    pub const ADVANCED_ERROR_REPORTING: u16 = 0x0001;
    pub const VIRTUAL_CHANNEL: u16 = 0x0002;
    pub const DEVICE_SERIAL_NUMBER: u16 = 0x0003;
    pub const POWER_BUDGETING: u16 = 0x0004;
    pub const VENDOR_SPECIFIC: u16 = 0x000b;
    pub const ACCESS_CONTROL_SERVICES: u16 = 0x000d;
    pub const ALTERNATIVE_ROUTING_ID: u16 = 0x000e;
    pub const ADDRESS_TRANSLATION_SERVICES: u16 = 0x000f;
    pub const SINGLE_ROOT_IOV: u16 = 0x0010;
    pub const RESIZABLE_BAR: u16 = 0x0015;
    pub const LATENCY_TOLERANCE_REPORTING: u16 = 0x0018;
    pub const SECONDARY_PCIE: u16 = 0x0019;
    pub const PASID: u16 = 0x001b;
    pub const L1_PM_SUBSTATES: u16 = 0x001e;
}

/// MSI capability layout (offsets relative to the capability).
pub mod msi {
    pub const CONTROL: u16 = 0x02;
    pub const ADDRESS_LO: u16 = 0x04;
    /// Upper address, 64-bit capable functions only.
    pub const ADDRESS_HI: u16 = 0x08;
    pub const DATA_32: u16 = 0x08;
    pub const DATA_64: u16 = 0x0c;
    pub const MASK_32: u16 = 0x0c;
    pub const MASK_64: u16 = 0x10;
    pub const PENDING_32: u16 = 0x10;
    pub const PENDING_64: u16 = 0x14;

    pub const CONTROL_ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable: log2 of the vectors the function supports.
    pub const CONTROL_MMC_MASK: u16 = 0x7 << 1;
    pub const CONTROL_MMC_SHIFT: u16 = 1;
    /// Multiple Message Enable: log2 of the vectors software allocated.
    pub const CONTROL_MME_MASK: u16 = 0x7 << 4;
    pub const CONTROL_MME_SHIFT: u16 = 4;
    pub const CONTROL_64BIT: u16 = 1 << 7;
    pub const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

    /// Message address bits (the low two are reserved).
    pub const ADDRESS_LO_MASK: u32 = !0x3;
    /// Most vectors a function may request.
    pub const MAX_VECTORS: u8 = 32;

    /// Capability length for a given layout.
    pub const fn size(is_64bit: bool, per_vector_mask: bool) -> u16 {
        match (is_64bit, per_vector_mask) {
            (false, false) => 0x0a,
            (true, false) => 0x0e,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }
}

/// MSI-X capability and table layout.
pub mod msix {
    pub const CONTROL: u16 = 0x02;
    /// Table offset and BIR register.
    pub const TABLE: u16 = 0x04;
    /// PBA offset and BIR register.
    pub const PBA: u16 = 0x08;
    /// Capability length in bytes.
    pub const SIZE: u16 = 0x0c;

    /// Table size field holds N-1.
    pub const CONTROL_TABLE_SIZE_MASK: u16 = 0x7ff;
    pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
    pub const CONTROL_ENABLE: u16 = 1 << 15;

    /// BAR indicator in the table/PBA offset registers.
    pub const BIR_MASK: u32 = 0x7;
    /// Byte offset into the BIR's BAR, in the table/PBA offset registers.
    pub const OFFSET_MASK: u32 = !0x7;

    /// Most table entries a function may have (table size field 0x7ff).
    pub const MAX_VECTORS: u16 = 2048;

    /// Bytes per table entry; the ENTRY_* offsets are within one entry.
    pub const ENTRY_SIZE: u64 = 16;
    pub const ENTRY_ADDRESS_LO: u64 = 0x0;
    pub const ENTRY_ADDRESS_HI: u64 = 0x4;
    pub const ENTRY_DATA: u64 = 0x8;
    pub const ENTRY_VECTOR_CONTROL: u64 = 0xc;
    pub const VECTOR_CONTROL_MASKED: u32 = 1 << 0;
}

/// PCI Power Management capability layout.
pub mod pm {
    pub const CAPABILITIES: u16 = 0x02;
    pub const CONTROL_STATUS: u16 = 0x04;
    /// Capability length in bytes.
    pub const SIZE: u16 = 0x08;
    /// Version 3 of the PM interface spec (PCI PM 1.2).
    pub const CAPABILITIES_VERSION_1_2: u16 = 0x3;
    /// Power state field: 0 = D0 to 3 = D3hot.
    pub const CONTROL_POWER_STATE_MASK: u16 = 0x3;
    pub const CONTROL_NO_SOFT_RESET: u16 = 1 << 3;
    pub const CONTROL_PME_ENABLE: u16 = 1 << 8;
    pub const CONTROL_PME_STATUS: u16 = 1 << 15;
}

/// PCI Express capability layout (version 2).
pub mod exp {
    /// PCI Express Capabilities register: version and device/port type.
    pub const FLAGS: u16 = 0x02;
    pub const DEVICE_CAPABILITIES: u16 = 0x04;
    pub const DEVICE_CONTROL: u16 = 0x08;
    pub const DEVICE_STATUS: u16 = 0x0a;
    pub const LINK_CAPABILITIES: u16 = 0x0c;
    pub const LINK_CONTROL: u16 = 0x10;
    pub const LINK_STATUS: u16 = 0x12;
    pub const DEVICE_CAPABILITIES_2: u16 = 0x24;
    pub const DEVICE_CONTROL_2: u16 = 0x28;
    pub const DEVICE_STATUS_2: u16 = 0x2a;
    /// Size of a version 2 capability.
    pub const SIZE_V2: u16 = 0x3c;

    pub const FLAGS_VERSION_MASK: u16 = 0xf;
    pub const FLAGS_VERSION_2: u16 = 0x2;
    pub const FLAGS_TYPE_SHIFT: u16 = 4;
    pub const FLAGS_TYPE_MASK: u16 = 0xf << 4;
    pub const TYPE_ENDPOINT: u16 = 0x0;
    pub const TYPE_LEGACY_ENDPOINT: u16 = 0x1;
    pub const TYPE_ROOT_PORT: u16 = 0x4;
    /// Root complex integrated endpoint: a function on the root bus with no link.
    pub const TYPE_RC_INTEGRATED_ENDPOINT: u16 = 0x9;
    pub const TYPE_RC_EVENT_COLLECTOR: u16 = 0xa;

    /// Function Level Reset capable (device capabilities bit 28).
    pub const DEVICE_CAPABILITIES_FLR: u32 = 1 << 28;
    /// Initiate Function Level Reset (device control bit 15, always reads 0).
    pub const DEVICE_CONTROL_INITIATE_FLR: u16 = 1 << 15;
    /// Correctable/non-fatal/fatal/unsupported-request detected (write 1 to clear).
    pub const DEVICE_STATUS_ERROR_BITS: u16 = 0xf;
}

/// Advanced Error Reporting extended capability layout.
pub mod aer {
    pub const UNCORRECTABLE_STATUS: u16 = 0x04;
    pub const UNCORRECTABLE_MASK: u16 = 0x08;
    pub const UNCORRECTABLE_SEVERITY: u16 = 0x0c;
    pub const CORRECTABLE_STATUS: u16 = 0x10;
    pub const CORRECTABLE_MASK: u16 = 0x14;
    pub const CAPABILITIES_CONTROL: u16 = 0x18;
    /// First of the four header log dwords.
    pub const HEADER_LOG: u16 = 0x1c;
    /// Capability length in bytes, through the TLP prefix log.
    pub const SIZE: u16 = 0x48;
    /// Uncorrectable error bits defined by PCIe 4.0 (bits 4..=25, without reserved 6..=11).
    pub const UNCORRECTABLE_ERRORS: u32 = 0x03ff_f010;
    /// Correctable error bits defined by PCIe 4.0.
    pub const CORRECTABLE_ERRORS: u32 = 0x0000_f1c1;
}

/// Device Serial Number extended capability layout.
pub mod dsn {
    pub const SERIAL_LO: u16 = 0x04;
    pub const SERIAL_HI: u16 = 0x08;
    /// Capability length in bytes.
    pub const SIZE: u16 = 0x0c;
}

/// Vendor-specific extended capability layout.
pub mod vsec {
    /// VSEC ID (bits 15:0), revision (19:16), length (31:20).
    pub const HEADER: u16 = 0x04;
    /// Shift of the length field (whole capability, bytes) in [`HEADER`].
    pub const LENGTH_SHIFT: u32 = 20;
}

/// Class codes used by the emulated functions.
pub mod class {
    /// Bridge device, host bridge, programming interface 0.
    pub const HOST_BRIDGE: u32 = 0x06_00_00;
    /// Unclassified device ("other").
    pub const UNCLASSIFIED_OTHER: u32 = 0xff_00_00;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_offsets_follow_the_header() {
        assert_eq!(header::bar(0), 0x10);
        assert_eq!(header::bar(5), 0x24);
        assert_eq!(header::bar(5) + 4, header::CARDBUS_CIS);
    }

    #[test]
    fn extended_header_packs_fields() {
        let h = ext_cap::header(ext_cap::ADVANCED_ERROR_REPORTING, 2, 0x148);
        assert_eq!(h & ext_cap::ID_MASK, 1);
        assert_eq!((h >> ext_cap::VERSION_SHIFT) & ext_cap::VERSION_MASK, 2);
        assert_eq!((h >> ext_cap::NEXT_SHIFT) & ext_cap::NEXT_MASK, 0x148);
    }

    #[test]
    fn msi_sizes_match_the_register_offsets() {
        assert_eq!(msi::size(false, false), msi::DATA_32 + 2);
        assert_eq!(msi::size(true, false), msi::DATA_64 + 2);
        assert_eq!(msi::size(false, true), msi::PENDING_32 + 4);
        assert_eq!(msi::size(true, true), msi::PENDING_64 + 4);
    }
}
