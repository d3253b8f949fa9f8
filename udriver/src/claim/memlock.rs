//! The locked-memory limit: VFIO pins every page mapped for DMA and counts it against
//! the mapping process's RLIMIT_MEMLOCK (unless it has CAP_IPC_LOCK). A low limit makes
//! the first large DMA map fail with ENOMEM; say so when the device is claimed.

use dma::MemlockStatus;

/// Below this, a guest or a driver with real buffers will not fit.
pub const MEMLOCK_ADVISED: u64 = 64 << 20;

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// The warning for a soft limit of `soft` bytes (`None`: unlimited), `None` when it
/// is enough. `exempt`: the process that will map has CAP_IPC_LOCK.
pub fn memlock_warning(soft: Option<u64>, exempt: bool) -> Option<String> {
    let soft = soft?;
    if exempt || soft >= MEMLOCK_ADVISED {
        return None;
    }
    Some(format!(
        "the locked-memory limit here is {}: VFIO pins every page mapped for DMA and counts it against RLIMIT_MEMLOCK of the process that maps it; raise it for the process that will drive the device (ulimit -l unlimited, LimitMEMLOCK=infinity in a systemd unit, or a memlock line in /etc/security/limits.conf)",
        human(soft)
    ))
}

/// Checks this process's limit. `for_other_user`: the device goes to a non-root user,
/// whose processes lack this one's CAP_IPC_LOCK.
pub fn check_memlock(for_other_user: bool) -> Option<String> {
    let status = MemlockStatus::current().ok()?;
    memlock_warning(
        status.soft_limit,
        status.unlimited_by_capability && !for_other_user,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_low_and_not_exempt() {
        let warning = memlock_warning(Some(8 << 20), false).unwrap();
        assert!(
            warning.contains("8 MiB") && warning.contains("ulimit -l"),
            "{warning}"
        );
        assert_eq!(memlock_warning(Some(8 << 20), true), None);
        assert_eq!(memlock_warning(None, false), None);
        assert_eq!(memlock_warning(Some(1 << 30), false), None);
        assert!(memlock_warning(Some(64 << 10), false)
            .unwrap()
            .contains("64 KiB"));
    }
}
