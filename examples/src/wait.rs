//! How a driver waits for its device: by interrupt or by polling registers, with a
//! deadline, giving up early when Ctrl-C asks the driver to stop.

use std::time::{Duration, Instant};

use crate::error::{DriverError, Result};
use crate::stop;

/// How a driver learns that the device has finished something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Completion {
    /// Spin on the device's registers or descriptors: lowest latency, one CPU busy.
    #[default]
    Polling,
    /// Sleep on the interrupt's eventfd (INTx or MSI through VFIO), then look.
    Interrupts,
}

/// Calls `check` until it returns `Some`, `timeout` passes, or a stop is requested.
/// On timeout the error says what was awaited: `what` is called then, so it can
/// include the registers as they are at that moment.
///
/// The loop spins without sleeping: device state changes within microseconds, and a
/// sleep would cost more than the wait. The clock and the stop flag are looked at
/// every few iterations only.
pub fn poll_until<T>(
    device: &str,
    timeout: Duration,
    what: impl FnOnce() -> String,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) {
            if stop::requested() {
                return Err(DriverError::Interrupted {
                    device: device.to_string(),
                });
            }
            let waited = started.elapsed();
            if waited >= timeout {
                // One last look: the answer may have come while the clock was read.
                if let Some(value) = check()? {
                    return Ok(value);
                }
                return Err(DriverError::Timeout {
                    device: device.to_string(),
                    what: what(),
                    waited,
                });
            }
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_that_is_ready() {
        let mut n = 0;
        let got = poll_until("dev", Duration::from_secs(5), String::new, || {
            n += 1;
            Ok((n == 100).then_some(n))
        })
        .unwrap();
        assert_eq!(got, 100);
    }

    #[test]
    fn times_out_naming_the_device_and_what_was_awaited() {
        let e = poll_until::<()>(
            "0000:00:05.0",
            Duration::from_millis(20),
            || "BSY to clear (status 0x80)".into(),
            || Ok(None),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("0000:00:05.0: timed out after "), "{text}");
        assert!(
            text.ends_with("waiting for BSY to clear (status 0x80)"),
            "{text}"
        );
    }

    #[test]
    fn errors_from_the_check_end_the_wait() {
        let e = poll_until::<()>("d", Duration::from_secs(5), String::new, || {
            Err(DriverError::Request {
                device: "d".into(),
                reason: "bad".into(),
            })
        })
        .unwrap_err();
        assert!(matches!(e, DriverError::Request { .. }));
    }
}
