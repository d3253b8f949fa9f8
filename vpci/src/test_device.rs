//! `TestDevice`: a configurable emulated function for exercising the bus the way a
//! guest does.
//!
//! It implements whatever BARs, ROM and capabilities its [`TestDeviceConfig`] asks for
//! (power management, MSI, MSI-X, PCI Express, and AER, serial-number and
//! vendor-specific extended capabilities), keeps its BARs as sparse memory, and logs
//! every BAR access so a test can check that an access landed in the right BAR at the
//! right offset. Bytes never written read as [`TestDevice::unwritten_byte`].

use std::any::Any;
use std::collections::HashMap;

use crate::bar::{BarDefinition, BarIndex, BarKind, BarLayout};
use crate::bus::function::{check_bar_access, FunctionError, PciFunction};
use crate::config::access_width::AccessWidth;
use crate::config::regs::{aer, cap, class, dsn, exp, ext_cap, pm, vsec};
use crate::config::space::{ConfigSize, ConfigSpace, ConfigSpaceError, RegisterMask, Type0Header};
use crate::interrupt::message::MessageInterrupts;
use crate::interrupt::msi::{MsiCapability, MsiConfig};
use crate::interrupt::msix::{MsixCapability, MsixConfig};
use crate::interrupt::routing::{InterruptKind, MsiMessage, MsiRouting};

/// Most distinct BAR bytes a test device remembers; writes beyond are logged, not kept.
const MAX_STORED_BYTES: usize = 1 << 20;

/// An extended capability for the test device to implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestExtendedCapability {
    /// Advanced Error Reporting, with write-1-to-clear status registers.
    AdvancedErrorReporting,
    /// Device Serial Number with this serial.
    SerialNumber(u64),
    /// Vendor-specific capability of `len` bytes with this VSEC ID.
    VendorSpecific {
        /// The vendor's ID for the capability's layout.
        vsec_id: u16,
        /// Length in bytes, headers included.
        len: u16,
    },
}

/// What a [`TestDevice`] implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestDeviceConfig {
    /// IDs, class, interrupt pin, multi-function bit.
    pub header: Type0Header,
    /// BARs to implement; each index once.
    pub bars: Vec<(BarIndex, BarDefinition)>,
    /// Expansion ROM size in bytes, if any.
    pub rom_size: Option<u64>,
    /// Add a PCI Power Management capability (version 1.2).
    pub power_management: bool,
    /// Add an MSI capability laid out so.
    pub msi: Option<MsiConfig>,
    /// Add an MSI-X capability, its table and PBA in the BARs named.
    pub msix: Option<MsixConfig>,
    /// Add a PCI Express capability (root complex integrated endpoint) and make config
    /// space 4 KiB; required for extended capabilities.
    pub pci_express: bool,
    /// Extended capabilities, in list order (needs `pci_express`).
    pub extended: Vec<TestExtendedCapability>,
}

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).expect("BAR indices 0..=5 are valid")
}

impl TestDeviceConfig {
    /// A plain conventional function with IDs and nothing else.
    pub fn minimal(vendor_id: u16, device_id: u16) -> Self {
        Self {
            header: Type0Header {
                vendor_id,
                device_id,
                revision_id: 1,
                class_code: class::UNCLASSIFIED_OTHER,
                subsystem_vendor_id: vendor_id,
                subsystem_id: device_id,
                interrupt_pin: 1,
                multi_function: false,
            },
            bars: Vec::new(),
            rom_size: None,
            power_management: false,
            msi: None,
            msix: None,
            pci_express: false,
            extended: Vec::new(),
        }
    }

