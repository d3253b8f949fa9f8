//! The client's DMA mappings: DMA_MAP and DMA_UNMAP against the device's IOMMU.
//!
//! A mapping with an fd is mmap'd ([`FdMemory`]) and mapped in the IOMMU at the
//! client's address (guest physical, or the guest's vIOMMU address) through the dma
//! crate's owned table ([`DmaMappings`]), which keeps the memory alive until the
//! IOMMU lets go of it: the device reaches exactly that memory. A mapping without an
//! fd (QEMU's ROM and VGA areas) is recorded and answered, but never reaches the
//! IOMMU: the device cannot touch it.
//!
//! Refused, each with its own errno and reason: overlapping an existing mapping
//! (EEXIST, as the spec asks), the MSI window or addresses outside the container's
//! IOVA windows (EINVAL: the IOMMU cannot translate there), unaligned fd-backed maps
//! or ranges past the end of the fd (EINVAL), more than `max_dma_maps` (ENOSPC), past
//! RLIMIT_MEMLOCK (ENOMEM, from the container, which counts what the whole process
//! has locked). An unmap of a range nothing is mapped in succeeds: QEMU's vIOMMU
//! sweeps unmapped space that way.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use dma::{DmaAccess, DmaBacking, DmaError, DmaMapper, DmaMappings, FdMemory, Iova, IovaRange};
use nix::errno::Errno;

use super::protocol::{dma_flags, Refusal, MAX_DMA_MAPS};
use crate::handover::{FdBag, FdSlot, HandoverError};

/// The x86 MSI address window: device writes there are interrupts, never memory.
pub const MSI_WINDOW: Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Where the client's mappings may go.
#[derive(Clone, Debug, Default)]
pub struct DmaLimits {
    /// The container's usable IOVA windows; empty: not known (any address is tried).
    pub iova_ranges: Vec<IovaRange>,
}

/// The client's mappings.
pub struct DmaTable {
    /// fd-backed: in the IOMMU, memory owned until unmapped.
    device: DmaMappings<Arc<dyn DmaMapper>>,
    /// Without fd: start -> size, never device-reachable.
    fdless: BTreeMap<u64, u64>,
    limits: DmaLimits,
    /// What a successor needs to take the fd-backed mappings over: each mapping's
    /// file and place in it, by IOVA.
    carried: BTreeMap<u64, CarriedMap>,
    /// One fd per file the mappings use (QEMU sends its RAM's memfd again with every
    /// map), by (device, inode), with the number of mappings using it.
    files: HashMap<(u64, u64), (OwnedFd, usize)>,
}

/// An fd-backed mapping as a successor maps it again.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct CarriedMap {
    size: u64,
    offset: u64,
    flags: u32,
    file: (u64, u64),
}

/// A [`DmaTable`] carried to a successor process: the mappings stay in the IOMMU.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DmaTableState {
    /// iova, size, file offset, DMA_MAP flags, file.
    mapped: Vec<(u64, u64, u64, u32, FdSlot)>,
    /// iova, size of the maps without fd.
    fdless: Vec<(u64, u64)>,
}

fn access_of(flags: u32) -> DmaAccess {
    match flags & (dma_flags::READ | dma_flags::WRITE) {
        // The device reads what the client lets it read, writes what it may write.
        dma_flags::READ => DmaAccess::DeviceReads,
        dma_flags::WRITE => DmaAccess::DeviceWrites,
        _ => DmaAccess::ReadWrite,
    }
}

/// Counts for the status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaUsage {
    /// Mappings recorded (with and without fd).
    pub mappings: u64,
    /// Bytes the device can reach (fd-backed, in the IOMMU).
    pub device_bytes: u64,
    /// Bytes recorded without an fd.
    pub fdless_bytes: u64,
}

