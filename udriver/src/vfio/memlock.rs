//! The locked-memory budget. VFIO type1 pins every mapped page and charges it to the
//! process's locked memory (`VmLck`, shared with mlock), which RLIMIT_MEMLOCK caps
//! unless the thread has CAP_IPC_LOCK. Checking first turns the kernel's bare ENOMEM
//! into an error that says how much is needed and how to raise the limit.

use std::io;

/// CAP_IPC_LOCK's bit in the capability sets.
const CAP_IPC_LOCK: u32 = 14;

/// How much more memory this thread may lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemlockBudget {
    /// Bytes the process has locked now.
    pub(crate) locked: u64,
    /// The soft RLIMIT_MEMLOCK, or `None` when it does not apply (unlimited, or the
    /// thread has CAP_IPC_LOCK).
    pub(crate) limit: Option<u64>,
}

/// Why `len` more bytes do not fit: (bytes needed in all, the limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OverLimit {
    pub(crate) needed: u64,
    pub(crate) limit: u64,
}

impl MemlockBudget {
    /// The budget from a `/proc/thread-self/status` text and the soft limit.
    pub(crate) fn from_status(status: &str, soft_limit: Option<u64>) -> io::Result<MemlockBudget> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .ok_or_else(|| io::Error::other(format!("no {name} line in the process status")))
        };
        let vmlck = field("VmLck:")?;
        let kib: u64 = vmlck
            .strip_suffix("kB")
            .map(str::trim)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unreadable VmLck {vmlck:?}")))?;
        let cap_eff = u64::from_str_radix(field("CapEff:")?, 16)
            .map_err(|e| io::Error::other(format!("unreadable CapEff: {e}")))?;
        let exempt = cap_eff & (1 << CAP_IPC_LOCK) != 0;
        Ok(MemlockBudget {
            locked: kib.saturating_mul(1024),
            limit: if exempt { None } else { soft_limit },
        })
    }

    /// The budget of the calling thread now.
    pub(crate) fn current() -> io::Result<MemlockBudget> {
        let status = std::fs::read_to_string("/proc/thread-self/status")?;
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)?;
        let soft = (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft);
        MemlockBudget::from_status(&status, soft)
    }

    /// Whether `len` more bytes can be locked.
    pub(crate) fn check(&self, len: u64) -> Result<(), OverLimit> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let needed = self.locked.saturating_add(len);
        if needed > limit {
            return Err(OverLimit { needed, limit });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(vmlck_kb: u64, cap_eff: &str) -> String {
        format!(
            "Name:\ttest\nVmPeak:\t  1000 kB\nVmLck:\t{vmlck_kb:>8} kB\nVmPin:\t       0 kB\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n"
        )
    }

    #[test]
    fn within_and_over_the_limit() {
        let b = MemlockBudget::from_status(&status(64, "0000000000000000"), Some(8 << 20)).unwrap();
        assert_eq!(b.locked, 64 * 1024);
        assert!(b.check((8 << 20) - 64 * 1024).is_ok());
        assert_eq!(
            b.check(8 << 20),
            Err(OverLimit {
                needed: (8 << 20) + 64 * 1024,
                limit: 8 << 20
            })
        );
    }

    #[test]
    fn cap_ipc_lock_or_no_limit_means_no_limit() {
        let root = MemlockBudget::from_status(&status(0, "000001ffffffffff"), Some(4096)).unwrap();
        assert_eq!(root.limit, None);
        assert!(root.check(u64::MAX).is_ok());
        let unlimited = MemlockBudget::from_status(&status(0, "0000000000000000"), None).unwrap();
        assert!(unlimited.check(1 << 40).is_ok());
    }

    #[test]
    fn cap_bit_14_alone_exempts() {
        let b = MemlockBudget::from_status(&status(0, "0000000000004000"), Some(0)).unwrap();
        assert!(b.check(1).is_ok());
        let b = MemlockBudget::from_status(&status(0, "0000000000008000"), Some(0)).unwrap();
        assert!(b.check(1).is_err());
    }

    #[test]
    fn garbled_status_is_an_error() {
        assert!(MemlockBudget::from_status("Name:\tx\n", None).is_err());
        assert!(MemlockBudget::from_status("VmLck:\tlots\nCapEff:\t0\n", None).is_err());
        assert!(MemlockBudget::from_status("VmLck:\t4 kB\nCapEff:\tzz\n", None).is_err());
    }

    #[test]
    fn the_current_thread_has_a_readable_budget() {
        // A process never has more locked than its limit allows.
        let b = MemlockBudget::current().unwrap();
        assert!(b.check(0).is_ok(), "{b:?}");
    }
}
