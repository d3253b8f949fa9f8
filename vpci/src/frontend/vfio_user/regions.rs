//! The device's regions as vfio-pci numbers them, served from the passthrough
//! function: BAR0-5 and the ROM through its BAR accesses (the MSI-X table and PBA
//! emulated, padding all-ones), config space through its virtualisation and
//! capability filter (the same view a UML guest gets), no VGA.
//!
//! Sizes are the function's virtual BAR sizes (powers of two, at least what the BAR
//! register can describe): a VMM registers each region as a BAR of that size.

use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::protocol::{Payload, Refusal};
use crate::access_width::AccessWidth;
use crate::bar::BarIndex;
use crate::function::PciFunction;
use crate::passthrough::{PassthroughDevice, PassthroughFunction};

/// vfio-pci's region numbering.
pub const ROM_REGION: u32 = 6;
pub const CONFIG_REGION: u32 = 7;
pub const VGA_REGION: u32 = 8;
/// Regions a PCI device has (`VFIO_PCI_NUM_REGIONS`).
pub const NUM_REGIONS: u32 = 9;

/// `VFIO_REGION_INFO_FLAG_*`.
pub mod info_flags {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const MMAP: u32 = 1 << 2;
    pub const CAPS: u32 = 1 << 3;
}

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
const CAP_SPARSE_MMAP: u16 = 1;
/// Region info reply: the fixed part.
const REGION_INFO_SIZE: usize = 32;

/// A region a client names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionId {
    Bar(BarIndex),
    Config,
    Vga,
}

impl RegionId {
    /// The region with vfio-pci number `index`.
    pub fn from_index(index: u32) -> Result<RegionId, Refusal> {
        match index {
            0..=5 => Ok(RegionId::Bar(
                BarIndex::new(index as u8).expect("0..=5 are BAR indices"),
            )),
            ROM_REGION => Ok(RegionId::Bar(BarIndex::ROM)),
            CONFIG_REGION => Ok(RegionId::Config),
            VGA_REGION => Ok(RegionId::Vga),
            _ => Err(Refusal::new(
                Errno::EINVAL,
                format!("region index {index} is out of range (a PCI device has {NUM_REGIONS})"),
            )),
        }
    }
}

/// Size of a region as the client sees it (0: not implemented).
pub fn size<D: PassthroughDevice + 'static>(
    function: &PassthroughFunction<D>,
    id: RegionId,
) -> u64 {
    match id {
        RegionId::Bar(bar) => function.bar_layout().get(bar).map_or(0, |d| d.size),
        RegionId::Config => function.config_space().len() as u64,
        RegionId::Vga => 0,
    }
}

/// The reply to DEVICE_GET_REGION_INFO, and the fd for mmap-able areas. With
/// `mmap_fd`, BARs whose real region has direct areas get the MMAP flag and a sparse
/// mmap capability listing them (the MSI-X table and PBA pages left out): the client
/// maps those straight into its guest.
pub fn info<D: PassthroughDevice + 'static>(
    function: &PassthroughFunction<D>,
    index: u32,
    argsz: u32,
    mmap_fd: Option<BorrowedFd<'_>>,
) -> Result<(Vec<u8>, Option<OwnedFd>), Refusal> {
    let id = RegionId::from_index(index)?;
    let size = size(function, id);
    let mut flags = 0;
    if size > 0 {
        flags |= info_flags::READ;
        if id != RegionId::Bar(BarIndex::ROM) {
            flags |= info_flags::WRITE;
        }
    }
    let mut fd_offset = 0;
    let mut areas = Vec::new();
    if let (Some(_), RegionId::Bar(bar)) = (mmap_fd, id) {
        if let Some(region) = function.region(bar).filter(|_| !bar.is_rom()) {
            areas = function.direct_areas(bar);
            fd_offset = region.fd_offset;
            if !areas.is_empty() {
                flags |= info_flags::MMAP;
            }
        }
    }
    let caps_len = if areas.is_empty() {
        0
    } else {
        8 + 8 + 16 * areas.len()
    };
    let needed = REGION_INFO_SIZE + caps_len;
    let fits = argsz as usize >= needed;
    let mut cap_offset = 0;
    if caps_len > 0 {
        flags |= info_flags::CAPS;
        if fits {
            cap_offset = REGION_INFO_SIZE as u32;
        }
    }
    let mut p = Payload::with_capacity(needed)
        .u32(needed as u32)
        .u32(flags)
        .u32(index)
        .u32(cap_offset)
        .u64(size)
        .u64(fd_offset);
    if caps_len > 0 && fits {
        p = p
            .u16(CAP_SPARSE_MMAP)
            .u16(1)
            .u32(0)
            .u32(areas.len() as u32)
            .u32(0);
        for a in &areas {
            p = p.u64(a.offset).u64(a.size);
        }
    }
    // The fd comes with the reply whenever something is mmap-able, also when the
    // caps did not fit: the client asks again with a larger argsz either way.
    let fd = if flags & info_flags::MMAP != 0 {
        let fd = mmap_fd.expect("MMAP only with an fd");
        Some(
            fd.try_clone_to_owned()
                .map_err(|e| Refusal::new(Errno::EIO, format!("duplicating the device fd: {e}")))?,
        )
    } else {
        None
    };
    Ok((p.0, fd))
}

