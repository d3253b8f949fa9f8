//! Pinned memory that a device reads and writes by DMA.
//!
//! A user-level driver needs buffers that stay at the same physical pages for as long
//! as the device may touch them: `DmaMemory` is an anonymous mapping, on 2 MiB huge
//! pages when the system has them reserved (fewer IOMMU entries, fewer TLB misses) and
//! on 4 KiB pages otherwise, locked with `mlock`. Once mapped through a `DmaMapper` it
//! becomes a `DmaBuffer`, which knows its IOVA and translates between the two.
//!
//! The device writes this memory behind the compiler's back, so it is never exposed as
//! a Rust slice or reference: all access goes through raw pointers, with volatile
//! accessors for device-shared fields (descriptors, status words) and fenced bulk
//! copies for payload.
//!
//! [`DmaBacking`] is the promise an IOMMU mapping needs: memory that stays mapped at one
//! host address while the value lives. `DmaMemory` keeps it, and so does [`FdMemory`], a
//! shared mapping of a file (a guest's RAM memfd that a VMM sent). [`RawMemory`] wraps
//! memory mapped by someone else, and its constructor is where its owner makes the
//! promise. This module makes every mapping and raw access of the crate; the only
//! other `unsafe` blocks are the calls of the `unsafe` [`DmaMapper::map`] that hand such
//! memory to the IOMMU (`DmaBuffer` here, the mapping table, the per-request policies,
//! and the recording mapper, which never touches memory).

use std::mem::ManuallyDrop;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use mmap_rs::{MmapFlags, MmapMut, MmapOptions, PageSize};
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};

use crate::address::HostVirtAddr;
use crate::error::DmaError;
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::IovaAllocator;
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping, PAGE_SIZE};
use crate::memlock::MemlockStatus;

/// 2 MiB: the huge page size tried first.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
/// 4 KiB: the fallback page size.
pub const SMALL_PAGE_SIZE: usize = 4 << 10;

/// Which pages to back DMA memory with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagePreference {
    /// 2 MiB huge pages if available, else 4 KiB pages.
    HugeIfAvailable,
    /// 2 MiB huge pages or fail.
    HugeOnly,
    /// 4 KiB pages.
    SmallOnly,
}

/// Values that can be read from device-written memory: every bit pattern is valid.
pub trait DmaValue: Copy + private::Sealed {}

mod private {
    pub trait Sealed {}
}

macro_rules! dma_value {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}
        impl DmaValue for $t {}
    )*};
}
dma_value!(u8, u16, u32, u64, i8, i16, i32, i64);

/// Pinned, zeroed memory for DMA, not yet visible to any device.
#[derive(Debug)]
pub struct DmaMemory {
    /// Owns the mapping (unmapped on drop); all access goes through `ptr`.
    _map: MmapMut,
    ptr: NonNull<u8>,
    len: usize,
    page_size: usize,
}

// SAFETY: `ptr` points into `map`, which this value owns; the memory is process-wide
// anonymous memory with no thread affinity. Concurrent access goes through volatile
// raw-pointer operations, as it does for the device; callers coordinate who touches
// which bytes, as they must with the device anyway.
unsafe impl Send for DmaMemory {}
// SAFETY: see `Send`; no method hands out a reference into the memory.
unsafe impl Sync for DmaMemory {}

impl DmaMemory {
    /// At least `len` bytes, on huge pages if available.
    pub fn allocate(len: usize) -> Result<DmaMemory, DmaError> {
        DmaMemory::allocate_with(len, PagePreference::HugeIfAvailable)
    }

    /// At least `len` bytes (rounded up to the page size), locked.
    pub fn allocate_with(len: usize, pages: PagePreference) -> Result<DmaMemory, DmaError> {
        if len == 0 {
            return Err(DmaError::EmptyRange { start: 0 });
        }
        match pages {
            PagePreference::SmallOnly => DmaMemory::map_locked(len, SMALL_PAGE_SIZE),
            PagePreference::HugeOnly => DmaMemory::map_locked(len, HUGE_PAGE_SIZE),
            PagePreference::HugeIfAvailable => {
                // Huge pages fail when none are reserved, or when rounding up to 2 MiB
                // crosses the locked-memory limit; small pages may still fit, and their
                // error is the one to report.
                DmaMemory::map_locked(len, HUGE_PAGE_SIZE)
                    .or_else(|_| DmaMemory::map_locked(len, SMALL_PAGE_SIZE))
            }
        }
    }

