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
    #[error("{device}: {op}: {source}")]
    Device {
        device: String,
        op: String,
        #[source]
        source: DeviceError,
    },
    #[error("{device}: header type {header_type:#04x} is not a type 0 endpoint; only endpoints can be passed through (bridges need their own bus)")]
    NotAnEndpoint { device: String, header_type: u8 },
    #[error("{device} {bar}: register {register:#010x} has the reserved memory type; the device cannot be passed through")]
    UnknownBarType {
        device: String,
        bar: BarIndex,
        register: u32,
    },
    #[error("{device}: VFIO reports a {len}-byte config space; expected at least 256")]
    ConfigTooSmall { device: String, len: usize },
    #[error("{device}: {what}: {source}")]
    Config {
        device: String,
        what: &'static str,
        #[source]
        source: ConfigSpaceError,
    },
    #[error("{device}: the guest enabled {kind} with {wanted} vector(s) but the device offers {offered} through VFIO; the extra vectors stay silent")]
    VectorsUnavailable {
        device: String,
        kind: &'static str,
        wanted: u32,
        offered: u32,
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
