//! An in-memory `DmaMapper` that records what an IOMMU would hold.
//!
//! Tests everywhere in udrv use it to check *which* mappings exist after an operation
//! and *how many* map/unmap calls (ioctls, on the real backend) it took. It enforces the
//! same rules as VFIO type1v2 — page alignment, no overlapping maps, no split unmaps, a
//! limit on the number of mappings — so code that passes against it does not surprise
//! the real backend.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::address::HostVirtAddr;
use crate::error::DmaError;
use crate::iova::{Iova, IovaRange};
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping, PAGE_SIZE};

/// VFIO type1's default `dma_entry_limit`.
pub const DEFAULT_MAX_MAPPINGS: usize = 65535;

/// Records mappings in memory, with VFIO type1v2 rules, and counts calls.
#[derive(Debug)]
pub struct RecordingMapper {
    page_size: u64,
    max_mappings: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by first IOVA; never overlapping.
    mappings: BTreeMap<u64, DmaMapping>,
    map_calls: u64,
    unmap_calls: u64,
}

impl Default for RecordingMapper {
    fn default() -> Self {
        RecordingMapper::new()
    }
}

impl RecordingMapper {
    /// A mapper with 4 KiB pages and VFIO's default limit of 65535 mappings.
    pub fn new() -> RecordingMapper {
        RecordingMapper::with_page_size(PAGE_SIZE)
    }

    /// A mapper with another IOMMU page size (a power of two).
    ///
    /// # Panics
    /// If `page_size` is not a power of two: that is a bug in the test, not input.
    pub fn with_page_size(page_size: u64) -> RecordingMapper {
        assert!(
            page_size.is_power_of_two(),
            "page size must be a power of two"
        );
        RecordingMapper {
            page_size,
            max_mappings: DEFAULT_MAX_MAPPINGS,
            state: Mutex::new(State::default()),
        }
    }

    /// Sets the maximum number of live mappings.
    pub fn with_max_mappings(mut self, limit: usize) -> RecordingMapper {
        self.max_mappings = limit;
        self
    }

