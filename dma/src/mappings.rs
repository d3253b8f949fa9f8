//! A table of IOMMU mappings that own the memory behind them: the safe way to map.
//!
//! [`DmaMapper::map`] is `unsafe` because the IOMMU keeps pointing at host memory
//! whatever becomes of it. [`DmaMappings`] holds each mapping's [`DmaBacking`] until that
//! mapping is unmapped, so safe code (a VMM frontend mapping a guest's RAM, or a
//! vfio-user client's DMA_MAP regions) can map memory without promising anything.
//!
//! It is also the one implementation of identity DMA mapping (IOVA = guest-physical
//! address): [`DmaMappings::map_identity`], used by UML's frontend for each region of
//! its memory table and by [`IdentityPolicy`](crate::policy::IdentityPolicy).
//!
//! Unmapping follows the mapper's VFIO type1v2 rules, per table entry: a range removes
//! every mapping of this table lying wholly inside it, a range with nothing in it
//! removes nothing and succeeds (QEMU's vIOMMU sweeps ranges it never mapped), and a
//! range that would split a mapping is refused before anything is unmapped. Only this
//! table's own mappings are unmapped, even when the mapper (one container) is shared.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::address::{GuestPhysAddr, HostVirtAddr};
use crate::error::DmaError;
use crate::iova::{Iova, IovaRange};
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping};
use crate::memory::DmaBacking;

/// One mapping and the memory it keeps alive.
struct Entry {
    range: IovaRange,
    vaddr: HostVirtAddr,
    access: DmaAccess,
    backing: Arc<dyn DmaBacking>,
}

/// The IOMMU mappings one user (a served device's guest, a vfio-user client) made
/// through `M`, each holding its backing memory until it is unmapped. Dropping the
/// table unmaps everything first; memory whose unmap fails is leaked rather than freed,
/// because the device may still reach it.
pub struct DmaMappings<M: DmaMapper> {
    mapper: M,
    /// By first IOVA; never overlapping.
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
}

