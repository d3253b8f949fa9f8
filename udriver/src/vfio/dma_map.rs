//! DMA mappings in a container: `dma::DmaMapper` carried out with
//! VFIO_IOMMU_MAP_DMA / VFIO_IOMMU_UNMAP_DMA.
//!
//! Before the kernel is asked, a map is checked against what costs next to nothing to
//! check: page alignment, the usable IOVA windows, the mapping limit and the
//! locked-memory limit. Overlapping maps and unmaps that would split a mapping are
//! refused by the kernel itself (TYPE1v2 returns EEXIST / EINVAL and changes nothing);
//! when it refuses, the container's mirror of its mappings names the mapping in the
//! way. Looking that up before every ioctl needed an ordered map, whose upkeep cost
//! a third of the ioctl on the per-request path; finding it after a refusal costs a
//! scan only on the error path.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use dma::{DmaError, DmaMapper, DmaMapping, IovaRange, MemlockStatus};
use vfio_bindings::bindings::vfio::{VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE};

use super::container::{ContainerState, IommuInfo, VfioContainer};
use super::error::VfioError;
use super::ioctl;
use super::mapping_mirror::PageSlot;

fn backend(op: &'static str, range: IovaRange, e: impl Into<io::Error>) -> DmaError {
    DmaError::Backend {
        op,
        range,
        source: e.into(),
    }
}

/// A status that lets any mapping through.
const NO_LIMIT: MemlockStatus = MemlockStatus {
    soft_limit: None,
    hard_limit: None,
    locked: 0,
    unlimited_by_capability: true,
};

/// The calling thread's locked-memory status, read afresh, and whether it is exempt
/// from the limit. VFIO charges pinned pages to the process but checks CAP_IPC_LOCK on
/// the calling thread, so the capability is read from this thread's status rather
/// than the process's.
fn read_thread_memlock() -> Result<MemlockStatus, DmaError> {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map_err(|e| DmaError::System {
            op: "getrlimit(RLIMIT_MEMLOCK)",
            source: e.into(),
        })?;
    if soft == nix::sys::resource::RLIM_INFINITY {
        return Ok(NO_LIMIT);
    }
    // Without /proc the kernel's own check is the only one.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    Ok(MemlockStatus::from_parts(soft, hard, &status))
}

/// Whether a status lets any mapping through.
fn exempt(status: &MemlockStatus) -> bool {
    status.soft_limit.is_none() || status.unlimited_by_capability
}

// The refusals below are built out of line and marked cold: their formatting and
// scans would otherwise widen the map and unmap stack frames, and on the per-request
// path every cache line touched counts.

#[cold]
#[inline(never)]
fn misaligned(mapping: &DmaMapping, page_size: u64) -> DmaError {
    match mapping.check_alignment(page_size) {
        Err(e) => e,
        Ok(()) => DmaError::Misaligned {
            what: "mapping",
            value: mapping.iova().0,
            align: page_size,
        },
    }
}

