//! Ctrl-C (SIGINT) and SIGTERM as a flag that the drivers' loops check.
//!
//! A driver killed in the middle of a transfer would leave the device with bus
//! mastering on and descriptor rings pointing at memory that is about to be freed.
//! Instead the signal only sets a flag; the next loop iteration returns
//! [`DriverError::Interrupted`](crate::error::DriverError::Interrupted), and the
//! drivers' `Drop` guards stop the device on the way out. The handler resets itself
//! after the first signal, so a second Ctrl-C kills a driver that is stuck.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: nix::libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM. Call once, early in `main`.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to a static atomic, which is
        // async-signal-safe, and touches no other state of the program.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM has arrived since the handler was installed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
