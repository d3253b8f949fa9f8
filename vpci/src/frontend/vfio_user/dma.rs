//! The client's DMA mappings: DMA_MAP and DMA_UNMAP against the device's IOMMU.
//!
//! A mapping with an fd is mmap'd here and mapped in the IOMMU at the client's
//! address (guest physical, or the guest's vIOMMU address), so the device reaches
//! exactly that memory. A mapping without an fd (QEMU's ROM and VGA areas) is recorded
//! and answered, but never reaches the IOMMU: the device cannot touch it.
//!
//! Refused, each with its own errno and reason: overlapping an existing mapping
//! (EEXIST, as the spec asks), the MSI window or addresses outside the container's
//! IOVA windows (EINVAL: the IOMMU cannot translate there), unaligned fd-backed maps
//! (EINVAL), more than `max_dma_maps` (ENOSPC), past RLIMIT_MEMLOCK (ENOMEM, from the
//! container, which counts what the whole process has locked). An unmap of a range
//! nothing is mapped in succeeds: QEMU's vIOMMU sweeps unmapped space that way.
//!
//! The memory is owned through vm-memory's safe mmap type until the owned DMA layer
//! of the dma crate replaces it; this file is the only place that would change.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use dma::{DmaAccess, DmaError, DmaMapper, DmaMapping, HostVirtAddr, Iova, IovaRange};
use nix::errno::Errno;
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

use super::protocol::{dma_flags, Refusal, MAX_DMA_MAPS};

/// The x86 MSI address window: device writes there are interrupts, never memory.
pub const MSI_WINDOW: Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Where the client's mappings may go.
#[derive(Clone, Debug, Default)]
pub struct DmaLimits {
    /// The container's usable IOVA windows; empty: not known (any address is tried).
    pub iova_ranges: Vec<IovaRange>,
}

/// One mapping of the client.
struct Entry {
    size: u64,
    /// The mmap'd memory the IOMMU points at, kept alive until unmapped; `None` for a
    /// mapping without an fd.
    memory: Option<MmapRegion<()>>,
}

