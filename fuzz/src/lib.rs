//! What every fuzz target shares: a per-input allocation bound and a reader that turns
//! the fuzzer's bytes into structured operations.
//!
//! The bound is the oracle for "no huge allocation": [`bounded`] runs one input with a
//! limit on the bytes it may hold allocated at once; an allocation past it is reported
//! on stderr and aborts the process, which libFuzzer records as a crash with the input
//! that caused it. Work per input is bounded by each target (operations per input,
//! commands per call) and by libFuzzer's `-timeout`, which `run` sets.

pub mod fake_passthrough;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes held and refusing to go past a limit.
pub struct CountingAllocator;

/// Bytes allocated and not yet freed, in the whole process.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Bytes that may be live while an input runs (`usize::MAX`: no limit).
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

impl CountingAllocator {
    fn admit(size: usize) -> bool {
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        if live <= LIMIT.load(Ordering::Relaxed) {
            return true;
        }
        LIVE.fetch_sub(size, Ordering::Relaxed);
        report_over_limit(size);
        false
    }
}

/// Says why the input fails and where: the limit is lifted first, so that the message
/// and the backtrace can allocate; the refused allocation then aborts the process.
fn report_over_limit(size: usize) {
    let limit = LIMIT.swap(usize::MAX, Ordering::Relaxed);
    eprintln!(
        "udrv-fuzz: an allocation of {size} bytes takes the input past its bound of {limit} live bytes\n{}",
        std::backtrace::Backtrace::force_capture()
    );
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; the
// counting only decides whether to forward, and a refusal returns null as the trait allows.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc_zeroed requires.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator (hence System) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::admit(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from this allocator with `layout`; the caller's new size.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        moved
    }
}

/// Runs one input allowed `max_bytes` more live bytes than the process held before it.
/// Past that, the allocation fails and the process aborts: a finding, with the input.
pub fn bounded<T>(max_bytes: usize, input: impl FnOnce() -> T) -> T {
    let base = LIVE.load(Ordering::Relaxed);
    LIMIT.store(base.saturating_add(max_bytes), Ordering::Relaxed);
    let out = input();
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    out
}

/// The fuzzer's bytes, taken from the front; past the end every read gives zeros, so
/// any input is a complete (if short) program.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.bytes.len())
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }
}
