//! The vfio-user wire format: the 16-byte header, the client's commands parsed from
//! bytes and file descriptors, and the server's replies encoded.
//!
//! [`parse_request`] is a pure function of a header, its payload and the fds that came
//! with it: everything a client sends is checked here (sizes, `argsz`, fd counts, flag
//! combinations, transfer sizes) before the session acts on it, so a fuzzer can drive
//! it directly. All integers are in the host's byte order, as the protocol says.

use std::fmt;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// Bytes in every message's header.
pub const HEADER_SIZE: usize = 16;

/// The protocol version udrv speaks (1.0 is what QEMU and libvfio-user speak).
pub const VERSION_MAJOR: u16 = 0;
/// See [`VERSION_MAJOR`].
pub const VERSION_MINOR: u16 = 1;

/// Most bytes one REGION_READ or REGION_WRITE may move, as udrv advertises it.
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;

/// Most file descriptors udrv accepts in one message, advertised as `max_msg_fds`.
/// QEMU refuses a server offering more than 16 and sends a SET_IRQS of more vectors
/// in several messages.
pub const MAX_MSG_FDS: usize = 16;

/// Most DMA mappings a client may hold at once.
pub const MAX_DMA_MAPS: usize = 65535;

/// Most vectors one DEVICE_SET_IRQS may name: MSI-X's 2048, the most any PCI
/// interrupt index has. A count is checked before anything is sized by it.
pub const MAX_IRQ_VECTORS: u32 = 2048;

/// Longest VERSION JSON accepted: capabilities are a few hundred bytes.
pub const MAX_VERSION_JSON: usize = 4096;

/// Largest message udrv reads: a REGION_WRITE of [`MAX_DATA_XFER_SIZE`] plus its
/// header, or a REGION_WRITE_MULTI of as many entries. Anything larger is refused
/// before its payload is read.
pub const MAX_MESSAGE_SIZE: usize = HEADER_SIZE + 16 + MAX_DATA_XFER_SIZE as usize;

/// Header flags.
pub mod flags {
    /// Type bits: 0 = command, 1 = reply.
    pub const TYPE_MASK: u32 = 0xf;
    /// A command message.
    pub const TYPE_COMMAND: u32 = 0;
    /// A reply message.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error; the error field holds an errno.
    pub const ERROR: u32 = 1 << 5;
}

/// Command numbers (the spec's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// VFIO_USER_VERSION: negotiate the version and capabilities; the first message.
    Version = 1,
    /// VFIO_USER_DMA_MAP: the client adds guest memory the device may reach.
    DmaMap = 2,
    /// VFIO_USER_DMA_UNMAP: the client removes a DMA mapping, or all of them.
    DmaUnmap = 3,
    /// VFIO_USER_DEVICE_GET_INFO: device flags and region and IRQ counts.
    DeviceGetInfo = 4,
    /// VFIO_USER_DEVICE_GET_REGION_INFO: one region's size, flags and mmap fd.
    DeviceGetRegionInfo = 5,
    /// VFIO_USER_DEVICE_GET_REGION_IO_FDS: ioeventfds for a region (not offered).
    DeviceGetRegionIoFds = 6,
    /// VFIO_USER_DEVICE_GET_IRQ_INFO: one IRQ index's vector count and flags.
    DeviceGetIrqInfo = 7,
    /// VFIO_USER_DEVICE_SET_IRQS: wire, mask, unmask or trigger vectors.
    DeviceSetIrqs = 8,
    /// VFIO_USER_REGION_READ: read bytes of a region (config space, a BAR).
    RegionRead = 9,
    /// VFIO_USER_REGION_WRITE: write bytes of a region.
    RegionWrite = 10,
    /// VFIO_USER_DMA_READ: server reads client memory (server to client only).
    DmaRead = 11,
    /// VFIO_USER_DMA_WRITE: server writes client memory (server to client only).
    DmaWrite = 12,
    /// VFIO_USER_DEVICE_RESET: reset the device.
    DeviceReset = 13,
    /// VFIO_USER_REGION_WRITE_MULTI: several small writes in one message.
    RegionWriteMulti = 15,
    /// VFIO_USER_DEVICE_FEATURE: migration and dirty tracking features (not offered).
    DeviceFeature = 16,
    /// VFIO_USER_MIG_DATA_READ: migration data from the server (not offered).
    MigDataRead = 17,
    /// VFIO_USER_MIG_DATA_WRITE: migration data to the server (not offered).
    MigDataWrite = 18,
}

