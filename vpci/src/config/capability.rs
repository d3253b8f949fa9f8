//! Capability lists: walking the standard (0x34) and extended (0x100) chains of any
//! config source, and adding or unlinking capabilities in a [`ConfigSpace`].
//!
//! Walking is written against a read function so that the same code walks an
//! emulated function's space, a real device's config read through VFIO, or a guest's
//! view through the bus. Walks stop with an error on a malformed chain (pointer into
//! the header, a loop) instead of looping forever on untrusted config.
//!
//! Unlinking keeps the chain valid: the predecessor's next pointer skips the removed
//! capability. The head of the extended list must stay at 0x100, so removing it
//! leaves a null header there (ID 0, version 0) that points on to the rest, as the
//! PCIe spec allows and Linux walks over.

use crate::config::access_width::AccessWidth;
use crate::config::regs::{cap, ext_cap, header, status, CONFIG_SPACE_SIZE};
use crate::config::space::{ConfigSpace, ConfigSpaceError, RegisterMask};

/// A capability in the standard list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID, one of [`cap`]'s.
    pub id: u8,
    /// Config-space offset of its ID byte.
    pub offset: u16,
}

/// A capability in the extended list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedCapability {
    /// Capability ID, one of [`ext_cap`]'s (0 for the null header at 0x100).
    pub id: u16,
    /// Capability version from the header's bits 19:16.
    pub version: u8,
    /// Config-space offset of its header dword (0x100 or above).
    pub offset: u16,
}

/// At most this many standard capabilities fit after the header (4 bytes each).
const MAX_CAPABILITIES: usize = (CONFIG_SPACE_SIZE - header::END as usize) / 4;
/// At most this many extended capabilities fit in extended space (4 bytes each).
const MAX_EXTENDED_CAPABILITIES: usize =
    (crate::config::regs::EXTENDED_CONFIG_SPACE_SIZE - CONFIG_SPACE_SIZE) / 4;

const STANDARD: &str = "capability";
const EXTENDED: &str = "extended capability";

/// Walk the standard capability list of any config source.
///
/// `read(offset, width)` returns config register values. An absent list (status bit
/// clear or pointer 0) is an empty list.
pub fn walk_capabilities(
    mut read: impl FnMut(u16, AccessWidth) -> u32,
) -> Result<Vec<Capability>, ConfigSpaceError> {
    let mut found = Vec::new();
    if read(header::STATUS, AccessWidth::Word) as u16 & status::CAPABILITY_LIST == 0 {
        return Ok(found);
    }
    let mut offset =
        u16::from(read(header::CAPABILITY_POINTER, AccessWidth::Byte) as u8 & cap::POINTER_MASK);
    while offset != 0 {
        if offset < header::END {
            return Err(ConfigSpaceError::MalformedList {
                list: STANDARD,
                offset,
                reason: "pointer into the type 0 header",
            });
        }
        if found.len() == MAX_CAPABILITIES {
            return Err(ConfigSpaceError::MalformedList {
                list: STANDARD,
                offset,
                reason: "more entries than fit: the chain loops",
            });
        }
        let id = read(offset + cap::ID, AccessWidth::Byte) as u8;
        found.push(Capability { id, offset });
        offset = u16::from(read(offset + cap::NEXT, AccessWidth::Byte) as u8 & cap::POINTER_MASK);
    }
    Ok(found)
}

