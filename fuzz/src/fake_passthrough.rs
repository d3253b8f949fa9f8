//! The passthrough device the targets serve: vpci's `FakeDevice` (config image and plain
//! memory) behind [`CheckedDevice`], which fails the input on any call outside the
//! `PassthroughDevice` contract, so "nothing out of range reaches the device" is checked
//! on every access. [`e1000e`] and [`ahci`] give it the shapes of the rig's devices.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use udriver::vfio::{IrqAction, IrqData, IrqIndex};
use vpci::passthrough::fake_device::FakeDevice;
use vpci::passthrough::{DeviceError, DeviceRegion};
use vpci::{BarIndex, PassthroughDevice, PassthroughFunction};

/// A fake device whose every access is checked against the seam's contract.
#[derive(Debug)]
pub struct CheckedDevice(pub FakeDevice);

impl CheckedDevice {
    fn config_access(&self, offset: u16, len: usize) {
        assert!(matches!(len, 1 | 2 | 4), "config access of {len} bytes");
        assert_eq!(
            usize::from(offset) % len,
            0,
            "unaligned config access at {offset:#x}"
        );
        assert!(
            usize::from(offset) + len <= self.0.config_len(),
            "config access at {offset:#x}+{len} past {:#x}",
            self.0.config_len()
        );
    }

    fn region_access(&self, index: BarIndex, offset: u64, len: usize) {
        let region = self
            .0
            .region(index)
            .unwrap_or_else(|| panic!("{index} is not implemented, yet accessed"));
        assert!(len > 0, "empty access to {index}");
        assert!(
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= region.size),
            "{index} access at {offset:#x}+{len} past its {:#x} bytes",
            region.size
        );
    }
}

impl PassthroughDevice for CheckedDevice {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn config_len(&self) -> usize {
        self.0.config_len()
    }

    fn read_config(&self, offset: u16, data: &mut [u8]) -> Result<(), DeviceError> {
        self.config_access(offset, data.len());
        self.0.read_config(offset, data)
    }

    fn write_config(&self, offset: u16, data: &[u8]) -> Result<(), DeviceError> {
        self.config_access(offset, data.len());
        self.0.write_config(offset, data)
    }

    fn region(&self, index: BarIndex) -> Option<DeviceRegion> {
        self.0.region(index)
    }

    fn read_region(
        &self,
        index: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.region_access(index, offset, data.len());
        self.0.read_region(index, offset, data)
    }

    fn write_region(&self, index: BarIndex, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.region_access(index, offset, data.len());
        self.0.write_region(index, offset, data)
    }

    fn irq_count(&self, index: IrqIndex) -> u32 {
        self.0.irq_count(index)
    }

