//! The host bridge at 00.0: what a guest expects to find first on a root bus.
//!
//! It has no BARs and no capabilities; its class (06/00/00) is what makes the guest
//! treat the bus as a root bus behind a host bridge.

use std::any::Any;

use crate::bar::{BarIndex, BarLayout};
use crate::bus::function::{FunctionError, PciFunction};
use crate::config::access_width::AccessWidth;
use crate::config::regs::class;
use crate::config::space::{ConfigSize, ConfigSpace, Type0Header};

/// Red Hat, Inc.: the vendor of QEMU's generic PCIe host bridge ID, which guest
/// kernels know and attach no quirks to.
pub const DEFAULT_VENDOR_ID: u16 = 0x1b36;
/// QEMU's "PCIe host bridge" device ID.
pub const DEFAULT_DEVICE_ID: u16 = 0x0008;

/// An emulated host bridge function.
#[derive(Clone, Debug)]
pub struct HostBridge {
    space: ConfigSpace,
}

impl HostBridge {
    /// A host bridge with the given IDs.
    pub fn new(vendor_id: u16, device_id: u16) -> Self {
        let ids = Type0Header {
            vendor_id,
            device_id,
            revision_id: 0,
            class_code: class::HOST_BRIDGE,
            subsystem_vendor_id: vendor_id,
            subsystem_id: 0x1100,
            interrupt_pin: 0,
            multi_function: false,
        };
        Self {
            space: ConfigSpace::new_type0(ConfigSize::Conventional, &ids),
        }
    }

    /// The bridge's config registers as the guest sees them.
    pub fn config_space(&self) -> &ConfigSpace {
        &self.space
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new(DEFAULT_VENDOR_ID, DEFAULT_DEVICE_ID)
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u16, width: AccessWidth) -> u32 {
        self.space.read(offset, width)
    }

    fn config_write(&mut self, offset: u16, width: AccessWidth, value: u32) {
        self.space.write(offset, width, value);
    }

    fn bar_layout(&self) -> &BarLayout {
        self.space.bar_layout()
    }

    fn bar_read(
        &mut self,
        bar: BarIndex,
        _offset: u64,
        _data: &mut [u8],
    ) -> Result<(), FunctionError> {
        Err(FunctionError::NoSuchBar { bar })
    }

    fn bar_write(
        &mut self,
        bar: BarIndex,
        _offset: u64,
        _data: &[u8],
    ) -> Result<(), FunctionError> {
        Err(FunctionError::NoSuchBar { bar })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::regs::header;

    #[test]
    fn identifies_as_a_host_bridge_without_bars() {
        let mut bridge = HostBridge::default();
        assert_eq!(
            bridge.config_read(header::VENDOR_ID, AccessWidth::Dword),
            0x0008_1b36
        );
        assert_eq!(
            bridge.config_read(header::REVISION_ID, AccessWidth::Dword) >> 8,
            0x06_00_00
        );
        assert!(bridge.bar_layout().is_empty());
        for i in 0..6 {
            bridge.config_write(header::bar(i), AccessWidth::Dword, u32::MAX);
            assert_eq!(bridge.config_read(header::bar(i), AccessWidth::Dword), 0);
        }
        let mut data = [0u8; 4];
        assert!(bridge
            .bar_read(BarIndex::new(0).unwrap(), 0, &mut data)
            .is_err());
    }
}