impl Command {
    /// The command with number `raw`, if the spec defines one.
    pub fn from_raw(raw: u16) -> Option<Command> {
        use Command::*;
        Some(match raw {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Chosen by the sender, echoed in the reply.
    pub id: u16,
    /// The raw command number.
    pub command: u16,
    /// The whole message's size, header included.
    pub size: u32,
    /// Message type and the NO_REPLY and ERROR bits, see [`flags`].
    pub flags: u32,
    /// An errno in an error reply.
    pub error: u32,
}

impl Header {
    /// Decode a header.
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Header {
        let u16_at = |o: usize| u16::from_ne_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        Header {
            id: u16_at(0),
            command: u16_at(2),
            size: u32_at(4),
            flags: u32_at(8),
            error: u32_at(12),
        }
    }

    /// Encode a header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// The client asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// Payload bytes that follow the header, or why the size cannot be accepted.
    pub fn payload_len(&self) -> Result<usize, Refusal> {
        let size = self.size as usize;
        if size < HEADER_SIZE {
            return Err(Refusal::new(
                Errno::EINVAL,
                format!("message size {size} is smaller than the {HEADER_SIZE}-byte header"),
            ));
        }
        if size > MAX_MESSAGE_SIZE {
            return Err(Refusal::new(
                Errno::E2BIG,
                format!("message size {size} exceeds the {MAX_MESSAGE_SIZE}-byte limit (max_data_xfer_size {MAX_DATA_XFER_SIZE})"),
            ));
        }
        Ok(size - HEADER_SIZE)
    }
}

/// Why a message was refused: the errno the error reply carries and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Sent to the client in the error reply.
    pub errno: Errno,
    /// For the log; the client only sees the errno.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `errno` for the client and `reason` for the log.
    pub fn new(errno: Errno, reason: impl Into<String>) -> Refusal {
        Refusal {
            errno,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.errno)
    }
}

/// The client's capabilities from its VERSION message (defaults where it says nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Most fds the client accepts in one of our messages.
    pub max_msg_fds: Option<u64>,
    /// Most bytes the client moves in one data transfer.
    pub max_data_xfer_size: Option<u64>,
    /// DMA page sizes, or'ed.
    pub pgsizes: Option<u64>,
    /// Most DMA mappings at once.
    pub max_dma_maps: Option<u64>,
    /// REGION_WRITE_MULTI supported.
    pub write_multiple: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VersionJson {
    capabilities: Capabilities,
}

/// DMA_MAP and DMA_UNMAP flags.
// The vfio-user spec's flag names (QEMU docs/interop/vfio-user.rst, "VFIO_USER_DMA_MAP"
// and "VFIO_USER_DMA_UNMAP").
#[allow(missing_docs)]
pub mod dma_flags {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    /// DMA_UNMAP: unmap every mapping (address and size 0).
    pub const UNMAP_ALL: u32 = 1 << 1;
}

/// SET_IRQS flags (those of `VFIO_DEVICE_SET_IRQS`).
// The `VFIO_IRQ_SET_*` names of linux include/uapi/linux/vfio.h (struct
// vfio_irq_set), which vfio-user's VFIO_USER_DEVICE_SET_IRQS reuses.
#[allow(missing_docs)]
pub mod irq_flags {
    pub const DATA_NONE: u32 = 1 << 0;
    pub const DATA_BOOL: u32 = 1 << 1;
    pub const DATA_EVENTFD: u32 = 1 << 2;
    pub const ACTION_MASK: u32 = 1 << 3;
    pub const ACTION_UNMASK: u32 = 1 << 4;
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    pub const DATA_TYPE_MASK: u32 = DATA_NONE | DATA_BOOL | DATA_EVENTFD;
    pub const ACTION_TYPE_MASK: u32 = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER;
}

pub use udriver::vfio::IrqAction;

/// The data of a SET_IRQS.
#[derive(Debug)]
pub enum IrqSetData {
    /// Act on every vector of the range (count 0 with TRIGGER: disable the index).
    None,
    /// Act on vector `start + i` where `flags[i]`.
    Bool(Vec<bool>),
    /// Vector `start + i` signals `fds[i]` (`None`: de-assign it). Fewer fds than
    /// `count` (QEMU sends -1 entries as missing fds) leave the rest de-assigned.
    Eventfds(Vec<Option<OwnedFd>>),
}

/// One write of a REGION_WRITE_MULTI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SingleWrite {
    /// Region index (VFIO PCI region: BAR0..5, ROM, config).
    pub region: u32,
    /// Byte offset within the region.
    pub offset: u64,
    /// Bytes to write, 1..=8 (checked when parsed).
    pub count: u32,
    /// The bytes to write; only the first `count` are used.
    pub data: [u8; 8],
}

/// A command from the client, checked.
#[derive(Debug)]
pub enum Request {
    /// VERSION: the client's protocol version and capabilities.
    Version {
        /// Client's major version.
        major: u16,
        /// Client's minor version.
        minor: u16,
        /// What the client's JSON offered.
        capabilities: Capabilities,
    },
    /// DMA_MAP: client memory at `address..address + size` becomes reachable.
    DmaMap {
        /// READ and/or WRITE from [`dma_flags`]: what the device may do there.
        flags: u32,
        /// Offset into `fd` where the range starts.
        offset: u64,
        /// IOVA where the range starts (a guest physical address).
        address: u64,
        /// Length in bytes.
        size: u64,
        /// The memory to mmap; without it the range is only recorded, never
        /// device-reachable (QEMU's ROM and VGA areas).
        fd: Option<OwnedFd>,
    },
    /// DMA_UNMAP: a mapping goes away, or all of them with UNMAP_ALL.
    DmaUnmap {
        /// The client's structure size, at least the fixed part.
        argsz: u32,
        /// 0 or [`dma_flags::UNMAP_ALL`].
        flags: u32,
        /// Start of the mapping (0 with UNMAP_ALL).
        address: u64,
        /// Length of the mapping in bytes (0 with UNMAP_ALL).
        size: u64,
    },
    /// DEVICE_GET_INFO.
    DeviceGetInfo {
        /// Reply space the client offers, at least the fixed reply.
        argsz: u32,
    },
    /// DEVICE_GET_REGION_INFO for one region.
    RegionInfo {
        /// Reply space the client offers; a capability chain is only sent if it fits.
        argsz: u32,
        /// VFIO PCI region index (BAR0..5, ROM, config, VGA).
        index: u32,
    },
    /// DEVICE_GET_IRQ_INFO for one IRQ index.
    IrqInfo {
        /// Reply space the client offers, at least the fixed reply.
        argsz: u32,
        /// VFIO PCI IRQ index (INTx, MSI, MSI-X, error, request).
        index: u32,
    },
    /// DEVICE_SET_IRQS: act on vectors `start..start + count` of one IRQ index.
    SetIrqs {
        /// Mask, unmask or trigger (trigger with eventfds wires the vectors).
        action: IrqAction,
        /// VFIO PCI IRQ index.
        index: u32,
        /// First vector.
        start: u32,
        /// Number of vectors; 0 with DATA_NONE and trigger disables the index.
        count: u32,
        /// What to do per vector.
        data: IrqSetData,
    },
    /// REGION_READ of `count` bytes.
    RegionRead {
        /// VFIO PCI region index.
        region: u32,
        /// Byte offset within the region.
        offset: u64,
        /// Bytes to read, at most [`MAX_DATA_XFER_SIZE`].
        count: u32,
    },
    /// REGION_WRITE of `data`.
    RegionWrite {
        /// VFIO PCI region index.
        region: u32,
        /// Byte offset within the region.
        offset: u64,
        /// The bytes, at most [`MAX_DATA_XFER_SIZE`].
        data: Vec<u8>,
    },
    /// REGION_WRITE_MULTI: writes done in order, each as a REGION_WRITE would be.
    RegionWriteMulti {
        /// 1..=[`sizes::MAX_MULTI_WRITES`] writes.
        writes: Vec<SingleWrite>,
    },
    /// DEVICE_RESET.
    DeviceReset,
}

/// Fixed sizes of request payloads.
// In bytes, one per fixed request structure of QEMU docs/interop/vfio-user.rst
// (the constants are named after the commands whose structure they size).
#[allow(missing_docs)]
pub mod sizes {
    pub const DMA_MAP: usize = 32;
    pub const DMA_UNMAP: usize = 24;
    pub const DEVICE_INFO: usize = 16;
    pub const REGION_INFO: usize = 32;
    pub const IRQ_INFO: usize = 16;
    pub const IRQ_SET: usize = 20;
    pub const REGION_ACCESS: usize = 16;
    pub const SINGLE_WRITE: usize = 24;
    /// Most writes one REGION_WRITE_MULTI may carry (QEMU sends at most 16).
    pub const MAX_MULTI_WRITES: u64 = 1024;
}

fn u16_at(p: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([p[o], p[o + 1]])
}

fn u32_at(p: &[u8], o: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[o..o + 4]);
    u32::from_ne_bytes(b)
}

