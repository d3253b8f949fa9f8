//! Errors of the VFIO layer. Each names the device (or group, or container) and the
//! operation, and where there is one, the fix.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::region::RegionName;

/// Result of a VFIO operation.
pub type Result<T, E = VfioError> = std::result::Result<T, E>;

/// One access to a region, as named in error messages: `read32`, `write8`, or
/// `read of 13 bytes` for a byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// True for a write.
    pub write: bool,
    /// Bytes accessed.
    pub len: usize,
}

impl Access {
    /// A read of `len` bytes.
    pub const fn read(len: usize) -> Self {
        Access { write: false, len }
    }

    /// A write of `len` bytes.
    pub const fn write(len: usize) -> Self {
        Access { write: true, len }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.write { "write" } else { "read" };
        match self.len {
            1 | 2 | 4 | 8 => write!(f, "{verb}{}", self.len * 8),
            n => write!(f, "{verb} of {n} bytes"),
        }
    }
}

/// Everything that can go wrong in the VFIO layer.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// A VFIO character device could not be opened.
    #[error("open {path}: {source}; {hint}")]
    Open {
        /// The file that was opened.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },

    /// An ioctl failed.
    #[error("{target} {op}: {source}")]
    Ioctl {
        /// What the ioctl was issued on (`VFIO container`, `VFIO group 7`, `0000:00:02.0`).
        target: String,
        /// The ioctl and its argument, e.g. `VFIO_DEVICE_GET_REGION_INFO(BAR2)`.
        op: String,
        /// The errno.
        source: nix::Error,
    },

    /// The container speaks a VFIO API version this code does not know.
    #[error("VFIO container: API version {found}, expected {expected}; this kernel's VFIO is not supported")]
    ApiVersion {
        /// Version the kernel reported.
        found: i32,
        /// Version this code was written for.
        expected: u32,
    },

    /// The container offers no IOMMU model that udrv can use.
    #[error("VFIO container: the kernel offers no {backend} IOMMU; enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line) and load vfio_iommu_type1")]
    NoIommu {
        /// The backend asked for.
        backend: super::container::IommuBackend,
    },

    /// Some device in the group is bound to a host driver.
    #[error("VFIO group {group} is not viable: every device in /sys/kernel/iommu_groups/{group}/devices must be bound to vfio-pci or to no driver; bind the others to vfio-pci (udrv attach) or unbind them")]
    GroupNotViable {
        /// IOMMU group number.
        group: u32,
    },

    /// The group is already in a container that is not this one.
    #[error("VFIO group {group} is already attached to another container (another process or another VfioContainer holds it); close that one first")]
    GroupInOtherContainer {
        /// IOMMU group number.
        group: u32,
    },

    /// An access outside a region.
    #[error("{device} {region} {access} at {offset:#x}: out of range ({} is {size:#x} bytes)", region.kind())]
    OutOfRange {
        /// Device name.
        device: String,
        /// Region accessed.
        region: RegionName,
        /// What was attempted.
        access: Access,
        /// Offset into the region.
        offset: u64,
        /// Region size.
        size: u64,
    },

    /// The region does not allow this kind of access.
    #[error("{device} {region} {access} at {offset:#x}: not allowed ({reason})")]
    NotPermitted {
        /// Device name.
        device: String,
        /// Region accessed.
        region: RegionName,
        /// What was attempted.
        access: Access,
        /// Offset into the region.
        offset: u64,
        /// Why not.
        reason: &'static str,
    },

    /// pread/pwrite on a region failed or was short.
    #[error("{device} {region} {access} at {offset:#x}: {source}")]
    RegionIo {
        /// Device name.
        device: String,
        /// Region accessed.
        region: RegionName,
        /// What was attempted.
        access: Access,
        /// Offset into the region.
        offset: u64,
        /// What the kernel said.
        source: io::Error,
    },

    /// mmap of part of a region failed.
    #[error("{device} {region} mmap of {len:#x} bytes at {offset:#x}: {source}")]
    Mmap {
        /// Device name.
        device: String,
        /// Region mapped.
        region: RegionName,
        /// Offset of the area in the region.
        offset: u64,
        /// Length of the area.
        len: u64,
        /// What failed.
        source: io::Error,
    },

    /// The kernel returned data that does not parse (a capability chain that loops or
    /// runs past its buffer, an area outside its region).
    #[error("{target}: malformed {what} from the kernel: {reason}")]
    Malformed {
        /// Device or container.
        target: String,
        /// What was being parsed.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A call made in the wrong state (a group in no container, a container with no
    /// group), or with arguments that cannot work.
    #[error("{target}: {reason}")]
    Usage {
        /// Container, group or device.
        target: String,
        /// What is wrong and what to do first.
        reason: String,
    },

    /// A region index that is not a BAR, or a BAR the device does not implement.
    #[error("{device} {region}: {reason}")]
    NoSuchRegion {
        /// Device name.
        device: String,
        /// Region asked for.
        region: RegionName,
        /// Why it is not there.
        reason: &'static str,
    },

    /// An interrupt request the device cannot satisfy.
    #[error("{device} {index} {op}: {reason}")]
    Irq {
        /// Device name.
        device: String,
        /// Interrupt index.
        index: super::irq::IrqIndex,
        /// Operation (`enable 8 vectors`, `unmask vector 3`).
        op: String,
        /// Why not.
        reason: String,
    },

    /// Creating or cloning an eventfd failed.
    #[error("{device} {index}: eventfd: {source}")]
    EventFd {
        /// Device name.
        device: String,
        /// Interrupt index the eventfd was for.
        index: super::irq::IrqIndex,
        /// What failed.
        source: io::Error,
    },

    /// Neither a function reset nor a bus hot reset is possible.
    #[error("{device} reset: not available: {reason}")]
    NoReset {
        /// Device name.
        device: String,
        /// Why neither reset method can be used.
        reason: String,
    },

    /// A DMA mapping request that the container refuses before asking the kernel.
    #[error("VFIO container map_dma iova {iova:#x} len {len:#x}: {reason}")]
    DmaRefused {
        /// Requested IOVA.
        iova: u64,
        /// Requested length.
        len: u64,
        /// Why, and what to do.
        reason: String,
    },
}

impl VfioError {
    /// The errno of a failed ioctl, if this is one.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            VfioError::Ioctl { source, .. } => Some(*source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_names_match_the_accessors() {
        assert_eq!(Access::read(4).to_string(), "read32");
        assert_eq!(Access::write(1).to_string(), "write8");
        assert_eq!(Access::read(8).to_string(), "read64");
        assert_eq!(Access::write(3).to_string(), "write of 3 bytes");
    }

    #[test]
    fn out_of_range_reads_as_the_issue_asks() {
        let e = VfioError::OutOfRange {
            device: "0000:00:03.0".into(),
            region: RegionName::Bar(0),
            access: Access::read(4),
            offset: 0x20000,
            size: 0x20000,
        };
        assert_eq!(
            e.to_string(),
            "0000:00:03.0 BAR0 read32 at 0x20000: out of range (BAR is 0x20000 bytes)"
        );
    }
}
