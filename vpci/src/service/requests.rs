//! What the daemon does for each request, for recovery at start and at shutdown:
//! claims through udriver's [`Claimer`](udriver::claim::Claimer) (its refusals and
//! state file), frontends through the [`FrontendLauncher`], and the `serve` field of
//! each claim record kept in step with what is served.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};
use udriver::claim::{AttachOptions, ClaimPhase, DetachReport, DetachTarget, Owner, StateFile};
use udriver::pci::{PciAddress, PciDevice};

use super::control::{
    AttachReply, DaemonInfo, DetachReply, DeviceFailure, NotClaimed, Reply, Request,
    RestoredDevice, ServedDevice, StatusReply,
};
use super::control_socket::Peer;
use super::host::Host;
use super::launcher::FrontendLauncher;
use super::served::ServedDevices;
use super::{FrontendSpec, ServiceError};

/// What stopping the daemon did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Frontends stopped, with their last status.
    pub stopped: Vec<ServedDevice>,
    /// Devices given back to their drivers.
    pub restored: Vec<RestoredDevice>,
    /// Devices left on vfio-pci (`keep_claims`), still recorded.
    pub kept: Vec<PciAddress>,
    /// What failed (those claims stay recorded: `udrv detach` retries).
    pub failed: Vec<DeviceFailure>,
}

pub(crate) fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn log_restored(report: &DetachReport) {
    for r in &report.repaired {
        info!(device = %r.address, driver = r.driver.as_deref().unwrap_or("none"), "interrupted claim undone");
    }
    for r in &report.restored {
        info!(device = %r.address, driver = r.driver.as_deref().unwrap_or("none"), how = ?r.how, "device given back");
    }
    for (address, e) in &report.failed {
        error!(device = %address, error = %e, "giving the device back failed");
    }
}

/// The daemon's state: the host it claims on, the frontends it runs.
pub(crate) struct Service {
    pub(super) host: Host,
    pub(super) launcher: Box<dyn FrontendLauncher>,
    pub(super) served: ServedDevices,
    /// Devices this daemon claimed (given back when it stops, with the served ones).
    pub(super) claimed_here: BTreeSet<PciAddress>,
    pub(super) recovery_failures: Vec<DeviceFailure>,
    pub(super) info: DaemonInfo,
}

impl Service {
    pub(crate) fn new(host: Host, launcher: Box<dyn FrontendLauncher>, info: DaemonInfo) -> Self {
        Self {
            host,
            launcher,
            served: ServedDevices::default(),
            claimed_here: BTreeSet::new(),
            recovery_failures: Vec::new(),
            info,
        }
    }

    /// Carries out one request from `peer`.
    pub(crate) fn handle(&mut self, request: Request, peer: &Peer) -> Result<Reply, ServiceError> {
        match request {
            Request::Attach {
                devices,
                force,
                whole_group,
                serve,
            } => self
                .attach(&devices, force, whole_group, serve, peer)
                .map(Reply::Attached),
            Request::Serve { device, frontend } => {
                self.serve(device, frontend, false).map(Reply::Served)
            }
            Request::Unserve { device } => self.unserve(device).map(Reply::Unserved),
            Request::Detach {
                devices,
                all,
                force,
            } => self.detach(&devices, all, force).map(Reply::Detached),
            Request::Status => self.status().map(Reply::Status),
            // Only the daemon can replace its program: it never reaches here.
            Request::Upgrade { .. } => Err(ServiceError::Stop(
                "upgrade is carried out by the daemon's loop".into(),
            )),
        }
    }

    /// Refuses a frontend spec that collides with what is served or with the control
    /// socket.
    fn check_spec(&self, device: PciAddress, spec: &FrontendSpec) -> Result<(), ServiceError> {
        if let Some(entry) = self.served.get(device) {
            return Err(ServiceError::AlreadyServed {
                address: device,
                spec: entry.spec.clone(),
            });
        }
        if let Some(other) = self.served.by_socket(spec.socket()) {
            return Err(ServiceError::SocketTaken {
                socket: spec.socket().to_path_buf(),
                by: other,
            });
        }
        if spec.socket() == self.info.control {
            return Err(ServiceError::SocketIsControl(spec.socket().to_path_buf()));
        }
        Ok(())
    }