fn errno_of(e: &DmaError) -> Errno {
    match e {
        DmaError::MemlockLimit { .. } => Errno::ENOMEM,
        DmaError::TooManyMappings { .. } => Errno::ENOSPC,
        DmaError::MapOverlap { .. } => Errno::EEXIST,
        DmaError::Misaligned { .. }
        | DmaError::EmptyRange { .. }
        | DmaError::RangeOverflow { .. }
        | DmaError::BeyondFile { .. }
        | DmaError::OutsideBacking { .. }
        | DmaError::ReadOnlyBacking { .. }
        | DmaError::PartialUnmap { .. } => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

/// The file behind `fd`, as (device, inode).
fn file_key(fd: &OwnedFd) -> nix::Result<(u64, u64)> {
    let stat = nix::sys::stat::fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

fn overlaps(a: Range<u64>, b: Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl DmaTable {
    pub fn new(mapper: Arc<dyn DmaMapper>, limits: DmaLimits) -> DmaTable {
        DmaTable {
            device: DmaMappings::new(mapper),
            fdless: BTreeMap::new(),
            limits,
            carried: BTreeMap::new(),
            files: HashMap::new(),
        }
    }

    /// The table as it is, for a successor: each file's fd put into `bag` once.
    /// The mappings stay in the IOMMU; this table forgets them without unmapping.
    pub fn hand_over(mut self, bag: &mut FdBag) -> DmaTableState {
        let slots: HashMap<(u64, u64), FdSlot> = std::mem::take(&mut self.files)
            .into_iter()
            .map(|(key, (fd, _))| (key, bag.put(fd)))
            .collect();
        let mapped = std::mem::take(&mut self.carried)
            .into_iter()
            .map(|(iova, m)| (iova, m.size, m.offset, m.flags, slots[&m.file]))
            .collect();
        let fdless = std::mem::take(&mut self.fdless).into_iter().collect();
        // The IOMMU keeps the mappings for the successor: leave them there.
        self.device.forget_all();
        DmaTableState { mapped, fdless }
    }

    /// The table a predecessor handed over, through `mapper` (the same container):
    /// each mapping's memory mapped here again, nothing mapped in the IOMMU.
    pub fn resume(
        mapper: Arc<dyn DmaMapper>,
        limits: DmaLimits,
        state: &DmaTableState,
        bag: &mut FdBag,
    ) -> Result<DmaTable, HandoverError> {
        let mut table = DmaTable::new(mapper, limits);
        let mut files: HashMap<FdSlot, (u64, u64)> = HashMap::new();
        for &(iova, size, offset, flags, slot) in &state.mapped {
            let key = match files.get(&slot) {
                Some(key) => *key,
                None => {
                    let fd = bag.take(slot)?;
                    let key = file_key(&fd)
                        .map_err(|e| HandoverError::Malformed(format!("a DMA file: {e}")))?;
                    table.files.insert(key, (fd, 0));
                    files.insert(slot, key);
                    key
                }
            };
            let access = access_of(flags);
            let fd = &table.files[&key].0;
            let memory = FdMemory::map(fd, offset, size, access != DmaAccess::DeviceReads)
                .map_err(|e| HandoverError::Malformed(format!("DMA mapping at {iova:#x}: {e}")))?;
            table
                .device
                .adopt(Iova(iova), Arc::new(memory), 0, size, access)
                .map_err(|e| HandoverError::Malformed(format!("DMA mapping at {iova:#x}: {e}")))?;
            table.carried.insert(
                iova,
                CarriedMap {
                    size,
                    offset,
                    flags,
                    file: key,
                },
            );
            if let Some(file) = table.files.get_mut(&key) {
                file.1 += 1;
            }
        }
        table.fdless = state.fdless.iter().copied().collect();
        Ok(table)
    }

    /// Forget the carried records of the mappings inside `[start, end)`.
    fn uncarry(&mut self, start: u64, end: u64) {
        let gone: Vec<u64> = self.carried.range(start..end).map(|(s, _)| *s).collect();
        for iova in gone {
            let Some(m) = self.carried.remove(&iova) else {
                continue;
            };
            if let Some(file) = self.files.get_mut(&m.file) {
                file.1 -= 1;
                if file.1 == 0 {
                    self.files.remove(&m.file);
                }
            }
        }
    }

    /// The IOMMU page size: the alignment fd-backed maps need, advertised as `pgsizes`.
    pub fn page_size(&self) -> u64 {
        self.device.mapper().page_size()
    }

    pub fn usage(&self) -> DmaUsage {
        DmaUsage {
            mappings: (self.device.len() + self.fdless.len()) as u64,
            device_bytes: self.device.bytes(),
            fdless_bytes: self.fdless.values().sum(),
        }
    }

    /// Every mapping (with and without fd) overlapping `[start, end)`.
    fn overlapping(&self, start: u64, end: u64) -> Vec<Range<u64>> {
        let mut found: Vec<Range<u64>> = self
            .device
            .ranges()
            .map(|r| r.start().0..r.start().0 + r.len())
            .filter(|r| overlaps(r.clone(), start..end))
            .collect();
        // fd-less entries never overlap each other: walk down from `end` until one
        // ends at or before `start`.
        found.extend(
            self.fdless
                .range(..end)
                .rev()
                .take_while(|(s, len)| **s + **len > start)
                .map(|(s, len)| *s..*s + *len),
        );
        found
    }

    /// DMA_MAP.
    pub fn map(
        &mut self,
        address: u64,
        size: u64,
        flags: u32,
        offset: u64,
        fd: Option<OwnedFd>,
    ) -> Result<(), Refusal> {
        let refuse = |errno, why: String| {
            Refusal::new(
                errno,
                format!("DMA_MAP of {size:#x} bytes at {address:#x}: {why}"),
            )
        };
        if size == 0 {
            return Err(refuse(Errno::EINVAL, "empty".into()));
        }
        let Some(end) = address.checked_add(size) else {
            return Err(refuse(
                Errno::EINVAL,
                "wraps past the end of the address space".into(),
            ));
        };
        if let Some(other) = self.overlapping(address, end).first() {
            return Err(refuse(
                Errno::EEXIST,
                format!(
                    "overlaps the mapping at {:#x}..{:#x}; unmap it first",
                    other.start, other.end
                ),
            ));
        }
        if self.device.len() + self.fdless.len() >= MAX_DMA_MAPS {
            return Err(refuse(
                Errno::ENOSPC,
                format!("the client already holds {MAX_DMA_MAPS} mappings (max_dma_maps)"),
            ));
        }
        let Some(fd) = fd else {
            // Never device-reachable: recorded so that its unmap matches.
            self.fdless.insert(address, size);
            return Ok(());
        };
        if overlaps(address..end, MSI_WINDOW) {
            return Err(refuse(
                Errno::EINVAL,
                format!(
                    "overlaps the MSI window {:#x}..{:#x}, where device writes are interrupts",
                    MSI_WINDOW.start, MSI_WINDOW.end
                ),
            ));
        }
        let range = IovaRange::new(Iova(address), size)
            .map_err(|e| refuse(Errno::EINVAL, e.to_string()))?;
        let windows = &self.limits.iova_ranges;
        if !windows.is_empty() && !windows.iter().any(|w| w.contains_range(&range)) {
            let list: Vec<String> = windows.iter().map(ToString::to_string).collect();
            return Err(refuse(
                Errno::EINVAL,
                format!(
                    "outside the IOMMU's usable IOVA windows ({})",
                    list.join(", ")
                ),
            ));
        }
        let page = self.page_size();
        if !address.is_multiple_of(page)
            || !size.is_multiple_of(page)
            || !offset.is_multiple_of(page)
        {
            return Err(refuse(
                Errno::EINVAL,
                format!("address, size and fd offset {offset:#x} must be multiples of the IOMMU page size {page:#x}"),
            ));
        }
        let access = access_of(flags);
        let writable = access != DmaAccess::DeviceReads;
        let memory = FdMemory::map(&fd, offset, size, writable)
            .map_err(|e| refuse(errno_of(&e), format!("mapping its fd: {e}")))?;
        let memory: Arc<dyn DmaBacking> = Arc::new(memory);
        let key = file_key(&fd).map_err(|e| refuse(Errno::EINVAL, format!("its fd: {e}")))?;
        self.device
            .map(Iova(address), memory, 0, size, access)
            .map_err(|e| refuse(errno_of(&e), e.to_string()))?;
        self.files.entry(key).or_insert((fd, 0)).1 += 1;
        self.carried.insert(
            address,
            CarriedMap {
                size,
                offset,
                flags,
                file: key,
            },
        );
        Ok(())
    }

    /// DMA_UNMAP of `[address, address + size)`: every mapping inside it goes; one
    /// that lies only partly inside refuses the whole unmap (EINVAL, nothing changed).
    /// Nothing mapped there: success. The range may end exactly at 2^64: QEMU unmaps
    /// an IOMMU section reaching the top of the address space that way. Returns the
    /// bytes unmapped.
    pub fn unmap(&mut self, address: u64, size: u64) -> Result<u64, Refusal> {
        let refuse = |errno, why: String| {
            Refusal::new(
                errno,
                format!("DMA_UNMAP of {size:#x} bytes at {address:#x}: {why}"),
            )
        };
        let Some(last) = size.checked_sub(1).and_then(|n| address.checked_add(n)) else {
            return Err(refuse(
                Errno::EINVAL,
                "empty or wrapping past the end of the address space".into(),
            ));
        };
        // Searched as `[address, end)`: a range ending at 2^64 ends at u64::MAX here,
        // which misses nothing, as no mapping reaches the last byte (a DMA_MAP must
        // end below 2^64).
        let end = last.saturating_add(1);
        if let Some(cut) = self
            .overlapping(address, end)
            .into_iter()
            .find(|r| r.start < address || r.end > end)
        {
            return Err(refuse(
                Errno::EINVAL,
                format!(
                    "covers only part of the mapping at {:#x}..{:#x}",
                    cut.start, cut.end
                ),
            ));
        }
        let range = IovaRange::new(Iova(address), size)
            .map_err(|e| refuse(Errno::EINVAL, e.to_string()))?;
        // The IOMMU first: if it refuses, the fd-less records stay as well.
        let unmapped = self
            .device
            .unmap(range)
            .map_err(|e| refuse(errno_of(&e), e.to_string()))?;
        self.uncarry(address, end);
        let inside: Vec<u64> = self.fdless.range(address..end).map(|(s, _)| *s).collect();
        let mut fdless = 0;
        for s in inside {
            fdless += self.fdless.remove(&s).unwrap_or(0);
        }
        Ok(unmapped + fdless)
    }

    /// Unmap everything (the unmap-all flag, a disconnect). Returns the bytes unmapped.
    pub fn unmap_all(&mut self) -> Result<u64, Refusal> {
        let fdless: u64 = self.fdless.values().sum();
        self.fdless.clear();
        let unmapped = self
            .device
            .unmap_all()
            .map_err(|e| Refusal::new(errno_of(&e), format!("unmapping all DMA: {e}")))?;
        self.uncarry(0, u64::MAX);
        Ok(unmapped + fdless)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dma::RecordingMapper;

    fn memfd(len: u64) -> OwnedFd {
        let fd =
            nix::sys::memfd::memfd_create(c"vfio-user-test", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
        nix::unistd::ftruncate(&fd, len as i64).unwrap();
        fd
    }

    fn table() -> (Arc<RecordingMapper>, DmaTable) {
        let mapper = Arc::new(RecordingMapper::new());
        let limits = DmaLimits {
            iova_ranges: vec![IovaRange::from_inclusive(Iova(0), Iova(0xffff_ffff_ffff)).unwrap()],
        };
        (mapper.clone(), DmaTable::new(mapper, limits))
    }

    const RW: u32 = dma_flags::READ | dma_flags::WRITE;

    #[test]
    fn vfio_user_dma_maps_reach_the_iommu_only_with_an_fd() {
        let (mapper, mut t) = table();
        t.map(0x10_0000, 0x4000, RW, 0, Some(memfd(0x4000)))
            .unwrap();
        t.map(0xc0000, 0x20000, dma_flags::READ, 0, None).unwrap();
        assert_eq!(mapper.mapped_bytes(), 0x4000);
        let u = t.usage();
        assert_eq!(
            (u.mappings, u.device_bytes, u.fdless_bytes),
            (2, 0x4000, 0x20000)
        );
        // Never mapped: success, nothing removed.
        assert_eq!(t.unmap(0x8000_0000, 0x1000).unwrap(), 0);
        assert_eq!(t.unmap(0xc0000, 0x20000).unwrap(), 0x20000);
        assert_eq!(t.unmap(0x10_0000, 0x4000).unwrap(), 0x4000);
        assert_eq!(mapper.mapped_bytes(), 0);
        assert_eq!(t.usage(), DmaUsage::default());
    }

    #[test]
    fn vfio_user_dma_refusals_are_clear() {
        let (mapper, mut t) = table();
        t.map(0x10_0000, 0x4000, RW, 0, Some(memfd(0x4000)))
            .unwrap();
        let e = t
            .map(0x10_2000, 0x4000, RW, 0, Some(memfd(0x4000)))
            .unwrap_err();
        assert_eq!(e.errno, Errno::EEXIST, "{e}");
        let e = t.map(0x10_3000, 0x1000, RW, 0, None).unwrap_err();
        assert_eq!(
            e.errno,
            Errno::EEXIST,
            "fd-less overlaps are refused too: {e}"
        );
        let e = t
            .map(0xfee0_0000, 0x1000, RW, 0, Some(memfd(0x1000)))
            .unwrap_err();
        assert!(e.reason.contains("MSI window"), "{e}");
        let e = t
            .map(0x1_0000_0000_0000, 0x1000, RW, 0, Some(memfd(0x1000)))
            .unwrap_err();
        assert!(e.reason.contains("IOVA windows"), "{e}");
        let e = t
            .map(0x20_0800, 0x1000, RW, 0, Some(memfd(0x2000)))
            .unwrap_err();
        assert!(e.reason.contains("page size"), "{e}");
        let e = t
            .map(0x30_0000, 0x2000, RW, 0, Some(memfd(0x1000)))
            .unwrap_err();
        assert!(e.reason.contains("past the end"), "{e}");
        let e = t.map(u64::MAX - 0xfff, 0x2000, RW, 0, None).unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL);
        // Partial unmap: refused, nothing changed.
        let e = t.unmap(0x10_0000, 0x1000).unwrap_err();
        assert!(e.reason.contains("only part"), "{e}");
        assert_eq!(mapper.mapped_bytes(), 0x4000);
        // An unmap covering several whole mappings removes them all.
        t.map(0x10_4000, 0x1000, RW, 0, Some(memfd(0x1000)))
            .unwrap();
        assert_eq!(t.unmap(0x10_0000, 0x10_0000).unwrap(), 0x5000);
        assert_eq!(mapper.mapped_bytes(), 0);
    }

    #[test]
    fn vfio_user_dma_unmap_may_reach_the_top_of_the_address_space() {
        let (mapper, mut t) = table();
        t.map(0x1_0000_0000, 0x1000, RW, 0, Some(memfd(0x1000)))
            .unwrap();
        t.map(0x10_0000, 0x1000, RW, 0, Some(memfd(0x1000)))
            .unwrap();
        // QEMU's unmap of the IOMMU section above the MSI window: [0xfef00000, 2^64).
        let above_msi = 0u64.wrapping_sub(0xfef0_0000);
        assert_eq!(t.unmap(0xfef0_0000, above_msi).unwrap(), 0x1000);
        assert_eq!(mapper.mapped_bytes(), 0x1000, "the mapping below stays");
        assert_eq!(t.unmap(u64::MAX - 0xfff, 0x1000).unwrap(), 0);
        let e = t.unmap(u64::MAX - 0xfff, 0x2000).unwrap_err();
        assert!(e.reason.contains("wrapping"), "{e}");
        let e = t.unmap(0x1000, 0).unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
    }

    #[test]
    fn vfio_user_dma_unmap_all_empties_the_iommu() {
        let (mapper, mut t) = table();
        for i in 0..4u64 {
            t.map(0x100_0000 + i * 0x1000, 0x1000, RW, 0, Some(memfd(0x1000)))
                .unwrap();
        }
        t.map(0xa0000, 0x1000, RW, 0, None).unwrap();
        assert_eq!(t.unmap_all().unwrap(), 0x5000);
        assert_eq!(mapper.mapped_bytes(), 0);
        assert_eq!(t.usage().mappings, 0);
    }
}
