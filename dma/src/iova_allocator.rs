//! Hands out IOVA ranges from the windows an IOMMU can translate.
//!
//! Per-request DMA allocates and frees an IOVA range for every scatter-gather list, so
//! this is on the hot path. Free space is kept twice — by address, to find and merge
//! neighbours on free, and by (size, address), to find the smallest block that fits —
//! so both operations are O(log n) in the number of free blocks. Allocation is
//! best-fit, which keeps large blocks whole for large requests, from the top of the
//! block; freeing coalesces with
//! both neighbours, so space returns to the shape it had.
//!
//! In front of that sits a small cache per size class (4 KiB to 1 MiB, the sizes
//! that per-request DMA churns through), the same idea as Linux's IOVA range caches: a
//! freed small range is kept on a bounded stack and handed straight to the next request
//! of its size, which skips both trees. Cached ranges are returned to the trees (and
//! coalesced) whenever an allocation would otherwise fail, so caching never turns
//! into exhaustion.
//!
//! The IOMMU's usable windows are given at construction with its holes already left out
//! (on x86 the MSI window 0xfee00000-0xfeefffff is one), so no allocation can land in a
//! hole. Ranges are handed out in whole granules (the IOMMU page size).
//!
//! Two ways to hold an allocation. [`IovaAllocator::alloc`] returns a plain range and
//! records it, so that [`IovaAllocator::free`] can refuse a range it never handed out,
//! one freed twice or one freed in part. [`IovaAllocator::lease`] returns an
//! [`IovaLease`] instead: a handle that cannot be copied and is consumed by
//! [`IovaAllocator::free_lease`], so those mistakes cannot be written and there is
//! nothing to record or look up. The DMA policies, which allocate and free on every
//! request, hold leases.
//!
//! rust-vmm's `vm-allocator` was the candidate crate; its `AddressAllocator` walks the
//! free ranges linearly, so this allocator is written here (see `benches/iova.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::address_map::AddressMap;
use crate::error::DmaError;
use crate::iova::{Iova, IovaRange};
use crate::mapper::PAGE_SIZE;

/// How many of the smallest sufficient blocks to try before falling back to one that
/// fits whatever its alignment. Bounds allocation work while staying close to best-fit.
const BEST_FIT_PROBES: usize = 8;

/// Sizes of 1, 2, 4, ... 256 granules are cached: up to 1 MiB with 4 KiB granules,
/// the largest request block and network stacks commonly issue (Linux stops at
/// 128 KiB, but every request size above that then pays for two tree updates).
const CACHED_CLASSES: usize = 9;

/// How many of the most recently cached ranges an aligned request looks through.
const CACHE_PROBES: usize = 4;

/// Ranges kept per size class: enough for a device queue's worth of requests in
/// flight (NIC rings and storage queues run to hundreds or thousands), so that steady
/// per-request traffic never reaches the trees. Linux keeps a few thousand per size.
const CACHE_DEPTH: usize = 1024;

/// Tells allocators apart, so that a lease is only ever returned to its own.
static NEXT_ALLOCATOR_ID: AtomicU64 = AtomicU64::new(1);

/// A thread-safe allocator of IOVA ranges.
#[derive(Debug)]
pub struct IovaAllocator {
    id: u64,
    granularity: u64,
    usable: Vec<IovaRange>,
    state: Mutex<FreeSpace>,
}

/// An IOVA range leased from an [`IovaAllocator`] and not yet returned.
///
/// Neither `Clone` nor `Copy`: the lease is the one handle to its range, and
/// [`IovaAllocator::free_lease`] consumes it, so a range can be returned only once,
/// whole, and only by its holder. A lease dropped without being returned keeps its
/// range allocated for the allocator's lifetime: the range is lost, but never handed
/// out while something might still use it.
#[derive(Debug, PartialEq, Eq)]
pub struct IovaLease {
    range: IovaRange,
    allocator: u64,
}

impl IovaLease {
    /// The leased range.
    pub fn range(&self) -> IovaRange {
        self.range
    }

    /// A lease of `range` from no allocator, for tables that hold leases.
    #[cfg(test)]
    pub(crate) fn for_test(range: IovaRange) -> IovaLease {
        IovaLease {
            range,
            allocator: 0,
        }
    }
}