/// The client's mappings, keyed by address.
pub struct DmaTable {
    mapper: Arc<dyn DmaMapper>,
    limits: DmaLimits,
    entries: BTreeMap<u64, Entry>,
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
        | DmaError::RangeOverflow { .. } => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl DmaTable {
    pub fn new(mapper: Arc<dyn DmaMapper>, limits: DmaLimits) -> DmaTable {
        DmaTable {
            mapper,
            limits,
            entries: BTreeMap::new(),
        }
    }

    /// The IOMMU page size: the alignment fd-backed maps need, advertised as `pgsizes`.
    pub fn page_size(&self) -> u64 {
        self.mapper.page_size()
    }

    pub fn usage(&self) -> DmaUsage {
        let mut u = DmaUsage {
            mappings: self.entries.len() as u64,
            ..DmaUsage::default()
        };
        for e in self.entries.values() {
            if e.memory.is_some() {
                u.device_bytes += e.size;
            } else {
                u.fdless_bytes += e.size;
            }
        }
        u
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Entry)> {
        // An entry overlapping [start, end) starts before `end` and ends after `start`;
        // entries never overlap, so walking down from `end` stops at the first that
        // ends at or before `start`.
        self.entries
            .range(..end)
            .rev()
            .take_while(move |(s, e)| **s + e.size > start)
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
            Err(Refusal::new(
                errno,
                format!("DMA_MAP of {size:#x} bytes at {address:#x}: {why}"),
            ))
        };
        if size == 0 {
            return refuse(Errno::EINVAL, "empty".into());
        }
        let Some(end) = address.checked_add(size) else {
            return refuse(
                Errno::EINVAL,
                "wraps past the end of the address space".into(),
            );
        };
        if self.overlapping(address, end).next().is_some() {
            let (s, e) = self.overlapping(address, end).next().expect("checked");
            return refuse(
                Errno::EEXIST,
                format!(
                    "overlaps the mapping at {s:#x} (+{:#x}); unmap it first",
                    e.size
                ),
            );
        }
        if self.entries.len() >= MAX_DMA_MAPS {
            return refuse(
                Errno::ENOSPC,
                format!("the client already holds {MAX_DMA_MAPS} mappings (max_dma_maps)"),
            );
        }
        let Some(fd) = fd else {
            // Never device-reachable: recorded so that its unmap matches.
            self.entries.insert(address, Entry { size, memory: None });
            return Ok(());
        };
        if address < MSI_WINDOW.end && end > MSI_WINDOW.start {
            return refuse(
                Errno::EINVAL,
                format!(
                    "overlaps the MSI window {:#x}..{:#x}, where device writes are interrupts",
                    MSI_WINDOW.start, MSI_WINDOW.end
                ),
            );
        }
        let range = IovaRange::new(Iova(address), size)
            .map_err(|e| Refusal::new(Errno::EINVAL, format!("DMA_MAP at {address:#x}: {e}")))?;
        if !self.limits.iova_ranges.is_empty()
            && !self
                .limits
                .iova_ranges
                .iter()
                .any(|w| w.contains_range(&range))
        {
            let windows: Vec<String> = self
                .limits
                .iova_ranges
                .iter()
                .map(|w| w.to_string())
                .collect();
            return refuse(
                Errno::EINVAL,
                format!(
                    "outside the IOMMU's usable IOVA windows ({})",
                    windows.join(", ")
                ),
            );
        }
        let page = self.mapper.page_size();
        if !address.is_multiple_of(page)
            || !size.is_multiple_of(page)
            || !offset.is_multiple_of(page)
        {
            return refuse(
                Errno::EINVAL,
                format!("address, size and fd offset {offset:#x} must be multiples of the IOMMU page size {page:#x}"),
            );
        }
        let Ok(len) = usize::try_from(size) else {
            return refuse(Errno::EINVAL, "larger than this process can map".into());
        };
        let file = File::from(fd);
        // A mapping reaching past the end of its file would fault when touched: the
        // device through the IOMMU, or this process.
        if let Ok(meta) = file.metadata() {
            if meta.is_file() && offset.checked_add(size).is_none_or(|e| e > meta.len()) {
                return refuse(
                    Errno::EINVAL,
                    format!(
                        "fd offset {offset:#x} + size reaches past the end of its {:#x}-byte file",
                        meta.len()
                    ),
                );
            }
        }
        let prot = match flags & (dma_flags::READ | dma_flags::WRITE) {
            dma_flags::READ => libc_prot::READ,
            dma_flags::WRITE => libc_prot::WRITE,
            _ => libc_prot::READ | libc_prot::WRITE,
        };
        let memory = MmapRegion::<()>::build(
            Some(FileOffset::new(file, offset)),
            len,
            prot,
            libc_prot::MAP_SHARED,
        )
        .map_err(|e| {
            Refusal::new(
                Errno::EINVAL,
                format!("DMA_MAP of {size:#x} bytes at {address:#x}: cannot mmap its fd: {e}"),
            )
        })?;
        let access = match flags & (dma_flags::READ | dma_flags::WRITE) {
            // The device reads what the client lets it read, writes what it may write.
            dma_flags::READ => DmaAccess::DeviceReads,
            dma_flags::WRITE => DmaAccess::DeviceWrites,
            _ => DmaAccess::ReadWrite,
        };
        let mapping = DmaMapping::new(
            Iova(address),
            HostVirtAddr(memory.as_ptr() as u64),
            size,
            access,
        )
        .map_err(|e| Refusal::new(Errno::EINVAL, format!("DMA_MAP at {address:#x}: {e}")))?;
        self.mapper.map(&mapping).map_err(|e| {
            Refusal::new(
                errno_of(&e),
                format!("DMA_MAP of {size:#x} bytes at {address:#x}: {e}"),
            )
        })?;
        self.entries.insert(
            address,
            Entry {
                size,
                memory: Some(memory),
            },
        );
        Ok(())
    }