    /// A function with one BAR of each kind, a ROM, and every supported capability:
    /// BAR0 I/O 0x20, BAR1 mem32 0x1000, BAR2+3 mem64 prefetchable 0x4000 (MSI-X
    /// table at 0x0, PBA at 0x3000, 8 vectors), BAR4+5 mem64 non-prefetchable 8 GiB,
    /// ROM 64 KiB; PM, MSI (4 vectors, 64-bit, maskable), MSI-X, PCIe; AER, serial
    /// number, vendor-specific.
    pub fn full(vendor_id: u16, device_id: u16) -> Self {
        let mut config = Self::minimal(vendor_id, device_id);
        config.bars = vec![
            (bar(0), BarDefinition::new(BarKind::Io, 0x20)),
            (
                bar(1),
                BarDefinition::new(
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                    0x1000,
                ),
            ),
            (
                bar(2),
                BarDefinition::new(BarKind::Memory64 { prefetchable: true }, 0x4000),
            ),
            (
                bar(4),
                BarDefinition::new(
                    BarKind::Memory64 {
                        prefetchable: false,
                    },
                    8 << 30,
                ),
            ),
        ];
        config.rom_size = Some(0x1_0000);
        config.power_management = true;
        config.msi = Some(MsiConfig {
            vectors: 4,
            is_64bit: true,
            per_vector_mask: true,
        });
        config.msix = Some(MsixConfig {
            vectors: 8,
            table_bar: bar(2),
            table_offset: 0,
            pba_bar: bar(2),
            pba_offset: 0x3000,
        });
        config.pci_express = true;
        config.extended = vec![
            TestExtendedCapability::AdvancedErrorReporting,
            TestExtendedCapability::SerialNumber(0x0123_4567_89ab_cdef),
            TestExtendedCapability::VendorSpecific {
                vsec_id: 0x1234,
                len: 0x10,
            },
        ];
        config
    }
}

/// Direction of a logged BAR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// The guest read.
    Read,
    /// The guest wrote.
    Write,
}

/// One BAR access the test device served (MSI-X table/PBA accesses included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarAccess {
    /// Read or write.
    pub kind: AccessKind,
    /// The BAR accessed.
    pub bar: BarIndex,
    /// Byte offset within the BAR.
    pub offset: u64,
    /// Bytes written, or bytes returned by the read.
    pub data: Vec<u8>,
}

/// A configurable emulated function for tests.
#[derive(Debug)]
pub struct TestDevice {
    space: ConfigSpace,
    interrupts: MessageInterrupts,
    memory: HashMap<(BarIndex, u64), u8>,
    accesses: Vec<BarAccess>,
}

impl TestDevice {
    /// Build the function; fails if the configuration cannot be laid out.
    pub fn new(config: &TestDeviceConfig) -> Result<Self, ConfigSpaceError> {
        let size = if config.pci_express {
            ConfigSize::Extended
        } else {
            ConfigSize::Conventional
        };
        if !config.extended.is_empty() && !config.pci_express {
            return Err(ConfigSpaceError::NotExtended);
        }
        let mut space = ConfigSpace::new_type0(size, &config.header);
        for (index, definition) in &config.bars {
            space.set_bar(*index, *definition)?;
        }
        if let Some(size) = config.rom_size {
            space.set_rom(size)?;
        }
        if config.power_management {
            add_power_management(&mut space)?;
        }
        let msi = config
            .msi
            .map(|c| MsiCapability::add(&mut space, c))
            .transpose()?;
        let msix = config
            .msix
            .map(|c| MsixCapability::add(&mut space, c))
            .transpose()?;
        if config.pci_express {
            add_pci_express(&mut space)?;
        }
        for capability in &config.extended {
            add_extended(&mut space, *capability)?;
        }
        Ok(Self {
            space,
            interrupts: MessageInterrupts::new(msi, msix),
            memory: HashMap::new(),
            accesses: Vec::new(),
        })
    }

    /// What a never-written byte at `offset` of `bar` reads as: a pattern that differs
    /// per BAR and per offset, so a misrouted read is visible.
    pub fn unwritten_byte(bar: BarIndex, offset: u64) -> u8 {
        (offset as u8) ^ (bar.get() << 5) ^ 0x5a
    }

    /// Its config registers as the guest sees them.
    pub fn config_space(&self) -> &ConfigSpace {
        &self.space
    }

    /// The MSI capability, if configured.
    pub fn msi(&self) -> Option<&MsiCapability> {
        self.interrupts.msi()
    }

    /// The MSI-X capability, if configured.
    pub fn msix(&self) -> Option<&MsixCapability> {
        self.interrupts.msix()
    }

