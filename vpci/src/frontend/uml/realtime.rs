//! The thread that answers UML's commands runs at real-time priority when allowed.
//!
//! UML busy-waits for every config or BAR read it forwards (virtio_pcidev.c polls the
//! used ring, up to 40 ms). On a machine with fewer free CPUs than that spinning guest
//! needs — one vCPU is enough to show it — an ordinary thread woken by UML's kick waits
//! for the scheduler to preempt the spinner: hundreds of microseconds per read. A
//! SCHED_FIFO thread preempts it at once. Such a worker blocks in epoll between
//! commands and never spins, so it cannot starve the machine; a worker with a poll
//! window spins, and stays at normal priority (see [`polling`](super::polling)).

use std::cell::Cell;

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy, ThreadPriority,
    ThreadSchedulePolicy,
};

thread_local! {
    /// Whether this thread already tried (once per thread, whatever the outcome).
    static TRIED: Cell<bool> = const { Cell::new(false) };
}

/// Raise the calling thread to SCHED_FIFO at the lowest real-time priority, the first
/// time a thread calls it. Without CAP_SYS_NICE (or an RLIMIT_RTPRIO) it stays as it
/// is and says so once; reads are then slower on a loaded machine, not wrong.
pub(super) fn raise_once(socket: &std::path::Path) {
    if TRIED.replace(true) {
        return;
    }
    let fifo = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, fifo) {
        Ok(()) => tracing::info!(
            socket = %socket.display(),
            "serving UML's commands at real-time priority (SCHED_FIFO)"
        ),
        Err(e) => tracing::info!(
            socket = %socket.display(),
            error = ?e,
            "serving UML's commands at normal priority (SCHED_FIFO refused; grant \
             CAP_SYS_NICE or an RLIMIT_RTPRIO for faster config and BAR reads)"
        ),
    }
}
