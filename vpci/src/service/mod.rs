//! `udrv serve` as a library: the daemon that claims devices, serves them to guests
//! through frontends, and answers `udrv` commands on a control socket.
//!
//! ```text
//! Daemon              one mio loop: control socket, SIGTERM/SIGINT, stop waker
//!   ControlSocket     0600, stale socket replaced, peers checked (root or our uid)
//!   Connection        one client: bounded lines in, responses out
//!   control           the protocol: versioned JSON requests and replies, one a line
//!   Service           requests -> udriver's Claimer + state file, frontends
//!     ServedDevices   served devices and their frontends' last status
//!     FrontendLauncher  opens a claimed device and starts its frontend
//!       UmlLauncher     VFIO (a container per served group) + the UML frontend,
//!                       or a vfio-user server (vfio_user_launcher)
//! ControlClient       what the udrv commands use to talk to the daemon
//! NotifySocket        readiness for systemd (Type=notify), $NOTIFY_SOCKET
//! upgrade             `udrv upgrade`: exec a new program, everything served handed over
//! ```
//!
//! Every served device is recorded in the claim state file (the `serve` field of its
//! [`ClaimRecord`](udriver::claim::ClaimRecord)) before its frontend starts; a daemon
//! that starts finds the devices a killed predecessor served and serves them again.
//! Stopping (SIGTERM, SIGINT, [`StopHandle`]) stops every frontend and gives each
//! device the daemon served or claimed back to its driver, unless told to keep them.

mod client;
mod connection;
pub mod control;
mod control_socket;
mod daemon;
mod framing;
mod frontend_spec;
mod host;
mod launcher;
mod notify_socket;
mod requests;
mod served;
mod signals;
mod uml_launcher;
mod upgrade;
mod vfio_user_launcher;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use udriver::claim::{ClaimError, ClaimPhase, StateError};
use udriver::pci::PciAddress;

pub use client::{ClientError, ControlClient, REQUEST_TIMEOUT};
pub use control::{ErrorKind, ErrorReply, Reply, Request};
pub use control_socket::{
    authorize, default_control_path, ControlSocket, Peer, Previous, CONTROL_ENV,
    DEFAULT_CONTROL_PATH,
};
pub use daemon::{Daemon, DaemonConfig, StopHandle, WATCH_INTERVAL};
pub use framing::LineBuffer;
pub use frontend_spec::{FrontendSpec, FrontendSpecError, MAX_SOCKET_PATH};
pub use host::Host;
pub use launcher::{FrontendLauncher, LaunchError, RunningFrontend};
pub use notify_socket::{NotifySocket, NotifySocketError, NOTIFY_SOCKET_ENV};
pub use requests::ShutdownReport;
pub use signals::{StopSignals, STOP_SIGNALS};
pub use uml_launcher::UmlLauncher;
pub use upgrade::{Relaunch, RESUME_FD_ARG};

