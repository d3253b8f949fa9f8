//! The live per-request mappings shared by the strict and batched policies.
//!
//! One `map_sg` becomes one IOVA allocation covering all of the request's page runs
//! laid end to end, and one mapping per host-contiguous piece (so a list of contiguous
//! pages costs one ioctl, not one per page). The table remembers each such allocation
//! so that `unmap_sg`, which arrives with nothing but bus addresses from an untrusted
//! guest, can be checked against what was really handed out.
//!
//! Requests are usually one buffer, so the per-request bookkeeping (page runs, host
//! pieces, ranges to unmap) is kept inline for small requests: the hot path makes no
//! heap allocation of its own, which matters where malloc is slow (musl). A one-segment
//! request also skips the general list walks.
//!
//! Each request's IOVAs are an [`IovaLease`], which the table holds while the request
//! is live and which only [`RequestTable::release`] gives back, after the unmap
//! succeeded. The lease is the record of the allocation: the allocator keeps none, so
//! map and unmap each cost one table lookup, not two.
//!
//! Locking: the guest memory lock is held (shared) across a whole map or unmap, and
//! exclusively while a region is removed, so a region can never disappear under a
//! mapping that is being made or one that is still waiting to be unmapped.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use smallvec::SmallVec;

use crate::address::GuestPhysAddr;
use crate::error::DmaError;
use crate::guest_memory::{GuestMemory, GuestMemoryRegion, HostPiece};
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::{IovaAllocator, IovaLease};
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping};
use crate::policy::live_table::{LiveMapping, LiveTable, Runs};
use crate::sg_list::{BusSgList, GuestSgList, PageRun, SgSegment};

/// The host pieces of one request, each one mapping.
type Pieces = SmallVec<[DmaMapping; 2]>;

/// The leases of requests taken out of the table, on their way to being unmapped.
pub(crate) type Released = SmallVec<[IovaLease; 2]>;

/// Registered memory plus live per-request mappings, over a mapper and an allocator.
#[derive(Debug)]
pub(crate) struct RequestTable<M> {
    mapper: M,
    iovas: Arc<IovaAllocator>,
    memory: RwLock<GuestMemory>,
    live: Mutex<LiveTable>,
}

impl<M: DmaMapper> RequestTable<M> {
    pub(crate) fn new(mapper: M, iovas: Arc<IovaAllocator>) -> RequestTable<M> {
        RequestTable {
            mapper,
            live: Mutex::new(LiveTable::new(iovas.granularity())),
            iovas,
            memory: RwLock::new(GuestMemory::new()),
        }
    }

    pub(crate) fn mapper(&self) -> &M {
        &self.mapper
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live().len()
    }

