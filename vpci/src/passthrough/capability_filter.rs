//! Which of a real device's capabilities a guest may see.
//!
//! An allow list: capabilities whose registers are safe to pass through (power
//! management, PCI Express, AER, ...) or that the function virtualises (MSI, MSI-X)
//! stay linked; every other one is unlinked from its list and its bytes read as zero,
//! because it would let the guest change how the device decodes addresses or
//! functions behind the virtual bus's back (SR-IOV, ARI, resizable BAR, enhanced
//! allocation), reach memory outside its per-request mappings (ATS, PRI, PASID), or
//! poke registers nobody here understands (vendor-specific).

use crate::config::regs::{cap, ext_cap, CONFIG_SPACE_SIZE};
use crate::config::space::{ConfigSpace, ConfigSpaceError};

use super::config_overlay::ConfigOverlay;

/// A capability the guest does not see, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HiddenCapability {
    /// The capability ID (standard IDs are 8-bit).
    pub id: u16,
    /// In the extended (PCI Express) list.
    pub extended: bool,
    /// Where it sits in the real device's config space.
    pub offset: u16,
    /// Why it is hidden, in words (not allowed, or unusable through VFIO).
    pub reason: &'static str,
}

/// Standard capabilities passed through (MSI/MSI-X virtualised, the rest forwarded).
pub const ALLOWED_CAPABILITIES: [u8; 6] = [
    cap::POWER_MANAGEMENT,
    cap::MSI,
    cap::PCI_EXPRESS,
    cap::MSIX,
    cap::SATA,
    cap::ADVANCED_FEATURES,
];

/// Extended capabilities passed through.
pub const ALLOWED_EXTENDED_CAPABILITIES: [u16; 6] = [
    ext_cap::ADVANCED_ERROR_REPORTING,
    ext_cap::DEVICE_SERIAL_NUMBER,
    ext_cap::POWER_BUDGETING,
    ext_cap::LATENCY_TOLERANCE_REPORTING,
    ext_cap::SECONDARY_PCIE,
    ext_cap::L1_PM_SUBSTATES,
];

/// Page Request Interface: the device asks for pages to be made present.
const PAGE_REQUEST: u16 = 0x0013;

fn reason(id: u16, extended: bool) -> &'static str {
    match (extended, id) {
        (false, id) if id == u16::from(cap::VENDOR_SPECIFIC) => {
            "vendor-specific registers of unknown meaning"
        }
        (false, id) if id == u16::from(cap::ENHANCED_ALLOCATION) => {
            "fixed BAR placement would bypass the virtual BARs"
        }
        (true, ext_cap::SINGLE_ROOT_IOV) => "virtual functions cannot appear on the virtual bus",
        (true, ext_cap::ALTERNATIVE_ROUTING_ID) => {
            "changes how function numbers decode, which the virtual bus does not follow"
        }
        (true, ext_cap::RESIZABLE_BAR) => "resizing would break the virtual BAR sizes",
        (true, ext_cap::ADDRESS_TRANSLATION_SERVICES | ext_cap::PASID | PAGE_REQUEST) => {
            "device-side address translation would bypass per-request DMA mappings"
        }
        (true, ext_cap::VENDOR_SPECIFIC) => "vendor-specific registers of unknown meaning",
        _ => "not known to be safe to pass through",
    }
}

/// Where each capability of a list ends: at the next capability's start (in address
/// order) or the end of the area. Capabilities carry no length, and the bytes up to
/// the next one are all a hidden capability could own.
fn extents(offsets: &[u16], area_end: u16) -> Vec<(u16, u16)> {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    offsets
        .iter()
        .map(|&o| {
            let end = sorted.iter().copied().find(|&n| n > o).unwrap_or(area_end);
            (o, end - o)
        })
        .collect()
}