    fn attach(
        &mut self,
        devices: &[PciAddress],
        force: bool,
        whole_group: bool,
        serve: Option<FrontendSpec>,
        peer: &Peer,
    ) -> Result<AttachReply, ServiceError> {
        if let Some(spec) = &serve {
            let [device] = devices else {
                return Err(ServiceError::OneDevicePerFrontend(devices.len()));
            };
            self.check_spec(*device, spec)?;
        }
        let owner = Owner {
            uid: peer.uid,
            name: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
                .ok()
                .flatten()
                .map(|u| u.name),
        };
        let options = AttachOptions {
            force,
            whole_group,
            node_user: None,
            node_group: None,
            owner,
        };
        let report = self.host.claimer().attach(devices, &options)?;
        for r in &report.repaired {
            info!(device = %r.address, driver = r.driver.as_deref().unwrap_or("none"), "interrupted claim undone");
        }
        for a in &report.attached {
            info!(
                device = %a.address,
                from = a.previous_driver.as_deref().unwrap_or("none"),
                already = a.already,
                forced = a.forced.len(),
                uid = peer.uid,
                "claimed for vfio-pci"
            );
            if !a.already {
                self.claimed_here.insert(a.address);
            }
        }
        for w in &report.warnings {
            warn!(warning = %w, "attach");
        }
        let mut reply = AttachReply::from(&report);
        let Some(spec) = serve else {
            return Ok(reply);
        };
        let device = devices[0];
        match self.serve(device, spec, false) {
            Ok(served) => {
                reply.served = Some(served);
                Ok(reply)
            }
            Err(source) => {
                let claimed_now = report
                    .attached
                    .iter()
                    .any(|a| a.address == device && !a.already);
                let outcome = if !claimed_now {
                    "it stays claimed on vfio-pci, as it was before this request".to_string()
                } else {
                    self.claimed_here.remove(&device);
                    let report = self
                        .host
                        .claimer()
                        .detach(&DetachTarget::Devices(vec![device]), false);
                    match report {
                        Ok(r) if r.failed.is_empty() => {
                            log_restored(&r);
                            format!(
                                "it was given back to {}",
                                r.restored
                                    .first()
                                    .and_then(|r| r.driver.as_deref())
                                    .unwrap_or("no driver")
                            )
                        }
                        Ok(r) => {
                            log_restored(&r);
                            let why: Vec<String> =
                                r.failed.iter().map(|(_, e)| e.to_string()).collect();
                            format!("giving it back failed too: {}", why.join("; "))
                        }
                        Err(e) => format!("giving it back failed too: {e}"),
                    }
                };
                Err(ServiceError::ServeAfterAttach {
                    error: Box::new(source),
                    outcome,
                })
            }
        }
    }

    /// Records `spec` as the device's frontend in the state file (or clears it).
    fn record_serve(
        &self,
        device: PciAddress,
        spec: Option<&FrontendSpec>,
    ) -> Result<(), ServiceError> {
        let (file, mut state) = StateFile::open(&self.host.state_path)?;
        let Some(record) = state.claims.iter_mut().find(|c| c.address == device) else {
            return Err(ServiceError::NotClaimed(device));
        };
        record.serve = spec.map(ToString::to_string);
        file.save(&state)?;
        Ok(())
    }

