//! Claiming devices for VFIO and giving them back: `udrv attach` and `udrv detach` as
//! a library.
//!
//! Attach: refuse devices the host is using (unless forced), record the claim, then
//! `driver_override` = vfio-pci, unbind from the current driver, `drivers_probe`;
//! check the IOMMU group is viable and `/dev/vfio/N` exists. Detach: restore the
//! recorded driver and override. Each step's phase is saved before the next step, and
//! an interrupted claim found in the state file is repaired by the next run.

mod group_node;
mod memlock;
mod module;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use group_node::{group_blockers_now, hand_over, resolve_group, resolve_user, wait_for_node};
pub use memlock::{check_memlock, memlock_warning, MEMLOCK_ADVISED};
pub use module::{Modprobe, ModuleLoader};
pub use state::{
    ClaimPhase, ClaimRecord, ClaimState, StateError, StateFile, DEFAULT_STATE_PATH, STATE_ENV,
};

use crate::bind::{BindError, Binder, SysfsWriter};
use crate::pci::in_use::group_blockers;
use crate::pci::{
    HostUsage, InUse, IommuGroup, PciAddress, PciDevice, PciError, SysfsRoot, VFIO_PCI,
};

/// Why a claim or a release failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Reading sysfs failed.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The kernel refused a sysfs write.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Devices the host is using.
    #[error("{}\npass --force to claim anyway (whatever uses them loses them)", refusal_lines(.0))]
    Refused(Vec<(PciAddress, Vec<InUse>)>),
    /// No IOMMU group: the kernel runs without an IOMMU.
    #[error("{0}: has no IOMMU group, so VFIO cannot take it: enable the IOMMU (VT-d/AMD-Vi in the firmware, intel_iommu=on or amd_iommu=on on the kernel command line)")]
    NoIommuGroup(PciAddress),
    /// A bridge.
    #[error("{0}: is a PCI bridge; vfio-pci only drives endpoints (claim the devices behind it instead)")]
    IsBridge(PciAddress),
    /// vfio-pci is not loaded and could not be.
    #[error("vfio-pci is not loaded and loading it failed ({0}); load it by hand (modprobe vfio-pci) or use a kernel with CONFIG_VFIO_PCI")]
    ModuleLoad(String),
    /// vfio-pci did not take the device.
    #[error("{address}: vfio-pci did not bind after drivers_probe (driver now: {}); see the kernel log (dmesg) for vfio-pci's reason; {restored}", now.as_deref().unwrap_or("none"))]
    DidNotBind {
        /// The device.
        address: PciAddress,
        /// Its driver after the probe.
        now: Option<String>,
        /// What happened to it afterwards.
        restored: String,
    },
    /// The group still has members on host drivers after binding.
    #[error("IOMMU group {group} is not viable: {} still bound to host drivers; VFIO will not open /dev/vfio/{group} until they are detached too (udrv attach --group)", member_list(.blockers))]
    NotViable {
        /// The group.
        group: u32,
        /// The members on host drivers.
        blockers: Vec<(PciAddress, String)>,
    },
    /// `/dev/vfio/N` did not appear.
    #[error("{} did not appear within {} ms of binding vfio-pci; check that devtmpfs is mounted on /dev and the kernel log (dmesg)", path.display(), waited.as_millis())]
    NodeMissing {
        /// The group.
        group: u32,
        /// The node.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// chown/chmod of the node failed.
    #[error("cannot hand {} over: {source}; run as root", path.display())]
    HandOver {
        /// The node.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--user` names nobody.
    #[error("no user {0:?} (give a user name or a numeric uid)")]
    UnknownUser(String),
    /// `--group-owner` names no group.
    #[error("no group {0:?} (give a group name or a numeric gid)")]
    UnknownGroup(String),
    /// A device on vfio-pci that udrv did not claim.
    #[error("{0}: udrv has no record of claiming it; it is on vfio-pci, put there by something else (a VM manager, driverctl?); pass --force to release it to the kernel's default driver anyway")]
    NotOurs(PciAddress),
    /// Giving the device back did not end on the original driver.
    #[error("{address}: could not put it back on {} (driver now: {}); the claim stays recorded: load the driver (modprobe {}) and run `udrv detach {address}` again", wanted.as_deref().unwrap_or("no driver"), now.as_deref().unwrap_or("none"), wanted.as_deref().unwrap_or("?"))]
    RestoreFailed {
        /// The device.
        address: PciAddress,
        /// Its original driver.
        wanted: Option<String>,
        /// Its driver now.
        now: Option<String>,
    },
    /// A device failed after others in the same request were attached.
    #[error("{source}\n(already attached by this command: {}; `udrv detach` gives them back)", list(.attached))]
    AttachFailed {
        /// What failed.
        source: Box<ClaimError>,
        /// What had been attached before.
        attached: Vec<PciAddress>,
    },
}

fn list(addresses: &[PciAddress]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn member_list(members: &[(PciAddress, String)]) -> String {
    members
        .iter()
        .map(|(a, d)| format!("{a} ({d})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn refusal_lines(refusals: &[(PciAddress, Vec<InUse>)]) -> String {
    refusals
        .iter()
        .flat_map(|(address, reasons)| reasons.iter().map(move |r| format!("{address}: {r}")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Who makes a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// uid.
    pub uid: u32,
    /// User name, when known.
    pub name: Option<String>,
}

impl Owner {
    /// The calling user: the one behind sudo (`SUDO_UID`) when there is one.
    pub fn caller() -> Self {
        let uid = std::env::var("SUDO_UID")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| nix::unistd::getuid().as_raw());
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        Self { uid, name }
    }
}

/// How to attach.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// Claim even devices the host is using.
    pub force: bool,
    /// Claim every (non-bridge) member of each device's IOMMU group.
    pub whole_group: bool,
    /// Give `/dev/vfio/N` to this uid.
    pub node_user: Option<u32>,
    /// Give `/dev/vfio/N` to this gid (mode 0660).
    pub node_group: Option<u32>,
    /// Recorded as the claim's owner.
    pub owner: Owner,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            force: false,
            whole_group: false,
            node_user: None,
            node_group: None,
            owner: Owner { uid: 0, name: None },
        }
    }
}

/// One attached device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The device.
    pub address: PciAddress,
    /// Its driver before (as recorded).
    pub previous_driver: Option<String>,
    /// It was on vfio-pci before this command.
    pub already: bool,
    /// In-use reasons overridden by `--force`.
    pub forced: Vec<InUse>,
}

/// A group now usable through VFIO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAccess {
    /// The group.
    pub group: u32,
    /// `/dev/vfio/N`.
    pub node: PathBuf,
    /// Its members.
    pub members: Vec<PciAddress>,
}