fn check_bounds(id: RegionId, size: u64, offset: u64, len: usize) -> Result<(), Refusal> {
    if len == 0 {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!("{id:?}: an access of 0 bytes"),
        ));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Refusal::new(
            Errno::EINVAL,
            format!("{id:?}: {len} bytes at {offset:#x} straddle or pass the region's end ({size:#x} bytes)"),
        )),
    }
}

/// Config accesses in naturally aligned pieces of 4, 2 or 1 bytes, as the
/// function's virtualisation takes them.
fn config_pieces(offset: u64, len: usize) -> impl Iterator<Item = (u16, AccessWidth, usize)> {
    let mut at = offset;
    let end = offset + len as u64;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let left = end - at;
        let width = if at.is_multiple_of(4) && left >= 4 {
            AccessWidth::Dword
        } else if at.is_multiple_of(2) && left >= 2 {
            AccessWidth::Word
        } else {
            AccessWidth::Byte
        };
        let piece = (at as u16, width, (at - offset) as usize);
        at += width.bytes() as u64;
        Some(piece)
    })
}

fn device_error(id: RegionId, what: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal::new(Errno::EIO, format!("{id:?}: {what} failed: {e}"))
}

/// REGION_READ into `data`.
pub fn read<D: PassthroughDevice + 'static>(
    function: &mut PassthroughFunction<D>,
    index: u32,
    offset: u64,
    data: &mut [u8],
) -> Result<(), Refusal> {
    let id = RegionId::from_index(index)?;
    check_bounds(id, size(function, id), offset, data.len())?;
    match id {
        RegionId::Config => {
            for (at, width, i) in config_pieces(offset, data.len()) {
                let v = function.config_read(at, width);
                data[i..i + width.bytes()].copy_from_slice(&v.to_le_bytes()[..width.bytes()]);
            }
            Ok(())
        }
        RegionId::Bar(bar) => function
            .bar_read(bar, offset, data)
            .map_err(|e| device_error(id, "read", e)),
        RegionId::Vga => unreachable!("VGA has size 0, refused by the bounds check"),
    }
}

/// REGION_WRITE of `data`.
pub fn write<D: PassthroughDevice + 'static>(
    function: &mut PassthroughFunction<D>,
    index: u32,
    offset: u64,
    data: &[u8],
) -> Result<(), Refusal> {
    let id = RegionId::from_index(index)?;
    check_bounds(id, size(function, id), offset, data.len())?;
    match id {
        RegionId::Config => {
            for (at, width, i) in config_pieces(offset, data.len()) {
                let mut v = [0u8; 4];
                v[..width.bytes()].copy_from_slice(&data[i..i + width.bytes()]);
                function.config_write(at, width, u32::from_le_bytes(v));
            }
            Ok(())
        }
        RegionId::Bar(bar) if bar.is_rom() => Err(Refusal::new(
            Errno::EINVAL,
            "the ROM is read-only".to_string(),
        )),
        RegionId::Bar(bar) => function
            .bar_write(bar, offset, data)
            .map_err(|e| device_error(id, "write", e)),
        RegionId::Vga => unreachable!("VGA has size 0, refused by the bounds check"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_user_config_accesses_split_into_aligned_pieces() {
        let pieces: Vec<_> = config_pieces(0x3, 8)
            .map(|(a, w, i)| (a, w.bytes(), i))
            .collect();
        assert_eq!(pieces, vec![(3, 1, 0), (4, 4, 1), (8, 2, 5), (10, 1, 7)]);
        let whole: Vec<_> = config_pieces(0, 256).collect();
        assert_eq!(whole.len(), 64);
        assert!(RegionId::from_index(9).is_err());
        assert_eq!(RegionId::from_index(7).unwrap(), RegionId::Config);
        assert!(check_bounds(RegionId::Config, 256, 252, 8).is_err());
        assert!(check_bounds(RegionId::Config, 256, u64::MAX, 2).is_err());
        assert!(check_bounds(RegionId::Config, 256, 252, 4).is_ok());
    }
}