    fn map_locked(len: usize, page_size: usize) -> Result<DmaMemory, DmaError> {
        let rounded = len
            .checked_next_multiple_of(page_size)
            .ok_or(DmaError::RangeOverflow {
                start: 0,
                len: len as u64,
            })?;
        let memlock = MemlockStatus::current()?;
        memlock.check(rounded as u64, "allocating DMA memory")?;
        let alloc_err = |source: std::io::Error| DmaError::MemoryAlloc {
            len: rounded as u64,
            page_size: page_size as u64,
            source,
        };
        let mut options = MmapOptions::new(rounded)
            .map_err(|e| alloc_err(std::io::Error::other(e)))?
            .with_flags(MmapFlags::POPULATE);
        if page_size == HUGE_PAGE_SIZE {
            options = options.with_page_size(PageSize::_2M);
        }
        let mut map = options
            .map_mut()
            .map_err(|e| alloc_err(std::io::Error::other(e)))?;
        if let Err(err) = map.lock() {
            let os = match err {
                mmap_rs::Error::Io(io) => io,
                mmap_rs::Error::Nix(errno) => errno.into(),
                other => std::io::Error::other(other),
            };
            // mlock reports the limit as ENOMEM (or EPERM when the limit is zero).
            return Err(match Errno::from_raw(os.raw_os_error().unwrap_or(0)) {
                Errno::ENOMEM | Errno::EPERM | Errno::EAGAIN => {
                    memlock.error(rounded as u64, "allocating DMA memory")
                }
                _ => alloc_err(os),
            });
        }
        let ptr = NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| alloc_err(std::io::Error::other("mmap returned a null mapping")))?;
        Ok(DmaMemory {
            _map: map,
            ptr,
            len: rounded,
            page_size,
        })
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: DMA memory is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The size of the pages backing it.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Whether it is on huge pages.
    pub fn is_huge(&self) -> bool {
        self.page_size == HUGE_PAGE_SIZE
    }

    /// Host virtual address of the first byte.
    pub fn vaddr(&self) -> HostVirtAddr {
        HostVirtAddr(self.ptr.as_ptr() as u64)
    }

    /// Raw pointer to the first byte. Valid for `len()` bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Checks `[offset, offset + size)` is inside and `offset` aligned to `align`.
    fn check(&self, offset: usize, size: usize, align: usize) -> Result<(), DmaError> {
        if offset.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(DmaError::OutOfBounds {
                offset: offset as u64,
                size: size as u64,
                len: self.len as u64,
            });
        }
        if !offset.is_multiple_of(align) {
            return Err(DmaError::Misaligned {
                what: "offset",
                value: offset as u64,
                align: align as u64,
            });
        }
        Ok(())
    }

    /// Volatile read of a `T` at `offset` (naturally aligned).
    pub fn read<T: DmaValue>(&self, offset: usize) -> Result<T, DmaError> {
        self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: bounds and alignment checked above; the mapping lives as long as
        // `self`; every bit pattern is a valid `T` (`DmaValue`).
        Ok(unsafe { self.ptr.as_ptr().add(offset).cast::<T>().read_volatile() })
    }

    /// Volatile write of a `T` at `offset` (naturally aligned).
    pub fn write<T: DmaValue>(&self, offset: usize, value: T) -> Result<(), DmaError> {
        self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: bounds and alignment checked above; the mapping is writable and lives
        // as long as `self`.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_volatile(value)
        };
        Ok(())
    }

    /// Copies `src` in at `offset`, then a release fence so the bytes are visible
    /// before a later write (e.g. a doorbell) that hands them to the device.
    pub fn copy_from(&self, offset: usize, src: &[u8]) -> Result<(), DmaError> {
        self.check(offset, src.len(), 1)?;
        // SAFETY: destination range checked above and inside our mapping; `src` is a
        // Rust slice, so it cannot overlap memory we never hand out as a slice.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        };
        fence(Ordering::Release);
        Ok(())
    }

    /// Copies out to `dst` from `offset`, after an acquire fence so that bytes the
    /// device wrote before signalling completion are seen.
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> Result<(), DmaError> {
        self.check(offset, dst.len(), 1)?;
        fence(Ordering::Acquire);
        // SAFETY: source range checked above and inside our mapping; `dst` is an
        // exclusive Rust slice, distinct from this mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Fills `[offset, offset + len)` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), DmaError> {
        self.check(offset, len, 1)?;
        // SAFETY: range checked above and inside our writable mapping.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) };
        fence(Ordering::Release);
        Ok(())
    }

    /// Whether `ptr` points into this memory; its offset if so.
    pub fn offset_of_ptr(&self, ptr: *const u8) -> Option<usize> {
        let off = (ptr as usize).checked_sub(self.ptr.as_ptr() as usize)?;
        (off < self.len).then_some(off)
    }
}

