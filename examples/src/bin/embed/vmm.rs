//! `Vmm`: the VMM side of embedding vpci — what a VMM's exit handler, interrupt
//! path and DMA path call. Everything the guest does to the device goes through it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dma::{
    BusSgList, DmaAccess, DmaMemory, DmaPolicy, GuestMemoryRegion, GuestPhysAddr, GuestSgList,
    Iova, IovaAllocator, IovaRange, PagePreference, StrictPolicy,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use udriver::pci::{is_vfio_driver, PciAddress, PciDevice, SysfsRoot};
use udriver::vfio::{VfioContainer, VfioGroup};
use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};
use vpci::{AccessTarget, BusConfig, BusEvent, DevFn, MsiMessage, VirtualBus};

/// Guest RAM starts at guest-physical 0.
pub const RAM_BASE: u64 = 0;
/// Bus addresses handed to the device lie in [1 MiB, 4 GiB): never 0, and reachable
/// by 32-bit DMA engines.
const IOVA_WINDOW: (u64, u64) = (0x10_0000, 0x1_0000_0000);

/// What the VMM injects into the guest after an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Write `data` to `address`: the guest's MSI/MSI-X message.
    Msi(MsiMessage),
    /// The function's INTx line is asserted (level): raise its GSI until the guest's EOI.
    Intx,
}

/// One guest with one passthrough function on its virtual PCI bus.
pub struct Vmm {
    bus: VirtualBus,
    devfn: DevFn,
    policy: StrictPolicy<VfioContainer>,
    /// The guest's RAM, shared with the policy, which keeps it while the device may
    /// reach it. A real VMM shares a memfd with the guest (`dma::FdMemory`); anonymous
    /// memory behaves the same for DMA.
    ram: Arc<DmaMemory>,
}

impl Vmm {
    /// Claim `address` (already on vfio-pci: `udrv attach`), put it at `devfn` on a new
    /// bus, and register `ram_bytes` of guest RAM for DMA under the strict
    /// per-request policy.
    pub fn new(address: PciAddress, devfn: DevFn, ram_bytes: usize) -> Result<Vmm> {
        let name = address.to_string();
        let pci = PciDevice::read(&SysfsRoot::system(), address)?;
        if !pci.driver.as_deref().is_some_and(is_vfio_driver) {
            bail!(
                "{name} is on {:?}, not vfio-pci; hand it over first: udrv attach {name}",
                pci.driver
            );
        }
        let group_id = pci
            .iommu_group
            .with_context(|| format!("{name} has no IOMMU group: boot with intel_iommu=on"))?;
        let container = VfioContainer::open()?;
        let group = VfioGroup::open(group_id)?;
        container.attach(&group)?;
        let device = VfioPassthroughDevice::new(group.open_device(&name)?)?;
        let function = PassthroughFunction::new(device)?;
        let mut bus = VirtualBus::new(BusConfig::default())?;
        bus.add_function(devfn, Box::new(function))?;

        let window = usable_window(&container)?;
        let iovas = Arc::new(IovaAllocator::new(&window)?);
        let policy = StrictPolicy::new(container, iovas);
        let ram = Arc::new(DmaMemory::allocate_with(
            ram_bytes,
            PagePreference::SmallOnly,
        )?);
        policy.add_region(GuestMemoryRegion::new(GuestPhysAddr(RAM_BASE), ram.clone()))?;
        let mut vmm = Vmm {
            bus,
            devfn,
            policy,
            ram,
        };
        vmm.process_bus_events();
        Ok(vmm)
    }

    /// The guest's RAM, as its CPUs see it (offset = guest-physical address).
    pub fn ram(&self) -> &DmaMemory {
        &self.ram
    }

    /// The ECAM address of config register `register` of the function, for the guest.
    pub fn ecam_address(&self, register: u16) -> u64 {
        self.bus.ecam_window().base + (u64::from(self.devfn.raw()) << 12) + u64::from(register)
    }

