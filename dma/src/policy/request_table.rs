//! The live per-request mappings shared by the strict and batched policies.
//!
//! One `map_sg` becomes one IOVA allocation covering all of the request's page runs
//! laid end to end, and one mapping per host-contiguous piece (so a list of contiguous
//! pages costs one ioctl, not one per page). The table remembers each such allocation
//! so that `unmap_sg`, which arrives with nothing but bus addresses from an untrusted
//! guest, can be checked against what was really handed out.
//!
//! A request of one page, the most frequent kind, takes a slot of the table's IOVA
//! window ([`PageSlots`]); any other request leases its IOVAs from the shared allocator
//! and is kept in the [`LiveTable`]. An [`IovaLease`] is the record of its allocation
//! (the allocator keeps none), held while the request is live and given back by
//! [`RequestTable::release`] only after the unmap succeeded.
//!
//! Requests are usually one buffer, so the per-request bookkeeping (page runs, host
//! pieces, ranges to unmap) is kept inline for small requests: the hot path makes no
//! heap allocation of its own, which matters where malloc is slow (musl).
//!
//! Locking: one lock guards the guest's memory, the live requests and the deferred
//! unmaps, and is held across each whole operation, mapper calls included. So a region
//! can never disappear under a mapping being made or one still waiting to be unmapped,
//! and an operation costs one lock. Holding it across the mapper serialises one
//! guest's maps and unmaps, which VFIO does anyway (its container lock is held across
//! each ioctl).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use smallvec::SmallVec;

use crate::address::GuestPhysAddr;
use crate::error::DmaError;
use crate::guest_memory::{GuestMemory, GuestMemoryRegion, HostPiece};
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::{IovaAllocator, IovaLease};
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping};
use crate::policy::live_table::{LiveMapping, LiveTable, Runs};
use crate::policy::page_slots::PageSlots;
use crate::sg_list::{BusSgList, GuestSgList, PageRun, SgSegment};

/// Spilled page-run lists kept for reuse; more than this are freed.
const SPARE_RUNS: usize = 8;
/// Scratch lists longer than this are freed after use rather than kept: one very
/// large request should not pin its bookkeeping for the table's life.
const KEPT_CAPACITY: usize = 1024;

/// The IOVAs of a request taken out of the table, held until its unmap succeeded.
#[derive(Debug)]
pub(crate) enum Held {
    /// A request with IOVAs of its own.
    Lease(IovaLease),
    /// A one-page request in a slot of the table's window.
    Slot(u32, IovaRange),
}

impl Held {
    fn range(&self) -> IovaRange {
        match self {
            Held::Lease(lease) => lease.range(),
            Held::Slot(_, range) => *range,
        }
    }
}

/// Requests taken out of the table, on their way to being unmapped.
pub(crate) type Released = SmallVec<[Held; 2]>;

/// Which live request a bus segment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Slot(u32),
    Live(u64),
}

/// Everything one lock guards; see the module documentation. What a one-page request
/// reads is inline, in declaration order (repr(C)); the rest is boxed. Together with
/// the lock and the mapper that is two cache lines, which matters under emulation,
/// where each line touched after the kernel's work is a miss.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Tables {
    slots: PageSlots,
    memory: GuestMemory,
    pub(crate) cold: Box<ColdTables>,
}

/// The part of the tables a one-page request does not touch.
#[derive(Debug)]
pub(crate) struct ColdTables {
    live: LiveTable,
    /// Requests whose unmaps are deferred (the batched policy's queue).
    pub(crate) deferred: Released,
    /// When the oldest deferred unmap was queued.
    pub(crate) oldest: Option<Instant>,
    /// Scratch for the host pieces of a request being mapped, and page-run lists of
    /// unmapped requests, both kept for the next request. A request of many pages
    /// would otherwise allocate and free kilobytes each time, and some allocators
    /// (musl's) hand such blocks back to the kernel on free: two syscalls and page
    /// faults per request, more than the request's own work.
    pieces: Vec<DmaMapping>,
    spare_runs: Vec<Runs>,
}

impl ColdTables {
    /// A run list for a new request: a spare one if there is one.
    fn runs(&mut self) -> Runs {
        self.spare_runs.pop().unwrap_or_default()
    }