    /// Serves a claimed device. `recovered`: its spec is in the state file already
    /// (a restart); otherwise it is recorded before the frontend starts.
    fn serve(
        &mut self,
        device: PciAddress,
        spec: FrontendSpec,
        recovered: bool,
    ) -> Result<ServedDevice, ServiceError> {
        self.check_spec(device, &spec)?;
        let state = StateFile::read(&self.host.state_path)?;
        let Some(record) = state.get(device) else {
            return Err(ServiceError::NotClaimed(device));
        };
        if record.phase != ClaimPhase::Attached {
            return Err(ServiceError::ClaimIncomplete {
                address: device,
                phase: record.phase,
            });
        }
        let now =
            PciDevice::read(&self.host.root, device).map_err(udriver::claim::ClaimError::from)?;
        if !now.is_on_vfio() {
            return Err(ServiceError::NotOnVfio {
                address: device,
                driver: now.driver,
            });
        }
        let group = now
            .iommu_group
            .or(record.iommu_group)
            .ok_or(ServiceError::NoIommuGroup(device))?;
        if !recovered {
            self.record_serve(device, Some(&spec))?;
        }
        let frontend = match self.launcher.start(device, group, &spec) {
            Ok(frontend) => frontend,
            Err(source) => {
                if !recovered {
                    if let Err(e) = self.record_serve(device, None) {
                        error!(device = %device, error = %e, "clearing the serve record after a failed start");
                    }
                }
                return Err(ServiceError::Launch {
                    address: device,
                    spec,
                    error: source,
                });
            }
        };
        info!(device = %device, frontend = %spec, iommu_group = group, recovered, "frontend started");
        self.recovery_failures.retain(|f| f.address != device);
        Ok(self
            .served
            .insert(device, spec, frontend, now_seconds(), recovered))
    }

    fn unserve(&mut self, device: PciAddress) -> Result<ServedDevice, ServiceError> {
        let Some(entry) = self.served.remove(device) else {
            // A device recorded as served that could not be served after a restart:
            // unserving drops the record's spec.
            let state = StateFile::read(&self.host.state_path)?;
            if let Some(spec) = state.get(device).and_then(|r| r.serve.clone()) {
                self.record_serve(device, None)?;
                self.recovery_failures.retain(|f| f.address != device);
                info!(device = %device, frontend = %spec, "serve record dropped");
                return Ok(ServedDevice {
                    address: device,
                    frontend: spec.parse().map_err(ServiceError::RecordedSpec)?,
                    status: Default::default(),
                    since: 0,
                    recovered: true,
                });
            }
            return Err(ServiceError::NotServed(device));
        };
        let (report, outcome) = entry.stop(device);
        info!(device = %device, frontend = %report.frontend, "frontend stopped");
        self.record_serve(device, None)?;
        outcome.map_err(ServiceError::Stop)?;
        Ok(report)
    }

    fn detach(
        &mut self,
        devices: &[PciAddress],
        all: bool,
        force: bool,
    ) -> Result<DetachReply, ServiceError> {
        let mut reply = DetachReply::default();
        let stopping: Vec<PciAddress> = if all {
            self.served.addresses()
        } else {
            devices
                .iter()
                .copied()
                .filter(|d| self.served.get(*d).is_some())
                .collect()
        };
        for device in stopping {
            if let Some(entry) = self.served.remove(device) {
                let (report, outcome) = entry.stop(device);
                info!(device = %device, frontend = %report.frontend, "frontend stopped");
                if let Err(e) = outcome {
                    error!(device = %device, error = %e, "frontend stop");
                }
                // Not served any more, even if giving it back fails below: a restarted
                // service must not serve it again.
                if let Err(e) = self.record_serve(device, None) {
                    error!(device = %device, error = %e, "clearing the serve record");
                }
                reply.stopped.push(report);
            }
        }
        let target = if all {
            DetachTarget::All
        } else {
            DetachTarget::Devices(devices.to_vec())
        };
        let report = self.host.claimer().detach(&target, force)?;
        log_restored(&report);
        for r in report.restored.iter().chain(&report.repaired) {
            self.claimed_here.remove(&r.address);
            self.recovery_failures.retain(|f| f.address != r.address);
        }
        reply.restored = RestoredDevice::list(&report.restored);
        reply.repaired = RestoredDevice::list(&report.repaired);
        reply.not_claimed = report
            .not_claimed
            .iter()
            .map(|(address, driver)| NotClaimed {
                address: *address,
                driver: driver.clone(),
            })
            .collect();
        reply.failed = report
            .failed
            .iter()
            .map(|(address, e)| DeviceFailure {
                address: *address,
                error: e.to_string(),
            })
            .collect();
        Ok(reply)
    }

