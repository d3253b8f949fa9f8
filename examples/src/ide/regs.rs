//! The legacy IDE ports of a PCI IDE controller in compatibility mode and its bus-master
//! registers (Intel PIIX3/PIIX4 datasheets; ATA/ATAPI-6 for the task file). VFIO
//! exposes each port range as an IO-port BAR: BAR0 the primary command block
//! (0x1f0..0x1f7), BAR1 the primary control register (0x3f6), BAR4 the bus-master
//! block. Offsets here are into those BARs.

/// BAR with the primary channel's command block.
pub const COMMAND_BAR: u8 = 0;
/// BAR with the primary channel's device control / alternate status register.
pub const CONTROL_BAR: u8 = 1;
/// BAR with the bus-master registers (primary channel at 0, secondary at 8).
pub const BUS_MASTER_BAR: u8 = 4;

/// Command block: data port (16- or 32-bit PIO).
pub const DATA: u64 = 0;
/// Command block: error (read) / features (write).
pub const ERROR: u64 = 1;
/// Command block: features (write).
pub const FEATURES: u64 = 1;
/// Command block: sector count.
pub const SECTOR_COUNT: u64 = 2;
/// Command block: LBA bits 0-7.
pub const LBA_LOW: u64 = 3;
/// Command block: LBA bits 8-15.
pub const LBA_MID: u64 = 4;
/// Command block: LBA bits 16-23.
pub const LBA_HIGH: u64 = 5;
/// Command block: device select and LBA bits 24-27.
pub const DEVICE: u64 = 6;
/// Command block: status (read; reading acknowledges the device's interrupt).
pub const STATUS: u64 = 7;
/// Command block: command (write).
pub const COMMAND: u64 = 7;

/// Control block: alternate status (read; does not acknowledge anything).
pub const ALT_STATUS: u64 = 0;
/// Control block: device control (write).
pub const DEVICE_CONTROL: u64 = 0;

/// DEVICE: LBA addressing, master (bits 7 and 5 are obsolete and set by convention).
pub const DEVICE_LBA_MASTER: u8 = 0xe0;

/// Device control: interrupts off (nIEN).
pub const CONTROL_NIEN: u8 = 0x02;
/// Device control: software reset of both devices on the channel.
pub const CONTROL_SRST: u8 = 0x04;

/// Bus master command register (BMICX).
pub const BM_COMMAND: u64 = 0;
/// Bus master status register (BMISX).
pub const BM_STATUS: u64 = 2;
/// Bus master PRD table address (BMIDTPX), 32 bits, 4-byte aligned.
pub const BM_PRD_TABLE: u64 = 4;

/// BMICX: start the engine.
pub const BM_START: u8 = 0x01;
/// BMICX: direction, set for device-to-memory (disk reads).
pub const BM_TO_MEMORY: u8 = 0x08;

/// BMISX: the engine is transferring.
pub const BM_ACTIVE: u8 = 0x01;
/// BMISX: the engine hit an error (write 1 to clear).
pub const BM_ERROR: u8 = 0x02;
/// BMISX: the device raised its interrupt (write 1 to clear).
pub const BM_INTERRUPT: u8 = 0x04;