    fn wire_irqs(&self, index: IrqIndex, eventfds: &[BorrowedFd<'_>]) -> Result<(), DeviceError> {
        assert!(
            eventfds.len() <= self.0.irq_count(index) as usize,
            "{} vectors wired on {index}, which has {}",
            eventfds.len(),
            self.0.irq_count(index)
        );
        self.0.wire_irqs(index, eventfds)
    }

    fn disable_irqs(&self, index: IrqIndex) -> Result<(), DeviceError> {
        self.0.disable_irqs(index)
    }

    fn unmask_intx(&self) -> Result<(), DeviceError> {
        self.0.unmask_intx()
    }

    fn set_irqs(
        &self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<(), DeviceError> {
        // Passed on as the client sent it; the fake refuses ranges VFIO would.
        self.0.set_irqs(index, action, start, data)
    }

    fn can_reset(&self) -> bool {
        self.0.can_reset()
    }

    fn reset(&self) -> Result<(), DeviceError> {
        self.0.reset()
    }

    fn mmap_fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.mmap_fd()
    }
}

/// A region's bytes before anything is written.
pub fn region_byte(offset: u64) -> u8 {
    (offset as u8) ^ ((offset >> 8) as u8) ^ 0xa5
}

fn put(image: &mut [u8], offset: usize, bytes: &[u8]) {
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// The rig's e1000e as VFIO shows it: PCI Express, PM -> MSI (64-bit) -> PCIe -> MSI-X
/// (5 vectors, table in BAR3) -> vendor-specific, AER -> SR-IOV -> DSN, BAR0/1 memory,
/// BAR2 IO, BAR3 memory, a ROM.
pub fn e1000e() -> CheckedDevice {
    let mut c = vec![0u8; 4096];
    put(&mut c, 0x00, &[0x86, 0x80, 0xd3, 0x10]);
    put(&mut c, 0x04, &0x0006u16.to_le_bytes());
    put(&mut c, 0x06, &0x0010u16.to_le_bytes());
    put(&mut c, 0x09, &[0x00, 0x00, 0x02]);
    for (offset, value) in [
        (0x10, 0xfebc_0000u32),
        (0x14, 0xfeb8_0000),
        (0x18, 0x0000_c001),
        (0x1c, 0xfebe_0000),
        (0x30, 0xfeb4_0000),
    ] {
        put(&mut c, offset, &value.to_le_bytes());
    }
    c[0x34] = 0xc8;
    c[0x3d] = 1;
    put(&mut c, 0xc8, &[0x01, 0xd0, 0x23, 0x00]);
    put(&mut c, 0xd0, &[0x05, 0xe0, 0x80, 0x00]);
    put(&mut c, 0xe0, &[0x10, 0xa0, 0x02, 0x00]);
    put(&mut c, 0xe4, &0x0000_8cc1u32.to_le_bytes());
    put(&mut c, 0xa0, &[0x11, 0xf0, 0x04, 0x00]);
    put(&mut c, 0xa4, &0x0000_0003u32.to_le_bytes());
    put(&mut c, 0xa8, &0x0000_2003u32.to_le_bytes());
    put(&mut c, 0xf0, &[0x09, 0x00, 0x08, 0x42]);
    let ext = |id: u32, version: u32, next: u32| (id | version << 16 | next << 20).to_le_bytes();
    put(&mut c, 0x100, &ext(0x0001, 2, 0x140));
    put(&mut c, 0x140, &ext(0x0010, 1, 0x180));
    put(&mut c, 0x180, &ext(0x0003, 1, 0));
    let mut device = FakeDevice::new("0000:00:04.0", c)
        .with_region(0, 0x2_0000, false, region_byte)
        .with_region(1, 0x1000, false, region_byte)
        .with_region(2, 0x20, true, region_byte)
        .with_region(3, 0x4000, false, region_byte)
        .with_region(6, 0x4000, false, region_byte);
    device.irq_counts = [1, 1, 5];
    CheckedDevice(device)
}

/// The rig's ich9-ahci as VFIO shows it: conventional config, BAR4 IO, BAR5 ABAR, MSI
/// with 4 maskable vectors of which VFIO offers 1, SATA and vendor-specific capabilities.
pub fn ahci() -> CheckedDevice {
    let mut c = vec![0u8; 256];
    put(&mut c, 0x00, &[0x86, 0x80, 0x22, 0x29]);
    put(&mut c, 0x06, &0x0010u16.to_le_bytes());
    put(&mut c, 0x09, &[0x01, 0x06, 0x01]);
    put(&mut c, 0x20, &0x0000_c041u32.to_le_bytes());
    put(&mut c, 0x24, &0xfebf_1000u32.to_le_bytes());
    c[0x34] = 0x80;
    c[0x3d] = 1;
    put(&mut c, 0x80, &[0x05, 0xa8, 0x04, 0x01]);
    put(&mut c, 0xa8, &[0x12, 0xb0, 0x10, 0x00]);
    put(&mut c, 0xb0, &[0x09, 0x00, 0x0c, 0x00]);
    let mut device = FakeDevice::new("0000:00:06.0", c)
        .with_region(4, 0x20, true, region_byte)
        .with_region(5, 0x1000, false, region_byte);
    device.irq_counts = [1, 1, 0];
    CheckedDevice(device)
}

/// Device bytes a guest or client must never change through the function: the IDs,
/// BARs and ROM BAR, the decode enables, and `ranges` (its MSI/MSI-X registers).
pub fn protected_bytes(device: &FakeDevice, ranges: &[(usize, usize)]) -> Vec<u8> {
    let config = device.config.lock().unwrap();
    let mut out = config[0x00..0x04].to_vec();
    out.extend_from_slice(&config[0x10..0x28]);
    out.extend_from_slice(&config[0x30..0x34]);
    out.push(config[0x04] & 0x03);
    for &(start, end) in ranges {
        out.extend_from_slice(&config[start..end.min(config.len())]);
    }
    out
}

/// A served function over [`e1000e`] (`ahci` when true), the device behind it, and
/// the byte ranges of its MSI and MSI-X capabilities (for [`protected_bytes`]).
pub fn served_function(
    ahci_shape: bool,
) -> (
    Arc<CheckedDevice>,
    PassthroughFunction<Arc<CheckedDevice>>,
    Vec<(usize, usize)>,
) {
    let device = Arc::new(if ahci_shape { ahci() } else { e1000e() });
    let function =
        PassthroughFunction::new(device.clone()).expect("the fake device builds a function");
    let space = function.config_space();
    // MSI (id 0x05) with 64-bit addresses is 10 bytes of registers; MSI-X (0x11) 12.
    let msi = [(0x05u8, 10usize), (0x11, 12)]
        .into_iter()
        .filter_map(|(id, len)| {
            space
                .find_capability(id)
                .map(|at| (usize::from(at), usize::from(at) + len))
        })
        .collect();
    (device, function, msi)
}
