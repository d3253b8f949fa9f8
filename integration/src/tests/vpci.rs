//! The virtual bus with real devices behind it: e1000e (00:04.0) and ich9-ahci (00:06.0)
//! claimed through VFIO and put on a `VirtualBus` as `PassthroughFunction`s, then
//! driven the way a guest drives them: config cycles through ECAM, BAR accesses at the
//! addresses the guest programmed, interrupts through the virtual MSI/MSI-X
//! capabilities. Last, the `embed` example does per-request DMA through the IOMMU.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dma::{DmaAccess, DmaBuffer, DmaMemory, Iova, PagePreference};
use udriver::vfio::{IrqIndex, VfioContainer, VfioGroup};
use udrv_examples::ahci::command::{
    h2d_fis, prdt, CommandHeader, COMMAND_LIST_SIZE, DEVICE_LBA, H2D_DWORDS, PRDT_OFFSET,
};
use udrv_examples::ahci::regs as ahci;
use udrv_examples::ata;
use vpci::config::capability::{walk_capabilities, walk_extended_capabilities};
use vpci::config::regs::{cap, command, exp, ext_cap, header, msi, msix};
use vpci::passthrough::{LiveIrqs, PassthroughFunction, VfioPassthroughDevice};
use vpci::{AccessWidth, BarIndex, BusConfig, DevFn, InterruptKind, MsiMessage, VirtualBus};

use crate::harness::{rig_tests, RigTest};
use crate::rig;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        vpci:
        passthrough_bars_match_sysfs,
        moved_bars_reach_the_devices,
        e1000e_msix_through_virtual_capability,
        ahci_msi_through_virtual_capability,
        embed_dma_per_request (300 s),
    ]
}

/// The slots the devices take on the virtual bus: the same as in the rig guest.
const E1000E_AT: u8 = 4;
const AHCI_AT: u8 = 6;

fn slot(device: u8) -> DevFn {
    DevFn::new(device, 0).expect("device numbers below 32")
}

/// A virtual bus holding both devices, and what a guest does with it.
struct Guest {
    bus: VirtualBus,
    container: VfioContainer,
}

impl Guest {
    /// Claims e1000e and ich9-ahci into one container and puts them on a new bus.
    fn new() -> Result<Guest> {
        let container = VfioContainer::open()?;
        let mut bus = VirtualBus::new(BusConfig::default())?;
        for (bdf, at) in [(rig::E1000E, E1000E_AT), (rig::ICH9_AHCI, AHCI_AT)] {
            let group = VfioGroup::open(rig::bind_to_vfio(bdf)?)?;
            container.attach(&group)?;
            let device = VfioPassthroughDevice::new(group.open_device(bdf)?)?;
            let function = PassthroughFunction::new(device)?;
            for hidden in function.hidden_capabilities() {
                println!("{bdf}: hidden {hidden:?}");
            }
            bus.add_function(slot(at), Box::new(function))?;
        }
        Ok(Guest { bus, container })
    }

    fn ecam(&self, at: u8, register: u16) -> u64 {
        self.bus.ecam_window().base + (u64::from(slot(at).raw()) << 12) + u64::from(register)
    }

    fn cfg_read(&mut self, at: u8, register: u16, width: AccessWidth) -> Result<u32> {
        let mut b = [0u8; 4];
        let address = self.ecam(at, register);
        self.bus.mmio_read(address, &mut b[..width.bytes()])?;
        Ok(u32::from_le_bytes(b))
    }

    fn cfg_write(&mut self, at: u8, register: u16, width: AccessWidth, value: u32) -> Result<()> {
        let address = self.ecam(at, register);
        self.bus
            .mmio_write(address, &value.to_le_bytes()[..width.bytes()])?;
        Ok(())
    }

    fn read32(&mut self, address: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.bus
            .mmio_read(address, &mut b)
            .with_context(|| format!("guest read at {address:#x}"))?;
        Ok(u32::from_le_bytes(b))
    }