fn u64_at(p: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[o..o + 8]);
    u64::from_ne_bytes(b)
}

fn need(what: &str, payload: &[u8], len: usize) -> Result<(), Refusal> {
    if payload.len() < len {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!(
                "{what}: payload is {} bytes, the command needs {len}",
                payload.len()
            ),
        ));
    }
    Ok(())
}

fn no_fds(what: &str, fds: &[OwnedFd]) -> Result<(), Refusal> {
    if !fds.is_empty() {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!(
                "{what} carries {} file descriptor(s); it takes none",
                fds.len()
            ),
        ));
    }
    Ok(())
}

/// `argsz` of a query: at least the fixed reply it asks for.
fn check_argsz(what: &str, argsz: u32, fixed: usize) -> Result<(), Refusal> {
    if (argsz as usize) < fixed {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!("{what}: argsz {argsz} is smaller than the {fixed}-byte reply"),
        ));
    }
    Ok(())
}

fn check_count(what: &str, count: u64) -> Result<u32, Refusal> {
    if count > u64::from(MAX_DATA_XFER_SIZE) {
        return Err(Refusal::new(
            Errno::E2BIG,
            format!("{what} of {count} bytes exceeds max_data_xfer_size {MAX_DATA_XFER_SIZE}"),
        ));
    }
    Ok(count as u32)
}