impl<M: DmaMapper> std::fmt::Debug for DmaMappings<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaMappings")
            .field("mappings", &self.entries.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<M: DmaMapper> DmaMappings<M> {
    /// An empty table mapping through `mapper`.
    pub fn new(mapper: M) -> DmaMappings<M> {
        DmaMappings {
            mapper,
            entries: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    /// Maps `len` bytes of `backing`, from `offset` into it, at `iova`. Refuses an empty,
    /// misaligned (to the mapper's page size) or overlapping range, a range outside the
    /// backing, and device writes to read-only memory. The backing is kept until the
    /// mapping is unmapped.
    pub fn map(
        &mut self,
        iova: Iova,
        backing: Arc<dyn DmaBacking>,
        offset: u64,
        len: u64,
        access: DmaAccess,
    ) -> Result<(), DmaError> {
        let mapping = self.checked(iova, &backing, offset, len, access)?;
        // SAFETY: `[vaddr, vaddr + len)` lies inside `backing` (checked by `checked`),
        // whose `DmaBacking` promise keeps it mapped while it lives; the entry recorded
        // below holds it until the mapping is unmapped, and `Drop` leaks it if that
        // unmap fails.
        unsafe { self.mapper.map(&mapping)? };
        self.record(mapping, backing);
        Ok(())
    }

    /// Records a mapping the mapper holds already, made by a predecessor process that
    /// handed its IOMMU container over (`udrv serve`'s upgrade): `len` bytes of
    /// `backing` from `offset`, the same memory the predecessor mapped (the same file
    /// pages, mapped again here), at `iova`. The mapper is not called; the mapping is
    /// unmapped through it like any other. Refuses what [`map`](Self::map) refuses.
    pub fn adopt(
        &mut self,
        iova: Iova,
        backing: Arc<dyn DmaBacking>,
        offset: u64,
        len: u64,
        access: DmaAccess,
    ) -> Result<(), DmaError> {
        let mapping = self.checked(iova, &backing, offset, len, access)?;
        self.record(mapping, backing);
        Ok(())
    }

    /// The mapping of `len` bytes of `backing` from `offset` at `iova`, once every
    /// check [`map`](Self::map) makes has passed.
    fn checked(
        &self,
        iova: Iova,
        backing: &Arc<dyn DmaBacking>,
        offset: u64,
        len: u64,
        access: DmaAccess,
    ) -> Result<DmaMapping, DmaError> {
        let range = IovaRange::new(iova, len)?;
        let (base, backing_len) = backing.host_range();
        if offset.checked_add(len).is_none_or(|end| end > backing_len) {
            return Err(DmaError::OutsideBacking {
                offset,
                len,
                backing_len,
            });
        }
        if access.device_writes() && !backing.writable() {
            return Err(DmaError::ReadOnlyBacking { range });
        }
        let vaddr =
            base.0
                .checked_add(offset)
                .map(HostVirtAddr)
                .ok_or(DmaError::RangeOverflow {
                    start: base.0,
                    len: offset,
                })?;
        let mapping = DmaMapping::new(iova, vaddr, len, access)?;
        mapping.check_alignment(self.mapper.page_size())?;
        if let Some(existing) = self.overlapping(range).next() {
            return Err(DmaError::MapOverlap {
                requested: range,
                existing: existing.range,
            });
        }
        Ok(mapping)
    }

    /// Keeps `backing` for `mapping`, now in the IOMMU, until it is unmapped.
    fn record(&mut self, mapping: DmaMapping, backing: Arc<dyn DmaBacking>) {
        self.entries.insert(
            mapping.iova().0,
            Entry {
                range: mapping.range,
                vaddr: mapping.vaddr,
                access: mapping.access,
                backing,
            },
        );
        self.bytes += mapping.len();
    }

    /// Forgets every mapping without unmapping it, for a successor that took the
    /// mapper (the container) over and [adopted](Self::adopt) them: the memory of
    /// each is leaked, since the device may still reach it.
    pub fn forget_all(&mut self) {
        for (_, entry) in std::mem::take(&mut self.entries) {
            std::mem::forget(entry.backing);
        }
        self.bytes = 0;
    }

    /// Maps the whole pages of `[gpa, gpa + len)` at IOVA = guest-physical address,
    /// read-write, where `backing` from `offset` holds the guest's byte at `gpa`. A
    /// region that does not start or end on a page is rounded inwards, so the device
    /// never reaches host bytes outside it. Returns the range mapped, or `None` when
    /// there is no whole page to map or the region's guest and host addresses are not
    /// aligned alike within a page (a mapping would expose neighbouring host bytes).
    pub fn map_identity(
        &mut self,
        gpa: GuestPhysAddr,
        backing: Arc<dyn DmaBacking>,
        offset: u64,
        len: u64,
    ) -> Result<Option<IovaRange>, DmaError> {
        let page = self.mapper.page_size();
        let (base, _) = backing.host_range();
        let Some((start, end)) = gpa
            .0
            .checked_next_multiple_of(page)
            .zip(gpa.0.checked_add(len).map(|end| end / page * page))
        else {
            return Ok(None);
        };
        let host = base
            .0
            .checked_add(offset)
            .and_then(|h| h.checked_add(start - gpa.0));
        if end <= start || host.is_none_or(|h| !h.is_multiple_of(page)) {
            return Ok(None);
        }
        let range = IovaRange::new(Iova(start), end - start)?;
        self.map(
            range.start(),
            backing,
            offset + (start - gpa.0),
            range.len(),
            DmaAccess::ReadWrite,
        )?;
        Ok(Some(range))
    }

    /// Unmaps every mapping of this table lying wholly inside `range`; returns the bytes
    /// unmapped (0 if there were none). Refuses, unmapping nothing, a range that covers
    /// only part of a mapping. If the mapper fails to unmap one, the others are still
    /// unmapped, the failed one stays in the table (its memory kept) and the first
    /// error is returned.
    pub fn unmap(&mut self, range: IovaRange) -> Result<u64, DmaError> {
        let mut inside = Vec::new();
        for entry in self.overlapping(range) {
            if !range.contains_range(&entry.range) {
                return Err(DmaError::PartialUnmap {
                    requested: range,
                    mapping: entry.range,
                });
            }
            inside.push(entry.range.start().0);
        }
        self.remove(inside)
    }

    /// Unmaps everything; returns the bytes unmapped. As [`DmaMappings::unmap`], a
    /// mapping the mapper fails to unmap stays, and the first error is returned.
    pub fn unmap_all(&mut self) -> Result<u64, DmaError> {
        let all = self.entries.keys().copied().collect();
        self.remove(all)
    }

    fn remove(&mut self, starts: Vec<u64>) -> Result<u64, DmaError> {
        let mut total = 0;
        let mut first_error = None;
        for start in starts {
            let range = self.entries[&start].range;
            match self.mapper.unmap(range) {
                Ok(_) => {
                    // Only now, with the device unable to reach it, may the memory go.
                    self.entries.remove(&start);
                    self.bytes -= range.len();
                    total += range.len();
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }

    /// The mapping holding `iova`: its range, the host address `iova` translates to,
    /// and the permitted accesses.
    pub fn find(&self, iova: Iova) -> Option<(IovaRange, HostVirtAddr, DmaAccess)> {
        let (_, entry) = self.entries.range(..=iova.0).next_back()?;
        entry.range.contains(iova).then(|| {
            (
                entry.range,
                HostVirtAddr(entry.vaddr.0 + (iova.0 - entry.range.start().0)),
                entry.access,
            )
        })
    }

    /// The mappings, in IOVA order.
    pub fn ranges(&self) -> impl Iterator<Item = IovaRange> + '_ {
        self.entries.values().map(|e| e.range)
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries overlapping `range`, in IOVA order.
    fn overlapping(&self, range: IovaRange) -> impl Iterator<Item = &Entry> {
        // The entry starting before `range` may reach into it; later ones start inside.
        let before = self
            .entries
            .range(..range.start().0)
            .next_back()
            .map(|(_, e)| e)
            .filter(|e| e.range.overlaps(&range));
        let inside = self
            .entries
            .range(range.start().0..=range.last().0)
            .map(|(_, e)| e);
        before.into_iter().chain(inside)
    }
}

impl<M: DmaMapper> Drop for DmaMappings<M> {
    fn drop(&mut self) {
        // Whatever could not be unmapped stays reachable by the device: leak its memory
        // rather than let it be freed and reused.
        let _ = self.unmap_all();
        for (_, entry) in std::mem::take(&mut self.entries) {
            std::mem::forget(entry.backing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{DmaMemory, PagePreference, RawMemory};
    use crate::recording_mapper::RecordingMapper;

    fn memory(len: usize) -> Arc<dyn DmaBacking> {
        Arc::new(DmaMemory::allocate_with(len, PagePreference::SmallOnly).unwrap())
    }

    fn range(start: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(start), len).unwrap()
    }

    #[test]
    fn adopted_mappings_are_not_mapped_again_and_are_unmapped_like_others() {
        let mapper = Arc::new(RecordingMapper::new());
        // What the predecessor mapped, as the (shared) IOMMU holds it.
        let (theirs, _) = memory(0x4000).host_range();
        mapper
            .record(
                &DmaMapping::new(Iova(0x20_0000), theirs, 0x4000, DmaAccess::ReadWrite).unwrap(),
            )
            .unwrap();
        mapper.reset_counts();
        let mut table = DmaMappings::new(mapper.clone());
        let mem = memory(0x4000);
        table
            .adopt(
                Iova(0x20_0000),
                mem.clone(),
                0,
                0x4000,
                DmaAccess::ReadWrite,
            )
            .unwrap();
        assert_eq!(mapper.map_calls(), 0, "adopting maps nothing");
        assert_eq!((table.len(), table.bytes()), (1, 0x4000));
        assert!(matches!(
            table.adopt(
                Iova(0x20_1000),
                mem.clone(),
                0,
                0x1000,
                DmaAccess::ReadWrite
            ),
            Err(DmaError::MapOverlap { .. })
        ));
        assert!(matches!(
            table.adopt(Iova(0x40_0000), mem, 0x1000, 0x4000, DmaAccess::ReadWrite),
            Err(DmaError::OutsideBacking { .. })
        ));
        assert_eq!(table.unmap(range(0x20_0000, 0x4000)).unwrap(), 0x4000);
        assert_eq!((mapper.unmap_calls(), mapper.mapping_count()), (1, 0));
        assert!(table.is_empty());
    }

    #[test]
    fn maps_inside_the_backing_and_keeps_it_until_unmapped() {
        let mapper = Arc::new(RecordingMapper::new());
        let mut table = DmaMappings::new(mapper.clone());
        let mem = memory(0x4000);
        let (base, _) = mem.host_range();
        table
            .map(
                Iova(0x10_0000),
                mem.clone(),
                0x1000,
                0x2000,
                DmaAccess::ReadWrite,
            )
            .unwrap();
        assert_eq!(Arc::strong_count(&mem), 2, "the table holds the memory");
        assert_eq!((table.len(), table.bytes()), (1, 0x2000));
        let recorded = mapper.mappings();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].vaddr, HostVirtAddr(base.0 + 0x1000));
        assert_eq!(
            table.find(Iova(0x10_1008)).map(|(_, va, _)| va),
            Some(HostVirtAddr(base.0 + 0x2008))
        );
        assert!(table.find(Iova(0x10_2000)).is_none());

        for (offset, len) in [(0x3000, 0x2000), (u64::MAX - 0xfff, 0x1000)] {
            assert!(matches!(
                table.map(
                    Iova(0x20_0000),
                    mem.clone(),
                    offset,
                    len,
                    DmaAccess::ReadWrite
                ),
                Err(DmaError::OutsideBacking { .. })
            ));
        }
        assert!(matches!(
            table.map(
                Iova(0x20_0800),
                mem.clone(),
                0,
                0x1000,
                DmaAccess::ReadWrite
            ),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(matches!(
            table.map(
                Iova(0x10_1000),
                mem.clone(),
                0,
                0x1000,
                DmaAccess::ReadWrite
            ),
            Err(DmaError::MapOverlap { .. })
        ));
        assert_eq!(mapper.mappings().len(), 1, "refusals reach no mapper");

        assert_eq!(table.unmap(range(0x10_0000, 0x2000)).unwrap(), 0x2000);
        assert_eq!(Arc::strong_count(&mem), 1, "unmapped memory is let go");
        assert!(mapper.mappings().is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn unmap_removes_whole_mappings_refuses_splits_and_sweeps_empty_ranges() {
        let mapper = Arc::new(RecordingMapper::new());
        let mut table = DmaMappings::new(mapper.clone());
        let mem = memory(0x8000);
        for (iova, offset) in [(0x1_0000, 0), (0x1_2000, 0x2000), (0x3_0000, 0x4000)] {
            table
                .map(
                    Iova(iova),
                    mem.clone(),
                    offset,
                    0x2000,
                    DmaAccess::DeviceReads,
                )
                .unwrap();
        }
        assert!(matches!(
            table.unmap(range(0x1_1000, 0x2000)),
            Err(DmaError::PartialUnmap { .. })
        ));
        assert_eq!(table.len(), 3, "a refused split unmaps nothing");
        assert_eq!(table.unmap(range(0x5_0000, 0x10_0000)).unwrap(), 0);
        assert_eq!(table.unmap(range(0, 0x2_0000)).unwrap(), 0x4000);
        assert_eq!(
            table.ranges().collect::<Vec<_>>(),
            [range(0x3_0000, 0x2000)]
        );
        assert_eq!(table.unmap_all().unwrap(), 0x2000);
        assert_eq!((table.len(), table.bytes()), (0, 0));
        assert_eq!(Arc::strong_count(&mem), 1);
    }

    #[test]
    fn only_its_own_mappings_are_unmapped_on_a_shared_mapper() {
        let mapper = Arc::new(RecordingMapper::new());
        let mem = memory(0x2000);
        let mut mine = DmaMappings::new(mapper.clone());
        let mut theirs = DmaMappings::new(mapper.clone());
        mine.map(Iova(0x1000), mem.clone(), 0, 0x1000, DmaAccess::ReadWrite)
            .unwrap();
        theirs
            .map(
                Iova(0x2000),
                mem.clone(),
                0x1000,
                0x1000,
                DmaAccess::ReadWrite,
            )
            .unwrap();
        assert_eq!(mine.unmap(range(0, 0x10_0000)).unwrap(), 0x1000);
        assert_eq!(mapper.mappings().len(), 1);
        assert_eq!(
            Arc::strong_count(&mem),
            2,
            "`theirs` still holds the memory"
        );
        drop(theirs);
        assert!(mapper.mappings().is_empty(), "drop unmaps everything");
        assert_eq!(Arc::strong_count(&mem), 1, "and lets the memory go");
    }

    #[test]
    fn identity_maps_whole_pages_inside_the_region() {
        let mapper = Arc::new(RecordingMapper::new());
        let mut table = DmaMappings::new(mapper.clone());
        let fake = |vaddr: u64| -> Arc<dyn DmaBacking> {
            // SAFETY: the recording mapper never touches or pins the memory it is given.
            let memory = unsafe { RawMemory::new(HostVirtAddr(vaddr), 0x10_0000) };
            Arc::new(memory)
        };
        let gpa = GuestPhysAddr;
        assert_eq!(
            table
                .map_identity(gpa(0x1000), fake(0x7f00_0000_1000), 0, 0x3000)
                .unwrap(),
            Some(range(0x1000, 0x3000))
        );
        // UML's region starts after its image, not always on a page: round inwards.
        assert_eq!(
            table
                .map_identity(gpa(0x1_1800), fake(0x7f00_0000_1000), 0x800, 0x3000)
                .unwrap(),
            Some(range(0x1_2000, 0x2000))
        );
        assert_eq!(
            mapper.mappings()[1].vaddr,
            HostVirtAddr(0x7f00_0000_2000),
            "the host address moves with the rounding"
        );
        // Guest and host offsets within a page differ: an identity map would expose
        // the neighbouring host bytes.
        assert_eq!(
            table
                .map_identity(gpa(0x2_0000), fake(0x7f00_0000_1800), 0, 0x3000)
                .unwrap(),
            None
        );
        assert_eq!(
            table
                .map_identity(gpa(0x3_1800), fake(0x7f00_0000_1800), 0, 0x400)
                .unwrap(),
            None
        );
        assert_eq!(
            table
                .map_identity(gpa(u64::MAX - 0xfff), fake(0x1000), 0, 0x2000)
                .unwrap(),
            None
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn read_only_memory_is_not_mapped_for_device_writes() {
        let file =
            nix::sys::memfd::memfd_create(c"dma-mappings-test", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
        nix::unistd::ftruncate(&file, 0x2000).unwrap();
        let ro: Arc<dyn DmaBacking> =
            Arc::new(crate::memory::FdMemory::map(&file, 0, 0x2000, false).unwrap());
        let mut table = DmaMappings::new(RecordingMapper::new());
        assert!(matches!(
            table.map(Iova(0x1000), ro.clone(), 0, 0x1000, DmaAccess::DeviceWrites),
            Err(DmaError::ReadOnlyBacking { .. })
        ));
        table
            .map(Iova(0x1000), ro, 0, 0x1000, DmaAccess::DeviceReads)
            .unwrap();
    }
}