    /// All live mappings, in IOVA order.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        self.lock().mappings.values().copied().collect()
    }

    /// Number of live mappings.
    pub fn mapping_count(&self) -> usize {
        self.lock().mappings.len()
    }

    /// Total bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.lock().mappings.values().map(|m| m.len()).sum()
    }

    /// Number of `map` calls so far, failed ones included (each is one ioctl).
    pub fn map_calls(&self) -> u64 {
        self.lock().map_calls
    }

    /// Number of `unmap` calls so far, failed ones included.
    pub fn unmap_calls(&self) -> u64 {
        self.lock().unmap_calls
    }

    /// Sets both call counters back to zero.
    pub fn reset_counts(&self) {
        let mut state = self.lock();
        state.map_calls = 0;
        state.unmap_calls = 0;
    }

    /// [`DmaMapper::map`], safe here: this mapper only records the mapping, and
    /// nothing ever reaches the host memory it names.
    pub fn record(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        // SAFETY: this mapper never dereferences, pins or hands on a host address.
        unsafe { self.map(mapping) }
    }

    /// [`DmaMapper::map_batch`], safe here for the reason [`RecordingMapper::record`] is.
    pub fn record_batch(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        // SAFETY: as in `record`.
        unsafe { self.map_batch(mappings) }
    }

    /// What the IOMMU would translate `iova` to, and with which access.
    pub fn translate(&self, iova: Iova) -> Option<(HostVirtAddr, DmaAccess)> {
        let state = self.lock();
        let (_, mapping) = state.mappings.range(..=iova.0).next_back()?;
        mapping.translate(iova).map(|va| (va, mapping.access))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the map consistent (every update is a
        // single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DmaMapper for RecordingMapper {
    fn page_size(&self) -> u64 {
        self.page_size
    }

    unsafe fn map(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        let mut state = self.lock();
        state.map_calls += 1;
        mapping.check_alignment(self.page_size)?;
        let last = mapping.range.last().0;
        // Mappings never overlap, so the one starting closest below our last byte is the
        // only candidate that can reach into us.
        if let Some((_, existing)) = state.mappings.range(..=last).next_back() {
            if existing.range.overlaps(&mapping.range) {
                return Err(DmaError::MapOverlap {
                    requested: mapping.range,
                    existing: existing.range,
                });
            }
        }
        if state.mappings.len() >= self.max_mappings {
            return Err(DmaError::TooManyMappings {
                limit: self.max_mappings,
            });
        }
        state.mappings.insert(mapping.iova().0, *mapping);
        Ok(())
    }

    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        let mut state = self.lock();
        state.unmap_calls += 1;
        range.check_alignment(self.page_size)?;
        // A mapping that starts before the range but reaches into it would be split.
        if let Some((_, m)) = state.mappings.range(..range.start().0).next_back() {
            if m.range.overlaps(&range) {
                return Err(DmaError::PartialUnmap {
                    requested: range,
                    mapping: m.range,
                });
            }
        }
        // So would one that starts inside but runs past the end.
        if let Some((_, m)) = state.mappings.range(..=range.last().0).next_back() {
            if m.range.overlaps(&range) && !range.contains_range(&m.range) {
                return Err(DmaError::PartialUnmap {
                    requested: range,
                    mapping: m.range,
                });
            }
        }
        let inside: Vec<u64> = state
            .mappings
            .range(range.start().0..=range.last().0)
            .map(|(k, _)| *k)
            .collect();
        let mut bytes = 0;
        for key in inside {
            if let Some(m) = state.mappings.remove(&key) {
                bytes += m.len();
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(iova: u64, va: u64, len: u64) -> DmaMapping {
        DmaMapping::new(Iova(iova), HostVirtAddr(va), len, DmaAccess::ReadWrite).unwrap()
    }

    fn range(start: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(start), len).unwrap()
    }

    #[test]
    fn records_and_translates() {
        let m = RecordingMapper::new();
        m.record(&mapping(0x10000, 0x7f00_0000_0000, 0x2000))
            .unwrap();
        assert_eq!(m.mapping_count(), 1);
        assert_eq!(
            m.translate(Iova(0x11008)),
            Some((HostVirtAddr(0x7f00_0000_1008), DmaAccess::ReadWrite))
        );
        assert_eq!(m.translate(Iova(0x12000)), None);
        assert_eq!(m.translate(Iova(0xffff)), None);
    }

    #[test]
    fn rejects_overlap_and_misalignment() {
        let m = RecordingMapper::new();
        m.record(&mapping(0x10000, 0x1000_0000, 0x2000)).unwrap();
        let err = m
            .record(&mapping(0x11000, 0x2000_0000, 0x1000))
            .unwrap_err();
        assert!(matches!(err, DmaError::MapOverlap { .. }), "{err}");
        let err = m.record(&mapping(0xf000, 0x2000_0000, 0x2000)).unwrap_err();
        assert!(matches!(err, DmaError::MapOverlap { .. }), "{err}");
        assert!(matches!(
            m.record(&mapping(0x20800, 0x3000_0000, 0x1000)),
            Err(DmaError::Misaligned { what: "iova", .. })
        ));
        assert!(matches!(
            m.record(&mapping(0x20000, 0x3000_0800, 0x1000)),
            Err(DmaError::Misaligned { what: "vaddr", .. })
        ));
        assert!(matches!(
            m.record(&mapping(0x20000, 0x3000_0000, 0x800)),
            Err(DmaError::Misaligned { what: "size", .. })
        ));
        // Adjacent is fine.
        m.record(&mapping(0x12000, 0x2000_0000, 0x1000)).unwrap();
        assert_eq!(m.map_calls(), 7);
        assert_eq!(m.mapping_count(), 2);
    }

    #[test]
    fn unmap_removes_whole_mappings_and_refuses_splits() {
        let m = RecordingMapper::new();
        m.record(&mapping(0x10000, 0x1000_0000, 0x2000)).unwrap();
        m.record(&mapping(0x12000, 0x2000_0000, 0x1000)).unwrap();
        m.record(&mapping(0x20000, 0x3000_0000, 0x1000)).unwrap();
        assert!(matches!(
            m.unmap(range(0x11000, 0x1000)),
            Err(DmaError::PartialUnmap { .. })
        ));
        assert!(matches!(
            m.unmap(range(0x10000, 0x1000)),
            Err(DmaError::PartialUnmap { .. })
        ));
        assert_eq!(m.mapping_count(), 3);
        assert_eq!(m.unmap(range(0x0, 0x13000)).unwrap(), 0x3000);
        assert_eq!(m.mappings(), vec![mapping(0x20000, 0x3000_0000, 0x1000)]);
        assert_eq!(m.unmap(range(0x40000, 0x1000)).unwrap(), 0);
        assert_eq!(m.unmap_calls(), 4);
    }

    #[test]
    fn enforces_mapping_limit() {
        let m = RecordingMapper::new().with_max_mappings(2);
        m.record(&mapping(0x1000, 0x1000, 0x1000)).unwrap();
        m.record(&mapping(0x2000, 0x2000, 0x1000)).unwrap();
        assert!(matches!(
            m.record(&mapping(0x3000, 0x3000, 0x1000)),
            Err(DmaError::TooManyMappings { limit: 2 })
        ));
    }

    #[test]
    fn map_batch_is_all_or_nothing() {
        let m = RecordingMapper::new();
        m.record(&mapping(0x5000, 0x9000, 0x1000)).unwrap();
        let batch = [
            mapping(0x1000, 0x1000, 0x1000),
            mapping(0x2000, 0x2000, 0x1000),
            mapping(0x5000, 0x5000, 0x1000),
        ];
        assert!(m.record_batch(&batch).is_err());
        assert_eq!(m.mappings(), vec![mapping(0x5000, 0x9000, 0x1000)]);
        m.record_batch(&batch[..2]).unwrap();
        assert_eq!(m.mapping_count(), 3);
    }
}
