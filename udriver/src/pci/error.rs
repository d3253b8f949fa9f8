//! `PciError`: what can go wrong reading PCI devices from sysfs.

use std::io;
use std::path::PathBuf;

use super::PciAddress;

/// A failure to read or understand the PCI part of sysfs.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A sysfs attribute held something other than what the kernel writes there.
    #[error("{}: unexpected content {value:?} (expected {expected})", path.display())]
    Parse {
        /// The attribute.
        path: PathBuf,
        /// What it held.
        value: String,
        /// What the kernel writes there.
        expected: &'static str,
    },
    /// The address names no device.
    #[error("no PCI device {address}: it is not in {}; run `udrv list` to see the devices", path.display())]
    NoSuchDevice {
        /// The address asked for.
        address: PciAddress,
        /// The directory that lacks it.
        path: PathBuf,
    },
}

impl PciError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        PciError::Read {
            path: path.into(),
            source,
        }
    }
}