    fn write32(&mut self, address: u64, value: u32) -> Result<()> {
        self.bus
            .mmio_write(address, &value.to_le_bytes())
            .with_context(|| format!("guest write at {address:#x}"))?;
        Ok(())
    }

    /// Where BAR `bar` of the function at `at` is programmed now.
    fn bar_address(&self, at: u8, bar: BarIndex) -> Result<u64> {
        self.bus
            .bar_status(slot(at))
            .iter()
            .find(|s| s.bar == bar)
            .and_then(|s| s.programmed)
            .with_context(|| format!("{} {bar} is not placed", slot(at)))
    }

    fn function(&mut self, at: u8) -> Result<&mut PassthroughFunction> {
        self.bus
            .function_as::<PassthroughFunction>(slot(at))
            .context("no passthrough function there")
    }

    /// Size a BAR the way Linux does: save, write all-ones, read back, restore.
    fn size_bar(&mut self, at: u8, register: u16, all_ones: u32) -> Result<u32> {
        let saved = self.cfg_read(at, register, AccessWidth::Dword)?;
        self.cfg_write(at, register, AccessWidth::Dword, all_ones)?;
        let sized = self.cfg_read(at, register, AccessWidth::Dword)?;
        self.cfg_write(at, register, AccessWidth::Dword, saved)?;
        Ok(sized)
    }

    fn capability(&mut self, at: u8, id: u8) -> Result<u16> {
        let bus = &mut self.bus;
        let caps = walk_capabilities(|o, w| bus.config_read(0, slot(at), o, w))?;
        caps.iter()
            .find(|c| c.id == id)
            .map(|c| c.offset)
            .with_context(|| format!("no capability {id:#x} in the guest's view"))
    }

    fn set_command(&mut self, at: u8, bits: u16) -> Result<()> {
        self.cfg_write(at, header::COMMAND, AccessWidth::Word, bits.into())
    }
}

/// Rig benchmarks of the trapped path, each against a baseline in the same boot.
pub fn benches() -> Vec<RigTest> {
    rig_tests![vpci: bench_trapped_vs_direct (300 s)]
}

// ------------------------------------------------------------------- BARs

/// What the guest learns by sizing one BAR: its size and kind.
#[derive(Debug, PartialEq, Eq)]
struct SizedBar {
    size: u64,
    io: bool,
    is_64bit: bool,
    prefetchable: bool,
}

fn sized_from_guest(guest: &mut Guest, at: u8, index: u8) -> Result<Option<SizedBar>> {
    let register = header::bar(index);
    let low = guest.size_bar(at, register, u32::MAX)?;
    if low == 0 {
        return Ok(None);
    }
    if low & 1 != 0 {
        let size = u64::from(!(low & !0x3) & 0xffff) + 1;
        return Ok(Some(SizedBar {
            size,
            io: true,
            is_64bit: false,
            prefetchable: false,
        }));
    }
    let is_64bit = (low >> 1) & 3 == 2;
    let high = if is_64bit {
        guest.size_bar(at, register + 4, u32::MAX)?
    } else {
        u32::MAX
    };
    let mask = (u64::from(high) << 32) | u64::from(low & !0xf);
    Ok(Some(SizedBar {
        size: !mask + 1,
        io: false,
        is_64bit,
        prefetchable: low & 8 != 0,
    }))
}

fn sized_from_sysfs(r: &rig::SysfsResource) -> Option<SizedBar> {
    (r.size() > 0).then(|| SizedBar {
        size: r.size(),
        io: r.flags & rig::IORESOURCE_IO != 0,
        is_64bit: r.flags & rig::IORESOURCE_MEM_64 != 0,
        prefetchable: r.flags & rig::IORESOURCE_PREFETCH != 0,
    })
}