    /// Keeps the run list of a request that left the table, if it is worth keeping.
    fn recycle(&mut self, mut runs: Runs) {
        if runs.spilled() && runs.capacity() <= KEPT_CAPACITY && self.spare_runs.len() < SPARE_RUNS
        {
            runs.clear();
            self.spare_runs.push(runs);
        }
    }

    /// Takes the live request starting at `start` out of the table.
    fn remove_live(&mut self, start: u64) -> Option<IovaLease> {
        let m = self.live.remove(start)?;
        self.recycle(m.gpa_runs);
        Some(m.lease)
    }

    /// Takes the live request wholly holding `[addr, addr + len)` out of the table.
    fn take_live_holding(&mut self, addr: u64, len: u64) -> Option<IovaLease> {
        let m = self.live.take_holding(addr, len)?;
        self.recycle(m.gpa_runs);
        Some(m.lease)
    }
}

impl Tables {
    /// Number of live requests.
    pub(crate) fn live_count(&self) -> usize {
        self.cold.live.len() + self.slots.mapped_count()
    }

    /// Adds to `owners` the live requests `seg` lies in: the one that wholly holds
    /// it, or else the requests that cover it end to end (a list given back may merge
    /// the bus ranges of requests lying next to each other in IOVA space). Every byte
    /// of `seg` must be a live request's.
    fn owners_of(
        &self,
        seg: &SgSegment<Iova>,
        owners: &mut SmallVec<[Owner; 2]>,
    ) -> Result<(), DmaError> {
        let mut add = |owner| {
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        };
        if let Some(slot) = self.slots.holder(seg.addr.0, seg.len) {
            add(Owner::Slot(slot));
            return Ok(());
        }
        if let Some(start) = self.cold.live.holder(seg.addr.0, seg.len) {
            add(Owner::Live(start));
            return Ok(());
        }
        let mut at = seg.addr.0;
        let end = seg
            .addr
            .0
            .checked_add(seg.len)
            .ok_or_else(|| unknown(seg))?;
        while at < end {
            let (owner, range) = self.owner_at(at).ok_or_else(|| unknown(seg))?;
            add(owner);
            // A request ending at the top of the address space ends the walk.
            at = range.end().map_or(end, |e| e.0);
        }
        Ok(())
    }

    /// The live request holding the byte at `addr`, and its IOVA range.
    fn owner_at(&self, addr: u64) -> Option<(Owner, IovaRange)> {
        if let Some(slot) = self.slots.holder(addr, 1) {
            return Some((Owner::Slot(slot), self.slots.mapped_range(slot)?));
        }
        let (start, m) = self.cold.live.find(addr)?;
        Some((Owner::Live(start), m.iova()))
    }

    /// Takes a live request out of the table.
    fn take(&mut self, owner: Owner) -> Option<Held> {
        match owner {
            Owner::Slot(slot) => self.slots.take(slot).map(|r| Held::Slot(slot, r)),
            Owner::Live(start) => self.cold.remove_live(start).map(Held::Lease),
        }
    }
}

/// Registered memory plus live per-request mappings, over a mapper and an allocator.
/// Aligned to a cache line, so that the mapper handle, the lock and the one-page
/// state (with an 8-byte mapper, such as an `Arc` or a `VfioContainer`) fill exactly two.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct RequestTable<M: DmaMapper> {
    mapper: M,
    tables: Mutex<Tables>,
    iovas: Arc<IovaAllocator>,
}

impl<M: DmaMapper> Drop for RequestTable<M> {
    fn drop(&mut self) {
        // Live requests keep their IOVAs (dropped leases stay allocated): their
        // mappings outlive the table. An idle slot window goes back.
        let tables = self.tables.get_mut().unwrap_or_else(|p| p.into_inner());
        let reachable = tables.cold.live.len() != 0
            || !tables.cold.deferred.is_empty()
            || tables.slots.mapped_pages().next().is_some();
        if reachable {
            // The device may still reach the regions' memory: leak it rather than let
            // it be freed and reused.
            std::mem::forget(std::mem::take(&mut tables.memory));
        }
        let slots = std::mem::take(&mut tables.slots);
        if let Some(window) = slots.window() {
            self.mapper.forget_pages(window);
        }
        if let Some(lease) = slots.into_idle_lease() {
            let _ = self.iovas.free_lease(lease);
        }
    }
}

