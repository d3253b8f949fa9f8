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

/// A driver binary's `main`: installs the handler, runs `body`, and turns the outcome
/// into the exit status: 0; 130 after Ctrl-C/SIGTERM (the device was left quiet, as
/// `left_quiet` tells the user); 1 after an error, with its whole chain.
pub fn run_binary(
    name: &str,
    left_quiet: &str,
    body: impl FnOnce() -> anyhow::Result<()>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    if let Err(e) = install() {
        eprintln!("{name}: cannot install the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let interrupted = e
                .downcast_ref::<crate::DriverError>()
                .is_some_and(crate::DriverError::is_interrupted);
            if interrupted {
                eprintln!("{name}: {e}; {left_quiet}");
                ExitCode::from(130)
            } else {
                eprintln!("{name}: error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
