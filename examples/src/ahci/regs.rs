//! AHCI 1.3.1 registers used by this driver (section 3). Offsets into ABAR (BAR5);
//! port registers are at `port_reg(port, PX_...)`.

/// BAR holding the HBA's memory registers (ABAR).
pub const ABAR: u8 = 5;

/// Host capabilities.
pub const CAP: u64 = 0x00;
/// Global host control.
pub const GHC: u64 = 0x04;
/// Interrupt status, one bit per port (write 1 to clear).
pub const IS: u64 = 0x08;
/// Ports implemented.
pub const PI: u64 = 0x0c;
/// AHCI version.
pub const VS: u64 = 0x10;

/// CAP: 64-bit addressing.
pub const CAP_S64A: u32 = 1 << 31;
/// GHC: AHCI enable.
pub const GHC_AE: u32 = 1 << 31;
/// GHC: interrupt enable.
pub const GHC_IE: u32 = 1 << 1;

/// Port `port`'s register `reg`.
pub const fn port_reg(port: u8, reg: u64) -> u64 {
    0x100 + 0x80 * port as u64 + reg
}

/// Command list base (1 KiB aligned), low and high.
pub const PX_CLB: u64 = 0x00;
/// Command list base, high 32 bits.
pub const PX_CLBU: u64 = 0x04;
/// Received FIS base (256-byte aligned), low.
pub const PX_FB: u64 = 0x08;
/// Received FIS base, high 32 bits.
pub const PX_FBU: u64 = 0x0c;
/// Interrupt status (write 1 to clear).
pub const PX_IS: u64 = 0x10;
/// Interrupt enable.
pub const PX_IE: u64 = 0x14;
/// Command and status.
pub const PX_CMD: u64 = 0x18;
/// Task file data: ATA status in bits 0-7, error in 8-15.
pub const PX_TFD: u64 = 0x20;
/// Signature of the attached device.
pub const PX_SIG: u64 = 0x24;
/// SATA status: DET in bits 0-3.
pub const PX_SSTS: u64 = 0x28;
/// SATA control: DET in bits 0-3 starts a COMRESET.
pub const PX_SCTL: u64 = 0x2c;
/// SATA error (write 1 to clear).
pub const PX_SERR: u64 = 0x30;
/// Command issue: bit n starts command slot n.
pub const PX_CI: u64 = 0x38;

/// PxCMD: start processing the command list.
pub const CMD_ST: u32 = 1 << 0;
/// PxCMD: spin-up device.
pub const CMD_SUD: u32 = 1 << 1;
/// PxCMD: power on device.
pub const CMD_POD: u32 = 1 << 2;
/// PxCMD: FIS receive enable.
pub const CMD_FRE: u32 = 1 << 4;
/// PxCMD: FIS receive running.
pub const CMD_FR: u32 = 1 << 14;
/// PxCMD: command list running.
pub const CMD_CR: u32 = 1 << 15;

/// PxIS/PxIE: device-to-host register FIS received (a command ended).
pub const INT_DHRS: u32 = 1 << 0;
/// PIO setup FIS received.
pub const INT_PSS: u32 = 1 << 1;
/// DMA setup FIS received.
pub const INT_DSS: u32 = 1 << 2;
/// Set device bits FIS received.
pub const INT_SDBS: u32 = 1 << 3;
/// Overflow.
pub const INT_OFS: u32 = 1 << 24;
/// Interface non-fatal error.
pub const INT_INFS: u32 = 1 << 26;
/// Interface fatal error.
pub const INT_IFS: u32 = 1 << 27;
/// Host bus data error (e.g. an IOMMU fault on a data transfer).
pub const INT_HBDS: u32 = 1 << 28;
/// Host bus fatal error.
pub const INT_HBFS: u32 = 1 << 29;
/// Task file error: the device reported ERR.
pub const INT_TFES: u32 = 1 << 30;
/// Every error cause.
pub const INT_ERRORS: u32 = INT_OFS | INT_INFS | INT_IFS | INT_HBDS | INT_HBFS | INT_TFES;

/// PxSSTS.DET: device present and communication established.
pub const SSTS_DET_PRESENT: u32 = 3;