    /// DMA_UNMAP of `[address, address + size)`: every mapping inside it goes; one
    /// that lies only partly inside refuses the whole unmap (EINVAL, nothing changed).
    /// Nothing mapped there: success. Returns the mappings removed.
    pub fn unmap(&mut self, address: u64, size: u64) -> Result<usize, Refusal> {
        let Some(end) = address.checked_add(size).filter(|_| size > 0) else {
            return Err(Refusal::new(
                Errno::EINVAL,
                format!("DMA_UNMAP of {size:#x} bytes at {address:#x}: empty or wrapping"),
            ));
        };
        let inside: Vec<u64> = self.overlapping(address, end).map(|(s, _)| *s).collect();
        for s in &inside {
            let e = &self.entries[s];
            if *s < address || s + e.size > end {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!(
                        "DMA_UNMAP of {address:#x}..{end:#x} covers only part of the mapping at {s:#x} (+{:#x})",
                        e.size
                    ),
                ));
            }
        }
        let mut first_error = None;
        for s in &inside {
            if let Err(e) = self.remove(*s) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(inside.len()),
        }
    }

    fn remove(&mut self, start: u64) -> Result<(), Refusal> {
        let Some(entry) = self.entries.get(&start) else {
            return Ok(());
        };
        if entry.memory.is_some() {
            let range = IovaRange::new(Iova(start), entry.size)
                .map_err(|e| Refusal::new(Errno::EINVAL, e.to_string()))?;
            // The IOMMU first: the memory is released only once the device cannot
            // reach it. If the IOMMU refuses, the entry (and its memory) stays.
            self.mapper
                .unmap(range)
                .map_err(|e| Refusal::new(errno_of(&e), format!("DMA_UNMAP at {start:#x}: {e}")))?;
        }
        self.entries.remove(&start);
        Ok(())
    }

    /// Unmap everything (the unmap-all flag, a disconnect). Every mapping is tried;
    /// the first error is returned.
    pub fn unmap_all(&mut self) -> Result<usize, Refusal> {
        let starts: Vec<u64> = self.entries.keys().copied().collect();
        let mut first_error = None;
        for s in &starts {
            if let Err(e) = self.remove(*s) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(starts.len()),
        }
    }
}

impl Drop for DmaTable {
    fn drop(&mut self) {
        if let Err(e) = self.unmap_all() {
            tracing::warn!(error = %e, "unmapping a vfio-user client's DMA");
        }
    }
}

/// mmap protection and flags (libc's values, which the mmap type takes).
mod libc_prot {
    pub const READ: i32 = nix::sys::mman::ProtFlags::PROT_READ.bits();
    pub const WRITE: i32 = nix::sys::mman::ProtFlags::PROT_WRITE.bits();
    pub const MAP_SHARED: i32 = nix::sys::mman::MapFlags::MAP_SHARED.bits();
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
        assert_eq!(t.unmap(0xc0000, 0x20000).unwrap(), 1);
        assert_eq!(t.unmap(0x10_0000, 0x4000).unwrap(), 1);
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
        assert_eq!(t.unmap(0x10_0000, 0x10_0000).unwrap(), 2);
        assert_eq!(mapper.mapped_bytes(), 0);
    }

    #[test]
    fn vfio_user_dma_unmap_all_empties_the_iommu() {
        let (mapper, mut t) = table();
        for i in 0..4u64 {
            t.map(0x100_0000 + i * 0x1000, 0x1000, RW, 0, Some(memfd(0x1000)))
                .unwrap();
        }
        t.map(0xa0000, 0x1000, RW, 0, None).unwrap();
        assert_eq!(t.unmap_all().unwrap(), 5);
        assert_eq!(mapper.mapped_bytes(), 0);
        assert_eq!(t.usage().mappings, 0);
    }
}
