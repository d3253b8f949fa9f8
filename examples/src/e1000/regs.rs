//! Intel 8254x registers and descriptor fields used by this driver, from the PCI/PCI-X
//! Family of Gigabit Ethernet Controllers Software Developer's Manual (section 13).
//! Offsets are into BAR0.

/// Device control.
pub const CTRL: u64 = 0x0000;
/// Device status.
pub const STATUS: u64 = 0x0008;
/// Interrupt cause read (clears on read).
pub const ICR: u64 = 0x00c0;
/// Interrupt throttling.
pub const ITR: u64 = 0x00c4;
/// Interrupt mask set/read.
pub const IMS: u64 = 0x00d0;
/// Interrupt mask clear.
pub const IMC: u64 = 0x00d8;
/// Receive control.
pub const RCTL: u64 = 0x0100;
/// Transmit control.
pub const TCTL: u64 = 0x0400;
/// Transmit inter-packet gap.
pub const TIPG: u64 = 0x0410;
/// Receive descriptor ring: base low/high, length in bytes, head, tail.
pub const RDBAL: u64 = 0x2800;
/// Receive descriptor base, high 32 bits.
pub const RDBAH: u64 = 0x2804;
/// Receive descriptor ring length in bytes.
pub const RDLEN: u64 = 0x2808;
/// Receive descriptor head.
pub const RDH: u64 = 0x2810;
/// Receive descriptor tail.
pub const RDT: u64 = 0x2818;
/// Receive delay timer.
pub const RDTR: u64 = 0x2820;
/// Transmit descriptor ring: base low/high, length in bytes, head, tail.
pub const TDBAL: u64 = 0x3800;
/// Transmit descriptor base, high 32 bits.
pub const TDBAH: u64 = 0x3804;
/// Transmit descriptor ring length in bytes.
pub const TDLEN: u64 = 0x3808;
/// Transmit descriptor head.
pub const TDH: u64 = 0x3810;
/// Transmit descriptor tail.
pub const TDT: u64 = 0x3818;
/// Transmit interrupt delay.
pub const TIDV: u64 = 0x3820;
/// Multicast table array: 128 32-bit entries.
pub const MTA: u64 = 0x5200;
/// Receive address 0, low 32 bits of the MAC address.
pub const RAL0: u64 = 0x5400;
/// Receive address 0, high 16 bits and the address-valid bit.
pub const RAH0: u64 = 0x5404;
/// Missed packets count (receive ring full), clears on read.
pub const MPC: u64 = 0x4010;
/// Good packets received count, clears on read.
pub const GPRC: u64 = 0x4074;
/// Good packets transmitted count, clears on read.
pub const GPTC: u64 = 0x4080;

/// CTRL: auto-speed detection.
pub const CTRL_ASDE: u32 = 1 << 5;
/// CTRL: set link up.
pub const CTRL_SLU: u32 = 1 << 6;
/// CTRL: device reset (self-clearing).
pub const CTRL_RST: u32 = 1 << 26;
/// CTRL: PHY reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;

/// STATUS: link up.
pub const STATUS_LU: u32 = 1 << 1;

/// Interrupt causes (ICR, IMS, IMC): transmit descriptor written back.
pub const INT_TXDW: u32 = 1 << 0;
/// Link status change.
pub const INT_LSC: u32 = 1 << 2;
/// Receive descriptors below the minimum threshold.
pub const INT_RXDMT0: u32 = 1 << 4;
/// Receiver overrun (no descriptor for a frame).
pub const INT_RXO: u32 = 1 << 6;
/// Receive timer: a frame arrived.
pub const INT_RXT0: u32 = 1 << 7;
/// Every cause, for IMC.
pub const INT_ALL: u32 = 0xffff_ffff;

/// RCTL: receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// RCTL: broadcast accept.
pub const RCTL_BAM: u32 = 1 << 15;
/// RCTL: buffer size 2048 (BSIZE = 00, BSEX = 0).
pub const RCTL_BSIZE_2048: u32 = 0;
/// RCTL: strip the Ethernet CRC from received frames.
pub const RCTL_SECRC: u32 = 1 << 26;

/// TCTL: transmitter enable.
pub const TCTL_EN: u32 = 1 << 1;
/// TCTL: pad short packets.
pub const TCTL_PSP: u32 = 1 << 3;
/// TCTL: collision threshold 15, the manual's recommended value.
pub const TCTL_CT_15: u32 = 0x0f << 4;
/// TCTL: collision distance for full duplex.
pub const TCTL_COLD_FULL_DUPLEX: u32 = 0x40 << 12;

/// TIPG for copper, from the manual (IPGT 10, IPGR1 8, IPGR2 6).
pub const TIPG_COPPER: u32 = 10 | (8 << 10) | (6 << 20);

/// RAH: address valid.
pub const RAH_AV: u32 = 1 << 31;

/// A descriptor (legacy format, transmit and receive alike) is 16 bytes.
pub const DESCRIPTOR_SIZE: usize = 16;

/// Transmit descriptor, command byte (offset 11): end of packet.
pub const TXD_CMD_EOP: u8 = 1 << 0;
/// Insert the Ethernet CRC.
pub const TXD_CMD_IFCS: u8 = 1 << 1;
/// Report status: write DD back when done.
pub const TXD_CMD_RS: u8 = 1 << 3;
/// Transmit descriptor, status byte (offset 12): descriptor done.
pub const TXD_STAT_DD: u8 = 1 << 0;

/// Receive descriptor, status byte (offset 12): descriptor done.
pub const RXD_STAT_DD: u8 = 1 << 0;
/// End of packet.
pub const RXD_STAT_EOP: u8 = 1 << 1;