/// Walk the extended capability list of any config source. Null placeholders (ID 0)
/// are stepped over and not reported. A header of 0 or all-ones at 0x100 means no list.
pub fn walk_extended_capabilities(
    mut read: impl FnMut(u16, AccessWidth) -> u32,
) -> Result<Vec<ExtendedCapability>, ConfigSpaceError> {
    let mut found = Vec::new();
    let mut offset = ext_cap::START;
    let mut steps = 0;
    loop {
        let h = read(offset, AccessWidth::Dword);
        if h == 0 || h == u32::MAX {
            if offset == ext_cap::START {
                return Ok(found);
            }
            return Err(ConfigSpaceError::MalformedList {
                list: EXTENDED,
                offset,
                reason: "next pointer leads to an empty header",
            });
        }
        steps += 1;
        if steps > MAX_EXTENDED_CAPABILITIES {
            return Err(ConfigSpaceError::MalformedList {
                list: EXTENDED,
                offset,
                reason: "more entries than fit: the chain loops",
            });
        }
        let id = (h & ext_cap::ID_MASK) as u16;
        if id != ext_cap::NULL {
            found.push(ExtendedCapability {
                id,
                version: ((h >> ext_cap::VERSION_SHIFT) & ext_cap::VERSION_MASK) as u8,
                offset,
            });
        }
        let next = ((h >> ext_cap::NEXT_SHIFT) & ext_cap::NEXT_MASK) as u16;
        if next == 0 {
            return Ok(found);
        }
        if next < ext_cap::START {
            return Err(ConfigSpaceError::MalformedList {
                list: EXTENDED,
                offset,
                reason: "next pointer below 0x100",
            });
        }
        offset = next;
    }
}