/// How a device was given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreHow {
    /// Unbound from vfio-pci and bound to the original driver.
    Rebound,
    /// It was already on its original driver (a reboot, or someone did it by hand);
    /// only the record was dropped.
    AlreadyThere,
    /// The device is gone (unplugged, or a different machine after reboot).
    DeviceGone,
    /// Not claimed by udrv; released to the kernel's choice (`--force`).
    Released,
}

/// One device given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The device.
    pub address: PciAddress,
    /// Its driver now.
    pub driver: Option<String>,
    /// How.
    pub how: RestoreHow,
}

/// What `attach` did.
#[derive(Debug, Default)]
pub struct AttachReport {
    /// Attached devices.
    pub attached: Vec<Attached>,
    /// Their groups.
    pub groups: Vec<GroupAccess>,
    /// Interrupted claims of other devices that were put back first.
    pub repaired: Vec<Restored>,
    /// Things to know (low memlock limit, group not viable under --force).
    pub warnings: Vec<String>,
}

/// What `detach` did.
#[derive(Debug, Default)]
pub struct DetachReport {
    /// Devices given back.
    pub restored: Vec<Restored>,
    /// Interrupted claims of other devices that were put back too.
    pub repaired: Vec<Restored>,
    /// Devices udrv had not claimed (and that are not on vfio-pci), with their driver.
    pub not_claimed: Vec<(PciAddress, Option<String>)>,
    /// Devices that failed, with why.
    pub failed: Vec<(PciAddress, ClaimError)>,
}

/// Which devices to give back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetachTarget {
    /// These.
    Devices(Vec<PciAddress>),
    /// Every device in the state file.
    All,
}