/// Check and decode one command. `fds` are those that came with it; they are
/// closed if the command is refused.
pub fn parse_request(
    header: &Header,
    payload: &[u8],
    mut fds: Vec<OwnedFd>,
) -> Result<Request, Refusal> {
    if header.flags & flags::TYPE_MASK != flags::TYPE_COMMAND {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!(
                "message type {} is not a command (the server sends no commands, so expects no replies)",
                header.flags & flags::TYPE_MASK
            ),
        ));
    }
    if header.size as usize != HEADER_SIZE + payload.len() {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!(
                "header says {} bytes, {} arrived",
                header.size,
                HEADER_SIZE + payload.len()
            ),
        ));
    }
    let Some(command) = Command::from_raw(header.command) else {
        return Err(Refusal::new(
            Errno::ENOSYS,
            format!("unknown command {}", header.command),
        ));
    };
    let p = payload;
    match command {
        Command::Version => {
            no_fds("VERSION", &fds)?;
            need("VERSION", p, 4)?;
            let json = &p[4..];
            if json.len() > MAX_VERSION_JSON {
                return Err(Refusal::new(
                    Errno::E2BIG,
                    format!(
                        "VERSION data is {} bytes, more than {MAX_VERSION_JSON}",
                        json.len()
                    ),
                ));
            }
            let json = json.split(|b| *b == 0).next().unwrap_or(&[]);
            let capabilities = if json.iter().all(|b| b.is_ascii_whitespace()) {
                Capabilities::default()
            } else {
                serde_json::from_slice::<VersionJson>(json)
                    .map_err(|e| {
                        Refusal::new(
                            Errno::EINVAL,
                            format!("VERSION data is not valid JSON: {e}"),
                        )
                    })?
                    .capabilities
            };
            Ok(Request::Version {
                major: u16_at(p, 0),
                minor: u16_at(p, 2),
                capabilities,
            })
        }
        Command::DmaMap => {
            need("DMA_MAP", p, sizes::DMA_MAP)?;
            if fds.len() > 1 {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("DMA_MAP carries {} fds; it takes at most one", fds.len()),
                ));
            }
            let argsz = u32_at(p, 0);
            if (argsz as usize) < sizes::DMA_MAP {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("DMA_MAP: argsz {argsz} is smaller than the 32-byte structure"),
                ));
            }
            let flags = u32_at(p, 4);
            if flags & !(dma_flags::READ | dma_flags::WRITE) != 0 {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("DMA_MAP: unknown flags {flags:#x}"),
                ));
            }
            Ok(Request::DmaMap {
                flags,
                offset: u64_at(p, 8),
                address: u64_at(p, 16),
                size: u64_at(p, 24),
                fd: fds.pop(),
            })
        }
        Command::DmaUnmap => {
            no_fds("DMA_UNMAP", &fds)?;
            need("DMA_UNMAP", p, sizes::DMA_UNMAP)?;
            let argsz = u32_at(p, 0);
            check_argsz("DMA_UNMAP", argsz, sizes::DMA_UNMAP)?;
            let flags = u32_at(p, 4);
            if flags & !dma_flags::UNMAP_ALL != 0 {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("DMA_UNMAP: unsupported flags {flags:#x} (dirty page tracking is not offered)"),
                ));
            }
            Ok(Request::DmaUnmap {
                argsz,
                flags,
                address: u64_at(p, 8),
                size: u64_at(p, 16),
            })
        }
        Command::DeviceGetInfo => {
            no_fds("DEVICE_GET_INFO", &fds)?;
            need("DEVICE_GET_INFO", p, sizes::DEVICE_INFO)?;
            let argsz = u32_at(p, 0);
            check_argsz("DEVICE_GET_INFO", argsz, sizes::DEVICE_INFO)?;
            Ok(Request::DeviceGetInfo { argsz })
        }
        Command::DeviceGetRegionInfo => {
            no_fds("DEVICE_GET_REGION_INFO", &fds)?;
            need("DEVICE_GET_REGION_INFO", p, sizes::REGION_INFO)?;
            let argsz = u32_at(p, 0);
            check_argsz("DEVICE_GET_REGION_INFO", argsz, sizes::REGION_INFO)?;
            Ok(Request::RegionInfo {
                argsz,
                index: u32_at(p, 8),
            })
        }
        Command::DeviceGetIrqInfo => {
            no_fds("DEVICE_GET_IRQ_INFO", &fds)?;
            need("DEVICE_GET_IRQ_INFO", p, sizes::IRQ_INFO)?;
            let argsz = u32_at(p, 0);
            check_argsz("DEVICE_GET_IRQ_INFO", argsz, sizes::IRQ_INFO)?;
            Ok(Request::IrqInfo {
                argsz,
                index: u32_at(p, 8),
            })
        }
        Command::DeviceSetIrqs => parse_set_irqs(p, fds),
        Command::RegionRead => {
            no_fds("REGION_READ", &fds)?;
            need("REGION_READ", p, sizes::REGION_ACCESS)?;
            if p.len() != sizes::REGION_ACCESS {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("REGION_READ carries {} bytes; the request is 16", p.len()),
                ));
            }
            let count = check_count("REGION_READ", u32_at(p, 12).into())?;
            Ok(Request::RegionRead {
                offset: u64_at(p, 0),
                region: u32_at(p, 8),
                count,
            })
        }
        Command::RegionWrite => {
            no_fds("REGION_WRITE", &fds)?;
            need("REGION_WRITE", p, sizes::REGION_ACCESS)?;
            let count = check_count("REGION_WRITE", u32_at(p, 12).into())?;
            let data = &p[sizes::REGION_ACCESS..];
            if data.len() != count as usize {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("REGION_WRITE: count {count} but {} data bytes", data.len()),
                ));
            }
            Ok(Request::RegionWrite {
                offset: u64_at(p, 0),
                region: u32_at(p, 8),
                data: data.to_vec(),
            })
        }
        Command::RegionWriteMulti => {
            no_fds("REGION_WRITE_MULTI", &fds)?;
            need("REGION_WRITE_MULTI", p, 8)?;
            let n = u64_at(p, 0);
            if n == 0 || n > sizes::MAX_MULTI_WRITES {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!(
                        "REGION_WRITE_MULTI of {n} writes (1..={} accepted)",
                        sizes::MAX_MULTI_WRITES
                    ),
                ));
            }
            let want = 8 + n as usize * sizes::SINGLE_WRITE;
            if p.len() != want {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!(
                        "REGION_WRITE_MULTI of {n} writes is {want} bytes, {} arrived",
                        p.len()
                    ),
                ));
            }
            let writes = p[8..]
                .chunks_exact(sizes::SINGLE_WRITE)
                .map(|w| {
                    let count = u32_at(w, 12);
                    if count == 0 || count > 8 {
                        return Err(Refusal::new(
                            Errno::EINVAL,
                            format!("REGION_WRITE_MULTI: a write of {count} bytes (1..=8)"),
                        ));
                    }
                    let mut data = [0u8; 8];
                    data.copy_from_slice(&w[16..24]);
                    Ok(SingleWrite {
                        offset: u64_at(w, 0),
                        region: u32_at(w, 8),
                        count,
                        data,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Request::RegionWriteMulti { writes })
        }
        Command::DeviceReset => {
            no_fds("DEVICE_RESET", &fds)?;
            Ok(Request::DeviceReset)
        }
        Command::DeviceGetRegionIoFds
        | Command::DeviceFeature
        | Command::MigDataRead
        | Command::MigDataWrite => Err(Refusal::new(
            Errno::ENOTSUP,
            format!("{command:?} is not offered by udrv (no ioregionfds, no migration)"),
        )),
        Command::DmaRead | Command::DmaWrite => Err(Refusal::new(
            Errno::EINVAL,
            format!("{command:?} goes from server to client, not the other way"),
        )),
    }
}

