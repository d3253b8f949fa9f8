//! `embed`: a VMM that links vpci in-process and hands a real PCI device to its guest.
//!
//! This program is the VMM side of a device passthrough, with a scripted guest
//! standing in for the guest kernel: it claims an AHCI controller through VFIO, puts
//! it on a virtual PCI bus, answers the guest's config and BAR accesses as a VMM's
//! exit handler would, takes the device's interrupts as eventfds, and turns the
//! guest's `pci_dma_map_sg`/`pci_dma_unmap_sg` into IOMMU mappings that reach exactly
//! the pages of each request. It then shows that the device cannot reach a page after
//! its `unmap_sg`.
//!
//! ```text
//! embed --device 0000:00:06.0 [--slot 6] [--lba 1000] [--sectors 10]
//! ```
//!
//! The device must be on vfio-pci first (`udrv attach 0000:00:06.0`) and its port 0
//! disk must hold the rig's sector pattern (`udrv_examples::disk_pattern`).
//!
//! # Everything a VMM needs, on one page
//!
//! ```ignore
//! use udriver::vfio::{VfioContainer, VfioGroup};
//! use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};
//! use vpci::{BusConfig, BusEvent, DevFn, VirtualBus};
//! use dma::{DmaPolicy, FdMemory, GuestMemoryRegion, GuestSgList, IovaAllocator, StrictPolicy};
//!
//! // 1. Claim the device and build the bus. The bus places BARs as firmware would;
//! //    `bus.describe()` gives what the guest's ACPI tables (MCFG, _CRS, _PRT) say.
//! let container = VfioContainer::open()?;
//! let group = VfioGroup::open(group_id)?;               // from sysfs iommu_group
//! container.attach(&group)?;
//! let device = VfioPassthroughDevice::new(group.open_device("0000:00:06.0")?)?;
//! let mut bus = VirtualBus::new(BusConfig::default())?;
//! let devfn = DevFn::new(6, 0).unwrap();
//! bus.add_function(devfn, Box::new(PassthroughFunction::new(device)?))?;
//!
//! // 2. Guest memory the device may DMA to: registered, never mapped wholesale.
//! let iovas = Arc::new(IovaAllocator::new(&container.iommu_info()?.iova_ranges)?);
//! let policy = StrictPolicy::new(container.clone(), iovas);
//! let ram = Arc::new(FdMemory::map(&guest_memfd, 0, ram_len, true)?); // the guest's RAM
//! policy.add_region(GuestMemoryRegion::new(gpa, ram))?;
//!
//! // 3. Exit handler: ECAM, 0xCF8/0xCFC and BAR accesses, all through the bus.
//! bus.mmio_read(gpa, &mut data)?;   bus.mmio_write(gpa, &data)?;
//! bus.pio_read(port, &mut data)?;   bus.pio_write(port, &data)?;
//!
//! // 4. After exits: what changed. Map a BAR's direct areas into the guest
//! //    (function.direct_areas(bar): mmap the device fd at region.fd_offset + offset;
//! //    the MSI-X table pages are left out and stay trapped), point irqfds at vectors.
//! for event in bus.take_events() {
//!     match event {
//!         BusEvent::BarMapped(d) | BusEvent::BarUnmapped(d) => { /* memslots */ }
//!         BusEvent::MsiRouting { devfn, routing } => { /* routing.message, .deliverable() */ }
//!     }
//! }
//!
//! // 5. Interrupts: one eventfd per live vector, signalled by VFIO.
//! let f = bus.function_as::<PassthroughFunction>(devfn).unwrap();
//! for v in f.vectors() { /* v.eventfd (an irqfd, or poll it), v.routing */ }
//! let message = f.vector_fired(kind, vector);  // eventfd readable: Some(msg) to inject,
//!                                              // None if masked (now pending)
//! let unmasked = f.take_messages();            // every fired vector + unmasked pendings
//! f.intx_eventfd(); f.intx_fired(); f.end_of_interrupt()?; // INTx: level, EOI unmasks
//!
//! // 6. The guest's DMA: exactly these pages, for exactly this request.
//! let bus_list = policy.map_sg(&GuestSgList::from_pieces(segments)?, access)?;
//! /* program bus_list.segments() into the device, run the request */
//! policy.unmap_sg(&bus_list)?;                 // the device can no longer reach them
//! ```
//!
//! [`vmm::Vmm`] wraps steps 1-6 for this program; [`guest::AhciGuest`] is the guest.

mod guest;
mod vmm;

use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use dma::DmaAccess;
use udriver::pci::PciAddress;
use udrv_examples::ata::{self, Identity, SECTOR_SIZE};
use udrv_examples::disk_pattern;
use vpci::DevFn;

use guest::{AhciGuest, MSI_MESSAGE};
use vmm::{Injection, Vmm};

/// A VMM embedding vpci: passthrough of an AHCI controller with per-request DMA mappings.
#[derive(Parser, Debug)]
#[command(name = "embed")]
struct Args {
    /// The AHCI controller, already on vfio-pci (`udrv attach BDF`).
    #[arg(long)]
    device: PciAddress,
    /// The slot (device number) it takes on the guest's virtual bus.
    #[arg(long, default_value_t = 6)]
    slot: u8,
    /// First sector of the read through scattered guest buffers.
    #[arg(long, default_value_t = 1000)]
    lba: u64,
    /// Sectors to read (2..=64).
    #[arg(long, default_value_t = 10)]
    sectors: u32,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 16)]
    ram_mib: usize,
}