impl<M: DmaMapper> RequestTable<M> {
    pub(crate) fn new(mapper: M, iovas: Arc<IovaAllocator>) -> RequestTable<M> {
        RequestTable {
            mapper,
            tables: Mutex::new(Tables {
                slots: PageSlots::default(),
                memory: GuestMemory::new(),
                cold: Box::new(ColdTables {
                    live: LiveTable::new(iovas.granularity()),
                    deferred: Released::new(),
                    oldest: None,
                    pieces: Vec::new(),
                    spare_runs: Vec::new(),
                }),
            }),
            iovas,
        }
    }

    pub(crate) fn mapper(&self) -> &M {
        &self.mapper
    }

    /// The tables, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tables> {
        // Every update leaves the tables consistent, so a poisoned lock still guards
        // usable data.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        self.lock().memory.add(region, self.mapper.page_size())
    }

    /// Removes a region once `drain` has issued any deferred unmaps, refusing if live
    /// mappings still reach into it.
    pub(crate) fn remove_region(
        &self,
        gpa: GuestPhysAddr,
        drain: impl FnOnce(&mut Tables) -> Result<(), DmaError>,
    ) -> Result<GuestMemoryRegion, DmaError> {
        let mut tables = self.lock();
        let (lo, hi) = tables
            .memory
            .get(gpa)
            .map(|r| (r.gpa().0, r.gpa().0 + r.len()))
            .ok_or(DmaError::RegionNotFound { gpa: gpa.0 })?;
        drain(&mut tables)?;
        let reaches = |start: u64, len: u64| start < hi && start.saturating_add(len) > lo;
        let busy = tables
            .cold
            .live
            .values()
            .filter(|m| m.gpa_runs.iter().any(|r| reaches(r.start.0, r.len)))
            .count()
            + tables
                .slots
                .mapped_pages()
                .filter(|page| reaches(page.0, 1))
                .count();
        if busy > 0 {
            return Err(DmaError::RegionBusy {
                gpa: gpa.0,
                mappings: busy,
            });
        }
        tables.memory.remove(gpa)
    }

    /// Maps `sg`. When IOVA space runs out, calls `reclaim` (which returns whether it
    /// freed anything) and tries once more.
    pub(crate) fn map_sg(
        &self,
        sg: &GuestSgList,
        access: DmaAccess,
        reclaim: impl FnOnce(&mut Tables) -> Result<bool, DmaError>,
    ) -> Result<BusSgList, DmaError> {
        let page = self.mapper.page_size();
        let mut tables = self.lock();
        if let [seg] = sg.segments() {
            let run = seg.page_run(page);
            if run.len == page {
                if let Some(bus) = self.map_one_page(&mut tables, seg, run, access)? {
                    return Ok(bus);
                }
            }
        }
        self.map_general(&mut tables, sg, access, page, reclaim)
    }

    /// Maps any request at IOVAs of its own. Kept out of line: its locals (pieces,
    /// runs) would otherwise spread the one-page path's stack frame over more cache
    /// lines.
    #[inline(never)]
    fn map_general(
        &self,
        tables: &mut Tables,
        sg: &GuestSgList,
        access: DmaAccess,
        page: u64,
        reclaim: impl FnOnce(&mut Tables) -> Result<bool, DmaError>,
    ) -> Result<BusSgList, DmaError> {
        if sg.segments().is_empty() {
            return Err(DmaError::EmptyRange { start: 0 });
        }
        let mut runs = tables.cold.runs();
        let mut pieces = std::mem::take(&mut tables.cold.pieces);
        pieces.clear();
        let mapped = self.map_translated(tables, sg, &mut runs, &mut pieces, access, page, reclaim);
        if pieces.capacity() <= KEPT_CAPACITY {
            tables.cold.pieces = pieces;
        }
        match mapped {
            Ok((lease, bus)) => {
                tables.cold.live.insert(LiveMapping {
                    lease,
                    gpa_runs: runs,
                });
                Ok(bus)
            }
            Err(err) => {
                tables.cold.recycle(runs);
                Err(err)
            }
        }
    }

    /// Translates `sg` into its page runs and host pieces, leases IOVAs for them and
    /// maps them: all or nothing.
    #[allow(clippy::too_many_arguments)]
    fn map_translated(
        &self,
        tables: &mut Tables,
        sg: &GuestSgList,
        runs: &mut Runs,
        pieces: &mut Vec<DmaMapping>,
        access: DmaAccess,
        page: u64,
        reclaim: impl FnOnce(&mut Tables) -> Result<bool, DmaError>,
    ) -> Result<(IovaLease, BusSgList), DmaError> {
        // Translate everything before touching the allocator: a request reaching outside
        // registered memory must fail with nothing changed. IOVAs are offsets until the
        // allocation is known.
        let whole_pages = whole_pages(&tables.memory, sg, page, runs, pieces, access);
        let total = match whole_pages {
            Some(total) => total,
            None => {
                runs.clear();
                pieces.clear();
                runs.extend(sg.page_runs(page));
                let mut total: u64 = 0;
                for run in runs.iter() {
                    tables.memory.walk(run.start, run.len, |piece| {
                        append_piece(pieces, &mut total, piece, access)
                    })?;
                }
                total
            }
        };
        let lease = match self.iovas.lease(total, page) {
            Err(DmaError::IovaExhausted { .. }) if reclaim(tables)? => {
                self.iovas.lease(total, page)?
            }
            other => other?,
        };
        let base = lease.range().start();
        let placed = pieces
            .iter_mut()
            .try_for_each(|m| {
                m.range = IovaRange::new(Iova(base.0 + m.iova().0), m.len())?;
                Ok(())
            })
            .and_then(|()| match whole_pages {
                // Whole pages laid end to end: the device sees one range.
                Some(_) => BusSgList::single(base, total),
                None => bus_addresses(sg, runs, base),
            });
        // Mapping is all or nothing, so on any failure the IOVAs are unused.
        match placed.and_then(|bus| self.map_pieces(pieces).map(|()| bus)) {
            Ok(bus) => Ok((lease, bus)),
            Err(err) => {
                let _ = self.iovas.free_lease(lease);
                Err(err)
            }
        }
    }

    /// Maps a one-segment request inside one page through a slot. `Ok(None)` when no
    /// slot is free: the request takes the general path. Always inlined: a frame of
    /// its own is one more set of stack lines per request.
    #[inline(always)]
    fn map_one_page(
        &self,
        tables: &mut Tables,
        seg: &SgSegment<GuestPhysAddr>,
        run: PageRun<GuestPhysAddr>,
        access: DmaAccess,
    ) -> Result<Option<BusSgList>, DmaError> {
        // A page-aligned region holds a page whole or not at all.
        let Some(vaddr) = tables.memory.host_addr(run.start, run.len) else {
            return Err(DmaError::OutsideGuestMemory {
                gpa: seg.addr.0,
                len: seg.len,
            });
        };
        let reserved = tables.slots.reserve(&self.iovas, run.len, |window| {
            self.mapper.expect_pages(window, run.len)
        });
        let Some((slot, iova)) = reserved else {
            return Ok(None);
        };
        let bus = BusSgList::single(Iova(iova.0 + (seg.addr.0 - run.start.0)), seg.len);
        let mapped = bus.and_then(|bus| {
            let mapping = DmaMapping::new(iova, vaddr, run.len, access)?;
            // SAFETY: see `map_pieces`: the page lies in a registered region.
            unsafe { self.mapper.map(&mapping) }.map(|()| bus)
        });
        match mapped {
            Ok(bus) => {
                tables.slots.fill(slot, run.start);
                Ok(Some(bus))
            }
            Err(err) => {
                tables.slots.unreserve(slot);
                Err(err)
            }
        }
    }

    /// One mapping (a request in one host piece) straight to the mapper; more as one
    /// all-or-nothing batch.
    fn map_pieces(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        // SAFETY: every host address comes from `Tables::memory`, whose regions hold
        // their `DmaBacking`s. A region is removed only when no live mapping reaches it
        // (`remove_region`), and `Drop` leaks the regions' memory while any mapping may
        // remain, so the memory outlives the mappings.
        unsafe {
            match mappings {
                [one] => self.mapper.map(one),
                _ => self.mapper.map_batch(mappings),
            }
        }
    }

    /// Takes out of the table every request a bus segment falls in and passes them to
    /// `dispose` (which unmaps them now or later), all under the lock. Nothing is taken
    /// if any segment is not within one live request.
    pub(crate) fn unmap_sg(
        &self,
        bus: &BusSgList,
        dispose: impl FnOnce(&mut Tables, &mut Released) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let mut tables = self.lock();
        let mut taken = Released::new();
        if let [seg] = bus.segments() {
            // One buffer, the usual request: a slot, or found and removed in one probe.
            if let Some(slot) = tables.slots.holder(seg.addr.0, seg.len) {
                if let Some(range) = tables.slots.take(slot) {
                    taken.push(Held::Slot(slot, range));
                }
            } else if let Some(lease) = tables.cold.take_live_holding(seg.addr.0, seg.len) {
                taken.push(Held::Lease(lease));
            } else {
                // Several requests lying next to each other, or none.
                Self::take_owners(&mut tables, bus, &mut taken)?;
            }
        } else {
            Self::take_owners(&mut tables, bus, &mut taken)?;
        }
        dispose(&mut tables, &mut taken)
    }

    /// Unmaps `bus` now (the strict policy's unmap). A one-page request, the usual
    /// case, goes straight from its slot to the mapper and back to the free list.
    pub(crate) fn unmap_sg_now(&self, bus: &BusSgList) -> Result<(), DmaError> {
        if let [seg] = bus.segments() {
            let mut tables = self.lock();
            if let Some(slot) = tables.slots.holder(seg.addr.0, seg.len) {
                if let Some(range) = tables.slots.take(slot) {
                    // On failure the slot stays taken: never handed out again.
                    self.mapper.unmap(range)?;
                    tables.slots.free(slot);
                }
                return Ok(());
            }
        }
        self.unmap_sg_released_now(bus)
    }

    /// [`RequestTable::unmap_sg_now`] of anything but a one-page request, out of line
    /// so that the one-page path's frame stays small.
    #[inline(never)]
    fn unmap_sg_released_now(&self, bus: &BusSgList) -> Result<(), DmaError> {
        self.unmap_sg(bus, |tables, held| self.release(tables, held))
    }

    /// Takes the requests of a list of several segments, or none if one is unknown.
    #[inline(never)]
    fn take_owners(
        tables: &mut Tables,
        bus: &BusSgList,
        taken: &mut Released,
    ) -> Result<(), DmaError> {
        let mut owners: SmallVec<[Owner; 2]> = SmallVec::new();
        for seg in bus.segments() {
            tables.owners_of(seg, &mut owners)?;
        }
        for owner in owners {
            taken.extend(tables.take(owner));
        }
        Ok(())
    }

    /// Unmaps the held ranges (merging adjacent ones into one call) and then gives
    /// their IOVAs back, emptying `held`. IOVAs are given back only after the unmap
    /// succeeded: on failure they are dropped without being given back and stay out
    /// of use, so a range the device might still reach is never handed out again.
    pub(crate) fn release(&self, tables: &mut Tables, held: &mut Released) -> Result<(), DmaError> {
        if held.len() <= 1 {
            // One request, the usual case: nothing to sort or merge.
            let Some(one) = held.pop() else {
                return Ok(());
            };
            self.mapper.unmap(one.range())?;
            return self.give_back(tables, one);
        }
        self.release_merged(tables, held)
    }

    /// [`RequestTable::release`] of several requests, out of line (its locals would
    /// widen the one-request path's stack frame).
    #[inline(never)]
    fn release_merged(&self, tables: &mut Tables, held: &mut Released) -> Result<(), DmaError> {
        held.sort_unstable_by_key(Held::range);
        let mut merged: SmallVec<[IovaRange; 2]> = SmallVec::new();
        for r in held.iter().map(Held::range) {
            match merged.last_mut() {
                Some(prev) if prev.end() == Some(r.start()) => {
                    *prev = IovaRange::new(prev.start(), prev.len() + r.len())?;
                }
                _ => merged.push(r),
            }
        }
        if let Err(err) = self.mapper.unmap_batch(&merged) {
            held.clear();
            return Err(err);
        }
        for one in held.drain(..) {
            self.give_back(tables, one)?;
        }
        Ok(())
    }

    /// Returns the IOVAs of a request whose unmap succeeded.
    fn give_back(&self, tables: &mut Tables, held: Held) -> Result<(), DmaError> {
        match held {
            Held::Lease(lease) => self.iovas.free_lease(lease),
            Held::Slot(slot, _) => {
                tables.slots.free(slot);
                Ok(())
            }
        }
    }
}

