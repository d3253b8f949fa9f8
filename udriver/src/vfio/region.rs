//! Regions: what VFIO reports about each window of a device (BARs, ROM, config space),
//! and `Region`, which mmaps the parts that may be mapped and reaches the rest with
//! pread/pwrite on the device fd. Every access is bounds-checked against the region.

use std::fmt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

use super::capability::parse_chain;
use super::device::DeviceFile;
use super::error::{Access, Result, VfioError};
use super::mmio::{page_size, MmioMapping, MmioValue};

/// Which region of a PCI device: a BAR, the expansion ROM, config space, legacy VGA,
/// or a device-specific region by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionName {
    /// BAR 0..=5.
    Bar(u8),
    /// The expansion ROM (read-only).
    Rom,
    /// PCI configuration space.
    Config,
    /// Legacy VGA ranges (only on VGA devices).
    Vga,
    /// A device-specific region (index 9 and up).
    Other(u32),
}

impl RegionName {
    /// The name of VFIO region `index` of a PCI device.
    pub fn from_index(index: u32) -> RegionName {
        match index {
            0..=5 => RegionName::Bar(index as u8),
            VFIO_PCI_ROM_REGION_INDEX => RegionName::Rom,
            VFIO_PCI_CONFIG_REGION_INDEX => RegionName::Config,
            VFIO_PCI_VGA_REGION_INDEX => RegionName::Vga,
            other => RegionName::Other(other),
        }
    }

    /// The VFIO region index.
    pub fn index(self) -> u32 {
        match self {
            RegionName::Bar(n) => u32::from(n),
            RegionName::Rom => VFIO_PCI_ROM_REGION_INDEX,
            RegionName::Config => VFIO_PCI_CONFIG_REGION_INDEX,
            RegionName::Vga => VFIO_PCI_VGA_REGION_INDEX,
            RegionName::Other(i) => i,
        }
    }

    /// The kind of region, for "(BAR is 0x20000 bytes)".
    pub fn kind(self) -> &'static str {
        match self {
            RegionName::Bar(_) => "BAR",
            RegionName::Rom => "ROM",
            RegionName::Config => "config space",
            RegionName::Vga => "VGA region",
            RegionName::Other(_) => "region",
        }
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionName::Bar(n) => write!(f, "BAR{n}"),
            RegionName::Rom => f.write_str("ROM"),
            RegionName::Config => f.write_str("config"),
            RegionName::Vga => f.write_str("VGA"),
            RegionName::Other(i) => write!(f, "region {i}"),
        }
    }
}

/// An area of a region that may be mmap'd: `offset` into the region, `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapArea {
    /// Offset from the start of the region.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// A region's type capability (`VFIO_REGION_INFO_CAP_TYPE`), e.g. a vendor region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionType {
    /// Type (with `VFIO_REGION_TYPE_PCI_VENDOR_TYPE` set: a vendor id in the low bits).
    pub type_: u32,
    /// Subtype.
    pub subtype: u32,
}

/// What VFIO reports about one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Which region.
    pub name: RegionName,
    /// Bytes; 0 for a BAR the device does not implement (or the upper half of a
    /// 64-bit BAR).
    pub size: u64,
    /// Where the region lies in the device fd, for pread/pwrite/mmap.
    pub offset: u64,
    /// Readable.
    pub readable: bool,
    /// Writable.
    pub writable: bool,
    /// Some or all of it may be mmap'd.
    pub mmap: bool,
    /// The areas that may be mmap'd if the kernel gave a sparse-mmap capability; `None`
    /// means the whole region (when `mmap` is set).
    pub sparse_areas: Option<Vec<MmapArea>>,
    /// The region-type capability, if present.
    pub region_type: Option<RegionType>,
    /// The MSI-X table in this BAR may be mmap'd along with the rest
    /// (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`).
    pub msix_mappable: bool,
}