    /// Every BAR access served so far, oldest first.
    pub fn accesses(&self) -> &[BarAccess] {
        &self.accesses
    }

    /// The logged BAR accesses, clearing the log.
    pub fn take_accesses(&mut self) -> Vec<BarAccess> {
        std::mem::take(&mut self.accesses)
    }

    /// Fire a vector. Returns the message to send, or `None` if that mechanism is not
    /// implemented or not enabled, or the vector is masked (then it becomes pending
    /// and is sent by a later unmask, see [`take_delivered`](Self::take_delivered)).
    pub fn signal(&mut self, kind: InterruptKind, vector: u16) -> Option<MsiMessage> {
        self.interrupts.signal(&mut self.space, kind, vector)
    }

    /// Messages sent because a guest unmasked a pending vector, clearing the list.
    pub fn take_delivered(&mut self) -> Vec<MsiMessage> {
        self.interrupts.take_unmasked()
    }
}

impl PciFunction for TestDevice {
    fn config_read(&mut self, offset: u16, width: AccessWidth) -> u32 {
        self.space.read(offset, width)
    }

    fn config_write(&mut self, offset: u16, width: AccessWidth, value: u32) {
        self.space.write(offset, width, value);
        self.interrupts
            .config_written(&mut self.space, offset, width);
    }

    fn bar_layout(&self) -> &BarLayout {
        self.space.bar_layout()
    }