/// Every BAR and the ROM of both devices, sized by the guest through ECAM, match what
/// the host kernel reports in sysfs: size, IO or memory, 64-bit, prefetchable. The
/// guest never sees the host's addresses.
fn passthrough_bars_match_sysfs() -> Result<()> {
    let mut guest = Guest::new()?;
    for (bdf, at) in [(rig::E1000E, E1000E_AT), (rig::ICH9_AHCI, AHCI_AT)] {
        let bus = &mut guest.bus;
        let caps = walk_capabilities(|o, w| bus.config_read(0, slot(at), o, w))?;
        let ext = walk_extended_capabilities(|o, w| bus.config_read(0, slot(at), o, w))?;
        println!(
            "{bdf}: capabilities {:02x?}, extended {:04x?}",
            caps.iter().map(|c| c.id).collect::<Vec<_>>(),
            ext.iter().map(|c| c.id).collect::<Vec<_>>()
        );
        if let Some(express) = caps.iter().find(|c| c.id == cap::PCI_EXPRESS) {
            let flags = guest.cfg_read(at, express.offset + exp::FLAGS, AccessWidth::Word)? as u16;
            let kind = (flags & exp::FLAGS_TYPE_MASK) >> exp::FLAGS_TYPE_SHIFT;
            ensure!(
                kind == exp::TYPE_RC_INTEGRATED_ENDPOINT,
                "{bdf}: PCI Express type {kind} on the root bus, want an integrated endpoint"
            );
        }
        let sysfs = rig::sysfs_resources(bdf)?;
        let mut index = 0u8;
        while index < 6 {
            let want = sized_from_sysfs(&sysfs[usize::from(index)]);
            let seen = sized_from_guest(&mut guest, at, index)?;
            println!("{bdf} BAR{index}: guest {seen:?}");
            ensure!(
                seen == want,
                "{bdf} BAR{index}: the guest sizes {seen:?}, sysfs says {want:?}"
            );
            if let Some(bar) = seen {
                let placed = guest.bar_address(at, BarIndex::new(index).expect("0..6"))?;
                ensure!(
                    placed != sysfs[usize::from(index)].start,
                    "{bdf} BAR{index}: the guest sees the host's address {placed:#x}"
                );
                index += if bar.is_64bit { 2 } else { 1 };
            } else {
                index += 1;
            }
        }
        let rom = guest.size_bar(at, header::ROM_ADDRESS, !1)?;
        let rom_size = if rom == 0 {
            0
        } else {
            u64::from(!(rom & !0x7ff)) + 1
        };
        println!("{bdf} ROM: guest {rom_size:#x}");
        ensure!(
            rom_size == sysfs[6].size(),
            "{bdf} ROM: the guest sizes {rom_size:#x}, sysfs says {:#x}",
            sysfs[6].size()
        );
    }
    Ok(())
}

const E1000E_STATUS: u64 = 0x8;

const E1000E_RDBAL: u64 = 0x2800;

