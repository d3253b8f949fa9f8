//! `udrv upgrade`: the daemon replaces its program with a (newer) binary of itself,
//! in the same process, and hands the new program everything a served guest depends
//! on, so that no guest notices.
//!
//! ```text
//! running program                              new program, same pid
//!   refuse if a frontend cannot be carried
//!   each frontend hands over (between two
//!   messages): state -> JSON, fds -> FdBag
//!   + the control listener, the requester
//!   document + fds -> a socket pair
//!   exec BINARY ARGS --resume-fd N  ────────>  take_inherited_socket(N), receive
//!                                              the control listener listens on
//!                                              each frontend resumed from its state
//!                                              `udrv upgrade` answered on its connection
//! ```
//!
//! Nothing is closed in between: the VFIO container, group and device fds, the
//! listening sockets and each client's connection cross the exec as fds, so the
//! kernel keeps the IOMMU mappings, the group attached and the interrupts wired, and
//! clients wait for their next answer for as long as the exec and the resume take.
//! If the exec fails (no such binary, not executable), the running program takes
//! everything back from the same document and goes on.
//!
//! The vfio-user frontend is carried; the UML frontend is not (see
//! [`RunningFrontend::handover_refusal`]), and an upgrade with one served is refused
//! before anything is touched.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{error, info};
use udriver::pci::PciAddress;

use super::control::{encode_response, CarriedDevice, DaemonInfo, DeviceFailure, Reply};
use super::launcher::RunningFrontend;
use super::requests::Service;
use super::FrontendSpec;
use crate::handover::{self, FdBag, FdSlot, HandoverError};

/// The argument that tells a new program which fd carries the handover.
pub const RESUME_FD_ARG: &str = "--resume-fd";

/// How the daemon runs its successor: `binary` (unless `udrv upgrade` names
/// another) with `args`, then `--resume-fd N`.
#[derive(Clone, Debug)]
pub struct Relaunch {
    /// The program the daemon was started from.
    pub binary: PathBuf,
    /// Its arguments after the program name (`serve --control ...`).
    pub args: Vec<OsString>,
}

impl Relaunch {
    /// This process's program and arguments, as `udrv serve` was started (an earlier
    /// `--resume-fd` left out).
    pub fn this_process() -> io::Result<Relaunch> {
        let mut args = Vec::new();
        let mut skip = false;
        for arg in std::env::args_os().skip(1) {
            if skip {
                skip = false;
            } else if arg == RESUME_FD_ARG {
                skip = true;
            } else if !arg
                .to_string_lossy()
                .starts_with(&format!("{RESUME_FD_ARG}="))
            {
                args.push(arg);
            }
        }
        Ok(Relaunch {
            binary: std::env::current_exe()?,
            args,
        })
    }
}

/// Everything the running program hands the new one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Carried {
    pub(crate) info: DaemonInfo,
    pub(crate) control_listener: FdSlot,
    /// The `udrv upgrade` connection, answered by the new program.
    pub(crate) requester: Option<FdSlot>,
    pub(crate) claimed_here: Vec<PciAddress>,
    pub(crate) devices: Vec<CarriedEntry>,
}

/// One served device handed over.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CarriedEntry {
    address: PciAddress,
    spec: FrontendSpec,
    since: u64,
    recovered: bool,
    guest_connected: bool,
    frontend: serde_json::Value,
}

impl Service {
    /// Why the served devices cannot all be handed over, one line each.
    pub(crate) fn handover_refusals(&self) -> Vec<String> {
        self.served
            .addresses()
            .into_iter()
            .filter_map(|a| {
                let entry = self.served.get(a)?;
                entry
                    .frontend
                    .handover_refusal()
                    .map(|why| format!("{a}: {why}"))
            })
            .collect()
    }

    /// Hands every served device's frontend over into `bag`. A frontend that fails
    /// half-way is lost (its device stays claimed and recorded; the next start
    /// serves it again) and reported.
    pub(crate) fn hand_over_all(
        &mut self,
        bag: &mut FdBag,
    ) -> (Vec<CarriedEntry>, Vec<DeviceFailure>) {
        let mut carried = Vec::new();
        let mut failed = Vec::new();
        for address in self.served.addresses() {
            let Some(entry) = self.served.remove(address) else {
                continue;
            };
            let guest_connected = entry.frontend.status().guest_connected;
            let frontend: Box<dyn RunningFrontend> = entry.frontend;
            match frontend.hand_over(bag) {
                Ok(state) => carried.push(CarriedEntry {
                    address,
                    spec: entry.spec,
                    since: entry.since,
                    recovered: entry.recovered,
                    guest_connected,
                    frontend: state,
                }),
                Err(e) => {
                    error!(device = %address, error = %e, "handing the frontend over failed; it is stopped");
                    failed.push(DeviceFailure {
                        address,
                        error: format!("handing its frontend over: {e}"),
                    });
                }
            }
        }
        (carried, failed)
    }