#[cold]
#[inline(never)]
fn outside_windows(info: &IommuInfo, range: IovaRange) -> DmaError {
    backend(
        "VFIO_IOMMU_MAP_DMA",
        range,
        io::Error::other(VfioError::DmaRefused {
            iova: range.start().0,
            len: range.len(),
            reason: format!(
                "outside the IOMMU's usable IOVA windows ({}); pick an IOVA inside one",
                info.iova_ranges
                    .iter()
                    .map(|w| format!("{:#x}..={:#x}", w.start().0, w.last().0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    )
}

/// A map refused before or by the kernel: an overlap with a recorded mapping if there
/// is one (the kernel says only EEXIST), else `otherwise`.
#[cold]
#[inline(never)]
fn map_refusal(state: &ContainerState, range: IovaRange, otherwise: DmaError) -> DmaError {
    match state.mappings.overlapping(&range) {
        Some(existing) => DmaError::MapOverlap {
            requested: range,
            existing,
        },
        None => otherwise,
    }
}

/// An unmap the kernel refused: the mapping it would split if there is one (TYPE1v2
/// says only EINVAL), else the kernel's errno.
#[cold]
#[inline(never)]
fn unmap_refusal(state: &ContainerState, range: IovaRange, errno: nix::errno::Errno) -> DmaError {
    match state.mappings.split_by(&range) {
        Some(mapping) => DmaError::PartialUnmap {
            requested: range,
            mapping,
        },
        None => backend("VFIO_IOMMU_UNMAP_DMA", range, errno),
    }
}

impl VfioContainer {
    /// Bytes mapped in this container now.
    pub fn mapped_bytes(&self) -> u64 {
        self.lock().mappings.bytes()
    }

    /// Live mappings, in IOVA order.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        self.lock().mappings.sorted()
    }

    /// Maps after the checks; `memlock` is `None` for a thread exempt from the
    /// locked-memory limit. Every refusal is built out of line, which keeps this
    /// function's stack frame (touched on every map) small.
    ///
    /// # Safety
    ///
    /// As for [`DmaMapper::map`]: the memory of every mapping stays mapped and owned for
    /// the device's DMA until its range is unmapped.
    #[inline]
    unsafe fn map_checked(
        &self,
        mapping: &DmaMapping,
        memlock: Option<&MemlockStatus>,
    ) -> Result<(), DmaError> {
        // SAFETY: passed on from our caller.
        unsafe { self.map_locked(&mut self.lock(), mapping, memlock) }
    }

    /// [`VfioContainer::map_checked`] with the state already locked.
    ///
    /// # Safety
    ///
    /// As for [`DmaMapper::map`]: the memory of every mapping stays mapped and owned for
    /// the device's DMA until its range is unmapped.
    #[inline]
    unsafe fn map_locked(
        &self,
        state: &mut ContainerState,
        mapping: &DmaMapping,
        memlock: Option<&MemlockStatus>,
    ) -> Result<(), DmaError> {
        let slot = self.check_map(state, mapping, 0)?;
        if let Some(memlock) = memlock {
            memlock.check(mapping.len(), "mapping")?;
        }
        // SAFETY: passed on from our caller.
        if let Err(errno) = unsafe { self.map_ioctl(mapping) } {
            return Err(map_refusal(
                state,
                mapping.range,
                self.memlock_refusal(mapping.range, errno),
            ));
        }
        state.mappings.insert_at(*mapping, slot);
        Ok(())
    }

    /// The checks before a map, with `pending` mappings made but not yet recorded;
    /// returns the window page the mapping will be recorded in, if any.
    #[inline(always)]
    fn check_map(
        &self,
        state: &ContainerState,
        mapping: &DmaMapping,
        pending: usize,
    ) -> Result<Option<PageSlot>, DmaError> {
        let range = mapping.range;
        if !state.iommu_set {
            return Err(self.no_group("map DMA", "VFIO_IOMMU_MAP_DMA", range));
        }
        let page_mask = self.page_size() - 1;
        if (range.start().0 | range.len() | mapping.vaddr.0) & page_mask != 0 {
            return Err(misaligned(mapping, page_mask + 1));
        }
        // A page of an announced window that lies in a usable IOVA window needs no
        // search of the windows.
        let slot = state.mappings.page_slot(&range);
        if !slot.is_some_and(|s| s.usable) {
            // Borrowed, not cloned: a clone per map was a heap allocation.
            if let Some(info) = state.info.as_ref().filter(|i| !i.allows(&range)) {
                return Err(outside_windows(info, range));
            }
        }
        if let Some(limit) = state.max_mappings {
            if state.mappings.len() + pending >= limit {
                return Err(map_refusal(
                    state,
                    range,
                    DmaError::TooManyMappings { limit },
                ));
            }
        }
        Ok(slot)
    }

    /// VFIO_IOMMU_MAP_DMA of a checked mapping.
    ///
    /// # Safety
    ///
    /// As for [`DmaMapper::map`]: the memory of every mapping stays mapped and owned for
    /// the device's DMA until its range is unmapped.
    #[inline(always)]
    unsafe fn map_ioctl(&self, mapping: &DmaMapping) -> Result<(), nix::errno::Errno> {
        let mut flags = 0;
        if mapping.access.device_reads() {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if mapping.access.device_writes() {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        // SAFETY: `iommu_map_dma` needs the memory owned for DMA and mapped while the
        // IOVA range is: exactly what this function's caller promised (the contract of
        // `DmaMapper::map`, passed down unchanged by every caller in this file). The
        // kernel pins the pages for as long as the range stays mapped.
        unsafe {
            ioctl::iommu_map_dma(
                self.as_fd(),
                mapping.vaddr.0,
                mapping.range.start().0,
                mapping.len(),
                flags,
            )
        }
    }

    /// [`DmaMapper::map_batch`] for a container exempt from the locked-memory limit,
    /// under one hold of the lock. The mappings are recorded after the last ioctl,
    /// together: recording each one straight after its ioctl finds the mirror's lines
    /// evicted by the kernel's work every time.
    ///
    /// # Safety
    ///
    /// As for [`DmaMapper::map`]: the memory of every mapping stays mapped and owned for
    /// the device's DMA until its range is unmapped.
    unsafe fn map_batch_exempt(
        &self,
        state: &mut ContainerState,
        mappings: &[DmaMapping],
    ) -> Result<(), DmaError> {
        for (done, mapping) in mappings.iter().enumerate() {
            let mapped = self.check_map(state, mapping, done).and_then(|_| {
                // SAFETY: passed on from our caller.
                unsafe { self.map_ioctl(mapping) }.map_err(|errno| {
                    map_refusal(
                        state,
                        mapping.range,
                        self.memlock_refusal(mapping.range, errno),
                    )
                })
            });
            if let Err(err) = mapped {
                for undo in &mappings[..done] {
                    // Best effort: the refusal is the error worth reporting, and these
                    // ranges were mapped by this call a moment ago (and not recorded).
                    let _ = ioctl::iommu_unmap_dma(self.as_fd(), undo.iova().0, undo.len(), 0);
                }
                return Err(err);
            }
        }
        for mapping in mappings {
            let slot = state.mappings.page_slot(&mapping.range);
            state.mappings.insert_at(*mapping, slot);
        }
        Ok(())
    }

    /// A map while no thread is known to be exempt from the locked-memory limit.
    ///
    /// Reading `/proc/thread-self/status` costs more than the map ioctl itself, and
    /// even getrlimit is a syscall per map, so once a thread has been found exempt the
    /// container skips both. The exemption is the container's, not each thread's (the
    /// limit is the process's; only CAP_IPC_LOCK is per thread, and threads rarely
    /// differ in it): a thread without it maps unchecked until the kernel refuses with
    /// ENOMEM, and then `memlock_refusal` reads that thread's status,
    /// gives the actionable error, and clears the exemption.
    ///
    /// # Safety
    ///
    /// As for [`DmaMapper::map`]: the memory of every mapping stays mapped and owned for
    /// the device's DMA until its range is unmapped.
    #[inline(never)]
    unsafe fn map_counting_memlock(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        let status = read_thread_memlock()?;
        if exempt(&status) {
            self.0.memlock_exempt.store(true, Ordering::Relaxed);
        }
        // SAFETY: passed on from our caller.
        unsafe { self.map_checked(mapping, Some(&status)) }
    }

    /// The error for a map the kernel refused with ENOMEM: the limit error when the
    /// calling thread's locked-memory limit explains it, the kernel's errno otherwise.
    #[cold]
    #[inline(never)]
    fn memlock_refusal(&self, range: IovaRange, errno: nix::errno::Errno) -> DmaError {
        if errno == nix::errno::Errno::ENOMEM {
            self.0.memlock_exempt.store(false, Ordering::Relaxed);
            if let Ok(status) = read_thread_memlock() {
                if status.check(range.len(), "mapping").is_err() {
                    return status.error(range.len(), "mapping");
                }
            }
        }
        backend("VFIO_IOMMU_MAP_DMA", range, errno)
    }

    #[cold]
    #[inline(never)]
    fn no_group(&self, what: &str, op: &'static str, range: IovaRange) -> DmaError {
        backend(op, range, io::Error::other(self.no_group_error(what)))
    }
}

impl VfioContainer {
    /// [`DmaMapper::unmap`] with the state already locked.
    #[inline]
    fn unmap_locked(&self, state: &mut ContainerState, range: IovaRange) -> Result<u64, DmaError> {
        if !state.iommu_set {
            return Err(self.no_group("unmap DMA", "VFIO_IOMMU_UNMAP_DMA", range));
        }
        match ioctl::iommu_unmap_dma(self.as_fd(), range.start().0, range.len(), 0) {
            Ok(unmapped) => {
                state.mappings.remove_unmapped(range, unmapped);
                Ok(unmapped)
            }
            Err(errno) => Err(unmap_refusal(state, range, errno)),
        }
    }
}

impl DmaMapper for VfioContainer {
    #[inline]
    fn page_size(&self) -> u64 {
        self.iommu_page_size().unwrap_or(dma::PAGE_SIZE)
    }

    #[inline]
    unsafe fn map(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        // SAFETY (both calls): passed on from our caller, under the trait's contract.
        if self.0.memlock_exempt.load(Ordering::Relaxed) {
            unsafe { self.map_checked(mapping, None) }
        } else {
            unsafe { self.map_counting_memlock(mapping) }
        }
    }

    #[inline]
    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        self.unmap_locked(&mut self.lock(), range)
    }

    /// All of `mappings` under one hold of the container's lock (a request of many
    /// pieces otherwise takes and releases it per piece). All or nothing, as the trait
    /// asks: on a refusal the pieces already mapped are unmapped again.
    unsafe fn map_batch(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        let mut state = self.lock();
        if self.0.memlock_exempt.load(Ordering::Relaxed) {
            // SAFETY: passed on from our caller, under the trait's contract.
            return unsafe { self.map_batch_exempt(&mut state, mappings) };
        }
        for (done, mapping) in mappings.iter().enumerate() {
            // A thread not known to be exempt has its limit read per map, as `map`
            // does (outside the lock: it reads /proc).
            let mapped = if self.0.memlock_exempt.load(Ordering::Relaxed) {
                // SAFETY: passed on from our caller, under the trait's contract.
                unsafe { self.map_locked(&mut state, mapping, None) }
            } else {
                drop(state);
                // SAFETY: as above.
                let mapped = unsafe { self.map_counting_memlock(mapping) };
                state = self.lock();
                mapped
            };
            if let Err(err) = mapped {
                for undo in &mappings[..done] {
                    // Best effort: the refusal is the error worth reporting, and these
                    // ranges were mapped by this call a moment ago.
                    let _ = self.unmap_locked(&mut state, undo.range);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    fn expect_pages(&self, window: IovaRange, page_size: u64) {
        let mut state = self.lock();
        let usable = state.info.as_ref().is_some_and(|i| i.allows(&window));
        state.mappings.expect_pages(window, page_size, usable);
    }

    fn forget_pages(&self, window: IovaRange) {
        self.lock().mappings.forget_pages(window);
    }
}

#[cfg(test)]
mod tests {
    use super::super::container::IommuInfo;
    use super::*;
    use dma::{DmaAccess, HostVirtAddr, Iova};

    /// A container whose IOMMU state is as the rig's kernel reports it, over a file
    /// that is not a container: every check before the ioctl runs for real, and the
    /// ioctl itself fails with ENOTTY.
    fn rig_like(max_mappings: usize) -> VfioContainer {
        VfioContainer::with_state_for_test(
            IommuInfo {
                page_sizes: 0x4020_1000,
                iova_ranges: vec![
                    IovaRange::from_inclusive(Iova(0), Iova(0xfedf_ffff)).unwrap(),
                    IovaRange::from_inclusive(Iova(0xfef0_0000), Iova(0x7f_ffff_ffff)).unwrap(),
                ],
                dma_avail: Some(max_mappings as u32),
            },
            max_mappings,
        )
    }

    fn mapping(iova: u64, len: u64) -> DmaMapping {
        DmaMapping::new(
            Iova(iova),
            HostVirtAddr(0x7000_0000_0000),
            len,
            DmaAccess::ReadWrite,
        )
        .unwrap()
    }

    /// [`VfioContainer::map_checked`] on a container that is not one.
    fn map_checked(
        c: &VfioContainer,
        mapping: &DmaMapping,
        memlock: Option<&MemlockStatus>,
    ) -> Result<(), DmaError> {
        // SAFETY: `rig_like` containers are not VFIO containers: the map ioctl fails
        // (ENOTTY) and no IOMMU ever learns of the made-up host address.
        unsafe { c.map_checked(mapping, memlock) }
    }

    fn unlimited() -> MemlockStatus {
        MemlockStatus::from_parts(u64::MAX, u64::MAX, "VmLck:\t0 kB\n")
    }

    #[test]
    fn misaligned_requests_are_refused() {
        let c = rig_like(10);
        let e = map_checked(&c, &mapping(0x1800, 0x1000), Some(&unlimited())).unwrap_err();
        assert!(
            matches!(e, DmaError::Misaligned { what: "iova", .. }),
            "{e}"
        );
    }

    #[test]
    fn iova_outside_the_windows_is_refused_naming_them() {
        let c = rig_like(10);
        let e = map_checked(&c, &mapping(0xfee0_0000, 0x1000), Some(&unlimited()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the IOMMU's usable IOVA windows"), "{e}");
        assert!(
            e.contains("0x0..=0xfedfffff, 0xfef00000..=0x7fffffffff"),
            "{e}"
        );
    }

    #[test]
    fn memlock_limit_is_checked_before_the_kernel() {
        let c = rig_like(10);
        // 4 KiB locked already, 1 MiB limit, without CAP_IPC_LOCK.
        let tight = MemlockStatus::from_parts(
            0x10_0000,
            0x10_0000,
            "VmLck:\t4 kB\nCapEff:\t0000000000000000\n",
        );
        let e = map_checked(&c, &mapping(0x10_0000, 0x10_0000), Some(&tight)).unwrap_err();
        assert!(matches!(e, DmaError::MemlockLimit { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("mapping 1 MiB needs RLIMIT_MEMLOCK"), "{e}");
        assert!(e.contains("ulimit -l"), "{e}");
        assert!(c.mappings().is_empty());
        // The same request with CAP_IPC_LOCK passes the check and reaches the ioctl.
        let cap = MemlockStatus::from_parts(
            0x10_0000,
            0x10_0000,
            "VmLck:\t4 kB\nCapEff:\t0000000000004000\n",
        );
        let e = map_checked(&c, &mapping(0x10_0000, 0x10_0000), Some(&cap)).unwrap_err();
        assert!(matches!(e, DmaError::Backend { .. }), "{e}");
    }

    #[test]
    fn a_request_that_passes_the_checks_reaches_the_kernel() {
        let c = rig_like(10);
        let e = map_checked(&c, &mapping(0x10_0000, 0x1000), Some(&unlimited())).unwrap_err();
        match e {
            DmaError::Backend { op, source, .. } => {
                assert_eq!(op, "VFIO_IOMMU_MAP_DMA");
                assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
            }
            other => panic!("expected the ioctl's error, got {other}"),
        }
        assert!(c.mappings().is_empty(), "a failed map must not be recorded");
    }

    #[test]
    fn overlap_limit_and_partial_unmap_use_the_mirror() {
        let c = rig_like(1);
        c.insert_mapping_for_test(mapping(0x10_0000, 0x4000));
        let e = map_checked(&c, &mapping(0x10_3000, 0x2000), Some(&unlimited())).unwrap_err();
        assert!(matches!(e, DmaError::MapOverlap { .. }), "{e}");
        let e = map_checked(&c, &mapping(0x20_0000, 0x1000), Some(&unlimited())).unwrap_err();
        assert!(matches!(e, DmaError::TooManyMappings { limit: 1 }), "{e}");
        let e = c
            .unmap(IovaRange::new(Iova(0x10_1000), 0x1000).unwrap())
            .unwrap_err();
        assert!(matches!(e, DmaError::PartialUnmap { .. }), "{e}");
        let e = c
            .unmap(IovaRange::new(Iova(0xf_f000), 0x2000).unwrap())
            .unwrap_err();
        assert!(matches!(e, DmaError::PartialUnmap { .. }), "{e}");
        assert_eq!(c.mapped_bytes(), 0x4000);
    }
}
