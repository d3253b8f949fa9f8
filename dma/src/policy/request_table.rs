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
//! heap allocation of its own, which matters where malloc is slow (musl).
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
use crate::iova_allocator::IovaAllocator;
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping};
use crate::policy::live_table::{LiveMapping, LiveTable, Runs};
use crate::sg_list::{BusSgList, GuestSgList, PageRun, SgSegment};

/// The host pieces of one request, each one mapping.
type Pieces = SmallVec<[DmaMapping; 2]>;

/// IOVA ranges taken out of the table by one `unmap_sg`.
pub(crate) type Released = SmallVec<[IovaRange; 2]>;

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
        let runs: Runs = sg.page_runs(page).collect();
        if runs.is_empty() {
            return Err(DmaError::EmptyRange { start: 0 });
        }
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
        let iova = match self.iovas.alloc(total, page) {
            Err(DmaError::IovaExhausted { .. }) if reclaim()? => self.iovas.alloc(total, page)?,
            other => other?,
        };
        let placed = mappings
            .iter_mut()
            .try_for_each(|m| {
                m.range = IovaRange::new(Iova(iova.start().0 + m.iova().0), m.len())?;
                Ok(())
            })
            .and_then(|()| bus_addresses(sg, &runs, iova.start()));
        // map_batch is all or nothing, so on any failure the IOVAs are unused.
        let bus = match placed.and_then(|bus| self.mapper.map_batch(&mappings).map(|()| bus)) {
            Ok(bus) => bus,
            Err(err) => {
                let _ = self.iovas.free(iova);
                return Err(err);
            }
        };
        self.live().insert(LiveMapping {
            iova,
            gpa_runs: runs,
        });
        Ok(bus)
    }

    /// Removes from the table every mapping a bus segment falls in and passes their IOVA
    /// ranges to `dispose` (which unmaps them now or later), all under the region lock.
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
                // One buffer, the usual request: no list of keys to build.
                let key = owner(&live, seg)?;
                taken.extend(live.remove(key).map(|m| m.iova));
            } else {
                let mut keys: SmallVec<[u64; 2]> = SmallVec::new();
                for seg in bus.segments() {
                    let key = owner(&live, seg)?;
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                taken.extend(keys.iter().filter_map(|k| live.remove(*k)).map(|m| m.iova));
            }
        }
        dispose(&mut taken)
    }

    /// Unmaps `ranges` (merging adjacent ones into one call) and then frees their IOVAs.
    /// IOVAs are freed only after the unmap succeeded: on failure they stay allocated,
    /// so a range the device might still reach is never handed out again.
    pub(crate) fn release(&self, ranges: &mut [IovaRange]) -> Result<(), DmaError> {
        if let [range] = ranges {
            // One request, the usual case: nothing to sort or merge.
            self.mapper.unmap_batch(std::slice::from_ref(range))?;
            return self.iovas.free(*range);
        }
        if ranges.is_empty() {
            return Ok(());
        }
        ranges.sort_unstable();
        let mut merged: Released = SmallVec::new();
        for r in ranges.iter() {
            match merged.last_mut() {
                Some(prev) if prev.end() == Some(r.start()) => {
                    *prev = IovaRange::new(prev.start(), prev.len() + r.len())?;
                }
                _ => merged.push(*r),
            }
        }
        self.mapper.unmap_batch(&merged)?;
        for r in ranges.iter() {
            self.iovas.free(*r)?;
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

/// The first IOVA of the live request that wholly contains `seg`.
fn owner(live: &LiveTable, seg: &SgSegment<Iova>) -> Result<u64, DmaError> {
    let unknown = || DmaError::UnknownBusAddress {
        addr: seg.addr.0,
        len: seg.len,
    };
    let (key, m) = live.find(seg.addr.0).ok_or_else(unknown)?;
    let within = IovaRange::new(seg.addr, seg.len).is_ok_and(|r| m.iova.contains_range(&r));
    if !within {
        return Err(unknown());
    }
    Ok(key)
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