impl RegionInfo {
    /// Parse a `VFIO_DEVICE_GET_REGION_INFO` reply (the fixed struct, then the
    /// capability chain). `device` names the device in errors.
    pub(crate) fn parse(device: &str, reply: &[u8]) -> Result<RegionInfo> {
        let fixed = std::mem::size_of::<vfio_region_info>();
        let malformed = |reason: String| VfioError::Malformed {
            target: device.to_string(),
            what: "region info",
            reason,
        };
        if reply.len() < fixed {
            return Err(malformed(format!(
                "reply is {} bytes, shorter than the {fixed}-byte header",
                reply.len()
            )));
        }
        let u32_at = |o: usize| u32::from_ne_bytes(reply[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_ne_bytes(reply[o..o + 8].try_into().expect("8 bytes"));
        let flags = u32_at(4);
        let index = u32_at(8);
        let cap_offset = u32_at(12);
        let size = u64_at(16);
        let offset = u64_at(24);
        let name = RegionName::from_index(index);

        let mut info = RegionInfo {
            name,
            size,
            offset,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse_areas: None,
            region_type: None,
            msix_mappable: false,
        };
        if offset.checked_add(size).is_none() {
            return Err(malformed(format!(
                "{name} at fd offset {offset:#x} of {size:#x} bytes wraps"
            )));
        }
        if flags & VFIO_REGION_INFO_FLAG_CAPS == 0 || cap_offset == 0 {
            return Ok(info);
        }
        let bad = |e: super::capability::CapError| malformed(format!("{name}: {e}"));
        for cap in parse_chain(reply, fixed, cap_offset).map_err(bad)? {
            match u32::from(cap.id) {
                VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                    let count = cap.u32_at(8).map_err(bad)?;
                    let areas = cap
                        .u64_pairs(16, count)
                        .map_err(bad)?
                        .into_iter()
                        .map(|(offset, size)| MmapArea { offset, size })
                        .collect::<Vec<_>>();
                    for a in &areas {
                        if a.offset.checked_add(a.size).is_none_or(|end| end > size) {
                            return Err(malformed(format!(
                                "{name}: sparse mmap area {:#x}+{:#x} lies outside the {size:#x}-byte region",
                                a.offset, a.size
                            )));
                        }
                    }
                    info.sparse_areas = Some(areas);
                }
                VFIO_REGION_INFO_CAP_TYPE => {
                    info.region_type = Some(RegionType {
                        type_: cap.u32_at(8).map_err(bad)?,
                        subtype: cap.u32_at(12).map_err(bad)?,
                    });
                }
                VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => info.msix_mappable = true,
                // Other capabilities (NVLink) are of no use here.
                _ => {}
            }
        }
        Ok(info)
    }

    /// Whether the device implements this region.
    pub fn is_present(&self) -> bool {
        self.size > 0
    }

    /// The areas that will be mmap'd: the sparse areas, or the whole region, dropping
    /// empty areas and areas whose start is not page aligned (those go through
    /// pread/pwrite instead). Nothing unless the region is readable and mmap-able.
    pub fn mmap_areas(&self) -> Vec<MmapArea> {
        if !self.mmap || !self.readable || self.size == 0 {
            return Vec::new();
        }
        let page = page_size() as u64;
        let mut areas = match &self.sparse_areas {
            Some(areas) => areas.clone(),
            None => vec![MmapArea {
                offset: 0,
                size: self.size,
            }],
        };
        areas.retain(|a| {
            a.size > 0
                && a.offset.is_multiple_of(page)
                && (self.offset + a.offset).is_multiple_of(page)
        });
        areas.sort_by_key(|a| a.offset);
        areas
    }
}

/// A device region ready for access: its mmap-able parts mapped, the rest through
/// pread/pwrite. Cheap to share between threads (`&Region` is enough for access).
#[derive(Debug)]
pub struct Region {
    device: Arc<DeviceFile>,
    info: RegionInfo,
    /// Sorted by offset, not overlapping.
    maps: Vec<(u64, MmioMapping)>,
}

impl Region {
    /// Map the mmap-able areas of the region described by `info`.
    pub(crate) fn open(device: Arc<DeviceFile>, info: RegionInfo) -> Result<Region> {
        let mut maps: Vec<(u64, MmioMapping)> = Vec::new();
        for area in info.mmap_areas() {
            // Overlapping sparse areas would make two mappings answer one offset.
            if let Some((prev_off, prev)) = maps.last() {
                if area.offset < prev_off + prev.len() as u64 {
                    continue;
                }
            }
            let len = usize::try_from(area.size).map_err(|_| VfioError::Mmap {
                device: device.name.clone(),
                region: info.name,
                offset: area.offset,
                len: area.size,
                source: std::io::Error::other("area larger than the address space"),
            })?;
            let m = MmioMapping::map(&device.file, info.offset + area.offset, len, info.writable)
                .map_err(|source| VfioError::Mmap {
                device: device.name.clone(),
                region: info.name,
                offset: area.offset,
                len: area.size,
                source,
            })?;
            maps.push((area.offset, m));
        }
        Ok(Region { device, info, maps })
    }