/// What the daemon could not do; the message names the device or file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The control socket could not be set up.
    #[error("control socket {}: {action} failed: {error}", path.display())]
    ControlSocket {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// Something that is not a socket sits at the control path.
    #[error("{} exists and is not a socket; remove it or give udrv serve another --control path", .0.display())]
    NotASocket(PathBuf),
    /// A daemon answers at the control path.
    #[error("another udrv serve ({}) is running at {}; stop it first{} or give this one another --control path", pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")), path.display(), pid.map_or(String::new(), |p| format!(" (kill {p})")))]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
        /// The running daemon.
        pid: Option<i32>,
    },
    /// SIGTERM/SIGINT could not be routed to the loop.
    #[error("setting up SIGTERM/SIGINT handling (signalfd) failed: {0}")]
    Signals(nix::errno::Errno),
    /// The event loop failed.
    #[error("event loop: {action} failed: {error}")]
    EventLoop {
        /// What was being done.
        action: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// Claiming or giving back failed (refusals included).
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// `serve` with more than one device.
    #[error("one frontend serves one device, and {0} devices were named; attach the others separately, each with its own --serve socket")]
    OneDevicePerFrontend(usize),
    /// The device is served already.
    #[error("{address}: already served by {spec}; `udrv detach {address}` or unserve it first")]
    AlreadyServed {
        /// The device.
        address: PciAddress,
        /// Its frontend.
        spec: FrontendSpec,
    },
    /// Another device's frontend uses the socket.
    #[error("{} is the frontend socket of {by} already; choose another path", socket.display())]
    SocketTaken {
        /// The socket.
        socket: PathBuf,
        /// The device served there.
        by: PciAddress,
    },
    /// The frontend socket is the control socket.
    #[error("{} is udrv serve's control socket; choose another frontend socket path", .0.display())]
    SocketIsControl(PathBuf),
    /// The device is not claimed.
    #[error("{0}: not claimed by udrv; claim and serve it in one step: udrv attach {0} --serve uml:/run/udrv/SOCKET")]
    NotClaimed(PciAddress),
    /// The claim was interrupted.
    #[error(
        "{address}: its claim is {phase}; run `udrv attach {address}` to finish it, then serve it"
    )]
    ClaimIncomplete {
        /// The device.
        address: PciAddress,
        /// How far the claim got.
        phase: ClaimPhase,
    },
    /// Claimed, but no longer on vfio-pci.
    #[error("{address}: recorded as claimed but now on {} rather than vfio-pci (moved by hand, or a reboot?); `udrv attach {address}` claims it again", driver.as_deref().unwrap_or("no driver"))]
    NotOnVfio {
        /// The device.
        address: PciAddress,
        /// Its driver now.
        driver: Option<String>,
    },
    /// No IOMMU group.
    #[error("{0}: has no IOMMU group, so VFIO cannot open it: boot with the IOMMU on (intel_iommu=on or amd_iommu=on)")]
    NoIommuGroup(PciAddress),
    /// The frontend did not start.
    #[error("{address}: starting the {} frontend at {} failed: {error}", spec.kind(), spec.socket().display())]
    Launch {
        /// The device.
        address: PciAddress,
        /// The frontend.
        spec: FrontendSpec,
        /// Why.
        error: LaunchError,
    },
    /// The frontend failed while stopping (it is stopped anyway).
    #[error("{0}")]
    Stop(String),
    /// A serve spec in the state file does not parse.
    #[error("the state file records a frontend udrv cannot read: {0}")]
    RecordedSpec(FrontendSpecError),
    /// `attach --serve` claimed the device, then serving it failed.
    #[error("{error}; {outcome}")]
    ServeAfterAttach {
        /// Why serving failed.
        error: Box<ServiceError>,
        /// What became of the claim.
        outcome: String,
    },
    /// The device is not served.
    #[error("{0}: not served by this udrv serve (see udrv status)")]
    NotServed(PciAddress),
    /// What a previous program handed over could not be taken.
    #[error("taking over from the previous udrv serve: {0}")]
    Handover(#[from] crate::handover::HandoverError),
}

impl ServiceError {
    /// The class of failure a client is told.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Claim(ClaimError::Refused(_))
            | ServiceError::Claim(ClaimError::NotOurs(_))
            | ServiceError::Claim(ClaimError::IsBridge(_))
            | ServiceError::Claim(ClaimError::NotViable { .. }) => ErrorKind::Refused,
            ServiceError::OneDevicePerFrontend(_) => ErrorKind::BadRequest,
            ServiceError::AlreadyServed { .. }
            | ServiceError::SocketTaken { .. }
            | ServiceError::SocketIsControl(_)
            | ServiceError::NotServed(_)
            | ServiceError::AlreadyRunning { .. } => ErrorKind::Conflict,
            ServiceError::NotClaimed(_)
            | ServiceError::ClaimIncomplete { .. }
            | ServiceError::NotOnVfio { .. } => ErrorKind::NotClaimed,
            ServiceError::ServeAfterAttach { error, .. } => error.kind(),
            _ => ErrorKind::Failed,
        }
    }
}
