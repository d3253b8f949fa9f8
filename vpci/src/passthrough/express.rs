//! The PCI Express capability of a device placed on the virtual root bus.
//!
//! On the virtual bus every function sits on the root bus, where PCI Express has
//! only root complex integrated endpoints: functions with no link of their own. A
//! real endpoint behind a link is therefore shown as an integrated endpoint, with its
//! link registers reading zero, so a guest does not go looking for the upstream port
//! and link it would otherwise expect. The other registers (device control, status,
//! capabilities) stay the device's.

use crate::config::access_width::AccessWidth;
use crate::config::regs::exp;
use crate::config::space::{ConfigSpace, ConfigSpaceError};

use super::config_overlay::ConfigOverlay;

/// Link capabilities, control and status (version 1 and 2).
const LINK_REGISTERS: (u16, u16) = (exp::LINK_CAPABILITIES, 8);
/// Link capabilities 2, control 2 and status 2 (version 2 only).
const LINK_REGISTERS_2: (u16, u16) = (0x2c, 8);

/// Present the capability at `offset` as an integrated endpoint if it describes an
/// endpoint behind a link. Returns the device/port type the guest now sees.
pub fn integrate_into_root_bus(
    space: &mut ConfigSpace,
    overlay: &mut ConfigOverlay,
    offset: u16,
) -> Result<u16, ConfigSpaceError> {
    let flags_at = offset + exp::FLAGS;
    let flags = space.u16_at(flags_at);
    let kind = (flags & exp::FLAGS_TYPE_MASK) >> exp::FLAGS_TYPE_SHIFT;
    if kind != exp::TYPE_ENDPOINT && kind != exp::TYPE_LEGACY_ENDPOINT {
        return Ok(kind);
    }
    let integrated = (flags & !exp::FLAGS_TYPE_MASK)
        | (exp::TYPE_RC_INTEGRATED_ENDPOINT << exp::FLAGS_TYPE_SHIFT);
    space.set(flags_at, AccessWidth::Word, integrated.into())?;
    overlay.set_bits(
        flags_at,
        AccessWidth::Word,
        exp::FLAGS_TYPE_MASK.into(),
        true,
    );
    let mut links = vec![LINK_REGISTERS];
    if flags & exp::FLAGS_VERSION_MASK >= exp::FLAGS_VERSION_2 {
        links.push(LINK_REGISTERS_2);
    }
    for (at, len) in links {
        space.clear_range(offset + at, len);
        overlay.virtualise(offset + at, len);
    }
    Ok(exp::TYPE_RC_INTEGRATED_ENDPOINT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessWidth::{Dword, Word};

    fn space_with_express(kind: u16, version: u16) -> ConfigSpace {
        let mut image = vec![0u8; 4096];
        let flags = version | (kind << exp::FLAGS_TYPE_SHIFT);
        image[0x62..0x64].copy_from_slice(&flags.to_le_bytes());
        image[0x6c..0x70].copy_from_slice(&0x0003_0c41u32.to_le_bytes());
        image[0x72] = 0x11;
        image[0x8c] = 0x0e;
        ConfigSpace::from_bytes(&image).unwrap()
    }

    #[test]
    fn an_endpoint_becomes_integrated_without_link_registers() {
        let mut space = space_with_express(exp::TYPE_ENDPOINT, 2);
        let mut overlay = ConfigOverlay::new(space.len());
        let kind = integrate_into_root_bus(&mut space, &mut overlay, 0x60).unwrap();
        assert_eq!(kind, exp::TYPE_RC_INTEGRATED_ENDPOINT);
        assert_eq!(space.u16_at(0x62), 0x0092);
        assert_eq!(overlay.mask(0x62, Word), u32::from(exp::FLAGS_TYPE_MASK));
        for link in [0x6c, 0x70, 0x8c, 0x90] {
            assert_eq!(space.u32_at(link), 0, "{link:#x}");
            assert!(overlay.is_virtual(link, Dword), "{link:#x}");
        }
        assert_eq!(
            overlay.mask(0x68, Dword),
            0,
            "device control/status stay the device's"
        );
    }

    #[test]
    fn version_1_has_no_second_link_block_and_ports_are_left_alone() {
        let mut space = space_with_express(exp::TYPE_LEGACY_ENDPOINT, 1);
        let mut overlay = ConfigOverlay::new(space.len());
        integrate_into_root_bus(&mut space, &mut overlay, 0x60).unwrap();
        assert_eq!(space.u8_at(0x8c), 0x0e);
        assert!(!overlay.is_virtual(0x8c, Dword));

        let mut space = space_with_express(exp::TYPE_RC_INTEGRATED_ENDPOINT, 2);
        let mut overlay = ConfigOverlay::new(space.len());
        integrate_into_root_bus(&mut space, &mut overlay, 0x60).unwrap();
        assert_eq!(space.u32_at(0x6c), 0x0003_0c41);
        assert_eq!(overlay.mask(0x60, Dword), 0);
    }
}