impl ConfigSpace {
    fn reader(&self) -> impl FnMut(u16, AccessWidth) -> u32 + '_ {
        move |offset, width| self.read(offset, width)
    }

    /// The standard capability list.
    pub fn capabilities(&self) -> Result<Vec<Capability>, ConfigSpaceError> {
        walk_capabilities(self.reader())
    }

    /// The extended capability list (empty for a conventional space).
    pub fn extended_capabilities(&self) -> Result<Vec<ExtendedCapability>, ConfigSpaceError> {
        if !self.is_extended() {
            return Ok(Vec::new());
        }
        walk_extended_capabilities(self.reader())
    }

    /// Offset of the first capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities()
            .ok()?
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.offset)
    }

    /// Offset of the first extended capability with `id`.
    pub fn find_extended_capability(&self, id: u16) -> Option<u16> {
        self.extended_capabilities()
            .ok()?
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.offset)
    }

    fn dwords(offset: u16, len: u16) -> std::ops::Range<usize> {
        let first = usize::from(offset) / 4;
        first..first + usize::from(len).div_ceil(4)
    }

    fn is_free(&self, offset: u16, len: u16) -> bool {
        let range = Self::dwords(offset, len);
        range.end <= self.used_dwords.len() && self.used_dwords[range].iter().all(|u| !u)
    }

    fn find_room(&self, len: u16, start: u16, end: u16) -> Result<u16, ConfigSpaceError> {
        (start..end)
            .step_by(4)
            .find(|&o| {
                usize::from(o) + usize::from(len) <= usize::from(end) && self.is_free(o, len)
            })
            .ok_or(ConfigSpaceError::NoRoom { len, start, end })
    }

    fn claim(&mut self, offset: u16, len: u16, used: bool) {
        let range = Self::dwords(offset, len);
        let end = range.end.min(self.used_dwords.len());
        self.used_dwords[range.start.min(end)..end].fill(used);
    }

    fn check_placement(
        &self,
        offset: u16,
        len: u16,
        start: u16,
        end: u16,
        min: u16,
    ) -> Result<(), ConfigSpaceError> {
        if len < min {
            return Err(ConfigSpaceError::BadCapabilityLength { len, min });
        }
        if !offset.is_multiple_of(4)
            || offset < start
            || usize::from(offset) + usize::from(len) > usize::from(end)
        {
            return Err(ConfigSpaceError::BadCapabilityOffset { offset, start, end });
        }
        if !self.is_free(offset, len) {
            return Err(ConfigSpaceError::Overlap { offset, len });
        }
        Ok(())
    }

    /// Add a standard capability of `len` bytes (header included) at the first free
    /// dword-aligned place, appended to the end of the list. The body starts zero and
    /// read-only; the caller defines its registers. Returns its offset.
    pub fn add_capability(&mut self, id: u8, len: u16) -> Result<u16, ConfigSpaceError> {
        if len < cap::HEADER_SIZE {
            return Err(ConfigSpaceError::BadCapabilityLength {
                len,
                min: cap::HEADER_SIZE,
            });
        }
        let offset = self.find_room(len, header::END, CONFIG_SPACE_SIZE as u16)?;
        self.add_capability_at(offset, id, len)?;
        Ok(offset)
    }

    /// Add a standard capability at a chosen `offset`, appended to the end of the list.
    pub fn add_capability_at(
        &mut self,
        offset: u16,
        id: u8,
        len: u16,
    ) -> Result<(), ConfigSpaceError> {
        self.check_placement(
            offset,
            len,
            header::END,
            CONFIG_SPACE_SIZE as u16,
            cap::HEADER_SIZE,
        )?;
        let list = self.capabilities()?;
        self.claim(offset, len, true);
        self.capability_extents.insert(offset, len);
        self.clear_range(offset, len);
        self.set(offset + cap::ID, AccessWidth::Byte, id.into())?;
        let link = match list.last() {
            Some(tail) => tail.offset + cap::NEXT,
            None => header::CAPABILITY_POINTER,
        };
        self.set(link, AccessWidth::Byte, offset.into())?;
        self.set_mask(
            header::CAPABILITY_POINTER,
            AccessWidth::Byte,
            RegisterMask::READ_ONLY,
        )?;
        self.set_status_bits(status::CAPABILITY_LIST, true);
        Ok(())
    }

    /// Unlink the standard capability at `offset`. A capability added through this
    /// API is also zeroed and its room freed; one that came with a loaded image is
    /// only unlinked (its bytes stay, unreachable from the list).
    pub fn remove_capability(&mut self, offset: u16) -> Result<(), ConfigSpaceError> {
        let list = self.capabilities()?;
        let position = list.iter().position(|c| c.offset == offset).ok_or(
            ConfigSpaceError::NoSuchCapability {
                offset,
                list: STANDARD,
            },
        )?;
        let next = self.u8_at(offset + cap::NEXT) & cap::POINTER_MASK;
        let link = match position {
            0 => header::CAPABILITY_POINTER,
            p => list[p - 1].offset + cap::NEXT,
        };
        self.set(link, AccessWidth::Byte, next.into())?;
        if let Some(len) = self.capability_extents.remove(&offset) {
            self.clear_range(offset, len);
            self.claim(offset, len, false);
        }
        if list.len() == 1 {
            self.set_status_bits(status::CAPABILITY_LIST, false);
        }
        Ok(())
    }

    /// Add an extended capability of `len` bytes (header included), at 0x100 if the
    /// list is empty, else at the first free place, appended to the end of the list.
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        len: u16,
    ) -> Result<u16, ConfigSpaceError> {
        if !self.is_extended() {
            return Err(ConfigSpaceError::NotExtended);
        }
        if len < ext_cap::HEADER_SIZE {
            return Err(ConfigSpaceError::BadCapabilityLength {
                len,
                min: ext_cap::HEADER_SIZE,
            });
        }
        let end = self.len() as u16;
        let offset = if self.u32_at(ext_cap::START) == 0 {
            // An empty list: the head has to be at 0x100.
            ext_cap::START
        } else {
            self.find_room(len, ext_cap::START, end)?
        };
        self.add_extended_capability_at(offset, id, version, len)?;
        Ok(offset)
    }

    /// Add an extended capability at a chosen `offset`. If the list is empty the
    /// capability must go at 0x100, where the list starts.
    pub fn add_extended_capability_at(
        &mut self,
        offset: u16,
        id: u16,
        version: u8,
        len: u16,
    ) -> Result<(), ConfigSpaceError> {
        if !self.is_extended() {
            return Err(ConfigSpaceError::NotExtended);
        }
        let end = self.len() as u16;
        self.check_placement(offset, len, ext_cap::START, end, ext_cap::HEADER_SIZE)?;
        let head = self.u32_at(ext_cap::START);
        if head == 0 && offset != ext_cap::START {
            return Err(ConfigSpaceError::BadCapabilityOffset {
                offset,
                start: ext_cap::START,
                end: ext_cap::START + 4,
            });
        }
        let tail = self.extended_tail()?;
        self.claim(offset, len, true);
        self.capability_extents.insert(offset, len);
        self.clear_range(offset, len);
        self.set(offset, AccessWidth::Dword, ext_cap::header(id, version, 0))?;
        if head != 0 {
            let h = self.u32_at(tail);
            let linked = (h & !(ext_cap::NEXT_MASK << ext_cap::NEXT_SHIFT))
                | (u32::from(offset) << ext_cap::NEXT_SHIFT);
            self.set(tail, AccessWidth::Dword, linked)?;
        }
        Ok(())
    }

    /// Offset of the last header in the extended chain, placeholders included.
    fn extended_tail(&self) -> Result<u16, ConfigSpaceError> {
        let mut offset = ext_cap::START;
        for _ in 0..MAX_EXTENDED_CAPABILITIES {
            let next = ((self.u32_at(offset) >> ext_cap::NEXT_SHIFT) & ext_cap::NEXT_MASK) as u16;
            if next == 0 {
                return Ok(offset);
            }
            if next < ext_cap::START {
                break;
            }
            offset = next;
        }
        Err(ConfigSpaceError::MalformedList {
            list: EXTENDED,
            offset,
            reason: "the chain loops or points below 0x100",
        })
    }

    /// Unlink the extended capability at `offset`. As with
    /// [`remove_capability`](Self::remove_capability), capabilities added through this
    /// API are also zeroed and freed. Removing the head at 0x100 leaves a null header
    /// there that points to the rest of the list (or 0 if nothing is left).
    pub fn remove_extended_capability(&mut self, offset: u16) -> Result<(), ConfigSpaceError> {
        if !self.is_extended() {
            return Err(ConfigSpaceError::NoSuchCapability {
                offset,
                list: EXTENDED,
            });
        }
        // Walk every header, placeholders included, to find the predecessor.
        let mut chain = Vec::new();
        let mut at = ext_cap::START;
        if self.u32_at(at) != 0 {
            for _ in 0..MAX_EXTENDED_CAPABILITIES {
                chain.push(at);
                let next = ((self.u32_at(at) >> ext_cap::NEXT_SHIFT) & ext_cap::NEXT_MASK) as u16;
                if next < ext_cap::START {
                    break;
                }
                at = next;
            }
        }
        let position = chain
            .iter()
            .position(|&o| o == offset)
            .filter(|_| self.u32_at(offset) & ext_cap::ID_MASK != u32::from(ext_cap::NULL))
            .ok_or(ConfigSpaceError::NoSuchCapability {
                offset,
                list: EXTENDED,
            })?;
        let h = self.u32_at(offset);
        let next = ((h >> ext_cap::NEXT_SHIFT) & ext_cap::NEXT_MASK) as u16;
        let extent = self.capability_extents.remove(&offset);
        if let Some(len) = extent {
            self.clear_range(offset, len);
            self.claim(offset, len, false);
        }
        if position == 0 {
            let placeholder = if next == 0 {
                0
            } else {
                ext_cap::header(ext_cap::NULL, 0, next)
            };
            self.set(offset, AccessWidth::Dword, placeholder)?;
            self.set_mask(offset, AccessWidth::Dword, RegisterMask::READ_ONLY)?;
            if placeholder != 0 {
                self.claim(offset, ext_cap::HEADER_SIZE, true);
            }
        } else {
            let previous = chain[position - 1];
            let ph = self.u32_at(previous);
            let linked = (ph & !(ext_cap::NEXT_MASK << ext_cap::NEXT_SHIFT))
                | (u32::from(next) << ext_cap::NEXT_SHIFT);
            self.set(previous, AccessWidth::Dword, linked)?;
            if previous == ext_cap::START
                && ph & ext_cap::ID_MASK == u32::from(ext_cap::NULL)
                && next == 0
            {
                // Only the placeholder is left: the list is now empty.
                self.set(previous, AccessWidth::Dword, 0)?;
                self.claim(previous, ext_cap::HEADER_SIZE, false);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::space::ConfigSize;

    fn ids(space: &ConfigSpace) -> Vec<u8> {
        space.capabilities().unwrap().iter().map(|c| c.id).collect()
    }

    fn ext_ids(space: &ConfigSpace) -> Vec<u16> {
        space
            .extended_capabilities()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect()
    }

    #[test]
    fn capabilities_append_and_set_the_status_bit() {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        assert_eq!(space.capabilities().unwrap(), vec![]);
        let pm = space.add_capability(cap::POWER_MANAGEMENT, 8).unwrap();
        let msi = space.add_capability(cap::MSI, 0x18).unwrap();
        let msix = space.add_capability(cap::MSIX, 12).unwrap();
        assert_eq!((pm, msi, msix), (0x40, 0x48, 0x60));
        assert_eq!(
            ids(&space),
            vec![cap::POWER_MANAGEMENT, cap::MSI, cap::MSIX]
        );
        assert_ne!(space.status() & status::CAPABILITY_LIST, 0);
        assert_eq!(space.find_capability(cap::MSIX), Some(0x60));
        assert_eq!(space.find_capability(cap::PCI_EXPRESS), None);
    }

    #[test]
    fn unlinking_keeps_the_chain_valid() {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        let a = space.add_capability(cap::POWER_MANAGEMENT, 8).unwrap();
        let b = space.add_capability(cap::MSI, 0x18).unwrap();
        let c = space.add_capability(cap::MSIX, 12).unwrap();
        space.remove_capability(b).unwrap();
        assert_eq!(ids(&space), vec![cap::POWER_MANAGEMENT, cap::MSIX]);
        assert_eq!(space.u32_at(b), 0);
        space.remove_capability(a).unwrap();
        assert_eq!(space.u8_at(header::CAPABILITY_POINTER), c as u8);
        assert!(matches!(
            space.remove_capability(a),
            Err(ConfigSpaceError::NoSuchCapability { .. })
        ));
        space.remove_capability(c).unwrap();
        assert_eq!(ids(&space), Vec::<u8>::new());
        assert_eq!(space.status() & status::CAPABILITY_LIST, 0);
        // Freed room is reused.
        assert_eq!(space.add_capability(cap::VENDOR_SPECIFIC, 8).unwrap(), 0x40);
    }

    #[test]
    fn placement_is_checked() {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        assert!(matches!(
            space.add_capability_at(0x3c, cap::MSI, 8),
            Err(ConfigSpaceError::BadCapabilityOffset { .. })
        ));
        assert!(matches!(
            space.add_capability_at(0x42, cap::MSI, 8),
            Err(ConfigSpaceError::BadCapabilityOffset { .. })
        ));
        assert!(matches!(
            space.add_capability_at(0xf8, cap::MSI, 12),
            Err(ConfigSpaceError::BadCapabilityOffset { .. })
        ));
        space.add_capability_at(0x80, cap::MSI, 0x18).unwrap();
        assert!(matches!(
            space.add_capability_at(0x94, cap::MSIX, 12),
            Err(ConfigSpaceError::Overlap { .. })
        ));
        assert!(matches!(
            space.add_capability(cap::VENDOR_SPECIFIC, 0xc0),
            Err(ConfigSpaceError::NoRoom { .. })
        ));
        assert!(matches!(
            space.add_extended_capability(ext_cap::VENDOR_SPECIFIC, 1, 8),
            Err(ConfigSpaceError::NotExtended)
        ));
    }

    #[test]
    fn extended_list_starts_at_0x100_and_unlinks_its_head() {
        let mut space = ConfigSpace::new(ConfigSize::Extended);
        let aer = space
            .add_extended_capability(ext_cap::ADVANCED_ERROR_REPORTING, 2, 0x48)
            .unwrap();
        let dsn = space
            .add_extended_capability(ext_cap::DEVICE_SERIAL_NUMBER, 1, 12)
            .unwrap();
        let vsec = space
            .add_extended_capability(ext_cap::VENDOR_SPECIFIC, 1, 0x18)
            .unwrap();
        assert_eq!(aer, 0x100);
        assert!(dsn >= 0x148 && vsec > dsn, "{dsn:#x} {vsec:#x}");
        assert_eq!(
            ext_ids(&space),
            vec![
                ext_cap::ADVANCED_ERROR_REPORTING,
                ext_cap::DEVICE_SERIAL_NUMBER,
                ext_cap::VENDOR_SPECIFIC
            ]
        );
        space.remove_extended_capability(aer).unwrap();
        assert_eq!(space.u32_at(0x100), ext_cap::header(ext_cap::NULL, 0, dsn));
        assert_eq!(
            ext_ids(&space),
            vec![ext_cap::DEVICE_SERIAL_NUMBER, ext_cap::VENDOR_SPECIFIC]
        );
        assert!(space.remove_extended_capability(0x100).is_err());
        space.remove_extended_capability(vsec).unwrap();
        assert_eq!(ext_ids(&space), vec![ext_cap::DEVICE_SERIAL_NUMBER]);
        let again = space
            .add_extended_capability(ext_cap::ACCESS_CONTROL_SERVICES, 1, 8)
            .unwrap();
        assert_eq!(
            ext_ids(&space),
            vec![
                ext_cap::DEVICE_SERIAL_NUMBER,
                ext_cap::ACCESS_CONTROL_SERVICES
            ]
        );
        space.remove_extended_capability(dsn).unwrap();
        space.remove_extended_capability(again).unwrap();
        assert_eq!(space.u32_at(0x100), 0);
        assert_eq!(ext_ids(&space), Vec::<u16>::new());
        assert_eq!(
            space
                .add_extended_capability(ext_cap::VENDOR_SPECIFIC, 1, 8)
                .unwrap(),
            0x100
        );
    }

    #[test]
    fn guest_writes_cannot_change_list_headers() {
        let mut space = ConfigSpace::new(ConfigSize::Extended);
        let msi = space.add_capability(cap::MSI, 0x18).unwrap();
        space
            .add_extended_capability(ext_cap::VENDOR_SPECIFIC, 1, 8)
            .unwrap();
        space.write(header::CAPABILITY_POINTER, AccessWidth::Byte, 0x80);
        space.write(msi, AccessWidth::Word, 0xffff);
        space.write(0x100, AccessWidth::Dword, 0xffff_ffff);
        assert_eq!(ids(&space), vec![cap::MSI]);
        assert_eq!(ext_ids(&space), vec![ext_cap::VENDOR_SPECIFIC]);
    }

    #[test]
    fn malformed_chains_are_errors_not_hangs() {
        let mut image = vec![0u8; 4096];
        image[header::STATUS as usize] = status::CAPABILITY_LIST as u8;
        image[header::CAPABILITY_POINTER as usize] = 0x40;
        image[0x40] = cap::MSI;
        image[0x41] = 0x40; // points to itself
        let looping = ConfigSpace::from_bytes(&image).unwrap();
        assert!(matches!(
            looping.capabilities(),
            Err(ConfigSpaceError::MalformedList { .. })
        ));
        image[0x41] = 0x10; // into the header
        let into_header = ConfigSpace::from_bytes(&image).unwrap();
        assert!(into_header.capabilities().is_err());
        image[0x41] = 0;
        let h = ext_cap::header(ext_cap::VENDOR_SPECIFIC, 1, 0x100);
        image[0x100..0x104].copy_from_slice(&h.to_le_bytes());
        let ext_loop = ConfigSpace::from_bytes(&image).unwrap();
        assert_eq!(ids(&ext_loop), vec![cap::MSI]);
        assert!(ext_loop.extended_capabilities().is_err());
        let all_ones = walk_extended_capabilities(|_, _| u32::MAX).unwrap();
        assert!(all_ones.is_empty());
    }

    #[test]
    fn image_capabilities_unlink_without_extent() {
        let mut image = vec![0u8; 256];
        image[header::STATUS as usize] = status::CAPABILITY_LIST as u8;
        image[header::CAPABILITY_POINTER as usize] = 0x50;
        image[0x50] = cap::POWER_MANAGEMENT;
        image[0x51] = 0x70;
        image[0x70] = cap::MSI;
        let mut space = ConfigSpace::from_bytes(&image).unwrap();
        space.remove_capability(0x50).unwrap();
        assert_eq!(ids(&space), vec![cap::MSI]);
        assert_eq!(space.u8_at(0x50), cap::POWER_MANAGEMENT);
    }
}