fn parse_set_irqs(p: &[u8], fds: Vec<OwnedFd>) -> Result<Request, Refusal> {
    need("DEVICE_SET_IRQS", p, sizes::IRQ_SET)?;
    let argsz = u32_at(p, 0) as usize;
    let flags = u32_at(p, 4);
    let index = u32_at(p, 8);
    let start = u32_at(p, 12);
    let count = u32_at(p, 16);
    let bad = |why: String| {
        Err(Refusal::new(
            Errno::EINVAL,
            format!("DEVICE_SET_IRQS: {why}"),
        ))
    };
    if flags & !(irq_flags::DATA_TYPE_MASK | irq_flags::ACTION_TYPE_MASK) != 0 {
        return bad(format!("unknown flags {flags:#x}"));
    }
    let action = match flags & irq_flags::ACTION_TYPE_MASK {
        irq_flags::ACTION_MASK => IrqAction::Mask,
        irq_flags::ACTION_UNMASK => IrqAction::Unmask,
        irq_flags::ACTION_TRIGGER => IrqAction::Trigger,
        other => {
            return bad(format!(
                "action flags {other:#x}: exactly one action is needed"
            ))
        }
    };
    if start.checked_add(count).is_none() {
        return bad(format!("start {start} + count {count} overflows"));
    }
    if count > MAX_IRQ_VECTORS {
        return bad(format!(
            "count {count}: no interrupt index has more than {MAX_IRQ_VECTORS} vectors"
        ));
    }
    let data_len = p.len() - sizes::IRQ_SET;
    let data = match flags & irq_flags::DATA_TYPE_MASK {
        irq_flags::DATA_NONE => {
            if data_len != 0 || !fds.is_empty() {
                return bad("DATA_NONE with data or fds".into());
            }
            IrqSetData::None
        }
        irq_flags::DATA_BOOL => {
            if !fds.is_empty() {
                return bad("DATA_BOOL with fds".into());
            }
            if data_len != count as usize {
                return bad(format!("DATA_BOOL: count {count} but {data_len} bytes"));
            }
            IrqSetData::Bool(p[sizes::IRQ_SET..].iter().map(|b| *b != 0).collect())
        }
        irq_flags::DATA_EVENTFD => {
            if data_len != 0 {
                return bad(format!("DATA_EVENTFD with {data_len} inline bytes"));
            }
            if fds.len() > count as usize {
                return bad(format!("{} fds for {count} vectors", fds.len()));
            }
            if count == 0 {
                return bad("DATA_EVENTFD with count 0".into());
            }
            // QEMU leaves -1 entries out of the fd array: vectors without an fd are
            // de-assigned, and when only some vectors have fds the client sends the
            // whole range one fd per vector (so a shorter array means trailing -1s).
            let mut v: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
            v.resize_with(count as usize, || None);
            IrqSetData::Eventfds(v)
        }
        other => {
            return bad(format!(
                "data flags {other:#x}: exactly one data type is needed"
            ))
        }
    };
    // argsz covers the fixed part and the inline data; QEMU sets it to the whole
    // payload. Smaller is a lie; larger is harmless (there is no reply payload).
    if argsz < sizes::IRQ_SET + data_len {
        return bad(format!(
            "argsz {argsz} is smaller than the {}-byte request",
            sizes::IRQ_SET + data_len
        ));
    }
    Ok(Request::SetIrqs {
        action,
        index,
        start,
        count,
        data,
    })
}

