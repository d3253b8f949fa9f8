//! The stop flag, in a process of its own: the signal it raises would stop every
//! driver loop in the process it runs in.

use std::time::Duration;

use nix::sys::signal::{raise, Signal};
use udrv_examples::stop;
use udrv_examples::wait::poll_until;
use udrv_examples::DriverError;

#[test]
fn a_signal_sets_the_flag_and_ends_waits_instead_of_killing() {
    stop::install().unwrap();
    assert!(!stop::requested());
    raise(Signal::SIGTERM).unwrap();
    assert!(stop::requested(), "SIGTERM must only set the flag");
    let e = poll_until::<()>("0000:00:02.0", Duration::from_secs(60), String::new, || {
        Ok(None)
    })
    .unwrap_err();
    assert!(matches!(e, DriverError::Interrupted { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "0000:00:02.0: stopped by a signal (SIGINT/SIGTERM)"
    );
}
