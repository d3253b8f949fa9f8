//! The worker that answers UML's commands, pinned to a CPU of its own when asked.
//!
//! A polling worker ([`WorkerOptions::poll`](super::WorkerOptions::poll)) only pays off
//! on a CPU the guest does not need: pinned there, it never competes with the guest it
//! waits for, and the scheduler does not move it onto the guest's CPU.

use std::cell::Cell;
use std::path::Path;

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

thread_local! {
    /// Whether this thread already tried (once per thread, whatever the outcome).
    static TRIED: Cell<bool> = const { Cell::new(false) };
}

/// Pin the calling thread to `cpu`, the first time a thread calls it. A CPU the
/// thread may not use (offline, outside its cgroup's set) leaves it where it was and
/// is recorded through `error`: the worker then serves as well, only slower.
pub(super) fn pin_once(cpu: Option<usize>, socket: &Path, error: impl FnOnce(String)) {
    let Some(cpu) = cpu else {
        return;
    };
    if TRIED.replace(true) {
        return;
    }
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => tracing::info!(
            socket = %socket.display(),
            cpu,
            "the worker serving UML's commands runs on CPU {cpu} only"
        ),
        Err(e) => error(format!(
            "pinning the worker to CPU {cpu}: {e}; it runs on any CPU (choose a CPU this \
             process may use: see `taskset -p {}`)",
            std::process::id()
        )),
    }
}
