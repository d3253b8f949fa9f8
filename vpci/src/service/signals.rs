//! SIGTERM and SIGINT as readable events on a signalfd, so that the daemon's one event
//! loop sees them between requests rather than in a handler.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::ServiceError;

/// The signals that stop the daemon.
pub const STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// A signalfd for [`STOP_SIGNALS`], which are blocked in the calling thread (and in
/// every thread it starts afterwards, which inherit the mask).
#[derive(Debug)]
pub struct StopSignals {
    fd: SignalFd,
}

impl StopSignals {
    /// Blocks the stop signals in this thread and opens a signalfd for them. Call it
    /// before starting threads: a signal sent to the process goes to a thread that
    /// does not block it, and would kill the process there.
    pub fn new() -> Result<Self, ServiceError> {
        let mut mask = SigSet::empty();
        for signal in STOP_SIGNALS {
            mask.add(signal);
        }
        mask.thread_block().map_err(ServiceError::Signals)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ServiceError::Signals)?;
        Ok(Self { fd })
    }

    /// The signals received since the last call (none if the fd was not readable).
    pub fn take(&self) -> Vec<Signal> {
        let mut received = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                received.push(signal);
            }
        }
        received
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