/// Host memory that stays mapped at one address while the value lives, so an IOMMU
/// mapping of it never reaches memory this process has let go of.
///
/// # Safety
///
/// An implementation promises that, from the moment the value exists until it is
/// dropped, the bytes `[addr, addr + len)` that [`DmaBacking::host_range`] reports (the
/// same on every call) are a mapping of this process that nothing unmaps, remaps or
/// hands to another use, and that a device reading them (and writing them, when
/// [`DmaBacking::writable`]) at any moment makes no Rust code unsound: no reference
/// into them is ever handed out, only raw-pointer access.
pub unsafe trait DmaBacking: Send + Sync {
    /// The host address of the first byte and the length in bytes.
    fn host_range(&self) -> (HostVirtAddr, u64);

    /// Whether the memory is mapped writable, so a device may be let write it.
    fn writable(&self) -> bool {
        true
    }
}

// SAFETY: the anonymous mapping is owned by the value and unmapped only when it drops;
// its bytes are only ever reached through raw pointers (see the module doc).
unsafe impl DmaBacking for DmaMemory {
    fn host_range(&self) -> (HostVirtAddr, u64) {
        (self.vaddr(), self.len as u64)
    }
}

/// A shared (`MAP_SHARED`) mapping of part of a file, e.g. the memfd holding a guest's
/// RAM that a VMM sent over a socket. Unmapped when dropped.
///
/// This process never reads or writes it through this type; it is memory to map for a
/// device. Mapping refuses a range that reaches past the end of the file as it is when
/// mapped. A file shrunk later faults on access (pages the IOMMU has pinned stay
/// pinned): the sender of the fd must not do that, and seals (`F_SEAL_SHRINK`) can
/// make it impossible.
#[derive(Debug)]
pub struct FdMemory {
    ptr: NonNull<u8>,
    len: u64,
    writable: bool,
}

// SAFETY: the mapping is process-wide with no thread affinity, and this type gives no
// access to its bytes, only their address.
unsafe impl Send for FdMemory {}
// SAFETY: see `Send`; nothing here mutates through `&self`.
unsafe impl Sync for FdMemory {}

impl FdMemory {
    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size), readable,
    /// and writable if `writable`. Refuses a range that overflows or reaches past the
    /// end of the file.
    pub fn map(fd: impl AsFd, offset: u64, len: u64, writable: bool) -> Result<FdMemory, DmaError> {
        if len == 0 {
            return Err(DmaError::EmptyRange { start: offset });
        }
        if !offset.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned {
                what: "file offset",
                value: offset,
                align: PAGE_SIZE,
            });
        }
        let end = offset
            .checked_add(len)
            .ok_or(DmaError::RangeOverflow { start: offset, len })?;
        let system = |op: &'static str| {
            move |e: Errno| DmaError::System {
                op,
                source: e.into(),
            }
        };
        let stat = nix::sys::stat::fstat(fd.as_fd()).map_err(system("fstat of a memory fd"))?;
        let file_len = u64::try_from(stat.st_size).unwrap_or(0);
        if end > file_len {
            return Err(DmaError::BeyondFile {
                offset,
                len,
                file_len,
            });
        }
        let length = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or(DmaError::RangeOverflow { start: offset, len })?;
        let file_offset =
            i64::try_from(offset).map_err(|_| DmaError::RangeOverflow { start: offset, len })?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a new mapping at an address the kernel picks (no hint, no MAP_FIXED)
        // replaces nothing; the range lies inside the file (checked above), and the
        // mapping is owned by the returned value, which unmaps it on drop.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                length,
                prot,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                file_offset,
            )
        }
        .map_err(system("mmap of a memory fd"))?;
        Ok(FdMemory {
            ptr: ptr.cast(),
            len,
            writable,
        })
    }

    /// Host virtual address of the first byte.
    pub fn vaddr(&self) -> HostVirtAddr {
        HostVirtAddr(self.ptr.as_ptr() as u64)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for FdMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping `map` made and this value owns; nothing
        // else unmaps it, and no reference into it exists.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len as usize) };
    }
}

