//! Locked-memory accounting against RLIMIT_MEMLOCK.
//!
//! Both `mlock` of DMA buffers and the IOMMU pinning done by VFIO_IOMMU_MAP_DMA count
//! against the process's RLIMIT_MEMLOCK (the kernel's `locked_vm`), and the default
//! limit (often 8 MiB) is far below what a NIC's rings or a guest's RAM need. When the
//! limit is hit the kernel says only ENOMEM or EAGAIN; checking first lets us say how
//! much is needed and how to raise it. The kernel still enforces the limit: this check
//! is for a useful message, not a guarantee.

use std::fs;

use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};

use crate::error::DmaError;

/// CAP_IPC_LOCK's bit in the capability sets: a process holding it is not limited.
const CAP_IPC_LOCK: u32 = 14;

/// The process's locked-memory limit and usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemlockStatus {
    /// Soft RLIMIT_MEMLOCK in bytes; `None` if unlimited.
    pub soft_limit: Option<u64>,
    /// Hard RLIMIT_MEMLOCK in bytes; `None` if unlimited.
    pub hard_limit: Option<u64>,
    /// Bytes already locked or pinned (`VmLck`).
    pub locked: u64,
    /// Whether the process has CAP_IPC_LOCK, which lifts the limit.
    pub unlimited_by_capability: bool,
}

impl MemlockStatus {
    /// Reads the current process's limit and `/proc/self/status`.
    pub fn current() -> Result<MemlockStatus, DmaError> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| DmaError::System {
            op: "getrlimit(RLIMIT_MEMLOCK)",
            source: e.into(),
        })?;
        // /proc may be absent (a minimal container); then assume nothing is locked yet
        // and let the kernel have the final say.
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        Ok(MemlockStatus::from_parts(soft, hard, &status))
    }

    /// Builds a status from raw rlimit values and the text of `/proc/<pid>/status`.
    pub fn from_parts(soft: u64, hard: u64, proc_status: &str) -> MemlockStatus {
        let finite = |v: u64| (v != RLIM_INFINITY).then_some(v);
        let mut locked = 0;
        let mut cap = false;
        for line in proc_status.lines() {
            if let Some(v) = line.strip_prefix("VmLck:") {
                // "VmLck:	    1024 kB"
                locked = v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .map_or(0, |kib| kib.saturating_mul(1024));
            } else if let Some(v) = line.strip_prefix("CapEff:") {
                cap = u64::from_str_radix(v.trim(), 16)
                    .is_ok_and(|bits| bits & (1 << CAP_IPC_LOCK) != 0);
            }
        }
        MemlockStatus {
            soft_limit: finite(soft),
            hard_limit: finite(hard),
            locked,
            unlimited_by_capability: cap,
        }
    }

    /// Errors if locking `bytes` more would exceed the limit. `what` names the
    /// operation for the message ("mapping", "allocating DMA memory").
    pub fn check(&self, bytes: u64, what: &'static str) -> Result<(), DmaError> {
        let Some(limit) = self.soft_limit else {
            return Ok(());
        };
        if self.unlimited_by_capability {
            return Ok(());
        }
        let needed = self.locked.saturating_add(bytes);
        if needed <= limit {
            return Ok(());
        }
        Err(self.error(bytes, what))
    }

    /// The limit error for locking `bytes` more, also used when the kernel refuses.
    pub fn error(&self, bytes: u64, what: &'static str) -> DmaError {
        DmaError::MemlockLimit {
            what,
            bytes,
            needed: self.locked.saturating_add(bytes),
            locked: self.locked,
            limit: self.soft_limit.unwrap_or(u64::MAX),
            hard_limit: self.hard_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const STATUS: &str = "Name:\tudrv\nVmLck:\t    8192 kB\nCapEff:\t0000000000000000\n";

    #[test]
    fn parses_proc_status() {
        let s = MemlockStatus::from_parts(64 * MIB, RLIM_INFINITY, STATUS);
        assert_eq!(s.locked, 8 * MIB);
        assert_eq!(s.soft_limit, Some(64 * MIB));
        assert_eq!(s.hard_limit, None);
        assert!(!s.unlimited_by_capability);
        let root = MemlockStatus::from_parts(0, 0, "CapEff:\t000001ffffffffff\n");
        assert!(root.unlimited_by_capability);
        assert!(root.check(1 << 40, "mapping").is_ok());
    }

    #[test]
    fn error_says_what_is_needed_and_how_to_raise_it() {
        let s = MemlockStatus::from_parts(8 * MIB, 8 * MIB, "VmLck:\t0 kB\n");
        assert!(s.check(8 * MIB, "mapping").is_ok());
        let msg = s.check(64 * MIB, "mapping").unwrap_err().to_string();
        assert_eq!(
            msg,
            "mapping 64 MiB needs RLIMIT_MEMLOCK >= 64 MiB (0 bytes already locked); \
             current limit is 8 MiB; raise it with `ulimit -l` or LimitMEMLOCK= in the unit \
             (the hard limit is 8 MiB: raise that as root, e.g. in /etc/security/limits.conf)"
        );
    }

    #[test]
    fn counts_what_is_already_locked() {
        let s = MemlockStatus::from_parts(16 * MIB, RLIM_INFINITY, STATUS);
        assert!(s.check(8 * MIB, "allocating DMA memory").is_ok());
        let err = s
            .check(8 * MIB + 4096, "allocating DMA memory")
            .unwrap_err();
        assert!(
            err.to_string().contains(">= 17 MiB (8 MiB already locked)"),
            "{err}"
        );
        assert!(
            MemlockStatus::from_parts(RLIM_INFINITY, RLIM_INFINITY, STATUS)
                .check(u64::MAX, "mapping")
                .is_ok()
        );
    }
}