/// A guest moves e1000e's BAR0 and ich9-ahci's ABAR to addresses of its choosing:
/// STATUS and CAP read through the new addresses are the devices' (the same values
/// VFIO reads directly), a write through the new address lands in the device, and the
/// old addresses stop answering.
fn moved_bars_reach_the_devices() -> Result<()> {
    let mut guest = Guest::new()?;
    let bar0 = BarIndex::new(0).expect("BAR0");
    let abar = BarIndex::new(ahci::ABAR).expect("BAR5");
    let moves = [
        (E1000E_AT, bar0, 0xe000_0000u32, E1000E_STATUS),
        (AHCI_AT, abar, 0xe010_0000u32, ahci::CAP),
    ];
    for (at, bar, to, register) in moves {
        let from = guest.bar_address(at, bar)?;
        let before = guest.read32(from + register)?;
        // As Linux does: decode off, move, decode on.
        guest.set_command(at, 0)?;
        guest.cfg_write(at, bar.config_offset(), AccessWidth::Dword, to)?;
        guest.set_command(at, command::MEMORY_SPACE | command::IO_SPACE)?;
        let moved = guest.read32(u64::from(to) + register)?;
        let direct = {
            let f = guest.function(at)?;
            f.device().device().bar(bar.get())?.read32(register)?
        };
        println!(
            "{} {bar}: {from:#x} -> {to:#x}: {register:#x} reads {moved:#010x} (before {before:#010x}, VFIO {direct:#010x})",
            slot(at)
        );
        ensure!(
            moved == direct,
            "moved read {moved:#x}, device has {direct:#x}"
        );
        ensure!(
            guest.bus.mmio_read(from + register, &mut [0u8; 4]).is_err(),
            "the old address {from:#x} still answers"
        );
    }
    let status = guest.read32(0xe000_0000 + E1000E_STATUS)?;
    ensure!(status & 0x2 != 0, "e1000e STATUS {status:#x}: link down");
    let cap = guest.read32(0xe010_0000 + ahci::CAP)?;
    ensure!((cap & 0x1f) + 1 == 6, "AHCI CAP {cap:#x}: want 6 ports");
    // A write through the moved BAR reaches the device.
    guest.write32(0xe000_0000 + E1000E_RDBAL, 0x1234_5000)?;
    let f = guest.function(E1000E_AT)?;
    let rdbal = f.device().device().bar(0)?.read32(E1000E_RDBAL)?;
    ensure!(
        rdbal == 0x1234_5000,
        "RDBAL reads {rdbal:#x} after the guest's write"
    );
    f.device().device().bar(0)?.write32(E1000E_RDBAL, 0)?;

    // e1000e's expansion ROM, enabled by the guest at an address of its choosing,
    // reads from the device's ROM: the 0x55 0xAA signature.
    let rom_at = 0xe020_0000u32;
    guest.cfg_write(
        E1000E_AT,
        header::ROM_ADDRESS,
        AccessWidth::Dword,
        rom_at | 1,
    )?;
    let mut signature = [0u8; 2];
    guest.bus.mmio_read(u64::from(rom_at), &mut signature)?;
    println!("e1000e ROM at {rom_at:#x}: signature {signature:02x?}");
    ensure!(signature == [0x55, 0xaa], "ROM signature {signature:02x?}");
    Ok(())
}

// ------------------------------------------------------------- interrupts

/// Waits until `fd` is readable, without taking its count.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, ms) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for the eventfd of `vector` of the live index, then lets the function turn
/// it into the message to deliver.
fn wait_for_vector(
    guest: &mut Guest,
    at: u8,
    kind: InterruptKind,
    vector: u16,
) -> Result<Option<MsiMessage>> {
    let f = guest.function(at)?;
    let signalled = {
        let vectors = f.vectors();
        let live = vectors
            .iter()
            .find(|v| v.routing.vector == vector)
            .with_context(|| format!("{kind} vector {vector} is not live"))?;
        wait_readable(live.eventfd.as_fd(), Duration::from_secs(5))?
    };
    ensure!(
        signalled,
        "{kind} vector {vector}: its eventfd was not signalled"
    );
    Ok(f.vector_fired(kind, vector))
}

const E1000_ICR: u64 = 0xc0;
const E1000_ICS: u64 = 0xc8;
const E1000_IMS: u64 = 0xd0;
const E1000_IMC: u64 = 0xd8;
const E1000E_IVAR: u64 = 0xe4;
/// ICR causes RXQ0, RXQ1, TXQ0, TXQ1, OTHER, routed by IVAR to vectors 0..=4.
const E1000E_CAUSES: [u32; 5] = [1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24];

fn msix_message(vector: u16) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000 | (u64::from(vector) << 12),
        data: 0x50 + u32::from(vector),
    }
}