// SAFETY: the mapping is owned by the value and unmapped only in its `Drop`; this type
// hands out no references into it. `writable` is the protection it was mapped with.
unsafe impl DmaBacking for FdMemory {
    fn host_range(&self) -> (HostVirtAddr, u64) {
        (self.vaddr(), self.len)
    }

    fn writable(&self) -> bool {
        self.writable
    }
}

/// Memory mapped by someone else (a VMM that links this crate, a test's fake address
/// space), described by address and length. Its constructor is where the owner of the
/// memory makes the [`DmaBacking`] promise.
#[derive(Debug)]
pub struct RawMemory {
    vaddr: HostVirtAddr,
    len: u64,
}

impl RawMemory {
    /// Describes `[vaddr, vaddr + len)`.
    ///
    /// # Safety
    ///
    /// The caller promises what [`DmaBacking`] requires for as long as the value (and
    /// any IOMMU mapping made of it) lives: the range stays mapped in this process,
    /// nothing else is put there, and the device may read and write it at any time
    /// without Rust code holding references into it. A mapper that never dereferences
    /// or pins addresses (a recording mapper in tests) needs no real memory behind it.
    pub unsafe fn new(vaddr: HostVirtAddr, len: u64) -> RawMemory {
        RawMemory { vaddr, len }
    }
}

// SAFETY: the constructor's caller made the promise this trait requires.
unsafe impl DmaBacking for RawMemory {
    fn host_range(&self) -> (HostVirtAddr, u64) {
        (self.vaddr, self.len)
    }
}

/// DMA memory mapped for a device: knows its IOVA, unmaps itself when dropped.
pub struct DmaBuffer<M: DmaMapper> {
    /// Dropped by hand once the device can no longer reach it, and leaked if the
    /// unmap failed.
    memory: ManuallyDrop<DmaMemory>,
    mapper: M,
    iova: IovaRange,
    iovas: Option<Arc<IovaAllocator>>,
    mapped: bool,
}

impl<M: DmaMapper> std::fmt::Debug for DmaBuffer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("vaddr", &self.memory.vaddr())
            .field("iova", &self.iova)
            .field("page_size", &self.memory.page_size)
            .finish()
    }
}

impl<M: DmaMapper> DmaBuffer<M> {
    /// Maps `memory` at an IOVA taken from `iovas`, aligned to its page size so the
    /// IOMMU can use pages as large as the memory's own.
    pub fn map(
        memory: DmaMemory,
        mapper: M,
        iovas: &Arc<IovaAllocator>,
        access: DmaAccess,
    ) -> Result<DmaBuffer<M>, DmaError> {
        let range = iovas.alloc(memory.len as u64, memory.page_size as u64)?;
        match DmaBuffer::map_range(memory, mapper, range, access) {
            Ok(mut buffer) => {
                buffer.iovas = Some(iovas.clone());
                Ok(buffer)
            }
            Err(err) => {
                let _ = iovas.free(range);
                Err(err)
            }
        }
    }

    /// Maps `memory` at a caller-chosen IOVA (e.g. IOVA = virtual address).
    pub fn map_at(
        memory: DmaMemory,
        mapper: M,
        iova: Iova,
        access: DmaAccess,
    ) -> Result<DmaBuffer<M>, DmaError> {
        let range = IovaRange::new(iova, memory.len as u64)?;
        DmaBuffer::map_range(memory, mapper, range, access)
    }

    fn map_range(
        memory: DmaMemory,
        mapper: M,
        range: IovaRange,
        access: DmaAccess,
    ) -> Result<DmaBuffer<M>, DmaError> {
        let mapping = DmaMapping::new(range.start(), memory.vaddr(), range.len(), access)?;
        if range.len() > memory.len as u64 {
            return Err(DmaError::OutsideBacking {
                offset: 0,
                len: range.len(),
                backing_len: memory.len as u64,
            });
        }
        // SAFETY: `memory` owns the range (checked above to cover the mapping), and the
        // returned buffer keeps it until the mapping is gone: `Drop` leaks the memory
        // when the unmap fails.
        unsafe { mapper.map(&mapping)? };
        Ok(DmaBuffer {
            memory: ManuallyDrop::new(memory),
            mapper,
            iova: range,
            iovas: None,
            mapped: true,
        })
    }