/// The error for a bus segment that no live request holds.
fn unknown(seg: &SgSegment<Iova>) -> DmaError {
    DmaError::UnknownBusAddress {
        addr: seg.addr.0,
        len: seg.len,
    }
}

/// Translates a list whose segments are all whole, page-aligned pages (what a guest
/// usually hands over: page-cache and ring pages) in one pass over its segments: the
/// page runs, the host pieces at IOVA offsets (host-contiguous pages merged), and the
/// total. `None` for any other shape, and for a list reaching outside one region or
/// outside memory, which the general path splits or reports precisely; what was
/// pushed is then the caller's to clear.
fn whole_pages(
    memory: &GuestMemory,
    sg: &GuestSgList,
    page: u64,
    runs: &mut Runs,
    pieces: &mut Vec<DmaMapping>,
    access: DmaAccess,
) -> Option<u64> {
    let mask = page - 1;
    let mut total: u64 = 0;
    // The page run being built, as [start, end).
    let mut run: Option<(u64, u64)> = None;
    for seg in sg.segments() {
        let (start, len) = (seg.addr.0, seg.len);
        if (start | len) & mask != 0 {
            return None;
        }
        let end = start.checked_add(len)?;
        run = match run {
            Some((s, e)) if start == e => Some((s, end)),
            // Pages shared with the run: the general path gives them one IOVA.
            Some((s, e)) if s <= start && start < e => return None,
            Some((s, e)) => {
                runs.push(PageRun {
                    start: GuestPhysAddr(s),
                    len: e - s,
                });
                Some((start, end))
            }
            None => Some((start, end)),
        };
        let vaddr = memory.host_addr(seg.addr, len)?;
        match pieces.last_mut() {
            Some(prev) if prev.vaddr.0.checked_add(prev.len()) == Some(vaddr.0) => {
                prev.range = IovaRange::new(prev.iova(), prev.len() + len).ok()?;
            }
            _ => pieces.push(DmaMapping::new(Iova(total), vaddr, len, access).ok()?),
        }
        total = total.checked_add(len)?;
    }
    let (s, e) = run?;
    runs.push(PageRun {
        start: GuestPhysAddr(s),
        len: e - s,
    });
    Some(total)
}