    /// What VFIO reported about the region.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// Which region this is.
    pub fn name(&self) -> RegionName {
        self.info.name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The device this region belongs to.
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    /// The mmap'd areas, as (offset, length).
    pub fn mapped_areas(&self) -> Vec<MmapArea> {
        self.maps
            .iter()
            .map(|(o, m)| MmapArea {
                offset: *o,
                size: m.len() as u64,
            })
            .collect()
    }

    /// Whether `len` bytes at `offset` are served by a mapping (no syscall).
    pub fn is_mapped(&self, offset: u64, len: u64) -> bool {
        self.mapping_for(offset, len).is_some()
    }

    /// Read one little-endian value of type `T` at `offset`.
    pub fn read<T: MmioValue>(&self, offset: u64) -> Result<T> {
        let access = Access::read(T::WIDTH);
        self.check(access, offset)?;
        if let Some((m, rel)) = self.mapping_for(offset, T::WIDTH as u64) {
            if let Some(v) = m.read::<T>(rel) {
                return Ok(v);
            }
        }
        let mut buf = [0u8; 8];
        self.pread(access, offset, &mut buf[..T::WIDTH])?;
        Ok(T::from_le_slice(&buf))
    }

    /// Write one value of type `T` at `offset`, little-endian.
    pub fn write<T: MmioValue>(&self, offset: u64, value: T) -> Result<()> {
        let access = Access::write(T::WIDTH);
        self.check(access, offset)?;
        if let Some((m, rel)) = self.mapping_for(offset, T::WIDTH as u64) {
            if m.write::<T>(rel, value).is_some() {
                return Ok(());
            }
        }
        let mut buf = [0u8; 8];
        value.write_le(&mut buf);
        self.pwrite(access, offset, &buf[..T::WIDTH])
    }

    /// 8-bit read.
    pub fn read8(&self, offset: u64) -> Result<u8> {
        self.read(offset)
    }
    /// 16-bit read.
    pub fn read16(&self, offset: u64) -> Result<u16> {
        self.read(offset)
    }
    /// 32-bit read.
    pub fn read32(&self, offset: u64) -> Result<u32> {
        self.read(offset)
    }
    /// 64-bit read.
    pub fn read64(&self, offset: u64) -> Result<u64> {
        self.read(offset)
    }
    /// 8-bit write.
    pub fn write8(&self, offset: u64, value: u8) -> Result<()> {
        self.write(offset, value)
    }
    /// 16-bit write.
    pub fn write16(&self, offset: u64, value: u16) -> Result<()> {
        self.write(offset, value)
    }
    /// 32-bit write.
    pub fn write32(&self, offset: u64, value: u32) -> Result<()> {
        self.write(offset, value)
    }
    /// 64-bit write.
    pub fn write64(&self, offset: u64, value: u64) -> Result<()> {
        self.write(offset, value)
    }

    /// Read `buf.len()` bytes at `offset`: through the mapping in naturally aligned
    /// accesses of up to 8 bytes when it covers the range, else one pread.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let access = Access::read(buf.len());
        self.check(access, offset)?;
        if let Some((m, rel)) = self.mapping_for(offset, buf.len() as u64) {
            let mut done = 0;
            while done < buf.len() {
                let at = rel + done;
                let w = chunk_width(at, buf.len() - done);
                let ok = match w {
                    8 => m.read::<u64>(at).map(|v| v.write_le(&mut buf[done..])),
                    4 => m.read::<u32>(at).map(|v| v.write_le(&mut buf[done..])),
                    2 => m.read::<u16>(at).map(|v| v.write_le(&mut buf[done..])),
                    _ => m.read::<u8>(at).map(|v| buf[done] = v),
                };
                if ok.is_none() {
                    break;
                }
                done += w;
            }
            if done == buf.len() {
                return Ok(());
            }
        }
        self.pread(access, offset, buf)
    }