/// e1000e MSI-X programmed only through the virtual capability and table: enabling it
/// wires five VFIO vectors; each cause set through ICS (routed by IVAR) fires its own
/// vector's eventfd and the function hands back the message the guest programmed for
/// that vector. A vector the guest masked goes pending (the PBA shows it) and is
/// delivered when the guest unmasks it. Disabling MSI-X brings INTx back, which the
/// guest's INTx-disable bit silences.
fn e1000e_msix_through_virtual_capability() -> Result<()> {
    let mut guest = Guest::new()?;
    let at = E1000E_AT;
    let bar0 = guest.bar_address(at, BarIndex::new(0).expect("BAR0"))?;
    let cap_at = guest.capability(at, cap::MSIX)?;
    let table_reg = guest.cfg_read(at, cap_at + msix::TABLE, AccessWidth::Dword)?;
    let pba_reg = guest.cfg_read(at, cap_at + msix::PBA, AccessWidth::Dword)?;
    let table_bar = BarIndex::new((table_reg & 7) as u8).context("table BIR")?;
    let table = guest.bar_address(at, table_bar)? + u64::from(table_reg & !7);
    let pba = guest.bar_address(at, table_bar)? + u64::from(pba_reg & !7);
    println!("MSI-X table at {table:#x}, PBA at {pba:#x} (guest addresses)");

    guest.set_command(
        at,
        command::MEMORY_SPACE | command::IO_SPACE | command::BUS_MASTER,
    )?;
    guest.write32(bar0 + E1000_IMC, u32::MAX)?;
    guest.read32(bar0 + E1000_ICR)?;
    for v in 0..5u16 {
        let m = msix_message(v);
        let entry = table + 16 * u64::from(v);
        guest.write32(entry, m.address as u32)?;
        guest.write32(entry + 4, (m.address >> 32) as u32)?;
        guest.write32(entry + 8, m.data)?;
        guest.write32(entry + 12, 0)?;
    }
    guest.cfg_write(
        at,
        cap_at + msix::CONTROL,
        AccessWidth::Word,
        msix::CONTROL_ENABLE.into(),
    )?;
    let live = guest.function(at)?.live_irqs();
    ensure!(
        live == Some(LiveIrqs {
            index: IrqIndex::Msix,
            vectors: 5
        }),
        "live after enabling MSI-X: {live:?}"
    );
    let ivar = (0..5u32).fold(0, |acc, v| acc | ((0x8 | v) << (4 * v)));
    guest.write32(bar0 + E1000E_IVAR, ivar)?;
    guest.write32(bar0 + E1000_IMS, E1000E_CAUSES.iter().fold(0, |a, c| a | c))?;
    guest.function(at)?.take_messages();

    for (vector, cause) in (0u16..).zip(E1000E_CAUSES) {
        guest.write32(bar0 + E1000_ICS, cause)?;
        let message = wait_for_vector(&mut guest, at, InterruptKind::MsiX, vector)?;
        ensure!(
            message == Some(msix_message(vector)),
            "cause {cause:#x}: vector {vector} gave {message:?}"
        );
        let others = guest.function(at)?.take_messages();
        ensure!(others.is_empty(), "cause {cause:#x} also fired {others:?}");
        guest.write32(bar0 + E1000_ICR, cause)?;
        println!("cause {cause:#x} -> vector {vector} -> {:x?}", message);
    }

    // Vector 1 masked by the guest: the interrupt waits in the PBA.
    let entry1 = table + 16;
    guest.write32(entry1 + 12, 1)?;
    guest.write32(bar0 + E1000_ICS, E1000E_CAUSES[1])?;
    let masked = wait_for_vector(&mut guest, at, InterruptKind::MsiX, 1)?;
    ensure!(masked.is_none(), "masked vector 1 delivered {masked:?}");
    let pending = guest.read32(pba)?;
    ensure!(pending == 1 << 1, "PBA {pending:#x}: want vector 1 pending");
    guest.write32(entry1 + 12, 0)?;
    let delivered = guest.function(at)?.take_messages();
    ensure!(
        delivered == [msix_message(1)],
        "unmasking delivered {delivered:?}"
    );
    ensure!(guest.read32(pba)? == 0, "PBA still shows vector 1");
    println!("masked vector 1 went pending and was delivered on unmask");

    guest.write32(bar0 + E1000_IMC, u32::MAX)?;
    guest.read32(bar0 + E1000_ICR)?;
    rig::let_e1000e_throttling_expire();
    guest.cfg_write(at, cap_at + msix::CONTROL, AccessWidth::Word, 0)?;
    let f = guest.function(at)?;
    ensure!(
        f.live_irqs().map(|l| l.index) == Some(IrqIndex::Intx),
        "after disabling MSI-X: {:?}",
        f.live_irqs()
    );
    ensure!(f.take_errors().is_empty(), "errors while serving the guest");

    // With MSI-X off the device interrupts on INTx: level, masked by the kernel until
    // the guest's EOI, and silenced by the guest's INTx-disable bit, which reaches
    // the device through the virtual command register.
    let cause = E1000E_CAUSES[0];
    guest.write32(bar0 + E1000_IMS, cause)?;
    guest.write32(bar0 + E1000_ICS, cause)?;
    wait_for_intx(&mut guest, at)?;
    let icr = guest.read32(bar0 + E1000_ICR)?;
    ensure!(icr & cause != 0, "ICR {icr:#x} lacks the cause");
    guest.function(at)?.end_of_interrupt()?;
    println!("INTx fired for cause {cause:#x}; EOI unmasked it");
    let decode = command::MEMORY_SPACE | command::IO_SPACE | command::BUS_MASTER;
    guest.set_command(at, decode | command::INTX_DISABLE)?;
    guest.write32(bar0 + E1000_ICS, cause)?;
    ensure!(
        wait_for_intx(&mut guest, at).is_err(),
        "INTx fired while the guest had it disabled"
    );
    guest.set_command(at, decode)?;
    wait_for_intx(&mut guest, at).context("the pending INTx after re-enabling")?;
    guest.read32(bar0 + E1000_ICR)?;
    guest.write32(bar0 + E1000_IMC, u32::MAX)?;
    guest.function(at)?.end_of_interrupt()?;
    println!("INTx disable in the guest's command register silenced the line");
    Ok(())
}