/// Claims and releases devices on one host.
pub struct Claimer<'a> {
    root: SysfsRoot,
    writer: &'a mut dyn SysfsWriter,
    modules: &'a mut dyn ModuleLoader,
    state_path: PathBuf,
    node_timeout: Duration,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<'a> Claimer<'a> {
    /// A claimer for the host under `root`, writing sysfs through `writer`, loading
    /// modules through `modules`, recording claims in `state_path`.
    pub fn new(
        root: SysfsRoot,
        writer: &'a mut dyn SysfsWriter,
        modules: &'a mut dyn ModuleLoader,
        state_path: PathBuf,
    ) -> Self {
        Self {
            root,
            writer,
            modules,
            state_path,
            node_timeout: Duration::from_secs(2),
        }
    }

    /// How long to wait for `/dev/vfio/N` after binding (default 2 s).
    pub fn with_node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    fn binder(&mut self) -> Binder<'_> {
        Binder::new(&self.root, &mut *self.writer)
    }

    /// Claims `addresses` for vfio-pci.
    pub fn attach(
        &mut self,
        addresses: &[PciAddress],
        options: &AttachOptions,
    ) -> Result<AttachReport, ClaimError> {
        let (file, mut state) = StateFile::open(&self.state_path)?;
        let mut report = AttachReport::default();
        let mut devices = PciDevice::scan(&self.root)?;

        // The devices to claim, and their groups.
        let mut claiming: BTreeSet<PciAddress> = BTreeSet::new();
        let mut groups: BTreeMap<u32, IommuGroup> = BTreeMap::new();
        for &address in addresses {
            let device = devices
                .iter()
                .find(|d| d.address == address)
                .ok_or_else(|| PciError::NoSuchDevice {
                    address,
                    path: self.root.pci_devices(),
                })?;
            if device.is_bridge() {
                return Err(ClaimError::IsBridge(address));
            }
            let id = device
                .iommu_group
                .ok_or(ClaimError::NoIommuGroup(address))?;
            let group = IommuGroup::read(&self.root, id)?;
            claiming.insert(address);
            if options.whole_group {
                for member in &group.members {
                    if devices
                        .iter()
                        .any(|d| d.address == *member && !d.is_bridge())
                    {
                        claiming.insert(*member);
                    }
                }
            }
            groups.insert(id, group);
        }

        // Interrupted claims of other devices: give them back first.
        let stale: Vec<ClaimRecord> = state
            .claims
            .iter()
            .filter(|c| !c.phase.is_complete() && !claiming.contains(&c.address))
            .cloned()
            .collect();
        if !stale.is_empty() {
            for record in stale {
                report
                    .repaired
                    .push(self.restore(&file, &mut state, &record)?);
            }
            devices = PciDevice::scan(&self.root)?;
        }

        // Refuse what the host uses.
        let usage = HostUsage::read(&self.root)?;
        let claiming_set: HashSet<PciAddress> = claiming.iter().copied().collect();
        let mut reasons_by_device: BTreeMap<PciAddress, Vec<InUse>> = BTreeMap::new();
        for &address in &claiming {
            let Some(device) = devices.iter().find(|d| d.address == address) else {
                continue;
            };
            if device.is_on_vfio() {
                continue;
            }
            let mut reasons = usage.reasons(device);
            if let Some(id) = device.iommu_group {
                let members = match groups.get(&id) {
                    Some(group) => group.members.clone(),
                    None => IommuGroup::read(&self.root, id)?.members,
                };
                reasons.extend(group_blockers(device, &members, &devices, &claiming_set));
            }
            if !reasons.is_empty() {
                reasons_by_device.insert(address, reasons);
            }
        }
        if !reasons_by_device.is_empty() && !options.force {
            return Err(ClaimError::Refused(reasons_by_device.into_iter().collect()));
        }

        self.ensure_vfio_pci()?;

        let mut done: Vec<PciAddress> = Vec::new();
        for &address in &claiming {
            let Some(device) = devices.iter().find(|d| d.address == address).cloned() else {
                continue;
            };
            let forced = reasons_by_device.remove(&address).unwrap_or_default();
            match self.attach_one(&file, &mut state, &device, &options.owner, forced) {
                Ok(attached) => {
                    done.push(address);
                    report.attached.push(attached);
                }
                Err(e) if done.is_empty() => return Err(e),
                Err(e) => {
                    return Err(ClaimError::AttachFailed {
                        source: Box::new(e),
                        attached: done,
                    })
                }
            }
        }

        // Every touched group must be viable and have its node.
        let touched: BTreeSet<u32> = devices
            .iter()
            .filter(|d| claiming.contains(&d.address))
            .filter_map(|d| d.iommu_group)
            .collect();
        for id in touched {
            let blockers = group_blockers_now(&self.root, id)?;
            if !blockers.is_empty() {
                let error = ClaimError::NotViable {
                    group: id,
                    blockers,
                };
                if options.force {
                    report.warnings.push(error.to_string());
                    continue;
                }
                return Err(error);
            }
            let node = wait_for_node(&self.root, id, self.node_timeout)?;
            hand_over(&node, options.node_user, options.node_group)?;
            report.groups.push(GroupAccess {
                group: id,
                node,
                members: IommuGroup::read(&self.root, id)?.members,
            });
        }

        if self.root.is_system() {
            report.warnings.extend(check_memlock(
                options.node_user.is_some() || options.node_group.is_some(),
            ));
        }
        Ok(report)
    }

    fn ensure_vfio_pci(&mut self) -> Result<(), ClaimError> {
        if self.binder().driver_registered(VFIO_PCI) {
            return Ok(());
        }
        self.modules
            .load(VFIO_PCI)
            .map_err(|e| ClaimError::ModuleLoad(e.to_string()))?;
        if self.binder().driver_registered(VFIO_PCI) {
            Ok(())
        } else {
            Err(ClaimError::ModuleLoad(
                "the module loaded but no vfio-pci driver appeared in /sys/bus/pci/drivers".into(),
            ))
        }
    }

    fn attach_one(
        &mut self,
        file: &StateFile,
        state: &mut ClaimState,
        device: &PciDevice,
        owner: &Owner,
        forced: Vec<InUse>,
    ) -> Result<Attached, ClaimError> {
        let address = device.address;
        let existing = state.get(address).cloned();
        if device.is_on_vfio() {
            let previous = match existing {
                Some(record) => {
                    if !record.phase.is_complete() {
                        state.set_phase(address, ClaimPhase::Attached);
                        file.save(state)?;
                    }
                    record.original_driver
                }
                None => device.driver.clone(),
            };
            return Ok(Attached {
                address,
                previous_driver: previous,
                already: true,
                forced,
            });
        }
        // An interrupted earlier claim knows the true original driver: the device may
        // have none now only because that claim unbound it.
        let record = existing.unwrap_or_else(|| ClaimRecord {
            address,
            original_driver: device.driver.clone(),
            original_override: device.driver_override.clone(),
            iommu_group: device.iommu_group,
            owner_uid: owner.uid,
            owner_name: owner.name.clone(),
            pid: std::process::id(),
            claimed_at: now_seconds(),
            phase: ClaimPhase::Recorded,
            serve: None,
        });
        state.put(record.clone());
        file.save(state)?;

        match self.move_to_vfio(file, state, address) {
            Ok(()) => Ok(Attached {
                address,
                previous_driver: record.original_driver,
                already: false,
                forced,
            }),
            Err(error) => {
                // Put it back now rather than leave it driverless until the next run.
                let restored = match self.restore(file, state, &record) {
                    Ok(r) => format!(
                        "it was put back on {}",
                        r.driver.as_deref().unwrap_or("no driver")
                    ),
                    Err(e) => format!("putting it back failed too: {e}"),
                };
                Err(match error {
                    ClaimError::DidNotBind { address, now, .. } => ClaimError::DidNotBind {
                        address,
                        now,
                        restored,
                    },
                    other => other,
                })
            }
        }
    }

    fn move_to_vfio(
        &mut self,
        file: &StateFile,
        state: &mut ClaimState,
        address: PciAddress,
    ) -> Result<(), ClaimError> {
        let mut binder = self.binder();
        if binder.current_override(address)?.as_deref() != Some(VFIO_PCI) {
            binder.set_override(address, Some(VFIO_PCI))?;
        }
        state.set_phase(address, ClaimPhase::OverrideSet);
        file.save(state)?;

        let mut binder = self.binder();
        if let Some(current) = binder.current_driver(address)? {
            if current != VFIO_PCI {
                binder.unbind(address, &current)?;
            }
        }
        state.set_phase(address, ClaimPhase::Unbound);
        file.save(state)?;

        let mut binder = self.binder();
        binder.probe(address)?;
        let now = binder.current_driver(address)?;
        if now.as_deref() != Some(VFIO_PCI) {
            return Err(ClaimError::DidNotBind {
                address,
                now,
                restored: String::new(),
            });
        }
        state.set_phase(address, ClaimPhase::Attached);
        file.save(state)?;
        Ok(())
    }

    /// Puts a recorded device back on its original driver and override, then drops the
    /// record. Works from any phase, and after a reboot.
    fn restore(
        &mut self,
        file: &StateFile,
        state: &mut ClaimState,
        record: &ClaimRecord,
    ) -> Result<Restored, ClaimError> {
        let address = record.address;
        if !self.root.pci_device(address).exists() {
            state.remove(address);
            file.save(state)?;
            return Ok(Restored {
                address,
                driver: None,
                how: RestoreHow::DeviceGone,
            });
        }
        let wanted = record.original_driver.clone();
        let binder = self.binder();
        let current = binder.current_driver(address)?;
        let override_now = binder.current_override(address)?;
        if current == wanted && override_now == record.original_override {
            state.remove(address);
            file.save(state)?;
            return Ok(Restored {
                address,
                driver: current,
                how: RestoreHow::AlreadyThere,
            });
        }
        state.set_phase(address, ClaimPhase::Detaching);
        file.save(state)?;

        let mut binder = self.binder();
        if override_now != record.original_override {
            binder.set_override(address, record.original_override.as_deref())?;
        }
        if let Some(current) = &current {
            if Some(current) != wanted.as_ref() {
                binder.unbind(address, current)?;
            }
        }
        if let Some(original) = &wanted {
            if binder.current_driver(address)?.as_ref() != Some(original) {
                // The driver's own bind file says exactly where to go; drivers_probe is
                // the fallback when the driver is not registered or refuses.
                let bound =
                    binder.driver_registered(original) && binder.bind(address, original).is_ok();
                if !bound {
                    binder.probe(address)?;
                }
            }
        }
        let now = binder.current_driver(address)?;
        if now != wanted {
            return Err(ClaimError::RestoreFailed {
                address,
                wanted,
                now,
            });
        }
        state.remove(address);
        file.save(state)?;
        Ok(Restored {
            address,
            driver: now,
            how: RestoreHow::Rebound,
        })
    }

    /// Releases a device udrv did not claim: clears a vfio-pci override, unbinds it
    /// from vfio-pci and lets the kernel pick a driver.
    fn release_unrecorded(&mut self, device: &PciDevice) -> Result<Restored, ClaimError> {
        let address = device.address;
        let mut binder = self.binder();
        if device.driver_override.as_deref() == Some(VFIO_PCI) {
            binder.set_override(address, None)?;
        }
        if let Some(current) = &device.driver {
            binder.unbind(address, current)?;
        }
        binder.probe(address)?;
        Ok(Restored {
            address,
            driver: binder.current_driver(address)?,
            how: RestoreHow::Released,
        })
    }

    /// Gives devices back to their original drivers. `force` also releases devices on
    /// vfio-pci that udrv did not claim. One device failing does not stop the others.
    pub fn detach(
        &mut self,
        target: &DetachTarget,
        force: bool,
    ) -> Result<DetachReport, ClaimError> {
        let (file, mut state) = StateFile::open(&self.state_path)?;
        let mut report = DetachReport::default();
        let addresses: Vec<PciAddress> = match target {
            DetachTarget::All => state.claims.iter().map(|c| c.address).collect(),
            DetachTarget::Devices(list) => list.clone(),
        };
        let stale: Vec<ClaimRecord> = state
            .claims
            .iter()
            .filter(|c| !c.phase.is_complete() && !addresses.contains(&c.address))
            .cloned()
            .collect();
        for record in stale {
            match self.restore(&file, &mut state, &record) {
                Ok(restored) => report.repaired.push(restored),
                Err(e) => report.failed.push((record.address, e)),
            }
        }
        for address in addresses {
            if let Some(record) = state.get(address).cloned() {
                match self.restore(&file, &mut state, &record) {
                    Ok(restored) => report.restored.push(restored),
                    Err(e) => report.failed.push((address, e)),
                }
                continue;
            }
            let device = match PciDevice::read(&self.root, address) {
                Ok(device) => device,
                Err(e) => {
                    report.failed.push((address, e.into()));
                    continue;
                }
            };
            if !device.is_on_vfio() {
                report.not_claimed.push((address, device.driver));
            } else if !force {
                report.failed.push((address, ClaimError::NotOurs(address)));
            } else {
                match self.release_unrecorded(&device) {
                    Ok(restored) => report.restored.push(restored),
                    Err(e) => report.failed.push((address, e)),
                }
            }
        }
        Ok(report)
    }

    /// The recorded claims (read without waiting for the lock).
    pub fn claims(&self) -> Result<ClaimState, ClaimError> {
        Ok(StateFile::read(&self.state_path)?)
    }
}

#[cfg(test)]
mod tests;