    fn status(&self) -> Result<StatusReply, ServiceError> {
        Ok(StatusReply {
            daemon: self.info.clone(),
            served: self.served.reports(),
            claims: StateFile::read(&self.host.state_path)?.claims,
            recovery_failures: self.recovery_failures.clone(),
        })
    }

    /// At start: undoes interrupted claims (as `udrv attach` does) and serves again
    /// every complete claim recorded with a frontend.
    pub(crate) fn recover(&mut self) {
        match self
            .host
            .claimer()
            .detach(&DetachTarget::Devices(Vec::new()), false)
        {
            Ok(report) => log_restored(&report),
            Err(e) => error!(error = %e, "repairing interrupted claims"),
        }
        let state = match StateFile::read(&self.host.state_path) {
            Ok(state) => state,
            Err(e) => {
                error!(error = %e, "reading the state file; nothing recovered");
                return;
            }
        };
        let recorded: Vec<(PciAddress, String)> = state
            .claims
            .iter()
            .filter(|c| c.phase.is_complete())
            // Served already: carried over from the previous program by an upgrade.
            .filter(|c| self.served.get(c.address).is_none())
            .filter_map(|c| c.serve.clone().map(|s| (c.address, s)))
            .collect();
        let mut served = 0;
        for (device, text) in recorded {
            let result = text
                .parse::<FrontendSpec>()
                .map_err(ServiceError::RecordedSpec)
                .and_then(|spec| self.serve(device, spec, true));
            match result {
                Ok(s) => {
                    served += 1;
                    info!(device = %device, frontend = %s.frontend, "recovered: serving again after a restart");
                }
                Err(e) => {
                    error!(device = %device, frontend = %text, error = %e, "recovery failed; the claim stays recorded (udrv detach gives the device back, udrv serve's unserve drops the frontend)");
                    self.recovery_failures.push(DeviceFailure {
                        address: device,
                        error: e.to_string(),
                    });
                }
            }
        }
        if served > 0 || !self.recovery_failures.is_empty() {
            info!(
                served,
                failed = self.recovery_failures.len(),
                "recovered from the state file"
            );
        }
    }

    /// Logs what changed in each frontend.
    pub(crate) fn watch(&mut self) {
        self.served.watch();
    }

    /// Stops every frontend and, unless `keep_claims`, gives every served device and
    /// every device this daemon claimed back to its driver.
    pub(crate) fn shutdown(&mut self, keep_claims: bool) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        let served = self.served.addresses();
        for device in &served {
            if let Some(entry) = self.served.remove(*device) {
                let (stopped, outcome) = entry.stop(*device);
                info!(device = %device, frontend = %stopped.frontend, "frontend stopped");
                if let Err(e) = outcome {
                    error!(device = %device, error = %e, "frontend stop");
                    report.failed.push(DeviceFailure {
                        address: *device,
                        error: e,
                    });
                }
                report.stopped.push(stopped);
            }
        }
        let ours: BTreeSet<PciAddress> = served
            .into_iter()
            .chain(self.claimed_here.iter().copied())
            .collect();
        if keep_claims {
            info!(devices = ours.len(), "keeping the devices on vfio-pci (--keep-claims); served ones are served again by the next udrv serve");
            report.kept = ours.into_iter().collect();
            return report;
        }
        if ours.is_empty() {
            return report;
        }
        let ours: Vec<PciAddress> = ours.into_iter().collect();
        match self
            .host
            .claimer()
            .detach(&DetachTarget::Devices(ours.clone()), false)
        {
            Ok(r) => {
                log_restored(&r);
                report.restored = RestoredDevice::list(&r.restored);
                report.restored.extend(RestoredDevice::list(&r.repaired));
                report
                    .failed
                    .extend(r.failed.iter().map(|(address, e)| DeviceFailure {
                        address: *address,
                        error: e.to_string(),
                    }));
            }
            Err(e) => {
                error!(error = %e, "giving devices back");
                report
                    .failed
                    .extend(ours.iter().map(|address| DeviceFailure {
                        address: *address,
                        error: e.to_string(),
                    }));
            }
        }
        self.claimed_here.clear();
        report
    }
}