/// Free blocks, indexed both ways, cached small ranges, and live allocations.
/// Invariants: blocks are granule-aligned, never overlap, and are never adjacent (they
/// are merged) unless merging would overflow a u64 length. A cached range is neither in
/// the trees nor in `allocated`; nor is a leased one, which is only counted.
#[derive(Debug, Default)]
struct FreeSpace {
    granularity: u64,
    by_addr: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    tree_free: u64,
    cache: [Vec<u64>; CACHED_CLASSES],
    cached_bytes: u64,
    allocated: AddressMap<u64>,
    leased: usize,
}

impl IovaAllocator {
    /// An allocator over `ranges` with 4 KiB granules.
    pub fn new(ranges: &[IovaRange]) -> Result<IovaAllocator, DmaError> {
        IovaAllocator::with_granularity(ranges, PAGE_SIZE)
    }

    /// An allocator over `ranges` handing out multiples of `granularity` (a power of
    /// two, normally the IOMMU's smallest page size). Ranges are trimmed inwards to
    /// whole granules; overlapping or adjacent ranges are merged.
    pub fn with_granularity(
        ranges: &[IovaRange],
        granularity: u64,
    ) -> Result<IovaAllocator, DmaError> {
        if !granularity.is_power_of_two() {
            return Err(DmaError::InvalidAlignment { align: granularity });
        }
        let mut trimmed: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|r| {
                let start = round_up(r.start().0, granularity)?;
                // Exclusive end, computed in u128 because it may be 2^64.
                let end = (u128::from(r.last().0) + 1) & !u128::from(granularity - 1);
                (u128::from(start) < end).then(|| (start, (end - u128::from(start)) as u64))
            })
            .collect();
        trimmed.sort_unstable();

