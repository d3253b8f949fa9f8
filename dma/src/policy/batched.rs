//! Batched per-request mapping: maps as strict, unmaps deferred and issued together.
//!
//! Deferring lets adjacent unmaps merge into one ioctl and takes the unmap off the
//! request's critical path. The deferral is bounded: the queue is flushed when it holds
//! `max_pending` unmaps, when its oldest entry is `max_delay` old (checked on every
//! call, and by `flush_if_due` for an event loop's timer), when IOVA space runs out,
//! and before a region is removed. A queued range keeps its IOVAs allocated until its
//! unmap has been issued, so an IOVA is never handed out again while the device might
//! still reach the old pages through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::address::GuestPhysAddr;
use crate::error::DmaError;
use crate::guest_memory::GuestMemoryRegion;
use crate::iova_allocator::IovaAllocator;
use crate::mapper::{DmaAccess, DmaMapper};
use crate::policy::request_table::{RequestTable, Tables};
use crate::policy::DmaPolicy;
use crate::sg_list::{BusSgList, GuestSgList};

/// Bounds on deferred unmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush when this many unmaps are queued (at least 1).
    pub max_pending: usize,
    /// Flush when the oldest queued unmap is this old.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    /// 32 unmaps or 1 ms, whichever comes first.
    fn default() -> Self {
        BatchConfig {
            max_pending: 32,
            max_delay: Duration::from_millis(1),
        }
    }
}

/// Maps each request's pages at fresh IOVAs; queues unmaps and issues them in batches.
#[derive(Debug)]
pub struct BatchedPolicy<M: DmaMapper> {
    table: RequestTable<M>,
    config: BatchConfig,
}

impl<M: DmaMapper> BatchedPolicy<M> {
    /// A policy mapping through `mapper`, taking IOVAs from `iovas` (shared by every
    /// policy on the same mapper), deferring unmaps within `config`'s bounds.
    pub fn new(mapper: M, iovas: Arc<IovaAllocator>, config: BatchConfig) -> BatchedPolicy<M> {
        BatchedPolicy {
            table: RequestTable::new(mapper, iovas),
            config: BatchConfig {
                max_pending: config.max_pending.max(1),
                ..config
            },
        }
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        self.table.mapper()
    }

    /// Number of live `map_sg` mappings (not counting queued unmaps).
    pub fn live_count(&self) -> usize {
        self.table.lock().live_count()
    }

    /// Number of unmaps queued and not yet issued.
    pub fn pending_count(&self) -> usize {
        self.table.lock().cold.deferred.len()
    }

    /// Flushes if the oldest queued unmap has waited `max_delay`; for a periodic timer.
    pub fn flush_if_due(&self) -> Result<(), DmaError> {
        let mut tables = self.table.lock();
        if self.due(&tables) {
            self.drain(&mut tables)?;
        }
        Ok(())
    }

    fn due(&self, tables: &Tables) -> bool {
        tables
            .cold
            .oldest
            .is_some_and(|t| t.elapsed() >= self.config.max_delay)
    }

    /// Issues the queue; returns whether there was anything to issue.
    fn drain(&self, tables: &mut Tables) -> Result<bool, DmaError> {
        tables.cold.oldest = None;
        let mut held = std::mem::take(&mut tables.cold.deferred);
        let any = !held.is_empty();
        let released = self.table.release(tables, &mut held);
        // Give the emptied buffer back, so the queue does not regrow from nothing.
        tables.cold.deferred = held;
        released.map(|()| any)
    }
}

impl<M: DmaMapper> DmaPolicy for BatchedPolicy<M> {
    fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        self.table.add_region(region)
    }

    fn remove_region(&self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError> {
        self.table
            .remove_region(gpa, |tables| self.drain(tables).map(|_| ()))
    }

    fn map_sg(&self, sg: &GuestSgList, access: DmaAccess) -> Result<BusSgList, DmaError> {
        self.flush_if_due()?;
        self.table.map_sg(sg, access, |tables| self.drain(tables))
    }

    fn unmap_sg(&self, bus: &BusSgList) -> Result<(), DmaError> {
        self.table.unmap_sg(bus, |tables, held| {
            tables.cold.oldest.get_or_insert_with(Instant::now);
            tables.cold.deferred.extend(held.drain(..));
            if tables.cold.deferred.len() >= self.config.max_pending || self.due(tables) {
                self.drain(tables)?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), DmaError> {
        self.drain(&mut self.table.lock()).map(|_| ())
    }
}