    /// Takes over the frontends a predecessor handed over.
    pub(crate) fn take_over(
        &mut self,
        entries: Vec<CarriedEntry>,
        bag: &mut FdBag,
    ) -> (Vec<CarriedDevice>, Vec<DeviceFailure>) {
        let mut carried = Vec::new();
        let mut failed = Vec::new();
        for entry in entries {
            match self
                .launcher
                .resume(entry.address, &entry.spec, &entry.frontend, bag)
            {
                Ok(frontend) => {
                    let guest_connected = frontend.status().guest_connected;
                    info!(device = %entry.address, frontend = %entry.spec, guest_connected, "served on after the upgrade");
                    self.served.insert(
                        entry.address,
                        entry.spec.clone(),
                        frontend,
                        entry.since,
                        entry.recovered,
                    );
                    carried.push(CarriedDevice {
                        address: entry.address,
                        frontend: entry.spec,
                        guest_connected: guest_connected && entry.guest_connected,
                    });
                }
                Err(e) => {
                    error!(device = %entry.address, frontend = %entry.spec, error = %e, "taking the frontend over failed; the claim stays recorded");
                    failed.push(DeviceFailure {
                        address: entry.address,
                        error: format!("taking its frontend over: {e}"),
                    });
                }
            }
        }
        (carried, failed)
    }
}

/// Sends `carried` and `bag` into a new socket pair and execs `binary` with the
/// pair's other end; returns only if that failed, with the reason.
pub(crate) fn exec_successor(
    relaunch: &Relaunch,
    binary: &Path,
    carried: &Carried,
    bag: &FdBag,
) -> String {
    let document = match serde_json::to_vec(carried) {
        Ok(d) => d,
        Err(e) => return format!("writing the handover document: {e}"),
    };
    let pair = UnixStream::pair().and_then(|(ours, theirs)| {
        // Never block: nobody reads until the new program runs.
        ours.set_nonblocking(true)?;
        Ok((ours, theirs))
    });
    let (ours, theirs) = match pair {
        Ok(pair) => pair,
        Err(e) => return format!("creating the handover socket: {e}"),
    };
    if let Err(e) = handover::send(&ours, &document, bag) {
        return format!("carrying the served devices over: {e}");
    }
    if let Err(e) = udriver::inherited::keep_across_exec(&theirs) {
        return format!("keeping the handover socket open across exec: {e}");
    }
    info!(binary = %binary.display(), fds = bag.len(), devices = carried.devices.len(), "upgrading: running the new program");
    let e = std::process::Command::new(binary)
        .args(&relaunch.args)
        .arg(RESUME_FD_ARG)
        .arg(theirs.as_raw_fd().to_string())
        .exec();
    format!("running {}: {e}", binary.display())
}

/// In the new program: what the previous one handed over through the socket at
/// `fd`.
pub(crate) fn receive_from_predecessor(fd: RawFd) -> Result<(Carried, FdBag), HandoverError> {
    let socket = udriver::inherited::take_inherited_socket(fd)?;
    let (document, bag) = handover::receive(&socket)?;
    let carried = serde_json::from_slice(&document)
        .map_err(|e| HandoverError::Malformed(format!("the handover document: {e}")))?;
    Ok((carried, bag))
}

/// The control listener the predecessor listened on.
pub(crate) fn take_listener(
    carried: &Carried,
    bag: &mut FdBag,
) -> Result<UnixListener, HandoverError> {
    let fd: OwnedFd = bag.take(carried.control_listener)?;
    Ok(UnixListener::from(fd))
}

/// Answers the `udrv upgrade` that asked for this program, on its connection.
pub(crate) fn answer_requester(carried: &Carried, bag: &mut FdBag, reply: Reply) {
    let Some(slot) = carried.requester else {
        return;
    };
    let Ok(fd) = bag.take(slot) else {
        return;
    };
    let mut stream = UnixStream::from(fd);
    let mut line = encode_response(&Ok(reply));
    line.push('\n');
    // The requester waits for this line; a short timeout keeps a gone one harmless.
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    if let Err(e) = stream.write_all(line.as_bytes()) {
        info!(error = %e, "the udrv upgrade that asked is gone; not answered");
    }
}
