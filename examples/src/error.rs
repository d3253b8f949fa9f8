//! The one error type of these drivers: what failed, on which device, and what to try.

use std::time::Duration;

use dma::DmaError;
use udriver::pci::PciError;
use udriver::vfio::VfioError;

/// Shorthand for results of the drivers.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// VFIO refused something (opening, a region access, an interrupt).
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// DMA memory could not be allocated or mapped.
    #[error("DMA memory: {0}")]
    Dma(#[from] DmaError),
    /// sysfs could not tell us about the device.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The device is not one this driver can take, or not ready for VFIO.
    #[error("{device}: {reason}")]
    Setup {
        /// The device, `0000:00:02.0`.
        device: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The device did not reach a state in time.
    #[error("{device}: timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The device.
        device: String,
        /// What was awaited, with the registers that tell why.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// The device reported an error for a command.
    #[error("{device}: {what} failed: {reason}")]
    Device {
        /// The device.
        device: String,
        /// The command, e.g. "READ DMA EXT of 2048 sectors at LBA 0".
        what: String,
        /// The device's error registers, decoded.
        reason: String,
    },
    /// A request the driver cannot carry out as asked (out of range, wrong size).
    #[error("{device}: {reason}")]
    Request {
        /// The device.
        device: String,
        /// What is wrong with the request.
        reason: String,
    },
    /// Data read back is not what was expected.
    #[error("{device}: data check failed: {detail}")]
    Verify {
        /// The device.
        device: String,
        /// Where and how it differs.
        detail: String,
    },
    /// Waiting on an interrupt's eventfd failed.
    #[error("{device}: waiting for an interrupt: {source}")]
    Irq {
        /// The device.
        device: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SIGINT or SIGTERM arrived; the driver stops and leaves the device quiet.
    #[error("{device}: stopped by a signal (SIGINT/SIGTERM)")]
    Interrupted {
        /// The device.
        device: String,
    },
}

impl DriverError {
    /// Whether this is the orderly stop after SIGINT/SIGTERM.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, DriverError::Interrupted { .. })
    }
}