/// Appends a host piece at IOVA offset `*total`, growing the previous mapping when the
/// piece continues it in host memory.
fn append_piece(
    mappings: &mut Vec<DmaMapping>,
    total: &mut u64,
    piece: HostPiece,
    access: DmaAccess,
) -> Result<(), DmaError> {
    match mappings.last_mut() {
        Some(prev) if prev.vaddr.0 + prev.len() == piece.vaddr.0 => {
            prev.range = IovaRange::new(prev.iova(), prev.len() + piece.len)?;
        }
        _ => mappings.push(DmaMapping::new(
            Iova(*total),
            piece.vaddr,
            piece.len,
            access,
        )?),
    }
    // let-else, not ok_or: an eagerly built error is dropped on every piece.
    let Some(next) = total.checked_add(piece.len) else {
        return Err(DmaError::RangeOverflow {
            start: piece.gpa.0,
            len: piece.len,
        });
    };
    *total = next;
    Ok(())
}

/// The bus address of each segment of `sg`, given that its page runs were laid out
/// end to end from `base`. Each segment lies in exactly one run, in order.
fn bus_addresses(
    sg: &GuestSgList,
    runs: &[PageRun<GuestPhysAddr>],
    base: Iova,
) -> Result<BusSgList, DmaError> {
    if let ([seg], [run]) = (sg.segments(), runs) {
        // One buffer, the usual request: its run holds it (the run was made from it).
        return BusSgList::single(Iova(base.0 + (seg.addr.0 - run.start.0)), seg.len);
    }
    let mut bus = BusSgList::new();
    let mut run_iter = runs.iter();
    let mut run = run_iter.next();
    let mut run_offset = 0;
    for seg in sg.segments() {
        while let Some(r) = run {
            let inside = seg.addr.0 >= r.start.0 && seg.addr.0 - r.start.0 < r.len;
            if inside {
                break;
            }
            run_offset += r.len;
            run = run_iter.next();
        }
        let Some(r) = run else {
            return Err(DmaError::OutsideGuestMemory {
                gpa: seg.addr.0,
                len: seg.len,
            });
        };
        bus.push(
            Iova(base.0 + run_offset + (seg.addr.0 - r.start.0)),
            seg.len,
        )?;
    }
    Ok(bus)
}