    /// Write `data` at `offset`, the counterpart of [`Region::read_bytes`].
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        let access = Access::write(data.len());
        self.check(access, offset)?;
        if let Some((m, rel)) = self.mapping_for(offset, data.len() as u64) {
            let mut done = 0;
            while done < data.len() {
                let at = rel + done;
                let rest = &data[done..];
                let w = chunk_width(at, rest.len());
                let ok = match w {
                    8 => m.write(at, u64::from_le_slice(rest)),
                    4 => m.write(at, u32::from_le_slice(rest)),
                    2 => m.write(at, u16::from_le_slice(rest)),
                    _ => m.write(at, rest[0]),
                };
                if ok.is_none() {
                    break;
                }
                done += w;
            }
            if done == data.len() {
                return Ok(());
            }
            // Whatever the mapping could not take (it never happens for a writable
            // region's mapping, but costs nothing to handle) goes through pwrite.
            return self.pwrite(access, offset + done as u64, &data[done..]);
        }
        self.pwrite(access, offset, data)
    }

    fn check(&self, access: Access, offset: u64) -> Result<()> {
        let end = offset.checked_add(access.len as u64);
        if access.len == 0 || end.is_none_or(|e| e > self.info.size) {
            return Err(VfioError::OutOfRange {
                device: self.device.name.clone(),
                region: self.info.name,
                access,
                offset,
                size: self.info.size,
            });
        }
        let (allowed, reason) = if access.write {
            (self.info.writable, "the region is read-only")
        } else {
            (self.info.readable, "the region is write-only")
        };
        if !allowed {
            return Err(VfioError::NotPermitted {
                device: self.device.name.clone(),
                region: self.info.name,
                access,
                offset,
                reason,
            });
        }
        Ok(())
    }

    /// The mapping that covers [offset, offset+len), with the offset inside it.
    fn mapping_for(&self, offset: u64, len: u64) -> Option<(&MmioMapping, usize)> {
        let i = self
            .maps
            .partition_point(|(o, _)| *o <= offset)
            .checked_sub(1)?;
        let (start, m) = &self.maps[i];
        let rel = offset - start;
        (rel.checked_add(len)? <= m.len() as u64).then_some((m, rel as usize))
    }

    fn pread(&self, access: Access, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.device
            .file
            .read_exact_at(buf, self.info.offset + offset)
            .map_err(|source| self.io_error(access, offset, source))
    }

    fn pwrite(&self, access: Access, offset: u64, data: &[u8]) -> Result<()> {
        self.device
            .file
            .write_all_at(data, self.info.offset + offset)
            .map_err(|source| self.io_error(access, offset, source))
    }

    fn io_error(&self, access: Access, offset: u64, source: std::io::Error) -> VfioError {
        VfioError::RegionIo {
            device: self.device.name.clone(),
            region: self.info.name,
            access,
            offset,
            source,
        }
    }
}