/// Unlink every capability not on the allow lists (and those in `also_hide`, by
/// offset), zero their bytes and make them virtual in `overlay`. The headers of the
/// capabilities that stay become virtual too: their next pointers are the function's.
pub fn hide_capabilities(
    space: &mut ConfigSpace,
    overlay: &mut ConfigOverlay,
    also_hide: &[u16],
) -> Result<Vec<HiddenCapability>, ConfigSpaceError> {
    let mut hidden = Vec::new();
    let standard = space.capabilities()?;
    let offsets: Vec<u16> = standard.iter().map(|c| c.offset).collect();
    for (c, (offset, len)) in standard
        .iter()
        .zip(extents(&offsets, CONFIG_SPACE_SIZE as u16))
    {
        let on_list = ALLOWED_CAPABILITIES.contains(&c.id);
        if on_list && !also_hide.contains(&offset) {
            overlay.virtualise(offset, cap::HEADER_SIZE);
            continue;
        }
        space.remove_capability(offset)?;
        space.clear_range(offset, len);
        overlay.virtualise(offset, len);
        hidden.push(HiddenCapability {
            id: c.id.into(),
            extended: false,
            offset,
            reason: if on_list {
                "the device offers no vectors of this kind through VFIO"
            } else {
                reason(c.id.into(), false)
            },
        });
    }
    let extended = space.extended_capabilities()?;
    let offsets: Vec<u16> = extended.iter().map(|c| c.offset).collect();
    let area_end = space.len() as u16;
    for (c, (offset, len)) in extended.iter().zip(extents(&offsets, area_end)) {
        if ALLOWED_EXTENDED_CAPABILITIES.contains(&c.id) {
            overlay.virtualise(offset, ext_cap::HEADER_SIZE);
            continue;
        }
        space.remove_extended_capability(offset)?;
        // The head of the list stays as a null header pointing on; keep it.
        let keep = if offset == ext_cap::START {
            ext_cap::HEADER_SIZE
        } else {
            0
        };
        space.clear_range(offset + keep, len - keep);
        overlay.virtualise(offset, len);
        hidden.push(HiddenCapability {
            id: c.id,
            extended: true,
            offset,
            reason: reason(c.id, true),
        });
    }
    // Placeholder headers (ID 0) left in the chain are the function's too.
    if space.is_extended() {
        overlay.virtualise(ext_cap::START, ext_cap::HEADER_SIZE);
    }
    Ok(hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access_width::AccessWidth;
    use crate::config::regs::{header, status};

    fn image_with_caps() -> Vec<u8> {
        let mut image = vec![0u8; 4096];
        image[header::STATUS as usize] = status::CAPABILITY_LIST as u8;
        image[header::CAPABILITY_POINTER as usize] = 0x40;
        // PM at 0x40 -> vendor-specific at 0x48 -> MSI at 0x60 -> end.
        image[0x40] = cap::POWER_MANAGEMENT;
        image[0x41] = 0x48;
        image[0x48] = cap::VENDOR_SPECIFIC;
        image[0x49] = 0x60;
        image[0x4a] = 0x10;
        image[0x50] = 0xaa;
        image[0x60] = cap::MSI;
        // AER at 0x100 -> SR-IOV at 0x148 -> DSN at 0x188.
        let h = |id, next: u16| ext_cap::header(id, 1, next).to_le_bytes();
        image[0x100..0x104].copy_from_slice(&h(ext_cap::ADVANCED_ERROR_REPORTING, 0x148));
        image[0x148..0x14c].copy_from_slice(&h(ext_cap::SINGLE_ROOT_IOV, 0x188));
        image[0x150] = 0x55;
        image[0x188..0x18c].copy_from_slice(&h(ext_cap::DEVICE_SERIAL_NUMBER, 0));
        image
    }

    #[test]
    fn unknown_and_risky_capabilities_are_unlinked_and_zeroed() {
        let mut space = ConfigSpace::from_bytes(&image_with_caps()).unwrap();
        let mut overlay = ConfigOverlay::new(space.len());
        let hidden = hide_capabilities(&mut space, &mut overlay, &[]).unwrap();
        let ids: Vec<u8> = space.capabilities().unwrap().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![cap::POWER_MANAGEMENT, cap::MSI]);
        let ext: Vec<u16> = space
            .extended_capabilities()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            ext,
            vec![
                ext_cap::ADVANCED_ERROR_REPORTING,
                ext_cap::DEVICE_SERIAL_NUMBER
            ]
        );
        assert_eq!(hidden.len(), 2);
        assert_eq!(hidden[0].offset, 0x48);
        assert!(hidden[0].reason.contains("vendor-specific"));
        assert_eq!(hidden[1].id, ext_cap::SINGLE_ROOT_IOV);
        // The hidden bodies read as zero and never reach the device.
        assert_eq!(space.u8_at(0x50), 0);
        assert_eq!(space.u8_at(0x150), 0);
        assert!(overlay.is_virtual(0x50, AccessWidth::Dword));
        assert!(overlay.is_virtual(0x184, AccessWidth::Dword));
        // Kept capabilities: headers virtual, bodies the device's.
        assert!(overlay.is_virtual(0x40, AccessWidth::Word));
        assert_eq!(overlay.mask(0x44, AccessWidth::Dword), 0);
        assert!(overlay.is_virtual(0x188, AccessWidth::Dword));
        assert_eq!(overlay.mask(0x18c, AccessWidth::Dword), 0);
    }

    #[test]
    fn removing_the_extended_head_leaves_a_null_header() {
        let mut image = image_with_caps();
        let h = ext_cap::header(ext_cap::RESIZABLE_BAR, 1, 0x188).to_le_bytes();
        image[0x100..0x104].copy_from_slice(&h);
        image[0x104] = 0x77;
        let mut space = ConfigSpace::from_bytes(&image).unwrap();
        let mut overlay = ConfigOverlay::new(space.len());
        let hidden = hide_capabilities(&mut space, &mut overlay, &[]).unwrap();
        assert_eq!(hidden.len(), 2, "{hidden:?}");
        let ext = space.extended_capabilities().unwrap();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].id, ext_cap::DEVICE_SERIAL_NUMBER);
        assert_eq!(space.u32_at(0x100) & ext_cap::ID_MASK, 0);
        assert_eq!(space.u8_at(0x104), 0);
    }

    #[test]
    fn allowed_capabilities_can_be_hidden_by_offset() {
        let mut space = ConfigSpace::from_bytes(&image_with_caps()).unwrap();
        let mut overlay = ConfigOverlay::new(space.len());
        let hidden = hide_capabilities(&mut space, &mut overlay, &[0x60]).unwrap();
        let ids: Vec<u8> = space.capabilities().unwrap().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![cap::POWER_MANAGEMENT]);
        assert!(hidden
            .iter()
            .any(|h| h.offset == 0x60 && h.reason.contains("VFIO")));
    }

    #[test]
    fn extents_run_to_the_next_capability_in_address_order() {
        assert_eq!(
            extents(&[0x60, 0x40, 0x50], 0x100),
            vec![(0x60, 0xa0), (0x40, 0x10), (0x50, 0x10)]
        );
    }
}