        let mut free = FreeSpace {
            granularity,
            ..FreeSpace::default()
        };
        let mut usable: Vec<IovaRange> = Vec::new();
        for (start, len) in trimmed {
            // Input ranges may overlap: insert only the part past what is already free.
            let covered_to = usable
                .last()
                .map_or(0, |r| u128::from(r.last().0) + 1)
                .max(u128::from(start));
            let end = u128::from(start) + u128::from(len);
            if covered_to < end {
                let piece_start = covered_to as u64;
                let piece_len = (end - covered_to) as u64;
                free.release(piece_start, piece_len);
                usable.push(IovaRange::new(Iova(piece_start), piece_len)?);
            }
        }
        if usable.is_empty() {
            return Err(DmaError::NoUsableIova {
                ranges: ranges.len(),
                granularity,
            });
        }
        Ok(IovaAllocator {
            id: NEXT_ALLOCATOR_ID.fetch_add(1, Ordering::Relaxed),
            granularity,
            usable,
            state: Mutex::new(free),
        })
    }

    /// The allocation granule.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// The usable ranges after trimming to granules (sorted, disjoint).
    pub fn usable_ranges(&self) -> &[IovaRange] {
        &self.usable
    }

    /// Allocates `size` bytes (rounded up to the granule) aligned to `align` (a power of
    /// two; values below the granule mean the granule).
    pub fn alloc(&self, size: u64, align: u64) -> Result<IovaRange, DmaError> {
        let (mut free, range) = self.take(size, align)?;
        free.allocated.insert(range.start().0, range.len());
        Ok(range)
    }

    /// Allocates as [`IovaAllocator::alloc`] does, handing the range out as a lease.
    pub fn lease(&self, size: u64, align: u64) -> Result<IovaLease, DmaError> {
        // The per-request case first: a cached size that needs no more than granule
        // alignment is the newest range on its stack, with nothing to check or record.
        if align.is_power_of_two() && align <= self.granularity {
            if let Some(class) = self.class_of(size) {
                let mut free = self.lock();
                if let Some(start) = free.cache[class].pop() {
                    free.cached_bytes -= size;
                    free.leased += 1;
                    return Ok(IovaLease {
                        range: IovaRange::new(Iova(start), size)?,
                        allocator: self.id,
                    });
                }
            }
        }
        let (mut free, range) = self.take(size, align)?;
        free.leased += 1;
        Ok(IovaLease {
            range,
            allocator: self.id,
        })
    }

    /// Returns a lease. Refuses (and keeps the range allocated) only a lease from
    /// another allocator.
    pub fn free_lease(&self, lease: IovaLease) -> Result<(), DmaError> {
        if lease.allocator != self.id {
            return Err(DmaError::ForeignFree { range: lease.range });
        }
        let (start, len) = (lease.range.start().0, lease.range.len());
        let class = self.class_of(len);
        let mut free = self.lock();
        free.leased -= 1;
        if !free.put_cached(class, start, len) {
            free.release(start, len);
        }
        Ok(())
    }

    /// Takes `size` bytes aligned to `align` out of free space, leaving the allocator
    /// locked so that the caller can record the allocation.
    fn take(
        &self,
        size: u64,
        align: u64,
    ) -> Result<(MutexGuard<'_, FreeSpace>, IovaRange), DmaError> {
        if size == 0 {
            return Err(DmaError::EmptyRange { start: 0 });
        }
        if !align.is_power_of_two() {
            return Err(DmaError::InvalidAlignment { align });
        }
        let align = align.max(self.granularity);
        let Some(size) = round_up(size, self.granularity) else {
            return Err(DmaError::RangeOverflow {
                start: 0,
                len: size,
            });
        };
        let class = self.class_of(size);
        let mut free = self.lock();
        let at = match free.take_cached(class, align) {
            Some(at) => at,
            None => {
                let mut fit = free.find_fit(size, align, self.granularity);
                if fit.is_none() && free.cached_bytes > 0 {
                    free.drain_cache();
                    fit = free.find_fit(size, align, self.granularity);
                }
                let Some((block_start, block_len, at)) = fit else {
                    return Err(DmaError::IovaExhausted {
                        size,
                        align,
                        free: free.free_bytes(),
                        largest: free.largest(),
                    });
                };
                free.carve(block_start, block_len, at, size);
                at
            }
        };
        let range = IovaRange::new(Iova(at), size)?;
        Ok((free, range))
    }

    /// Allocates exactly `range` (granule-aligned), e.g. to reserve a fixed window.
    pub fn alloc_at(&self, range: IovaRange) -> Result<IovaRange, DmaError> {
        range.check_alignment(self.granularity)?;
        let mut free = self.lock();
        let mut block = free.block_holding(range);
        if block.is_none() && free.cached_bytes > 0 {
            free.drain_cache();
            block = free.block_holding(range);
        }
        let (block_start, block_len) = block.ok_or(DmaError::IovaUnavailable { range })?;
        free.carve(block_start, block_len, range.start().0, range.len());
        free.allocated.insert(range.start().0, range.len());
        Ok(range)
    }

    /// Returns an allocation, which must be given whole, as `alloc` returned it.
    pub fn free(&self, range: IovaRange) -> Result<(), DmaError> {
        let start = range.start().0;
        let class = self.class_of(range.len());
        let mut free = self.lock();
        match free.allocated.remove(&start) {
            Some(len) if len == range.len() => {
                if !free.put_cached(class, start, len) {
                    free.release(start, len);
                }
                Ok(())
            }
            Some(len) => {
                free.allocated.insert(start, len);
                Err(DmaError::FreeMismatch {
                    range,
                    allocated: IovaRange::new(Iova(start), len)?,
                })
            }
            None if free.is_free(start) => Err(DmaError::DoubleFree { range }),
            None => Err(DmaError::ForeignFree { range }),
        }
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.lock().free_bytes()
    }

    /// The size of the largest free block (the largest granule-aligned allocation that
    /// can succeed). Returns cached ranges to the free blocks first.
    pub fn largest_free_block(&self) -> u64 {
        let mut free = self.lock();
        free.drain_cache();
        free.largest()
    }

    /// Number of live allocations, leases included.
    pub fn allocation_count(&self) -> usize {
        let free = self.lock();
        free.allocated.len() + free.leased
    }

    /// Number of free blocks after coalescing (a measure of fragmentation). Returns
    /// cached ranges to the free blocks first.
    pub fn free_block_count(&self) -> usize {
        let mut free = self.lock();
        free.drain_cache();
        free.by_addr.len()
    }

    /// The cache class of a granule-multiple size, if it has one.
    fn class_of(&self, size: u64) -> Option<usize> {
        // Shifts, not a division: this runs on every allocation and free.
        let granules = size >> self.granularity.trailing_zeros();
        (granules.is_power_of_two() && size & (self.granularity - 1) == 0)
            .then(|| granules.trailing_zeros() as usize)
            .filter(|&c| c < CACHED_CLASSES)
    }

    fn lock(&self) -> MutexGuard<'_, FreeSpace> {
        // Every mutation completes before it can panic (only allocation failure could),
        // so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FreeSpace {
    fn free_bytes(&self) -> u64 {
        self.tree_free + self.cached_bytes
    }

    fn largest(&self) -> u64 {
        self.by_size.last().map_or(0, |&(len, _)| len)
    }

    /// A cached range of this class aligned to `align`, from the few most recently
    /// cached: an aligned request finds one a little below the top of the stack rather
    /// than falling through to the trees. The scan is bounded, so the cost stays O(1).
    fn take_cached(&mut self, class: Option<usize>, align: u64) -> Option<u64> {
        let class = class?;
        let stack = &mut self.cache[class];
        let depth = stack.len();
        let found = stack
            .iter()
            .rev()
            .take(CACHE_PROBES)
            .position(|&start| start & (align - 1) == 0)?;
        // The newest (found == 0, any request aligned to no more than a granule) pops.
        let start = if found == 0 {
            stack.pop()?
        } else {
            stack.remove(depth - 1 - found)
        };
        self.cached_bytes -= self.granularity << class;
        Some(start)
    }

    /// Caches a freed range; false if it has no class or its stack is full.
    fn put_cached(&mut self, class: Option<usize>, start: u64, len: u64) -> bool {
        let Some(class) = class else { return false };
        let stack = &mut self.cache[class];
        if stack.len() >= CACHE_DEPTH {
            return false;
        }
        stack.push(start);
        self.cached_bytes += len;
        true
    }

    /// Returns every cached range to the trees, coalescing.
    fn drain_cache(&mut self) {
        if self.cached_bytes == 0 {
            return;
        }
        for class in 0..CACHED_CLASSES {
            let stack = std::mem::take(&mut self.cache[class]);
            for start in stack {
                self.release(start, self.granularity << class);
            }
        }
        self.cached_bytes = 0;
    }

    /// Whether `addr` is free (in a free block or a cached range).
    fn is_free(&self, addr: u64) -> bool {
        self.block_containing(addr).is_some() || self.cache.iter().any(|s| s.contains(&addr))
    }

    fn insert_block(&mut self, start: u64, len: u64) {
        self.by_addr.insert(start, len);
        self.by_size.insert((len, start));
        self.tree_free += len;
    }

    fn remove_block(&mut self, start: u64, len: u64) {
        self.by_addr.remove(&start);
        self.by_size.remove(&(len, start));
        self.tree_free -= len;
    }

    /// The free block containing `addr`, as (start, len).
    fn block_containing(&self, addr: u64) -> Option<(u64, u64)> {
        let (&start, &len) = self.by_addr.range(..=addr).next_back()?;
        (addr - start < len).then_some((start, len))
    }

    /// The free block that wholly contains `range`, as (start, len).
    fn block_holding(&self, range: IovaRange) -> Option<(u64, u64)> {
        let (start, len) = self.block_containing(range.start().0)?;
        let within = range.last().0 - start < len;
        within.then_some((start, len))
    }

    /// Finds (block start, block len, aligned allocation start) for a request.
    fn find_fit(&self, size: u64, align: u64, granularity: u64) -> Option<(u64, u64, u64)> {
        // Place at the top of the block: the block keeps its start, so it shrinks in
        // place, and low IOVAs (which 32-bit devices need) are used last.
        let fits = |&(len, start): &(u64, u64)| {
            // `start + (len - size)` is at most the block's last byte: no overflow.
            let at = (start + (len - size)) & !(align - 1);
            (at >= start).then_some((start, len, at))
        };
        // Best fit among the few smallest blocks that are large enough.
        if let Some(hit) = self
            .by_size
            .range((size, 0)..)
            .take(BEST_FIT_PROBES)
            .find_map(fits)
        {
            return Some(hit);
        }
        // Blocks start on a granule, so alignment wastes at most align - granularity: a
        // block this large fits wherever it starts.
        let sure = size.checked_add(align - granularity)?;
        self.by_size.range((sure, 0)..).next().and_then(fits)
    }

    /// Takes `[at, at + size)` out of the free block `[block_start, +block_len)`.
    fn carve(&mut self, block_start: u64, block_len: u64, at: u64, size: u64) {
        let front = at - block_start;
        let back = block_len - front - size;
        if front > 0 {
            // The block keeps its start: shrink it in place in the address index.
            self.by_size.remove(&(block_len, block_start));
            self.by_size.insert((front, block_start));
            if let Some(len) = self.by_addr.get_mut(&block_start) {
                *len = front;
            }
            self.tree_free -= block_len - front;
        } else {
            self.remove_block(block_start, block_len);
        }
        if back > 0 {
            self.insert_block(at + size, back);
        }
    }

    /// Adds `[start, start + len)` to free space, merging with free neighbours. A merge
    /// into the previous block updates it in place, which saves tree operations on the
    /// common path.
    fn release(&mut self, start: u64, len: u64) {
        self.tree_free += len;
        let mut len = len;
        if let Some(end) = start.checked_add(len) {
            if let Some(next_len) = self.by_addr.remove(&end) {
                match len.checked_add(next_len) {
                    Some(merged) => {
                        self.by_size.remove(&(next_len, end));
                        len = merged;
                    }
                    None => {
                        self.by_addr.insert(end, next_len);
                    }
                }
            }
        }
        if let Some((&prev_start, prev_len)) = self.by_addr.range_mut(..start).next_back() {
            if prev_start + *prev_len == start {
                if let Some(merged) = prev_len.checked_add(len) {
                    let old = std::mem::replace(prev_len, merged);
                    self.by_size.remove(&(old, prev_start));
                    self.by_size.insert((merged, prev_start));
                    return;
                }
            }
        }
        self.by_addr.insert(start, len);
        self.by_size.insert((len, start));
    }
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
fn round_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn range(start: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(start), len).unwrap()
    }

    /// The windows VFIO reported on the rig: everything below 512 GiB except the
    /// x86 MSI window.
    fn rig_ranges() -> Vec<IovaRange> {
        vec![
            IovaRange::from_inclusive(Iova(0), Iova(0xfedf_ffff)).unwrap(),
            IovaRange::from_inclusive(Iova(0xfef0_0000), Iova(0x7f_ffff_ffff)).unwrap(),
        ]
    }

    #[test]
    fn never_allocates_in_the_msi_hole() {
        let a = IovaAllocator::new(&rig_ranges()).unwrap();
        let hole = IovaRange::from_inclusive(Iova(0xfee0_0000), Iova(0xfeef_ffff)).unwrap();
        // Fill the low window with 1 MiB blocks; none may touch the hole.
        let mut got = Vec::new();
        while let Ok(r) = a.alloc(1 << 20, 1 << 20) {
            assert!(!r.overlaps(&hole), "{r} overlaps the MSI hole");
            got.push(r);
            if r.start().0 > 0x1_0000_0000 {
                break;
            }
        }
        assert!(got.len() > 4000);
        assert!(matches!(
            a.alloc_at(hole),
            Err(DmaError::IovaUnavailable { .. })
        ));
    }

    #[test]
    fn respects_alignment_and_rounds_size() {
        let a = IovaAllocator::new(&[range(0x1000, 0x10_0000)]).unwrap();
        let small = a.alloc(1, 1).unwrap();
        assert_eq!(
            small,
            range(0x10_0000, 0x1000),
            "taken from the top of the window"
        );
        let aligned = a.alloc(0x3000, 0x10000).unwrap();
        assert!(aligned.start().is_aligned(0x10000));
        assert_eq!(aligned.len(), 0x3000);
        assert!(matches!(
            a.alloc(0x1000, 3),
            Err(DmaError::InvalidAlignment { align: 3 })
        ));
        assert!(matches!(a.alloc(0, 1), Err(DmaError::EmptyRange { .. })));
    }

    #[test]
    fn best_fit_keeps_large_blocks_whole() {
        // Two free blocks: 16 KiB at 0x10000 and 64 KiB at 0x100000.
        let a = IovaAllocator::new(&[range(0x10000, 0x4000), range(0x10_0000, 0x10000)]).unwrap();
        let r = a.alloc(0x4000, 0x1000).unwrap();
        assert_eq!(
            r.start(),
            Iova(0x10000),
            "the exact-size block is the best fit"
        );
        assert_eq!(a.largest_free_block(), 0x10000);
    }

    #[test]
    fn free_coalesces_back_to_one_block() {
        let a = IovaAllocator::new(&rig_ranges()).unwrap();
        let initial_free = a.free_bytes();
        let blocks: Vec<_> = (0..64)
            .map(|i| a.alloc(0x1000 << (i % 5), 0x1000).unwrap())
            .collect();
        for r in blocks
            .iter()
            .step_by(2)
            .chain(blocks.iter().skip(1).step_by(2))
        {
            a.free(*r).unwrap();
        }
        assert_eq!(a.free_bytes(), initial_free);
        assert_eq!(a.free_block_count(), 2, "one block per usable window");
        // The whole upper window is allocatable in one piece again.
        let upper = a.alloc(0x7f_ffff_ffff - 0xfef0_0000 + 1, 0x1000).unwrap();
        assert_eq!(upper.start(), Iova(0xfef0_0000));
    }

    #[test]
    fn detects_double_foreign_and_mismatched_free() {
        let a = IovaAllocator::new(&[range(0, 16 * GIB)]).unwrap();
        let r = a.alloc(2 * GIB, GIB).unwrap();
        let other = a.alloc(0x1000, 0x1000).unwrap();
        assert!(matches!(
            a.free(range(r.start().0, GIB)),
            Err(DmaError::FreeMismatch { .. })
        ));
        a.free(r).unwrap();
        assert!(matches!(a.free(r), Err(DmaError::DoubleFree { .. })));
        assert!(matches!(
            a.free(range(32 * GIB, 0x1000)),
            Err(DmaError::ForeignFree { .. })
        ));
        assert!(matches!(
            a.free(range(other.start().0, 0x2000)),
            Err(DmaError::FreeMismatch { .. })
        ));
        a.free(other).unwrap();
        assert_eq!(a.allocation_count(), 0);
    }

    #[test]
    fn cached_small_ranges_are_reused_and_returned_when_space_runs_out() {
        let a = IovaAllocator::new(&[range(0x10000, 0x2000)]).unwrap();
        let x = a.alloc(0x1000, 0x1000).unwrap();
        let y = a.alloc(0x1000, 0x1000).unwrap();
        a.free(x).unwrap();
        assert_eq!(
            a.alloc(0x1000, 0x1000).unwrap(),
            x,
            "a freed small range is reused"
        );
        a.free(x).unwrap();
        a.free(y).unwrap();
        assert!(matches!(a.free(y), Err(DmaError::DoubleFree { .. })));
        assert_eq!(a.free_bytes(), 0x2000);
        // Both pages sit in the cache; a two-page request needs them coalesced.
        assert_eq!(a.alloc(0x2000, 0x2000).unwrap(), range(0x10000, 0x2000));
    }

    #[test]
    fn alloc_at_sees_through_the_cache() {
        let a = IovaAllocator::new(&[range(0x10000, 0x4000)]).unwrap();
        let x = a.alloc(0x1000, 0x1000).unwrap();
        a.free(x).unwrap();
        assert_eq!(
            a.alloc_at(range(0x10000, 0x4000)).unwrap(),
            range(0x10000, 0x4000)
        );
    }

    #[test]
    fn exhaustion_reports_what_is_left() {
        let a = IovaAllocator::new(&[range(0x10000, 0x8000)]).unwrap();
        a.alloc(0x4000, 0x1000).unwrap();
        let err = a.alloc(0x8000, 0x1000).unwrap_err();
        match err {
            DmaError::IovaExhausted { free, largest, .. } => {
                assert_eq!(free, 0x4000);
                assert_eq!(largest, 0x4000);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn alloc_at_reserves_inside_free_space_only() {
        let a = IovaAllocator::new(&[range(0, 0x100000)]).unwrap();
        let r = a.alloc_at(range(0x8000, 0x2000)).unwrap();
        assert!(matches!(
            a.alloc_at(range(0x9000, 0x1000)),
            Err(DmaError::IovaUnavailable { .. })
        ));
        assert!(matches!(
            a.alloc_at(range(0xff000, 0x2000)),
            Err(DmaError::IovaUnavailable { .. })
        ));
        a.free(r).unwrap();
        assert_eq!(a.free_block_count(), 1);
    }

    #[test]
    fn trims_and_merges_input_ranges() {
        let a = IovaAllocator::new(&[
            range(0x800, 0x2000),  // trimmed to [0x1000, 0x2800) -> [0x1000, 0x2000)
            range(0x1000, 0x3000), // overlaps, extends to 0x4000
            range(0x4000, 0x1000), // adjacent
        ])
        .unwrap();
        assert_eq!(a.free_bytes(), 0x4000);
        assert_eq!(a.free_block_count(), 1);
        assert!(IovaAllocator::new(&[range(0x800, 0x400)]).is_err());
    }

    #[test]
    fn top_of_address_space_is_usable() {
        let top = IovaRange::from_inclusive(Iova(u64::MAX - 0xffff), Iova(u64::MAX)).unwrap();
        let a = IovaAllocator::new(&[top]).unwrap();
        let r = a.alloc(0x10000, 0x10000).unwrap();
        assert_eq!(r.last(), Iova(u64::MAX));
        a.free(r).unwrap();
        assert_eq!(a.largest_free_block(), 0x10000);
    }

    #[test]
    fn shared_between_threads() {
        let a = std::sync::Arc::new(IovaAllocator::new(&rig_ranges()).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let rs: Vec<_> = (0..200).map(|_| a.alloc(0x2000, 0x1000).unwrap()).collect();
                    rs.into_iter().for_each(|r| a.free(r).unwrap());
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(a.allocation_count(), 0);
        assert_eq!(a.free_block_count(), 2);
    }

    #[test]
    fn leases_share_the_space_and_return_only_to_their_allocator() {
        let a = IovaAllocator::new(&[range(0x10000, 0x4000)]).unwrap();
        let other = IovaAllocator::new(&[range(0x10000, 0x4000)]).unwrap();
        let leased = a.lease(0x2000, 0x1000).unwrap();
        let plain = a.alloc(0x2000, 0x1000).unwrap();
        assert!(!leased.range().overlaps(&plain));
        assert_eq!(a.allocation_count(), 2);
        assert!(matches!(
            a.alloc(0x1000, 0x1000),
            Err(DmaError::IovaExhausted { .. })
        ));
        // A leased range is not a plain allocation: `free` refuses it.
        assert!(matches!(
            a.free(leased.range()),
            Err(DmaError::ForeignFree { .. })
        ));
        // Another allocator's lease is refused and its range stays allocated there.
        let stray = other.lease(0x1000, 0x1000).unwrap();
        let stray_range = stray.range();
        assert!(matches!(
            a.free_lease(stray),
            Err(DmaError::ForeignFree { range }) if range == stray_range
        ));
        assert_eq!(other.allocation_count(), 1);
        let leased_range = leased.range();
        a.free_lease(leased).unwrap();
        assert_eq!(a.allocation_count(), 1);
        assert_eq!(a.lease(0x2000, 0x1000).unwrap().range(), leased_range);
    }

    #[test]
    fn a_dropped_lease_is_never_handed_out_again() {
        let a = IovaAllocator::new(&[range(0x10000, 0x2000)]).unwrap();
        let kept = a.lease(0x1000, 0x1000).unwrap().range();
        let other = a.lease(0x1000, 0x1000).unwrap();
        let other_range = other.range();
        a.free_lease(other).unwrap();
        for _ in 0..4 {
            let r = a.lease(0x1000, 0x1000).unwrap();
            assert_ne!(r.range(), kept);
            assert_eq!(r.range(), other_range);
            a.free_lease(r).unwrap();
        }
        assert_eq!(a.free_bytes(), 0x1000);
    }
}