/// The widest naturally aligned access (8, 4, 2 or 1 bytes) at `at` that fits in `left`.
fn chunk_width(at: usize, left: usize) -> usize {
    [8, 4, 2]
        .into_iter()
        .find(|&w| at.is_multiple_of(w) && left >= w)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::super::capability::build::{body, reply};
    use super::*;
    use std::io::Write;

    fn header(index: u32, flags: u32, size: u64, offset: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&32u32.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b
    }

    fn with_caps(index: u32, flags: u32, size: u64, caps: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let (mut r, first) = reply(32, caps);
        r[..32].copy_from_slice(&header(
            index,
            flags | VFIO_REGION_INFO_FLAG_CAPS,
            size,
            u64::from(index) << 40,
        ));
        r[12..16].copy_from_slice(&first.to_ne_bytes());
        r
    }

    const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const RWM: u32 = RW | VFIO_REGION_INFO_FLAG_MMAP;

    #[test]
    fn names_and_indices_round_trip() {
        for i in 0..12 {
            assert_eq!(RegionName::from_index(i).index(), i);
        }
        assert_eq!(RegionName::from_index(2).to_string(), "BAR2");
        assert_eq!(RegionName::from_index(7).to_string(), "config");
        assert_eq!(RegionName::from_index(9).to_string(), "region 9");
    }

    #[test]
    fn plain_mmap_bar_maps_whole() {
        let info = RegionInfo::parse("d", &header(0, RWM, 0x20000, 0)).unwrap();
        assert_eq!(info.name, RegionName::Bar(0));
        assert!(info.readable && info.writable && info.mmap);
        assert_eq!(
            info.mmap_areas(),
            vec![MmapArea {
                offset: 0,
                size: 0x20000
            }]
        );
    }

    #[test]
    fn io_bar_without_mmap_maps_nothing() {
        let info = RegionInfo::parse("d", &header(1, RW, 0x40, 1 << 40)).unwrap();
        assert!(info.mmap_areas().is_empty());
        assert!(info.is_present());
        let absent = RegionInfo::parse("d", &header(3, 0, 0, 3 << 40)).unwrap();
        assert!(!absent.is_present());
        assert!(absent.mmap_areas().is_empty());
    }

    #[test]
    fn sparse_areas_msix_and_type_caps_are_read() {
        let page = page_size() as u64;
        let sparse = body(&[3, 0], &[0, page, 3 * page, page, page + 8, 8]);
        let r = with_caps(
            2,
            RWM,
            4 * page,
            &[
                (VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16, 1, sparse),
                (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16, 1, vec![]),
                (
                    VFIO_REGION_INFO_CAP_TYPE as u16,
                    1,
                    body(&[0x8000_8086, 3], &[]),
                ),
            ],
        );
        let info = RegionInfo::parse("d", &r).unwrap();
        assert!(info.msix_mappable);
        assert_eq!(
            info.region_type,
            Some(RegionType {
                type_: 0x8000_8086,
                subtype: 3
            })
        );
        assert_eq!(info.sparse_areas.as_ref().unwrap().len(), 3);
        // The unaligned third area is left to pread/pwrite.
        assert_eq!(
            info.mmap_areas(),
            vec![
                MmapArea {
                    offset: 0,
                    size: page
                },
                MmapArea {
                    offset: 3 * page,
                    size: page
                }
            ]
        );
    }

    #[test]
    fn sparse_area_outside_the_region_is_rejected() {
        let r = with_caps(
            0,
            RWM,
            0x1000,
            &[(
                VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16,
                1,
                body(&[1, 0], &[0x1000, 0x1000]),
            )],
        );
        let e = RegionInfo::parse("0000:00:02.0", &r)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("0000:00:02.0: malformed region info"), "{e}");
        assert!(e.contains("outside"), "{e}");
        let wrap = with_caps(
            0,
            RWM,
            0x1000,
            &[(
                VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16,
                1,
                body(&[1, 0], &[u64::MAX, 2]),
            )],
        );
        assert!(RegionInfo::parse("d", &wrap).is_err());
    }

    #[test]
    fn short_or_lying_replies_are_errors() {
        assert!(RegionInfo::parse("d", &[0u8; 16]).is_err());
        let mut r = with_caps(0, RWM, 0x1000, &[(1, 1, body(&[500, 0], &[]))]);
        assert!(RegionInfo::parse("d", &r).is_err());
        r[32 + 4..32 + 8].copy_from_slice(&32u32.to_ne_bytes());
        assert!(RegionInfo::parse("d", &r).is_err());
    }

    /// A fake device fd: a file whose bytes at `offset` stand in for the region.
    fn fake_region(info: RegionInfo, content: &[u8]) -> Region {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![0u8; info.offset as usize]).unwrap();
        f.write_all(content).unwrap();
        let dev = Arc::new(DeviceFile {
            name: "0000:00:03.0".into(),
            file: f,
        });
        Region::open(dev, info).unwrap()
    }

    fn info(name: RegionName, flags: u32, size: u64, offset: u64) -> RegionInfo {
        let mut r = header(name.index(), flags, size, offset);
        r[8..12].copy_from_slice(&name.index().to_ne_bytes());
        RegionInfo::parse("0000:00:03.0", &r).unwrap()
    }

    #[test]
    fn mapped_and_pread_paths_agree() {
        let page = page_size();
        let mut content = vec![0u8; 2 * page];
        for (i, b) in content.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let mapped = fake_region(
            info(RegionName::Bar(0), RWM, content.len() as u64, page as u64),
            &content,
        );
        let plain = fake_region(
            info(RegionName::Bar(0), RW, content.len() as u64, page as u64),
            &content,
        );
        assert!(mapped.is_mapped(0, 4));
        assert!(!plain.is_mapped(0, 4));
        for off in [0u64, 8, 0x100, (2 * page - 8) as u64] {
            assert_eq!(mapped.read64(off).unwrap(), plain.read64(off).unwrap());
            assert_eq!(
                mapped.read32(off + 4).unwrap(),
                plain.read32(off + 4).unwrap()
            );
            assert_eq!(
                mapped.read16(off + 2).unwrap(),
                plain.read16(off + 2).unwrap()
            );
            assert_eq!(
                mapped.read8(off + 1).unwrap(),
                plain.read8(off + 1).unwrap()
            );
        }
        // Unaligned typed access falls back to pread and still returns the right value.
        assert_eq!(mapped.read32(3).unwrap(), plain.read32(3).unwrap());
        let mut a = [0u8; 13];
        let mut b = [0u8; 13];
        mapped.read_bytes(5, &mut a).unwrap();
        plain.read_bytes(5, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..], &content[5..18]);
    }

    #[test]
    fn writes_land_and_read_back() {
        let page = page_size();
        let r = fake_region(
            info(RegionName::Bar(0), RWM, page as u64, 0),
            &vec![0u8; page],
        );
        r.write32(0x10, 0x8008_0783).unwrap();
        r.write16(0x14, 0xbeef).unwrap();
        r.write_bytes(0x21, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        assert_eq!(r.read32(0x10).unwrap(), 0x8008_0783);
        assert_eq!(r.read16(0x14).unwrap(), 0xbeef);
        let mut back = [0u8; 9];
        r.read_bytes(0x21, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let io = fake_region(info(RegionName::Bar(4), RW, 0x10, 0x1000), &[0u8; 0x10]);
        io.write8(0x2, 0x5a).unwrap();
        assert_eq!(io.read8(0x2).unwrap(), 0x5a);
    }

    #[test]
    fn out_of_range_names_device_region_access_and_size() {
        let page = page_size();
        let r = fake_region(
            info(RegionName::Bar(0), RWM, 0x20000, 0),
            &vec![0u8; 0x20000.max(page)],
        );
        let e = r.read32(0x20000).unwrap_err().to_string();
        assert_eq!(
            e,
            "0000:00:03.0 BAR0 read32 at 0x20000: out of range (BAR is 0x20000 bytes)"
        );
        assert!(r.read64(0x1fffc).is_err());
        assert!(r.write8(u64::MAX, 0).is_err());
        assert!(r.read_bytes(0x1ffff, &mut [0u8; 2]).is_err());
        assert!(r.read_bytes(0, &mut []).is_err());
        let cfg = fake_region(info(RegionName::Config, RW, 0x100, 0), &[0u8; 0x100]);
        assert_eq!(
            cfg.read16(0xff).unwrap_err().to_string(),
            "0000:00:03.0 config read16 at 0xff: out of range (config space is 0x100 bytes)"
        );
    }

    #[test]
    fn read_only_region_refuses_writes() {
        let rom = fake_region(
            info(RegionName::Rom, VFIO_REGION_INFO_FLAG_READ, 0x100, 0),
            &[0u8; 0x100],
        );
        assert_eq!(rom.read32(0).unwrap(), 0);
        let e = rom.write32(0, 1).unwrap_err().to_string();
        assert_eq!(
            e,
            "0000:00:03.0 ROM write32 at 0x0: not allowed (the region is read-only)"
        );
    }

    #[test]
    fn failing_pread_is_an_error_naming_the_access() {
        // The file is shorter than the region claims: pread hits end of file.
        let r = fake_region(info(RegionName::Bar(1), RW, 0x40, 0), &[0u8; 8]);
        let e = r.read32(0x20).unwrap_err().to_string();
        assert!(e.starts_with("0000:00:03.0 BAR1 read32 at 0x20: "), "{e}");
    }

    #[test]
    fn chunking_uses_natural_alignment() {
        assert_eq!(chunk_width(0, 13), 8);
        assert_eq!(chunk_width(8, 5), 4);
        assert_eq!(chunk_width(12, 1), 1);
        assert_eq!(chunk_width(2, 8), 2);
        assert_eq!(chunk_width(5, 8), 1);
    }
}