    fn bar_read(
        &mut self,
        bar: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), FunctionError> {
        check_bar_access(self.space.bar_layout(), bar, offset, data.len())?;
        if !self.interrupts.bar_read(bar, offset, data) {
            for (i, byte) in data.iter_mut().enumerate() {
                let at = offset + i as u64;
                *byte = self
                    .memory
                    .get(&(bar, at))
                    .copied()
                    .unwrap_or_else(|| Self::unwritten_byte(bar, at));
            }
        }
        self.accesses.push(BarAccess {
            kind: AccessKind::Read,
            bar,
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn bar_write(&mut self, bar: BarIndex, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        check_bar_access(self.space.bar_layout(), bar, offset, data.len())?;
        // ROMs are read-only: a write there is logged and dropped.
        let dropped_or_trapped =
            bar.is_rom() || self.interrupts.bar_write(&self.space, bar, offset, data);
        if !dropped_or_trapped {
            for (i, byte) in data.iter().enumerate() {
                let key = (bar, offset + i as u64);
                if self.memory.len() < MAX_STORED_BYTES || self.memory.contains_key(&key) {
                    self.memory.insert(key, *byte);
                }
            }
        }
        self.accesses.push(BarAccess {
            kind: AccessKind::Write,
            bar,
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn take_msi_routing(&mut self) -> Vec<MsiRouting> {
        self.interrupts.take_routing()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn add_power_management(space: &mut ConfigSpace) -> Result<(), ConfigSpaceError> {
    let o = space.add_capability(cap::POWER_MANAGEMENT, pm::SIZE)?;
    space.set(
        o + pm::CAPABILITIES,
        AccessWidth::Word,
        pm::CAPABILITIES_VERSION_1_2.into(),
    )?;
    let control = RegisterMask {
        writable: (pm::CONTROL_POWER_STATE_MASK | pm::CONTROL_PME_ENABLE).into(),
        write_one_to_clear: pm::CONTROL_PME_STATUS.into(),
    };
    space.define(
        o + pm::CONTROL_STATUS,
        AccessWidth::Word,
        pm::CONTROL_NO_SOFT_RESET.into(),
        control,
    )
}

fn add_pci_express(space: &mut ConfigSpace) -> Result<(), ConfigSpaceError> {
    let o = space.add_capability(cap::PCI_EXPRESS, exp::SIZE_V2)?;
    let flags = exp::FLAGS_VERSION_2 | (exp::TYPE_RC_INTEGRATED_ENDPOINT << exp::FLAGS_TYPE_SHIFT);
    space.set(o + exp::FLAGS, AccessWidth::Word, flags.into())?;
    // Device control: error reporting enables, relaxed ordering, max payload/read
    // request sizes, no-snoop; initiate-FLR is not offered.
    space.define(
        o + exp::DEVICE_CONTROL,
        AccessWidth::Word,
        0x2810,
        RegisterMask::writable(0x7fff),
    )?;
    space.define(
        o + exp::DEVICE_STATUS,
        AccessWidth::Word,
        0,
        RegisterMask::write_one_to_clear(exp::DEVICE_STATUS_ERROR_BITS.into()),
    )?;
    space.define(
        o + exp::DEVICE_CONTROL_2,
        AccessWidth::Word,
        0,
        RegisterMask::writable(0x001f),
    )
}

fn add_extended(
    space: &mut ConfigSpace,
    capability: TestExtendedCapability,
) -> Result<(), ConfigSpaceError> {
    match capability {
        TestExtendedCapability::AdvancedErrorReporting => {
            let o =
                space.add_extended_capability(ext_cap::ADVANCED_ERROR_REPORTING, 2, aer::SIZE)?;
            let w1c = |errors| RegisterMask::write_one_to_clear(errors);
            let rw = |errors| RegisterMask::writable(errors);
            space.define(
                o + aer::UNCORRECTABLE_STATUS,
                AccessWidth::Dword,
                0,
                w1c(aer::UNCORRECTABLE_ERRORS),
            )?;
            space.define(
                o + aer::UNCORRECTABLE_MASK,
                AccessWidth::Dword,
                0,
                rw(aer::UNCORRECTABLE_ERRORS),
            )?;
            space.define(
                o + aer::UNCORRECTABLE_SEVERITY,
                AccessWidth::Dword,
                0x0046_2030,
                rw(aer::UNCORRECTABLE_ERRORS),
            )?;
            space.define(
                o + aer::CORRECTABLE_STATUS,
                AccessWidth::Dword,
                0,
                w1c(aer::CORRECTABLE_ERRORS),
            )?;
            space.define(
                o + aer::CORRECTABLE_MASK,
                AccessWidth::Dword,
                0x2000,
                rw(aer::CORRECTABLE_ERRORS),
            )
        }
        TestExtendedCapability::SerialNumber(serial) => {
            let o = space.add_extended_capability(ext_cap::DEVICE_SERIAL_NUMBER, 1, dsn::SIZE)?;
            space.set(o + dsn::SERIAL_LO, AccessWidth::Dword, serial as u32)?;
            space.set(
                o + dsn::SERIAL_HI,
                AccessWidth::Dword,
                (serial >> 32) as u32,
            )
        }
        TestExtendedCapability::VendorSpecific { vsec_id, len } => {
            let o = space.add_extended_capability(ext_cap::VENDOR_SPECIFIC, 1, len)?;
            let header = u32::from(vsec_id) | (1 << 16) | (u32::from(len) << vsec::LENGTH_SHIFT);
            space.set(o + vsec::HEADER, AccessWidth::Dword, header)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::regs::{header, msix};

    #[test]
    fn full_device_lists_every_capability() {
        let device = TestDevice::new(&TestDeviceConfig::full(0x1234, 0x5678)).unwrap();
        let ids: Vec<u8> = device
            .config_space()
            .capabilities()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            ids,
            vec![cap::POWER_MANAGEMENT, cap::MSI, cap::MSIX, cap::PCI_EXPRESS]
        );
        let ext: Vec<u16> = device
            .config_space()
            .extended_capabilities()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            ext,
            vec![
                ext_cap::ADVANCED_ERROR_REPORTING,
                ext_cap::DEVICE_SERIAL_NUMBER,
                ext_cap::VENDOR_SPECIFIC
            ]
        );
        let layout = device.bar_layout();
        assert_eq!(layout.iter().count(), 5);
        assert_eq!(layout.rom_size(), Some(0x1_0000));
    }

    #[test]
    fn bar_memory_logs_and_remembers() {
        let mut device = TestDevice::new(&TestDeviceConfig::full(0x1234, 0x5678)).unwrap();
        let b1 = bar(1);
        device.bar_write(b1, 0x10, &[1, 2, 3, 4]).unwrap();
        let mut data = [0u8; 6];
        device.bar_read(b1, 0x0e, &mut data).unwrap();
        assert_eq!(
            data,
            [
                TestDevice::unwritten_byte(b1, 0x0e),
                TestDevice::unwritten_byte(b1, 0x0f),
                1,
                2,
                3,
                4
            ]
        );
        assert_eq!(
            device.accesses()[0],
            BarAccess {
                kind: AccessKind::Write,
                bar: b1,
                offset: 0x10,
                data: vec![1, 2, 3, 4]
            }
        );
        assert!(device.bar_read(b1, 0xffe, &mut data).is_err());
        assert!(
            device.bar_read(bar(3), 0, &mut data).is_err(),
            "upper half of a 64-bit BAR"
        );
        assert_ne!(
            TestDevice::unwritten_byte(b1, 0),
            TestDevice::unwritten_byte(bar(2), 0)
        );
    }

    #[test]
    fn msix_table_in_bar_drives_routing() {
        let mut device = TestDevice::new(&TestDeviceConfig::full(0x1234, 0x5678)).unwrap();
        let o = device.msix().unwrap().offset();
        device
            .bar_write(bar(2), 0x10, &0xfee0_0000u64.to_le_bytes())
            .unwrap();
        device
            .bar_write(bar(2), 0x18, &0x61u32.to_le_bytes())
            .unwrap();
        device.bar_write(bar(2), 0x1c, &0u32.to_le_bytes()).unwrap();
        device.config_write(
            o + msix::CONTROL,
            AccessWidth::Word,
            msix::CONTROL_ENABLE.into(),
        );
        let routing = device.take_msi_routing();
        let enabled: Vec<u16> = routing
            .iter()
            .filter(|r| r.deliverable())
            .map(|r| r.vector)
            .collect();
        assert_eq!(enabled, vec![1]);
        assert_eq!(
            device.signal(InterruptKind::MsiX, 1),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x61
            })
        );
        assert_eq!(device.signal(InterruptKind::MsiX, 2), None);
        device.bar_write(bar(2), 0x2c, &0u32.to_le_bytes()).unwrap();
        assert_eq!(
            device.take_delivered(),
            vec![MsiMessage {
                address: 0,
                data: 0
            }]
        );
    }

    #[test]
    fn w1c_bits_in_capabilities() {
        let mut device = TestDevice::new(&TestDeviceConfig::full(0x1234, 0x5678)).unwrap();
        let aer_at = device
            .config_space()
            .find_extended_capability(ext_cap::ADVANCED_ERROR_REPORTING)
            .unwrap();
        device
            .space
            .set(aer_at + aer::CORRECTABLE_STATUS, AccessWidth::Dword, 0x41)
            .unwrap();
        device.config_write(aer_at + aer::CORRECTABLE_STATUS, AccessWidth::Dword, 0x1);
        assert_eq!(
            device.config_read(aer_at + aer::CORRECTABLE_STATUS, AccessWidth::Dword),
            0x40
        );
        let pm_at = device
            .config_space()
            .find_capability(cap::POWER_MANAGEMENT)
            .unwrap();
        device.config_write(pm_at + pm::CONTROL_STATUS, AccessWidth::Word, 0xffff);
        assert_eq!(
            device.config_read(pm_at + pm::CONTROL_STATUS, AccessWidth::Word) as u16,
            pm::CONTROL_NO_SOFT_RESET | pm::CONTROL_PME_ENABLE | 0x3
        );
    }

    #[test]
    fn configurations_that_cannot_be_laid_out_are_refused() {
        let mut config = TestDeviceConfig::minimal(1, 2);
        config.extended = vec![TestExtendedCapability::SerialNumber(1)];
        assert!(matches!(
            TestDevice::new(&config),
            Err(ConfigSpaceError::NotExtended)
        ));
        let mut config = TestDeviceConfig::full(1, 2);
        config
            .bars
            .push((bar(3), BarDefinition::new(BarKind::Io, 0x10)));
        assert!(TestDevice::new(&config).is_err());
        let minimal = TestDevice::new(&TestDeviceConfig::minimal(1, 2)).unwrap();
        assert_eq!(minimal.config_space().len(), 256);
        assert_eq!(minimal.config_space().u16_at(header::VENDOR_ID), 1);
    }
}
