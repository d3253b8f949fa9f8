//! The devices the daemon serves: which frontend serves each, since when, and what its
//! frontend last reported (so that changes — a guest connecting, an error — are logged
//! once, when they happen).

use std::collections::BTreeMap;
use std::path::Path;

use tracing::{info, warn};
use udriver::pci::PciAddress;

use super::control::ServedDevice;
use super::launcher::RunningFrontend;
use super::FrontendSpec;
use crate::frontend::FrontendStatus;

/// One served device.
pub(crate) struct Entry {
    pub(crate) spec: FrontendSpec,
    pub(crate) frontend: Box<dyn RunningFrontend>,
    pub(crate) since: u64,
    pub(crate) recovered: bool,
    last: FrontendStatus,
}

impl Entry {
    fn report(&self, address: PciAddress, status: FrontendStatus) -> ServedDevice {
        ServedDevice {
            address,
            frontend: self.spec.clone(),
            status,
            since: self.since,
            recovered: self.recovered,
        }
    }

    /// Stops the frontend; the report carries its last status (and the stop's error,
    /// if it failed, as the last error).
    pub(crate) fn stop(self, address: PciAddress) -> (ServedDevice, Result<(), String>) {
        let before = self.frontend.status();
        let spec = self.spec.clone();
        let (since, recovered) = (self.since, self.recovered);
        let (status, outcome) = match self.frontend.stop() {
            Ok(status) => (status, Ok(())),
            Err(e) => {
                let message = format!("{address}: stopping the {spec} frontend failed: {e}");
                let mut status = before;
                status.last_error = Some(message.clone());
                (status, Err(message))
            }
        };
        (
            ServedDevice {
                address,
                frontend: spec,
                status,
                since,
                recovered,
            },
            outcome,
        )
    }
}

/// Every served device, by address.
#[derive(Default)]
pub(crate) struct ServedDevices {
    devices: BTreeMap<PciAddress, Entry>,
}

impl ServedDevices {
    pub(crate) fn get(&self, address: PciAddress) -> Option<&Entry> {
        self.devices.get(&address)
    }

    /// The device whose frontend listens on `socket`.
    pub(crate) fn by_socket(&self, socket: &Path) -> Option<PciAddress> {
        self.devices
            .iter()
            .find(|(_, e)| e.spec.socket() == socket)
            .map(|(a, _)| *a)
    }

    pub(crate) fn insert(
        &mut self,
        address: PciAddress,
        spec: FrontendSpec,
        frontend: Box<dyn RunningFrontend>,
        since: u64,
        recovered: bool,
    ) -> ServedDevice {
        let last = frontend.status();
        let entry = Entry {
            spec,
            frontend,
            since,
            recovered,
            last: last.clone(),
        };
        let report = entry.report(address, last);
        self.devices.insert(address, entry);
        report
    }

    pub(crate) fn remove(&mut self, address: PciAddress) -> Option<Entry> {
        self.devices.remove(&address)
    }

    pub(crate) fn addresses(&self) -> Vec<PciAddress> {
        self.devices.keys().copied().collect()
    }

    /// Every served device with its frontend's status now.
    pub(crate) fn reports(&self) -> Vec<ServedDevice> {
        self.devices
            .iter()
            .map(|(a, e)| e.report(*a, e.frontend.status()))
            .collect()
    }

    /// Logs what changed in each frontend since the last look: a guest connecting or
    /// going, a new error.
    pub(crate) fn watch(&mut self) {
        for (address, entry) in &mut self.devices {
            let now = entry.frontend.status();
            let last = &entry.last;
            if now.guest_connected && !last.guest_connected {
                info!(device = %address, frontend = %entry.spec, guests_served = now.guests_served, "guest connected");
            }
            if !now.guest_connected && last.guest_connected {
                info!(
                    device = %address,
                    frontend = %entry.spec,
                    config_accesses = now.config_accesses,
                    mmio_reads = now.mmio_reads,
                    mmio_writes = now.mmio_writes,
                    interrupts = now.interrupts,
                    "guest disconnected; the device is quiesced and ready for the next guest"
                );
            }
            if now.last_error.is_some() && now.last_error != last.last_error {
                warn!(device = %address, frontend = %entry.spec, error = now.last_error.as_deref().unwrap_or(""), "frontend error");
            }
            entry.last = now;
        }
    }
}