    /// IOVA of the first byte.
    pub fn iova(&self) -> Iova {
        self.iova.start()
    }

    /// The whole IOVA range.
    pub fn iova_range(&self) -> IovaRange {
        self.iova
    }

    /// IOVA of the byte at `offset`.
    pub fn iova_at(&self, offset: usize) -> Result<Iova, DmaError> {
        self.memory.check(offset, 1, 1)?;
        Ok(Iova(self.iova.start().0 + offset as u64))
    }

    /// Offset of `iova` in the buffer, if it lies in it.
    pub fn offset_of(&self, iova: Iova) -> Option<usize> {
        self.iova
            .contains(iova)
            .then(|| (iova.0 - self.iova.start().0) as usize)
    }

    /// IOVA for a pointer into the buffer.
    pub fn virt_to_iova(&self, ptr: *const u8) -> Option<Iova> {
        let off = self.memory.offset_of_ptr(ptr)?;
        Some(Iova(self.iova.start().0 + off as u64))
    }

    /// Pointer for an IOVA in the buffer.
    pub fn iova_to_virt(&self, iova: Iova) -> Option<*mut u8> {
        let off = self.offset_of(iova)?;
        // `off < len` by `offset_of`, so this stays inside the mapping.
        Some(self.memory.as_ptr().wrapping_add(off))
    }

    /// Unmaps from the device now, reporting failure (dropping does it silently).
    pub fn unmap(mut self) -> Result<(), DmaError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), DmaError> {
        if !self.mapped {
            return Ok(());
        }
        self.mapper.unmap(self.iova)?;
        self.mapped = false;
        if let Some(iovas) = self.iovas.take() {
            iovas.free(self.iova)?;
        }
        Ok(())
    }
}

impl<M: DmaMapper> Deref for DmaBuffer<M> {
    type Target = DmaMemory;

    fn deref(&self) -> &DmaMemory {
        &self.memory
    }
}

