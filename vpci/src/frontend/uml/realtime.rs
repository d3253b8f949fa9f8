//! The thread that answers UML's commands runs at real-time priority when allowed.
//!
//! UML busy-waits for every config or BAR read it forwards (virtio_pcidev.c polls the
//! used ring, up to 40 ms). On a machine with fewer free CPUs than that spinning guest
//! needs — one vCPU is enough to show it — an ordinary thread woken by UML's kick waits
//! for the scheduler to preempt the spinner: hundreds of microseconds per read, and
//! past UML's 40 ms limit once the thread has used more than its share of the CPU. A
//! SCHED_FIFO thread preempts it at once. The worker blocks in epoll between commands,
//! so it cannot starve the machine; while it polls the queue (see
//! [`polling`](super::polling)) it spins, and drops to normal priority for that time:
//! the kernel would otherwise stop a real-time thread that runs without pause for 50
//! ms of every second, and on a CPU it shares with UML it would shut UML out.

use std::cell::Cell;

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
    RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
};

thread_local! {
    /// Whether this thread already tried (once per thread, whatever the outcome).
    static TRIED: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread runs at real-time priority.
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

fn fifo() -> Result<(), thread_priority::Error> {
    let fifo = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, fifo)
}

/// Raise the calling thread to SCHED_FIFO at the lowest real-time priority, the first
/// time a thread calls it. Without CAP_SYS_NICE (or an RLIMIT_RTPRIO) it stays as it
/// is and says so once; reads are then slower on a loaded machine, not wrong.
pub(super) fn raise_once(socket: &std::path::Path) {
    if TRIED.replace(true) {
        return;
    }
    match fifo() {
        Ok(()) => {
            RAISED.set(true);
            tracing::info!(
                socket = %socket.display(),
                "serving UML's commands at real-time priority (SCHED_FIFO)"
            )
        }
        Err(e) => tracing::info!(
            socket = %socket.display(),
            error = ?e,
            "serving UML's commands at normal priority (SCHED_FIFO refused; grant \
             CAP_SYS_NICE or an RLIMIT_RTPRIO for faster config and BAR reads)"
        ),
    }
}

const OTHER: ThreadSchedulePolicy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);

/// The priority thread-priority maps to nice 0 for SCHED_OTHER (it maps its 0..=99
/// scale onto nice values).
fn nice_zero() -> Option<ThreadPriority> {
    (0..=99u8)
        .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
        .map(ThreadPriority::Crossplatform)
        .find(|p| matches!(p.to_posix(OTHER), Ok(0)))
}

/// Run `spin` at normal priority (SCHED_OTHER, nice 0) if the calling thread is at
/// real-time priority, and raise it again afterwards.
pub(super) fn at_normal_priority<R>(spin: impl FnOnce() -> R) -> R {
    if !RAISED.get() {
        return spin();
    }
    let lowered = nice_zero()
        .ok_or(thread_priority::Error::Priority(
            "no priority maps to nice 0",
        ))
        .and_then(|nice| set_thread_priority_and_policy(thread_native_id(), nice, OTHER));
    if let Err(e) = lowered {
        tracing::debug!(error = ?e, "staying at real-time priority while polling");
    }
    let result = spin();
    if let Err(e) = fifo() {
        RAISED.set(false);
        tracing::info!(error = ?e, "the worker lost real-time priority after polling");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_priority_is_nice_zero() {
        let nice = nice_zero().expect("a priority for nice 0");
        assert_eq!(nice.to_posix(OTHER).unwrap(), 0);
    }
}