/// A reply: payload bytes and the fds to send with them.
#[derive(Debug, Default)]
pub struct Reply {
    /// Bytes after the reply header.
    pub payload: Vec<u8>,
    /// Sent as SCM_RIGHTS with the message (a region's mmap fd).
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// A reply with no payload and no fds.
    pub fn empty() -> Reply {
        Reply::default()
    }

    /// A reply of `payload` and no fds.
    pub fn bytes(payload: Vec<u8>) -> Reply {
        Reply {
            payload,
            fds: Vec::new(),
        }
    }
}

/// The header of the reply to `request` carrying `payload_len` bytes, or the error.
pub fn reply_header(request: &Header, payload_len: usize, error: Option<Errno>) -> Header {
    let mut flags = flags::TYPE_REPLY;
    let mut errno = 0;
    let mut size = HEADER_SIZE + payload_len;
    if let Some(e) = error {
        flags |= flags::ERROR;
        errno = e as u32;
        // An error reply is only the header.
        size = HEADER_SIZE;
    }
    Header {
        id: request.id,
        command: request.command,
        size: size as u32,
        flags,
        error: errno,
    }
}

/// Little builder for reply payloads in the host's byte order.
#[derive(Default)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    /// An empty payload with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Payload {
        Payload(Vec::with_capacity(n))
    }
    /// Append `v` in host byte order.
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Append `v` in host byte order.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Append `v` in host byte order.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Append raw bytes.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// The server's VERSION JSON: what it offers, within what the client offered.
pub fn server_capabilities(client: &Capabilities, pgsizes: u64) -> String {
    let write_multiple = client.write_multiple.unwrap_or(false);
    serde_json::json!({
        "capabilities": {
            "max_msg_fds": MAX_MSG_FDS,
            "max_data_xfer_size": MAX_DATA_XFER_SIZE,
            "pgsizes": pgsizes,
            "max_dma_maps": MAX_DMA_MAPS,
            "write_multiple": write_multiple,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: u16, payload: &[u8]) -> Header {
        Header {
            id: 7,
            command,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: 0,
            error: 0,
        }
    }

    fn parse(command: u16, payload: &[u8]) -> Result<Request, Refusal> {
        parse_request(&header(command, payload), payload, Vec::new())
    }

    fn eventfd() -> OwnedFd {
        OwnedFd::from(udriver::vfio::EventFd::new().unwrap())
    }

    #[test]
    fn vfio_user_header_round_trips_and_sizes_are_bounded() {
        let h = Header {
            id: 0xbeef,
            command: 9,
            size: 32,
            flags: flags::NO_REPLY,
            error: 5,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        assert!(h.no_reply());
        assert_eq!(h.payload_len().unwrap(), 16);
        let small = Header { size: 15, ..h };
        assert_eq!(small.payload_len().unwrap_err().errno, Errno::EINVAL);
        let huge = Header {
            size: u32::MAX,
            ..h
        };
        assert_eq!(huge.payload_len().unwrap_err().errno, Errno::E2BIG);
        let reply = reply_header(&h, 8, Some(Errno::ENOENT));
        assert_eq!(reply.size as usize, HEADER_SIZE);
        assert_eq!(reply.flags, flags::TYPE_REPLY | flags::ERROR);
        assert_eq!(reply.error, Errno::ENOENT as u32);
        assert_eq!((reply.id, reply.command), (0xbeef, 9));
    }

    #[test]
    fn vfio_user_version_json_is_read_and_defaults_apply() {
        let mut p = Payload::default().u16(0).u16(1).0;
        p.extend_from_slice(
            br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"migration":{"pgsize":4096},"write_multiple":true}}"#,
        );
        p.push(0);
        let Request::Version {
            major,
            minor,
            capabilities,
        } = parse(1, &p).unwrap()
        else {
            panic!("not a version");
        };
        assert_eq!((major, minor), (0, 1));
        assert_eq!(capabilities.max_msg_fds, Some(16));
        assert_eq!(capabilities.write_multiple, Some(true));
        // No JSON at all: defaults.
        let bare = Payload::default().u16(0).u16(1).0;
        assert!(matches!(parse(1, &bare), Ok(Request::Version { .. })));
        let mut junk = bare.clone();
        junk.extend_from_slice(b"{not json");
        assert_eq!(parse(1, &junk).unwrap_err().errno, Errno::EINVAL);
        let json = server_capabilities(&capabilities, 4096);
        let back: VersionJson = serde_json::from_str(&json).unwrap();
        assert_eq!(back.capabilities.max_data_xfer_size, Some(1 << 20));
        assert_eq!(back.capabilities.write_multiple, Some(true));
    }

    #[test]
    fn vfio_user_malformed_requests_are_refused_with_an_errno() {
        // Unknown command.
        assert_eq!(parse(99, &[]).unwrap_err().errno, Errno::ENOSYS);
        // Truncated fixed parts.
        for command in [2u16, 3, 4, 5, 7, 8, 9, 10, 15] {
            let e = parse(command, &[0u8; 3]).unwrap_err();
            assert_eq!(e.errno, Errno::EINVAL, "command {command}: {e}");
        }
        // A size that disagrees with the bytes.
        let p = [0u8; 16];
        let mut h = header(9, &p);
        h.size += 4;
        assert!(parse_request(&h, &p, Vec::new()).is_err());
        // A reply sent to the server.
        let mut h = header(13, &[]);
        h.flags = flags::TYPE_REPLY;
        assert!(parse_request(&h, &[], Vec::new()).is_err());
        // argsz lying small.
        let info = Payload::default().u32(8).u32(0).u32(0).u32(0).0;
        assert!(parse(4, &info).unwrap_err().reason.contains("argsz"));
        // Oversized transfer.
        let read = Payload::default()
            .u64(0)
            .u32(0)
            .u32(MAX_DATA_XFER_SIZE + 1)
            .0;
        assert_eq!(parse(9, &read).unwrap_err().errno, Errno::E2BIG);
        // Write whose count disagrees with its data.
        let write = Payload::default().u64(0).u32(0).u32(4).bytes(&[1, 2]).0;
        assert!(parse(10, &write).unwrap_err().reason.contains("count 4"));
        // fds where none belong.
        let h = header(13, &[]);
        assert!(parse_request(&h, &[], vec![eventfd()]).is_err());
        // DMA_MAP with two fds.
        let map = Payload::default().u32(32).u32(3).u64(0).u64(0).u64(4096).0;
        let h = header(2, &map);
        assert!(parse_request(&h, &map, vec![eventfd(), eventfd()]).is_err());
        // Write-multi with a bad count of writes and with a 9-byte write.
        assert!(parse(15, &Payload::default().u64(0).0).is_err());
        let multi = Payload::default().u64(1).u64(0).u32(0).u32(9).u64(0).0;
        assert!(parse(15, &multi).is_err());
        // Migration is not offered.
        assert_eq!(parse(16, &[0u8; 8]).unwrap_err().errno, Errno::ENOTSUP);
    }

    #[test]
    fn vfio_user_set_irqs_checks_flags_data_and_fds() {
        let set = |flags: u32, count: u32, data: &[u8]| {
            Payload::default()
                .u32((20 + data.len()) as u32)
                .u32(flags)
                .u32(2)
                .u32(0)
                .u32(count)
                .bytes(data)
                .0
        };
        use irq_flags::*;
        // Disable: DATA_NONE, count 0.
        let p = set(DATA_NONE | ACTION_TRIGGER, 0, &[]);
        assert!(matches!(
            parse(8, &p),
            Ok(Request::SetIrqs {
                count: 0,
                data: IrqSetData::None,
                action: IrqAction::Trigger,
                ..
            })
        ));
        // Two actions, or no data type.
        assert!(parse(8, &set(DATA_NONE | ACTION_MASK | ACTION_UNMASK, 1, &[])).is_err());
        assert!(parse(8, &set(ACTION_TRIGGER, 1, &[])).is_err());
        // Bools must match count.
        assert!(parse(8, &set(DATA_BOOL | ACTION_UNMASK, 2, &[1])).is_err());
        assert!(matches!(
            parse(8, &set(DATA_BOOL | ACTION_UNMASK, 2, &[1, 0])),
            Ok(Request::SetIrqs { data: IrqSetData::Bool(ref b), .. }) if b == &[true, false]
        ));
        // Eventfds: more fds than vectors is refused, fewer de-assigns the rest.
        let p = set(DATA_EVENTFD | ACTION_TRIGGER, 1, &[]);
        let h = header(8, &p);
        assert!(parse_request(&h, &p, vec![eventfd(), eventfd()]).is_err());
        let p = set(DATA_EVENTFD | ACTION_TRIGGER, 3, &[]);
        let h = header(8, &p);
        match parse_request(&h, &p, vec![eventfd()]).unwrap() {
            Request::SetIrqs {
                data: IrqSetData::Eventfds(fds),
                ..
            } => {
                assert_eq!(fds.len(), 3);
                assert!(fds[0].is_some() && fds[1].is_none() && fds[2].is_none());
            }
            other => panic!("{other:?}"),
        }
        // start + count overflowing.
        let p = Payload::default()
            .u32(20)
            .u32(DATA_NONE | ACTION_TRIGGER)
            .u32(2)
            .u32(u32::MAX)
            .u32(2)
            .0;
        assert!(parse(8, &p).is_err());
        // A count past any index's vectors is refused before it sizes anything (an
        // eventfd set with count u32::MAX once made the parser allocate 16 GiB).
        let p = set(DATA_EVENTFD | ACTION_TRIGGER, u32::MAX, &[]);
        let h = header(8, &p);
        let refused = parse_request(&h, &p, vec![eventfd()]).unwrap_err();
        assert!(
            refused.reason.contains("2048 vectors"),
            "{}",
            refused.reason
        );
        // argsz smaller than what was sent.
        let mut p = set(DATA_BOOL | ACTION_MASK, 2, &[1, 1]);
        p[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse(8, &p).unwrap_err().reason.contains("argsz"));
    }
}