impl<M: DmaMapper> Drop for DmaBuffer<M> {
    fn drop(&mut self) {
        // If the unmap fails the IOVA stays allocated (never reused) and the memory is
        // leaked: the device may still reach it, so it must never be reused.
        if self.release().is_ok() || !self.mapped {
            // SAFETY: dropped once, here; the device can no longer reach it.
            unsafe { ManuallyDrop::drop(&mut self.memory) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording_mapper::RecordingMapper;

    fn small(len: usize) -> DmaMemory {
        DmaMemory::allocate_with(len, PagePreference::SmallOnly).unwrap()
    }

    #[test]
    fn fd_memory_refuses_what_the_file_does_not_hold() {
        let file =
            nix::sys::memfd::memfd_create(c"fd-memory-test", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
        nix::unistd::ftruncate(&file, 0x3000).unwrap();
        let m = FdMemory::map(&file, 0x1000, 0x2000, true).unwrap();
        let (vaddr, len) = m.host_range();
        assert_eq!((vaddr, len), (m.vaddr(), 0x2000));
        assert!(vaddr.0.is_multiple_of(PAGE_SIZE) && m.writable());
        for (offset, len) in [(0x2000, 0x2000), (0x3000, 0x1000), (0, 0x3001)] {
            assert!(matches!(
                FdMemory::map(&file, offset, len, true),
                Err(DmaError::BeyondFile {
                    file_len: 0x3000,
                    ..
                })
            ));
        }
        assert!(matches!(
            FdMemory::map(&file, u64::MAX - 0xfff, 0x2000, true),
            Err(DmaError::RangeOverflow { .. })
        ));
        assert!(matches!(
            FdMemory::map(&file, 0x800, 0x800, true),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(matches!(
            FdMemory::map(&file, 0, 0, true),
            Err(DmaError::EmptyRange { .. })
        ));
        assert!(!FdMemory::map(&file, 0, 0x1000, false).unwrap().writable());
    }

    #[test]
    fn rounds_up_and_starts_zeroed() {
        let m = small(100);
        assert_eq!(m.len(), SMALL_PAGE_SIZE);
        assert_eq!(m.vaddr().0 % SMALL_PAGE_SIZE as u64, 0);
        assert_eq!(m.read::<u64>(0).unwrap(), 0);
        assert_eq!(m.read::<u8>(SMALL_PAGE_SIZE - 1).unwrap(), 0);
    }

    #[test]
    fn accessors_are_bounds_and_alignment_checked() {
        let m = small(SMALL_PAGE_SIZE);
        m.write::<u32>(8, 0xdead_beef).unwrap();
        assert_eq!(m.read::<u32>(8).unwrap(), 0xdead_beef);
        assert_eq!(m.read::<u8>(8).unwrap(), 0xef);
        assert!(matches!(
            m.read::<u64>(SMALL_PAGE_SIZE - 4),
            Err(DmaError::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.write::<u32>(2, 1),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(m.read::<u8>(usize::MAX).is_err());
        let mut out = [0u8; 4];
        assert!(m.copy_to(SMALL_PAGE_SIZE - 2, &mut out).is_err());
        m.copy_from(100, b"abcd").unwrap();
        m.copy_to(100, &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        m.fill(100, 2, b'z').unwrap();
        m.copy_to(100, &mut out).unwrap();
        assert_eq!(&out, b"zzcd");
    }

    #[test]
    fn huge_if_available_falls_back_to_small_pages() {
        // Works whether or not this machine has huge pages reserved.
        let m = DmaMemory::allocate(HUGE_PAGE_SIZE).unwrap();
        assert_eq!(m.vaddr().0 % m.page_size() as u64, 0);
        assert_eq!(m.len() % m.page_size(), 0);
        m.write::<u64>(HUGE_PAGE_SIZE - 8, 7).unwrap();
        assert_eq!(m.read::<u64>(HUGE_PAGE_SIZE - 8).unwrap(), 7);
    }

    #[test]
    fn buffer_translates_between_virtual_and_iova() {
        let mapper = Arc::new(RecordingMapper::new());
        let iovas = Arc::new(
            IovaAllocator::new(&[IovaRange::new(Iova(0x10_0000), 0x100_0000).unwrap()]).unwrap(),
        );
        let buf = DmaBuffer::map(
            small(3 * SMALL_PAGE_SIZE),
            mapper.clone(),
            &iovas,
            DmaAccess::ReadWrite,
        )
        .unwrap();
        assert_eq!(mapper.mapping_count(), 1);
        let iova = buf.iova_at(0x1234).unwrap();
        let ptr = buf.iova_to_virt(iova).unwrap();
        assert_eq!(ptr as usize, buf.as_ptr() as usize + 0x1234);
        assert_eq!(buf.virt_to_iova(ptr), Some(iova));
        assert_eq!(mapper.translate(iova).unwrap().0, HostVirtAddr(ptr as u64));
        assert_eq!(
            buf.offset_of(Iova(buf.iova().0 + 3 * SMALL_PAGE_SIZE as u64)),
            None
        );
        assert!(buf.iova_at(3 * SMALL_PAGE_SIZE).is_err());
        assert_eq!(
            buf.virt_to_iova(buf.as_ptr().wrapping_add(3 * SMALL_PAGE_SIZE)),
            None
        );

        let free_mapped = iovas.free_bytes();
        drop(buf);
        assert_eq!(mapper.mapping_count(), 0, "dropping unmaps");
        assert_eq!(iovas.free_bytes(), free_mapped + 3 * SMALL_PAGE_SIZE as u64);
    }

    #[test]
    fn buffer_at_fixed_iova_and_explicit_unmap() {
        let mapper = RecordingMapper::new();
        let buf = DmaBuffer::map_at(
            small(SMALL_PAGE_SIZE),
            &mapper,
            Iova(0x4000),
            DmaAccess::DeviceReads,
        )
        .unwrap();
        assert_eq!(buf.iova(), Iova(0x4000));
        // A second buffer at an overlapping IOVA is refused by the mapper.
        assert!(DmaBuffer::map_at(
            small(SMALL_PAGE_SIZE),
            &mapper,
            Iova(0x4000),
            DmaAccess::DeviceReads
        )
        .is_err());
        buf.unmap().unwrap();
        assert_eq!(mapper.mapping_count(), 0);
        assert_eq!(mapper.unmap_calls(), 1, "no second unmap on drop");
    }
}
