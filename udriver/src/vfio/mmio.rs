//! A mmap'd window of a VFIO region and the volatile accessors that touch it.
//!
//! Device memory is never seen as a Rust slice or reference: every access is one
//! `read_volatile`/`write_volatile` of a naturally aligned u8/u16/u32/u64 through a raw
//! pointer, bounds- and alignment-checked here, so the unsafe blocks are sound on their
//! own. Values are little-endian on the bus, converted to the CPU's order.

use std::fs::File;
use std::io;
use std::ptr::NonNull;

use mmap_rs::{Mmap, MmapFlags, MmapMut, MmapOptions};

/// An integer type that can be read or written as one bus access.
pub trait MmioValue: Copy + sealed::Sealed {
    /// Width in bytes.
    const WIDTH: usize = std::mem::size_of::<Self>();
    /// From the little-endian bus order to the CPU's.
    fn bus_to_cpu(self) -> Self;
    /// From the CPU's order to little-endian.
    fn cpu_to_bus(self) -> Self;
    /// From the little-endian bytes pread returns.
    fn from_le_slice(b: &[u8]) -> Self;
    /// Into the little-endian bytes pwrite takes.
    fn write_le(self, out: &mut [u8]);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

macro_rules! mmio_value {
    ($t:ty) => {
        impl MmioValue for $t {
            fn bus_to_cpu(self) -> Self {
                <$t>::from_le(self)
            }
            fn cpu_to_bus(self) -> Self {
                <$t>::to_le(self)
            }
            fn from_le_slice(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..std::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut [u8]) {
                out[..std::mem::size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
            }
        }
    };
}
mmio_value!(u8);
mmio_value!(u16);
mmio_value!(u32);
mmio_value!(u64);

/// Keeps the mapping alive; unmapped on drop.
#[derive(Debug)]
enum Backing {
    ReadOnly(#[allow(dead_code)] Mmap),
    ReadWrite(#[allow(dead_code)] MmapMut),
}

/// One mmap'd area of a region: `len` accessible bytes at `ptr`.
#[derive(Debug)]
pub(crate) struct MmioMapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    _backing: Backing,
}

// SAFETY: the mapping is plain device memory owned by this value; volatile accesses to it
// from several threads are what a device's registers are for, and the pointer is only
// used through the checked accessors below.
unsafe impl Send for MmioMapping {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for MmioMapping {}

/// The system page size.
pub(crate) fn page_size() -> usize {
    MmapOptions::page_size()
}

fn to_io(e: mmap_rs::Error) -> io::Error {
    match e {
        mmap_rs::Error::Io(e) => e,
        mmap_rs::Error::Nix(errno) => io::Error::from_raw_os_error(errno as i32),
        other => io::Error::other(other.to_string()),
    }
}

impl MmioMapping {
    /// Map `len` bytes of `file` at `file_offset` (page aligned), shared, writable if
    /// asked. The mapping is rounded up to whole pages, as the kernel requires, but only
    /// `len` bytes are reachable through the accessors.
    pub(crate) fn map(
        file: &File,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<Self> {
        let page = page_size();
        if len == 0 || !file_offset.is_multiple_of(page as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("area must be non-empty and page aligned (page is {page:#x} bytes)"),
            ));
        }
        let map_len = len.div_ceil(page) * page;
        let opts = MmapOptions::new(map_len).map_err(to_io)?;
        // SAFETY: the file is a VFIO device fd; mapping it shares device memory, which
        // is exactly what is wanted. No Rust reference into the mapping is ever made:
        // all access goes through the volatile accessors.
        let opts = unsafe { opts.with_file(file, file_offset) }.with_flags(MmapFlags::SHARED);
        let (ptr, backing) = if writable {
            let mut m = opts.map_mut().map_err(to_io)?;
            (m.as_mut_ptr(), Backing::ReadWrite(m))
        } else {
            let m = opts.map().map_err(to_io)?;
            (m.as_ptr().cast_mut(), Backing::ReadOnly(m))
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MmioMapping {
            ptr,
            len,
            writable,
            _backing: backing,
        })
    }

    /// Accessible bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether a `T` at `offset` is inside and naturally aligned.
    fn fits<T: MmioValue>(&self, offset: usize) -> bool {
        offset.is_multiple_of(T::WIDTH)
            && offset.checked_add(T::WIDTH).is_some_and(|e| e <= self.len)
    }

    /// One volatile read; None if out of bounds or unaligned.
    pub(crate) fn read<T: MmioValue>(&self, offset: usize) -> Option<T> {
        if !self.fits::<T>(offset) {
            return None;
        }
        // SAFETY: `fits` checked that [offset, offset+width) lies inside the live
        // mapping and that the address is aligned for T (the mapping is page aligned).
        let v = unsafe { self.ptr.as_ptr().add(offset).cast::<T>().read_volatile() };
        Some(v.bus_to_cpu())
    }

    /// One volatile write; None if out of bounds, unaligned or the mapping is read-only.
    pub(crate) fn write<T: MmioValue>(&self, offset: usize, value: T) -> Option<()> {
        if !self.writable || !self.fits::<T>(offset) {
            return None;
        }
        // SAFETY: as in `read`, and the mapping was made writable.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_volatile(value.cpu_to_bus())
        };
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_little_endian_values_of_each_width() {
        let mut data = vec![0u8; 2 * page_size()];
        data[0x10..0x18].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        let f = file_with(&data);
        let m = MmioMapping::map(&f, 0, 0x20, false).unwrap();
        assert_eq!(m.read::<u8>(0x10), Some(0x88));
        assert_eq!(m.read::<u16>(0x10), Some(0x7788));
        assert_eq!(m.read::<u32>(0x14), Some(0x1122_3344));
        assert_eq!(m.read::<u64>(0x10), Some(0x1122_3344_5566_7788));
    }

    #[test]
    fn bounds_and_alignment_are_checked_not_trusted() {
        let f = file_with(&vec![0u8; page_size()]);
        let m = MmioMapping::map(&f, 0, 0x20, true).unwrap();
        assert_eq!(m.read::<u32>(0x1c), Some(0));
        // Inside the mapped page but past the area's length.
        assert_eq!(m.read::<u32>(0x20), None);
        assert_eq!(m.read::<u64>(0x1c), None);
        assert_eq!(m.read::<u32>(0x2), None);
        assert_eq!(m.read::<u8>(usize::MAX), None);
        assert_eq!(m.write::<u16>(0x21, 1), None);
    }

    #[test]
    fn writes_reach_the_file_and_read_only_refuses() {
        let f = file_with(&vec![0u8; page_size()]);
        let m = MmioMapping::map(&f, 0, page_size(), true).unwrap();
        m.write::<u32>(0x40, 0xdead_beef).unwrap();
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, 0x40).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        let ro = MmioMapping::map(&f, 0, page_size(), false).unwrap();
        assert_eq!(ro.read::<u32>(0x40), Some(0xdead_beef));
        assert_eq!(ro.write::<u32>(0x40, 0), None);
    }

    #[test]
    fn unaligned_file_offset_is_refused() {
        let f = file_with(&vec![0u8; 2 * page_size()]);
        assert!(MmioMapping::map(&f, 0x10, 0x10, false).is_err());
        assert!(MmioMapping::map(&f, 0, 0, false).is_err());
    }
}