/// Guest-physical buffers of the scattered read: two pieces far apart.
const READ_FIRST_GPA: u64 = 0x4_0800;
const READ_SECOND_GPA: u64 = 0x9_0000;
/// The guest page IDENTIFY lands in; the stale request aims at it again.
const IDENTIFY_GPA: u64 = 0xa_0000;
const CANARY: u8 = 0x5a;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    ensure!((2..=64).contains(&args.sectors), "--sectors must be 2..=64");
    let devfn = DevFn::new(args.slot, 0).context("--slot must be below 32")?;
    let mut vmm = Vmm::new(args.device, devfn, args.ram_mib << 20)?;
    let mut guest = AhciGuest::probe(&mut vmm)?;
    // The scripted guest owns the VMM while it runs; the VMM's view comes back after.
    let identity = exercise(&mut guest, &args)?;
    guest.shutdown()?;
    ensure!(
        vmm.live_mappings() == 0,
        "{} request mapping(s) left after shutdown",
        vmm.live_mappings()
    );
    println!(
        "embed: ok: {} ({} sectors), every request mapped and unmapped, nothing left mapped",
        identity.model, identity.sectors
    );
    Ok(())
}

fn expect_msi(what: &str, injected: &[Injection]) -> Result<()> {
    ensure!(
        injected.contains(&Injection::Msi(MSI_MESSAGE)),
        "{what}: injected {injected:?}, the guest programmed {MSI_MESSAGE:x?}"
    );
    Ok(())
}

fn exercise(guest: &mut AhciGuest<'_>, args: &Args) -> Result<Identity> {
    println!(
        "vmm: interrupt eventfds: {:?}",
        guest.vmm().interrupt_eventfds()?
    );

    // A read into two scattered guest buffers: one request, one strict mapping.
    let total = u64::from(args.sectors) * SECTOR_SIZE as u64;
    let first = total / 2 / SECTOR_SIZE as u64 * SECTOR_SIZE as u64;
    let buffers = [(READ_FIRST_GPA, first), (READ_SECOND_GPA, total - first)];
    for (gpa, len) in buffers {
        guest.vmm().ram().fill(gpa as usize, len as usize, 0)?;
    }
    let (bus, injected) = guest.request(
        ata::command::READ_DMA_EXT,
        args.lba,
        args.sectors,
        &buffers,
        DmaAccess::DeviceWrites,
    )?;
    expect_msi("READ DMA EXT", &injected)?;
    let mut data = vec![0u8; total as usize];
    let (head, tail) = data.split_at_mut(first as usize);
    guest.vmm().ram().copy_to(READ_FIRST_GPA as usize, head)?;
    guest.vmm().ram().copy_to(READ_SECOND_GPA as usize, tail)?;
    disk_pattern::verify(args.lba, &data).map_err(anyhow::Error::msg)?;
    println!(
        "guest: read {} sectors at LBA {} through bus {:x?}: pattern ok; MSI {:x?}",
        args.sectors,
        args.lba,
        bus.segments(),
        injected
    );

    // IDENTIFY into one page, mapped for this request only.
    guest
        .vmm()
        .ram()
        .fill(IDENTIFY_GPA as usize, SECTOR_SIZE, 0)?;
    let (bus, injected) = guest.request(
        ata::command::IDENTIFY_DEVICE,
        0,
        1,
        &[(IDENTIFY_GPA, SECTOR_SIZE as u64)],
        DmaAccess::DeviceWrites,
    )?;
    expect_msi("IDENTIFY", &injected)?;
    let mut id = [0u8; SECTOR_SIZE];
    guest.vmm().ram().copy_to(IDENTIFY_GPA as usize, &mut id)?;
    let identity = Identity::parse(&id).map_err(anyhow::Error::msg)?;
    println!(
        "guest: IDENTIFY through bus {:x?}: {} {} sectors",
        bus.segments(),
        identity.model,
        identity.sectors
    );

    // The same IDENTIFY aimed at the bus address `unmap_sg` retired: the device runs
    // the command, but the IOMMU no longer translates that address, so the page keeps
    // its canary.
    guest
        .vmm()
        .ram()
        .fill(IDENTIFY_GPA as usize, SECTOR_SIZE, CANARY)?;
    let stale = bus.segments()[0].addr.0;
    println!("unmapped iova {stale:#x}");
    match guest.run_command(
        ata::command::IDENTIFY_DEVICE,
        0,
        1,
        &bus,
        DmaAccess::DeviceWrites,
    ) {
        Ok(injected) => println!("guest: stale IDENTIFY completed (MSI {injected:x?})"),
        Err(e) => println!("guest: stale IDENTIFY did not complete cleanly: {e:#}"),
    }
    guest.vmm().ram().copy_to(IDENTIFY_GPA as usize, &mut id)?;
    let changed = id.iter().filter(|b| **b != CANARY).count();
    ensure!(
        changed == 0,
        "the device wrote {changed} bytes through the unmapped bus address {stale:#x}"
    );
    println!("guest: after unmap_sg the device could not reach the page (canary intact)");
    Ok(identity)
}
