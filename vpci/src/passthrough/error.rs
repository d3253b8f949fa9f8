//! Why a passthrough function could not be built or could not carry out a guest's
//! request on the real device.

use thiserror::Error;

use crate::bar::BarIndex;
use crate::config::space::ConfigSpaceError;

/// An error from the device behind a passthrough function (a `VfioError` for VFIO
/// devices), kept whole so its message still names the device, region and access.
pub type DeviceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong building or running a passthrough function.
#[derive(Debug, Error)]
pub enum PassthroughError {
    /// The device refused an operation (a config or region access, IRQ setup).
    #[error("{device}: {op}: {source}")]
    Device {
        /// The device's name (its PCI address for VFIO devices).
        device: String,
        /// What was being done.
        op: String,
        /// The device's error.
        #[source]
        source: DeviceError,
    },
    /// A bridge or CardBus header: only type 0 functions can sit on the virtual bus.
    #[error("{device}: header type {header_type:#04x} is not a type 0 endpoint; only endpoints can be passed through (bridges need their own bus)")]
    NotAnEndpoint {
        /// The device's name.
        device: String,
        /// Its header type register.
        header_type: u8,
    },
    /// A memory BAR whose type bits hold the reserved value.
    #[error("{device} {bar}: register {register:#010x} has the reserved memory type; the device cannot be passed through")]
    UnknownBarType {
        /// The device's name.
        device: String,
        /// The BAR.
        bar: BarIndex,
        /// The BAR register as the device holds it.
        register: u32,
    },
    /// The config region is smaller than a conventional config space.
    #[error("{device}: VFIO reports a {len}-byte config space; expected at least 256")]
    ConfigTooSmall {
        /// The device's name.
        device: String,
        /// Size of VFIO's config region in bytes.
        len: usize,
    },
    /// The device's config could not be modelled (bad capability list, BAR sizes).
    #[error("{device}: {what}: {source}")]
    Config {
        /// The device's name.
        device: String,
        /// The step that failed ("loading config", "defining a BAR"...).
        what: &'static str,
        /// Why the config model refused it.
        #[source]
        source: ConfigSpaceError,
    },
    /// The guest enabled more MSI/MSI-X vectors than VFIO gives for the device.
    #[error("{device}: the guest enabled {kind} with {wanted} vector(s) but the device offers {offered} through VFIO; the extra vectors stay silent")]
    VectorsUnavailable {
        /// The device's name.
        device: String,
        /// "MSI" or "MSI-X".
        kind: &'static str,
        /// Vectors the guest enabled.
        wanted: u32,
        /// Vectors VFIO reports for that IRQ index.
        offered: u32,
    },
    /// A function's state cannot be handed to a successor, or does not fit the device.
    #[error("{device}: handing over: {reason}")]
    Handover {
        /// The device's name.
        device: String,
        /// Why.
        reason: String,
    },
}

impl PassthroughError {
    pub(crate) fn device(device: &str, op: impl Into<String>, source: DeviceError) -> Self {
        Self::Device {
            device: device.to_string(),
            op: op.into(),
            source,
        }
    }
}