    pub(crate) fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        self.memory_mut().add(region, self.mapper.page_size())
    }

    /// Removes a region once `drain` (run with the region table locked) has issued any
    /// deferred unmaps, refusing if live mappings still reach into it.
    pub(crate) fn remove_region(
        &self,
        gpa: GuestPhysAddr,
        drain: impl FnOnce() -> Result<(), DmaError>,
    ) -> Result<GuestMemoryRegion, DmaError> {
        let mut memory = self.memory_mut();
        let region = *memory
            .get(gpa)
            .ok_or(DmaError::RegionNotFound { gpa: gpa.0 })?;
        drain()?;
        let (lo, hi) = (region.gpa.0, region.gpa.0 + region.len);
        let busy = self
            .live()
            .values()
            .filter(|m| {
                m.gpa_runs
                    .iter()
                    .any(|r| r.start.0 < hi && r.start.0.saturating_add(r.len) > lo)
            })
            .count();
        if busy > 0 {
            return Err(DmaError::RegionBusy {
                gpa: gpa.0,
                mappings: busy,
            });
        }
        memory.remove(gpa)
    }

    /// Maps `sg`. When IOVA space runs out, calls `reclaim` (which returns whether it
    /// freed anything) and tries once more.
    pub(crate) fn map_sg(
        &self,
        sg: &GuestSgList,
        access: DmaAccess,
        reclaim: impl FnOnce() -> Result<bool, DmaError>,
    ) -> Result<BusSgList, DmaError> {
        let page = self.mapper.page_size();
        let memory = self.memory();
        let runs: Runs = match sg.segments() {
            [] => return Err(DmaError::EmptyRange { start: 0 }),
            [seg] => smallvec::smallvec![seg.page_run(page)],
            _ => sg.page_runs(page).collect(),
        };
        // Translate everything before touching the allocator: a request reaching outside
        // registered memory must fail with nothing changed. Each host piece extends the
        // previous mapping when host-contiguous, so contiguous pages cost one mapping.
        // IOVAs are filled in once the allocation is known (they are offsets until then).
        let mut mappings = Pieces::new();
        let mut total: u64 = 0;
        for run in &runs {
            memory.walk(run.start, run.len, |piece| {
                append_piece(&mut mappings, &mut total, piece, access)
            })?;
        }
        let lease = match self.iovas.lease(total, page) {
            Err(DmaError::IovaExhausted { .. }) if reclaim()? => self.iovas.lease(total, page)?,
            other => other?,
        };
        let base = lease.range().start();
        let placed = mappings
            .iter_mut()
            .try_for_each(|m| {
                m.range = IovaRange::new(Iova(base.0 + m.iova().0), m.len())?;
                Ok(())
            })
            .and_then(|()| bus_addresses(sg, &runs, base));
        // Mapping is all or nothing, so on any failure the IOVAs are unused.
        let bus = match placed.and_then(|bus| self.map_pieces(&mappings).map(|()| bus)) {
            Ok(bus) => bus,
            Err(err) => {
                let _ = self.iovas.free_lease(lease);
                return Err(err);
            }
        };
        self.live().insert(LiveMapping {
            lease,
            gpa_runs: runs,
        });
        Ok(bus)
    }

    /// One mapping (a request in one host piece, the usual case) straight to the
    /// mapper; more as one all-or-nothing batch.
    fn map_pieces(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        match mappings {
            [one] => self.mapper.map(one),
            _ => self.mapper.map_batch(mappings),
        }
    }

    /// Removes from the table every mapping a bus segment falls in and passes their
    /// leases to `dispose` (which unmaps them now or later), all under the region lock.
    /// Nothing is removed if any segment is not within one live mapping.
    pub(crate) fn unmap_sg(
        &self,
        bus: &BusSgList,
        dispose: impl FnOnce(&mut Released) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let _memory = self.memory();
        let mut taken = Released::new();
        {
            let mut live = self.live();
            if let [seg] = bus.segments() {
                // One buffer, the usual request: found and removed in one step.
                let Some(m) = live.take_holding(seg.addr.0, seg.len) else {
                    return Err(unknown(seg));
                };
                taken.push(m.lease);
            } else {
                let mut keys: SmallVec<[u64; 2]> = SmallVec::new();
                for seg in bus.segments() {
                    let Some(key) = live.holder(seg.addr.0, seg.len) else {
                        return Err(unknown(seg));
                    };
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                taken.extend(keys.iter().filter_map(|k| live.remove(*k)).map(|m| m.lease));
            }
        }
        dispose(&mut taken)
    }

    /// Unmaps the leased ranges (merging adjacent ones into one call) and then returns
    /// the leases, emptying `leases`. Leases are returned only after the unmap
    /// succeeded: on failure they are dropped unreturned and their ranges stay
    /// allocated, so a range the device might still reach is never handed out again.
    pub(crate) fn release(&self, leases: &mut Released) -> Result<(), DmaError> {
        if leases.len() <= 1 {
            // One request, the usual case: nothing to sort or merge.
            let Some(lease) = leases.pop() else {
                return Ok(());
            };
            self.mapper.unmap(lease.range())?;
            return self.iovas.free_lease(lease);
        }
        leases.sort_unstable_by_key(IovaLease::range);
        let mut merged: SmallVec<[IovaRange; 2]> = SmallVec::new();
        for r in leases.iter().map(IovaLease::range) {
            match merged.last_mut() {
                Some(prev) if prev.end() == Some(r.start()) => {
                    *prev = IovaRange::new(prev.start(), prev.len() + r.len())?;
                }
                _ => merged.push(r),
            }
        }
        if let Err(err) = self.mapper.unmap_batch(&merged) {
            leases.clear();
            return Err(err);
        }
        for lease in leases.drain(..) {
            self.iovas.free_lease(lease)?;
        }
        Ok(())
    }

    fn memory(&self) -> RwLockReadGuard<'_, GuestMemory> {
        self.memory.read().unwrap_or_else(|p| p.into_inner())
    }

    fn memory_mut(&self) -> RwLockWriteGuard<'_, GuestMemory> {
        self.memory.write().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, LiveTable> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The error for a bus segment that no live request holds.
fn unknown(seg: &SgSegment<Iova>) -> DmaError {
    DmaError::UnknownBusAddress {
        addr: seg.addr.0,
        len: seg.len,
    }
}

/// Appends a host piece at IOVA offset `*total`, growing the previous mapping when the
/// piece continues it in host memory.
fn append_piece(
    mappings: &mut Pieces,
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