/// Waits up to a second for the function's INTx eventfd, then takes it.
fn wait_for_intx(guest: &mut Guest, at: u8) -> Result<()> {
    let f = guest.function(at)?;
    let signalled = {
        let fd = f.intx_eventfd().context("INTx is not live")?;
        wait_readable(fd.as_fd(), Duration::from_secs(1))?
    };
    ensure!(signalled && f.intx_fired(), "INTx did not fire");
    Ok(())
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !f()? {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// ich9-ahci MSI programmed through the virtual capability: an IDENTIFY issued through
/// the guest's view of ABAR completes, the device's MSI fires the eventfd VFIO wired
/// for the virtual MSI, and the function gives back exactly the guest's address and
/// data. The IDENTIFY data (DMA through the IOMMU) names the disk's size.
fn ahci_msi_through_virtual_capability() -> Result<()> {
    let mut guest = Guest::new()?;
    let at = AHCI_AT;
    let abar = guest.bar_address(at, BarIndex::new(ahci::ABAR).expect("BAR5"))?;
    let msi_at = guest.capability(at, cap::MSI)?;
    let control = guest.cfg_read(at, msi_at + msi::CONTROL, AccessWidth::Word)? as u16;
    let data_at = msi_at
        + if control & msi::CONTROL_64BIT != 0 {
            msi::DATA_64
        } else {
            msi::DATA_32
        };
    let message = MsiMessage {
        address: 0xfee0_2000,
        data: 0x4071,
    };
    guest.cfg_write(
        at,
        msi_at + msi::ADDRESS_LO,
        AccessWidth::Dword,
        message.address as u32,
    )?;
    guest.cfg_write(at, data_at, AccessWidth::Word, message.data)?;
    guest.cfg_write(
        at,
        msi_at + msi::CONTROL,
        AccessWidth::Word,
        msi::CONTROL_ENABLE.into(),
    )?;
    guest.set_command(
        at,
        command::MEMORY_SPACE | command::IO_SPACE | command::BUS_MASTER,
    )?;
    let live = guest.function(at)?.live_irqs();
    ensure!(
        live.map(|l| l.index) == Some(IrqIndex::Msi),
        "live after enabling MSI: {live:?}"
    );

    // The port's structures in DMA memory: command list at +0, received FISes at
    // +0x400, command table at +0x800, IDENTIFY data at +0x1000.
    const IOVA: u64 = 0x40_0000;
    let memory = DmaMemory::allocate_with(0x2000, PagePreference::SmallOnly)?;
    let mem = DmaBuffer::map_at(
        memory,
        guest.container.clone(),
        Iova(IOVA),
        DmaAccess::ReadWrite,
    )?;
    let port = |reg| abar + ahci::port_reg(0, reg);
    guest.write32(abar + ahci::GHC, 1)?;
    wait_until(Duration::from_secs(5), "HBA reset", || {
        Ok(guest.read32(abar + ahci::GHC)? & 1 == 0)
    })?;
    guest.write32(abar + ahci::GHC, ahci::GHC_AE)?;
    guest.write32(port(ahci::PX_CLB), IOVA as u32)?;
    guest.write32(port(ahci::PX_CLBU), (IOVA >> 32) as u32)?;
    guest.write32(port(ahci::PX_FB), (IOVA + COMMAND_LIST_SIZE as u64) as u32)?;
    guest.write32(port(ahci::PX_FBU), 0)?;
    guest.write32(port(ahci::PX_SERR), u32::MAX)?;
    guest.write32(port(ahci::PX_IS), u32::MAX)?;
    guest.write32(
        port(ahci::PX_IE),
        ahci::INT_DHRS | ahci::INT_PSS | ahci::INT_ERRORS,
    )?;
    guest.write32(abar + ahci::GHC, ahci::GHC_AE | ahci::GHC_IE)?;
    let cmd = guest.read32(port(ahci::PX_CMD))?;
    guest.write32(port(ahci::PX_CMD), cmd | ahci::CMD_FRE)?;
    guest.write32(port(ahci::PX_CMD), cmd | ahci::CMD_FRE | ahci::CMD_ST)?;
    // Starting FIS receive may deliver the drive's initial FIS and an MSI: start clean.
    std::thread::sleep(Duration::from_millis(50));
    guest.write32(port(ahci::PX_IS), u32::MAX)?;
    guest.write32(abar + ahci::IS, u32::MAX)?;
    guest.function(at)?.take_messages();

    let table = IOVA + 0x800;
    let header = CommandHeader {
        fis_dwords: H2D_DWORDS,
        write: false,
        prdt_entries: 1,
        table,
    };
    mem.copy_from(0, &header.to_bytes())?;
    let identify = h2d_fis(ata::command::IDENTIFY_DEVICE, 0, 1, DEVICE_LBA);
    mem.copy_from(0x800, &identify)?;
    for (i, entry) in prdt(IOVA + 0x1000, 512)
        .map_err(anyhow::Error::msg)?
        .iter()
        .enumerate()
    {
        mem.copy_from(0x800 + PRDT_OFFSET + 16 * i, entry)?;
    }
    guest.write32(port(ahci::PX_CI), 1)?;

    let fired = wait_for_vector(&mut guest, at, InterruptKind::Msi, 0)?;
    ensure!(
        fired == Some(message),
        "IDENTIFY completion gave {fired:?}, the guest programmed {message:?}"
    );
    wait_until(Duration::from_secs(5), "PxCI to clear", || {
        Ok(guest.read32(port(ahci::PX_CI))? == 0)
    })?;
    let tfd = guest.read32(port(ahci::PX_TFD))?;
    ensure!(tfd & 1 == 0, "task file error {tfd:#x}");
    let mut id = [0u8; 512];
    mem.copy_to(0x1000, &mut id)?;
    let sectors = u32::from_le_bytes([id[120], id[121], id[122], id[123]]);
    println!("MSI {fired:x?}; IDENTIFY: {sectors} sectors");
    ensure!(
        u64::from(sectors) == rig::AHCI_DISK_SECTORS,
        "IDENTIFY says {sectors} sectors, the disk has {}",
        rig::AHCI_DISK_SECTORS
    );
    guest.write32(port(ahci::PX_CMD), cmd & !(ahci::CMD_FRE | ahci::CMD_ST))?;
    guest.set_command(at, command::MEMORY_SPACE)?;
    ensure!(
        guest.function(at)?.take_errors().is_empty(),
        "errors while serving the guest"
    );
    mem.unmap()?;
    Ok(())
}

// ------------------------------------------------------------------ embed

/// Runs `embed` (the in-process VMM example) on ich9-ahci: it reads patterned sectors
/// into guest memory through per-request strict mappings, and after `unmap_sg` the
/// same request cannot reach the page (its canary survives). The guest kernel's log
/// shows the IOMMU refusing that access.
fn embed_dma_per_request() -> Result<()> {
    rig::bind_to_vfio(rig::ICH9_AHCI)?;
    let seen = rig::sh("dmesg")?.lines().count();
    let out = std::process::Command::new("embed")
        .args(["--device", rig::ICH9_AHCI])
        .output()
        .context("running embed (is /rig/bin on PATH?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "embed failed: {}", out.status);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("unmapped iova "))
        .context("embed did not report the unmapped IOVA")?;
    let iova = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16)
        .with_context(|| format!("bad IOVA {line:?}"))?;
    let page = format!("fault addr {:#x} ", iova & !0xfff);
    let mut fault = None;
    wait_until(Duration::from_secs(5), "a DMAR fault", || {
        fault = rig::sh("dmesg")?
            .lines()
            .skip(seen)
            .find(|l| l.contains("DMAR") && l.contains("00:06.0") && l.contains(&page))
            .map(str::to_owned);
        Ok(fault.is_some())
    })
    .with_context(|| format!("no DMAR fault by 00:06.0 at {page}in the kernel log"))?;
    println!("IOMMU: {}", fault.unwrap_or_default().trim());
    Ok(())
}

// ------------------------------------------------------------------ bench

/// What one trapped access costs against the same access made directly: e1000e
/// STATUS through `VirtualBus::mmio_read` (decode, dispatch, the function, the mmap'd
/// region) against `Region::read32` on the mapping, and a config dword through ECAM
/// (overlay merge, pread on the config region) against the config region's pread.
fn bench_trapped_vs_direct() -> Result<()> {
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 1000;
    let mut guest = Guest::new()?;
    let bar0 = guest.bar_address(E1000E_AT, BarIndex::new(0).expect("BAR0"))?;
    let (region, config_region) = {
        let device = guest.function(E1000E_AT)?.device().device();
        (
            device.bar(0)?,
            device.region(udriver::vfio::RegionName::Config.index())?,
        )
    };
    ensure!(region.is_mapped(E1000E_STATUS, 4), "STATUS not mapped");
    // The serial number's low dword: a register the guest reads from the device.
    let dsn = {
        let bus = &mut guest.bus;
        walk_extended_capabilities(|o, w| bus.config_read(0, slot(E1000E_AT), o, w))?
            .iter()
            .find(|c| c.id == ext_cap::DEVICE_SERIAL_NUMBER)
            .map(|c| c.offset + 4)
            .context("e1000e shows no serial number capability")?
    };
    let mut times = [Duration::ZERO; 4];
    let mut check = [0u32; 4];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            check[0] ^= guest.read32(bar0 + E1000E_STATUS)?;
        }
        times[0] += t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            check[1] ^= region.read32(E1000E_STATUS)?;
        }
        times[1] += t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            check[2] ^= guest.cfg_read(E1000E_AT, dsn, AccessWidth::Dword)?;
        }
        times[2] += t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            check[3] ^= config_region.read32(dsn.into())?;
        }
        times[3] += t.elapsed();
    }
    ensure!(
        check[0] == check[1] && check[2] == check[3],
        "trapped and direct reads disagree: {check:x?}"
    );
    let ns = |d: Duration| d.as_nanos() as f64 / (ROUNDS * PER_ROUND) as f64;
    let [bus, mmap, ecam, pread] = times.map(ns);
    println!("BAR0 read32: through the bus {bus:.0} ns, mmap'd region {mmap:.0} ns (TCG guest)");
    println!("ratio bus/mmap: {:.2}x", bus / mmap);
    println!("config read32 at {dsn:#x}: through ECAM {ecam:.0} ns, config pread {pread:.0} ns");
    println!("ratio ecam/pread: {:.2}x", ecam / pread);
    Ok(())
}