    /// A config dword through the legacy 0xCF8/0xCFC mechanism: latch the address,
    /// read the data port.
    pub fn legacy_config_read(&mut self, register: u16) -> Result<u32> {
        let latch = 0x8000_0000 | (u32::from(self.devfn.raw()) << 8) | u32::from(register & 0xfc);
        self.pio_write(0xcf8, &latch.to_le_bytes())?;
        let mut b = [0u8; 4];
        self.pio_read(0xcfc, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn function(&mut self) -> Result<&mut PassthroughFunction> {
        self.bus
            .function_as::<PassthroughFunction>(self.devfn)
            .context("the passthrough function is gone")
    }

    /// Exit handler: the guest read `data.len()` bytes at guest-physical `address`
    /// (ECAM or a BAR). Unclaimed addresses read all-ones, as on real hardware.
    pub fn mmio_read(&mut self, address: u64, data: &mut [u8]) -> Result<AccessTarget> {
        let target = self.bus.mmio_read(address, data);
        self.after_exit();
        Ok(target?)
    }

    /// Exit handler: the guest wrote `data` at guest-physical `address`.
    pub fn mmio_write(&mut self, address: u64, data: &[u8]) -> Result<AccessTarget> {
        let target = self.bus.mmio_write(address, data);
        self.after_exit();
        Ok(target?)
    }

    /// Exit handler for IO ports (0xCF8/0xCFC config cycles and IO BARs).
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> Result<AccessTarget> {
        let target = self.bus.pio_read(port, data);
        self.after_exit();
        Ok(target?)
    }

    /// Exit handler for IO port writes.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Result<AccessTarget> {
        let target = self.bus.pio_write(port, data);
        self.after_exit();
        Ok(target?)
    }

    fn after_exit(&mut self) {
        self.process_bus_events();
        if let Ok(f) = self.function() {
            for e in f.take_errors() {
                println!("vmm: device error: {e}");
            }
        }
    }

    /// Act on what the guest's last accesses changed. A VMM with a hypervisor maps a
    /// BAR's direct areas into the guest (a KVM memory slot over an mmap of the device
    /// fd at the region's `fd_offset` + area offset) and points an irqfd at each
    /// deliverable vector's eventfd; here the trapped path serves everything, so this
    /// only reports.
    pub fn process_bus_events(&mut self) {
        for event in self.bus.take_events() {
            match event {
                BusEvent::BarMapped(d) => {
                    let areas = self
                        .function()
                        .map(|f| f.direct_areas(d.bar))
                        .unwrap_or_default();
                    let direct: Vec<String> = areas
                        .iter()
                        .map(|a| format!("{:#x}+{:#x}", d.base + a.offset, a.size))
                        .collect();
                    println!(
                        "vmm: {} {} decodes {:?} {:#x}+{:#x}; directly mappable: [{}]",
                        d.devfn,
                        d.bar,
                        d.space,
                        d.base,
                        d.size,
                        direct.join(", ")
                    );
                }
                BusEvent::BarUnmapped(d) => {
                    println!("vmm: {} {} no longer decodes {:#x}", d.devfn, d.bar, d.base)
                }
                BusEvent::MsiRouting { devfn, routing } if routing.enabled => {
                    println!("vmm: {devfn} {routing}")
                }
                BusEvent::MsiRouting { .. } => {}
            }
        }
    }

    /// The live vectors' eventfds, for a VMM that hands them to irqfds or its own
    /// event loop: (description, fd).
    pub fn interrupt_eventfds(&mut self) -> Result<Vec<(String, i32)>> {
        let f = self.function()?;
        let mut fds: Vec<(String, i32)> = f
            .vectors()
            .iter()
            .map(|v| {
                let r = v.routing;
                (
                    format!("{} vector {}", r.kind, r.vector),
                    v.eventfd.as_raw_fd(),
                )
            })
            .collect();
        if let Some(fd) = f.intx_eventfd() {
            fds.push(("INTx".to_string(), fd.as_raw_fd()));
        }
        Ok(fds)
    }

    /// Wait up to `timeout` for the device to interrupt; returns what to inject.
    pub fn wait_for_interrupt(&mut self, timeout: Duration) -> Result<Vec<Injection>> {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.function()?;
            let mut injections: Vec<Injection> =
                f.take_messages().into_iter().map(Injection::Msi).collect();
            if f.intx_fired() {
                injections.push(Injection::Intx);
            }
            if !injections.is_empty() {
                return Ok(injections);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no interrupt from the device within {timeout:?}");
            }
            let vectors = f.vectors();
            let mut fds: Vec<BorrowedFd<'_>> = vectors.iter().map(|v| v.eventfd.as_fd()).collect();
            fds.extend(f.intx_eventfd().map(|e| e.as_fd()));
            if fds.is_empty() {
                bail!("the guest enabled no interrupt the device can raise");
            }
            let mut polled: Vec<PollFd<'_>> = fds
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
                .collect();
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut polled, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("polling the interrupt eventfds"),
            }
        }
    }

    /// The guest's EOI for INTx: let the line fire again.
    pub fn end_of_interrupt(&mut self) -> Result<()> {
        Ok(self.function()?.end_of_interrupt()?)
    }

    /// The guest's `pci_dma_map_sg`: make these guest-physical segments reachable by
    /// the device, and nothing else; returns the bus addresses to program.
    pub fn dma_map_sg(&self, segments: &[(u64, u64)], access: DmaAccess) -> Result<BusSgList> {
        let sg =
            GuestSgList::from_pieces(segments.iter().map(|&(gpa, len)| (GuestPhysAddr(gpa), len)))?;
        Ok(self.policy.map_sg(&sg, access)?)
    }

    /// The guest's `pci_dma_unmap_sg`: when this returns the device can no longer
    /// reach those pages.
    pub fn dma_unmap_sg(&self, bus: &BusSgList) -> Result<()> {
        Ok(self.policy.unmap_sg(bus)?)
    }

    /// Requests mapped and not yet unmapped.
    pub fn live_mappings(&self) -> usize {
        self.policy.live_count()
    }
}

/// The IOVA windows the IOMMU allows, cut to [`IOVA_WINDOW`].
fn usable_window(container: &VfioContainer) -> Result<Vec<IovaRange>> {
    let info = container.iommu_info()?;
    let allowed = if info.iova_ranges.is_empty() {
        vec![IovaRange::new(Iova(0), u64::MAX)?]
    } else {
        info.iova_ranges
    };
    let (lo, hi) = IOVA_WINDOW;
    let window: Vec<IovaRange> = allowed
        .iter()
        .filter_map(|r| {
            let start = r.start().0.max(lo);
            let end = r.last().0.min(hi - 1);
            (start <= end).then(|| IovaRange::from_inclusive(Iova(start), Iova(end)))
        })
        .collect::<Result<_, _>>()?;
    if window.is_empty() {
        bail!("the IOMMU allows no IOVAs in [{lo:#x}, {hi:#x})");
    }
    Ok(window)
}
