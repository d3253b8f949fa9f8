//! VFIO layer tests (`udriver::vfio`) on the rig's real devices: region tables against
//! what the kernel reports in sysfs, registers through mmap'd BARs and IO regions,
//! interrupts on eventfds, DMA through the IOMMU, and errors instead of crashes.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dma::{
    DmaAccess, DmaBuffer, DmaError, DmaMapper, DmaMapping, DmaMemory, HostVirtAddr, Iova,
    PagePreference,
};
use udriver::vfio::{
    BarKind, IrqIndex, Region, RegionName, VfioContainer, VfioDevice, VfioError, VfioGroup,
};

use crate::disk_pattern;
use crate::harness::RigTest;
use crate::rig::{self, poll_until};
use udrv_examples::e1000::regs as e1000_regs;

pub fn tests() -> Vec<RigTest> {
    vec![
        RigTest::new("vfio_region_tables_match_sysfs", region_tables_match_sysfs),
        RigTest::new(
            "vfio_e1000_status_mmap_and_pread_agree",
            e1000_status_paths_agree,
        ),
        RigTest::new(
            "vfio_ide_pio_reads_disk_pattern",
            ide_pio_reads_disk_pattern,
        ),
        RigTest::new("vfio_ahci_cap_through_bar5", ahci_cap_through_bar5),
        RigTest::new(
            "vfio_e1000_intx_fires_and_rearms",
            e1000_intx_fires_and_rearms,
        ),
        RigTest::new("vfio_ahci_msi_on_identify", ahci_msi_on_identify),
        RigTest::new("vfio_e1000e_msix_vectors_fire", e1000e_msix_vectors_fire),
        RigTest::new("vfio_e1000_dma_tx_and_unmap", e1000_dma_tx_and_unmap).with_timeout(240),
        RigTest::new("vfio_iommu_info_and_groups", iommu_info_and_groups),
        RigTest::new("vfio_bad_requests_are_errors", bad_requests_are_errors),
        RigTest::new("vfio_reset_and_quiesce", reset_and_quiesce),
    ]
}

/// VFIO benchmarks: the MMIO fast path against the pread slow path, same register,
/// same boot.
pub fn benches() -> Vec<RigTest> {
    vec![RigTest::new("vfio_bench_bar_read_mmap_vs_pread", bench_bar_read).with_timeout(300)]
}

/// A device bound to vfio-pci and opened in a container of its own.
struct Opened {
    container: VfioContainer,
    device: VfioDevice,
}

fn open(bdf: &str) -> Result<Opened> {
    let id = rig::bind_to_vfio(bdf)?;
    let container = VfioContainer::open()?;
    let group = VfioGroup::open(id)?;
    container.attach(&group)?;
    let device = group.open_device(bdf)?;
    Ok(Opened { container, device })
}

// ------------------------------------------------------------------ regions

/// For e1000, e1000e, piix3-ide and ich9-ahci: every BAR's size, IO-vs-memory, width
/// and mmap-ability as VFIO reports them match the kernel's resources in sysfs; the ROM
/// is read-only with a valid signature or absent; config space is as large as sysfs
/// says; and the regions open with exactly the mmap'd areas the flags promise.
fn region_tables_match_sysfs() -> Result<()> {
    for bdf in [rig::E1000_A, rig::E1000E, rig::PIIX3_IDE, rig::ICH9_AHCI] {
        let o = open(bdf)?;
        let sysfs = rig::sysfs_resources(bdf)?;
        let regions = o.device.regions()?;
        println!(
            "{bdf}: {} regions, {} irq indexes",
            regions.len(),
            o.device.info().num_irqs
        );
        for info in &regions {
            println!(
                "  {:<7} size {:#9x} {}{}{} sparse {:?} msix_mappable {}",
                info.name.to_string(),
                info.size,
                if info.readable { "r" } else { "-" },
                if info.writable { "w" } else { "-" },
                if info.mmap { "m" } else { "-" },
                info.sparse_areas,
                info.msix_mappable
            );
        }
        for n in 0u8..6 {
            let res = &sysfs[n as usize];
            let info = regions
                .iter()
                .find(|r| r.name == RegionName::Bar(n))
                .with_context(|| format!("{bdf}: VFIO lists no BAR{n}"))?;
            ensure!(
                info.size == res.size(),
                "{bdf} BAR{n}: VFIO size {:#x}, sysfs {:#x}",
                info.size,
                res.size()
            );
            if info.size == 0 {
                ensure!(o.device.bar(n).is_err(), "{bdf} BAR{n}: absent BAR opened");
                continue;
            }
            ensure!(
                info.readable && info.writable,
                "{bdf} BAR{n}: not read-write"
            );
            let bar = o.device.bar(n)?;
            let io = res.flags & rig::IORESOURCE_IO != 0;
            ensure!(
                bar.kind().is_io() == io,
                "{bdf} BAR{n}: VFIO config says {:?}, sysfs flags {:#x}",
                bar.kind(),
                res.flags
            );
            if let BarKind::Memory { is_64bit, .. } = bar.kind() {
                ensure!(
                    is_64bit == (res.flags & rig::IORESOURCE_MEM_64 != 0),
                    "{bdf} BAR{n}: 64-bit {is_64bit}, sysfs flags {:#x}",
                    res.flags
                );
                ensure!(info.mmap, "{bdf} BAR{n}: memory BAR not mmap-able");
            } else {
                ensure!(!info.mmap, "{bdf} BAR{n}: IO BAR claims mmap");
            }
            let mapped: u64 = bar.mapped_areas().iter().map(|a| a.size).sum();
            let expect = if info.mmap {
                info.mmap_areas().iter().map(|a| a.size).sum()
            } else {
                0
            };
            ensure!(
                mapped == expect,
                "{bdf} BAR{n}: {mapped:#x} bytes mapped, flags promise {expect:#x}"
            );
        }
        let rom_res = &sysfs[6];
        let rom = regions.iter().find(|r| r.name == RegionName::Rom);
        if let Some(rom) = rom.filter(|r| r.size > 0) {
            ensure!(
                rom.size == rom_res.size(),
                "{bdf} ROM: VFIO {:#x}, sysfs {:#x}",
                rom.size,
                rom_res.size()
            );
            ensure!(
                rom.readable && !rom.writable && !rom.mmap,
                "{bdf} ROM flags wrong"
            );
            let region = o.device.region(RegionName::Rom.index())?;
            let sig = region.read16(0)?;
            ensure!(sig == 0xaa55, "{bdf} ROM signature {sig:#x}");
            ensure!(region.write8(0, 0).is_err(), "{bdf} ROM write accepted");
        }
        let cfg_len = std::fs::metadata(format!("/sys/bus/pci/devices/{bdf}/config"))?.len();
        ensure!(
            o.device.config().size() == cfg_len,
            "{bdf} config: VFIO {:#x}, sysfs {cfg_len:#x}",
            o.device.config().size()
        );
        let ids = o.device.config().read32(0)?;
        let vendor = rig_read_hex(bdf, "vendor")?;
        let device = rig_read_hex(bdf, "device")?;
        ensure!(
            ids == (device << 16 | vendor),
            "{bdf} config ids {ids:#x}, sysfs {vendor:#x}:{device:#x}"
        );
    }
    Ok(())
}

fn rig_read_hex(bdf: &str, attr: &str) -> Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/{attr}"))?;
    Ok(u32::from_str_radix(s.trim().trim_start_matches("0x"), 16)?)
}

// ---------------------------------------------------------------- registers

/// STATUS through the mmap'd BAR0 equals STATUS read with pread on the device fd at
/// the region's offset, and says link up.
fn e1000_status_paths_agree() -> Result<()> {
    let o = open(rig::E1000_A)?;
    let bar0 = o.device.bar(0)?;
    ensure!(
        bar0.is_mapped(e1000_regs::STATUS, 4),
        "STATUS not in a mapping"
    );
    let mapped = bar0.read32(e1000_regs::STATUS)?;
    let fd = std::os::fd::AsFd::as_fd(&o.device).try_clone_to_owned()?;
    let file = std::fs::File::from(fd);
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, bar0.info().offset + e1000_regs::STATUS)?;
    let pread = u32::from_le_bytes(b);
    println!("STATUS mmap {mapped:#010x} pread {pread:#010x}");
    ensure!(mapped == pread, "mmap {mapped:#x} != pread {pread:#x}");
    ensure!(
        mapped & e1000_regs::STATUS_LU != 0,
        "link down: {mapped:#x}"
    );
    // The BAR1 IO region goes through pread/pwrite and never through a mapping.
    let bar1 = o.device.bar(1)?;
    ensure!(
        bar1.kind().is_io() && !bar1.is_mapped(0, 4),
        "BAR1 should be unmapped IO"
    );
    bar1.read32(0)?;
    Ok(())
}

// IDE task-file registers in the command block (BAR0), and the control block (BAR1).
const ATA_DATA: u64 = 0;
const ATA_NSECT: u64 = 2;
const ATA_LBAL: u64 = 3;
const ATA_LBAM: u64 = 4;
const ATA_LBAH: u64 = 5;
const ATA_DEVICE: u64 = 6;
const ATA_STATUS: u64 = 7;
const ATA_COMMAND: u64 = 7;
const ATA_CTL: u64 = 0;
const ATA_BSY: u8 = 0x80;
const ATA_DRQ: u8 = 0x08;
const ATA_ERR: u8 = 0x01;

/// Issues a PIO data-in command for one sector and reads its 512 bytes.
fn ide_pio_in(cmd_block: &Region, command: u8, lba: u32) -> Result<[u8; 512]> {
    let not_busy = |what: &str| {
        poll_until(Duration::from_secs(5), what, || {
            let s = cmd_block.read8(ATA_STATUS)?;
            Ok((s & ATA_BSY == 0).then_some(s))
        })
    };
    not_busy("BSY clear before the command")?;
    cmd_block.write8(ATA_DEVICE, 0xe0 | ((lba >> 24) as u8 & 0x0f))?;
    cmd_block.write8(ATA_NSECT, 1)?;
    cmd_block.write8(ATA_LBAL, lba as u8)?;
    cmd_block.write8(ATA_LBAM, (lba >> 8) as u8)?;
    cmd_block.write8(ATA_LBAH, (lba >> 16) as u8)?;
    cmd_block.write8(ATA_COMMAND, command)?;
    let status = not_busy("BSY clear after the command")?;
    ensure!(
        status & ATA_ERR == 0,
        "command {command:#x}: status {status:#x} (ERR)"
    );
    ensure!(
        status & ATA_DRQ != 0,
        "command {command:#x}: status {status:#x} (no DRQ)"
    );
    let mut sector = [0u8; 512];
    for i in 0..256 {
        let w = cmd_block.read16(ATA_DATA)?;
        sector[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
    }
    Ok(sector)
}

/// piix3-ide in legacy mode: IDENTIFY and READ SECTORS through the IO regions VFIO
/// makes of the fixed ports return the disk's size and its sector pattern.
fn ide_pio_reads_disk_pattern() -> Result<()> {
    let o = open(rig::PIIX3_IDE)?;
    let cmd_block = o.device.bar(0)?;
    let ctl_block = o.device.bar(1)?;
    ensure!(
        cmd_block.kind().is_io() && ctl_block.kind().is_io(),
        "legacy BARs not IO"
    );
    ensure!(
        cmd_block.size() == 8,
        "command block is {:#x} bytes",
        cmd_block.size()
    );
    // nIEN: this test polls; ISA IRQ 14 is not VFIO's to deliver anyway.
    ctl_block.write8(ATA_CTL, 0x02)?;
    let id = ide_pio_in(&cmd_block, 0xec, 0)?;
    let sectors = u32::from_le_bytes([id[120], id[121], id[122], id[123]]);
    println!("IDENTIFY: {sectors} LBA28 sectors");
    ensure!(
        u64::from(sectors) == rig::IDE_DISK_SECTORS,
        "IDENTIFY says {sectors} sectors, disk has {}",
        rig::IDE_DISK_SECTORS
    );
    for lba in [0u32, 1, 4097, (rig::IDE_DISK_SECTORS - 1) as u32] {
        let data = ide_pio_in(&cmd_block, 0x20, lba)?;
        disk_pattern::verify(u64::from(lba), &data)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("PIO read of sector {lba}"))?;
        println!("sector {lba}: pattern ok");
    }
    Ok(())
}

const AHCI_CAP: u64 = 0x00;
const AHCI_GHC: u64 = 0x04;
const AHCI_IS: u64 = 0x08;
const AHCI_PI: u64 = 0x0c;
const AHCI_VS: u64 = 0x10;

/// ich9-ahci's ABAR (BAR5) is mmap'd and its CAP/PI/VS registers are what QEMU's
/// ICH9 AHCI reports: six ports, all implemented, AHCI 1.0.
fn ahci_cap_through_bar5() -> Result<()> {
    let o = open(rig::ICH9_AHCI)?;
    let abar = o.device.bar(5)?;
    ensure!(!abar.kind().is_io(), "BAR5 is not memory");
    ensure!(abar.is_mapped(AHCI_CAP, 4), "CAP not in a mapping");
    let cap = abar.read32(AHCI_CAP)?;
    let pi = abar.read32(AHCI_PI)?;
    let vs = abar.read32(AHCI_VS)?;
    println!("CAP {cap:#010x} PI {pi:#010x} VS {vs:#010x}");
    let ports = (cap & 0x1f) + 1;
    ensure!(ports == 6, "CAP.NP says {ports} ports");
    ensure!(pi == 0x3f, "PI {pi:#x}");
    ensure!(vs == 0x0001_0000, "VS {vs:#x}");
    ensure!(cap & (1 << 31) != 0, "CAP.S64A clear");
    Ok(())
}

// --------------------------------------------------------------- interrupts

const E1000_ICS: u64 = 0xc8;

/// e1000 INTx: a cause set through ICS with IMS enabled fires the eventfd; the kernel
/// then keeps the line masked (no signal while asserted) until `unmask_intx`, after
/// which the still-asserted line fires again; once ICR is read and unmasked, the line
/// stays quiet until the next ICS. Also the kernel's loopback trigger reaches the fd.
fn e1000_intx_fires_and_rearms() -> Result<()> {
    let o = open(rig::E1000_A)?;
    let info = o.device.irq_info(IrqIndex::Intx)?;
    println!("INTx: {info:?}");
    ensure!(info.count == 1 && info.eventfd, "no INTx eventfd");
    ensure!(
        info.automasked && info.maskable,
        "INTx not automasked/maskable"
    );
    let bar0 = o.device.bar(0)?;
    bar0.write32(e1000_regs::IMC, u32::MAX)?;
    bar0.read32(e1000_regs::ICR)?;
    let irqs = o.device.enable_irqs(IrqIndex::Intx, 1)?;
    let fd = irqs.eventfd(0).context("no eventfd")?;
    fd.read()?;

    bar0.write32(e1000_regs::IMS, e1000_regs::INT_TXDW)?;
    bar0.write32(E1000_ICS, e1000_regs::INT_TXDW)?;
    let n = fd
        .wait(Duration::from_secs(5))?
        .context("INTx did not fire after ICS")?;
    println!("fired ({n})");
    ensure!(
        fd.wait(Duration::from_millis(300))?.is_none(),
        "fired again while automasked"
    );
    o.device.unmask_intx()?;
    fd.wait(Duration::from_secs(5))?
        .context("still-asserted INTx did not fire after unmask")?;
    println!("fired again after unmask while asserted");

    let icr = bar0.read32(e1000_regs::ICR)?;
    ensure!(
        icr & e1000_regs::INT_TXDW != 0,
        "ICR {icr:#x} lacks the cause"
    );
    o.device.unmask_intx()?;
    ensure!(
        fd.wait(Duration::from_millis(300))?.is_none(),
        "fired after the cause was cleared"
    );
    bar0.write32(E1000_ICS, e1000_regs::INT_TXDW)?;
    fd.wait(Duration::from_secs(5))?
        .context("INTx did not fire for the second ICS")?;
    bar0.read32(e1000_regs::ICR)?;
    bar0.write32(e1000_regs::IMC, u32::MAX)?;
    o.device.unmask_intx()?;

    o.device.trigger_irq(IrqIndex::Intx, 0)?;
    fd.wait(Duration::from_secs(5))?
        .context("loopback trigger did not reach the eventfd")?;
    // An eventfd handed elsewhere (a dup, as for another process or an irqfd) sees
    // the same signals.
    let dup = std::fs::File::from(fd.try_clone_fd()?);
    o.device.unmask_intx()?;
    o.device.trigger_irq(IrqIndex::Intx, 0)?;
    let mut b = [0u8; 8];
    poll_until(
        Duration::from_secs(5),
        "the dup'd eventfd",
        || match std::io::Read::read(&mut &dup, &mut b) {
            Ok(8) => Ok(Some(())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        },
    )?;
    o.device.disable_irqs(IrqIndex::Intx)?;
    Ok(())
}

/// A DMA buffer at a fixed IOVA in `container`.
fn dma_buffer(
    container: &VfioContainer,
    iova: u64,
    len: usize,
) -> Result<DmaBuffer<VfioContainer>> {
    // 4 KiB pages, so that buffers a few pages apart in IOVA space never overlap.
    let memory = DmaMemory::allocate_with(len, PagePreference::SmallOnly)?;
    Ok(DmaBuffer::map_at(
        memory,
        container.clone(),
        Iova(iova),
        DmaAccess::ReadWrite,
    )?)
}

// AHCI port 0 registers, relative to 0x100.
const P0: u64 = 0x100;
const PX_CLB: u64 = 0x00;
const PX_CLBU: u64 = 0x04;
const PX_FB: u64 = 0x08;
const PX_FBU: u64 = 0x0c;
const PX_IS: u64 = 0x10;
const PX_IE: u64 = 0x14;
const PX_CMD: u64 = 0x18;
const PX_TFD: u64 = 0x20;
const PX_SERR: u64 = 0x30;
const PX_CI: u64 = 0x38;
const PX_CMD_ST: u32 = 1 << 0;
const PX_CMD_FRE: u32 = 1 << 4;
const PX_CMD_FR: u32 = 1 << 14;
const PX_CMD_CR: u32 = 1 << 15;

/// ich9-ahci with MSI: an IDENTIFY issued through a command list in DMA memory
/// completes, the device's MSI arrives on the eventfd, and the IDENTIFY data (written
/// by the device through the IOMMU) gives the disk's size.
fn ahci_msi_on_identify() -> Result<()> {
    let o = open(rig::ICH9_AHCI)?;
    let info = o.device.irq_info(IrqIndex::Msi)?;
    println!("MSI: {info:?}");
    ensure!(info.count >= 1 && info.eventfd, "no MSI");
    let abar = o.device.bar(5)?;
    let reg = |off: u64| P0 + off;

    // HBA reset, then AHCI mode; the host driver left ports pointing at its memory.
    abar.write32(AHCI_GHC, 1)?;
    poll_until(Duration::from_secs(5), "GHC.HR to clear", || {
        Ok((abar.read32(AHCI_GHC)? & 1 == 0).then_some(()))
    })?;
    abar.write32(AHCI_GHC, 1 << 31)?;
    let cmd = abar.read32(reg(PX_CMD))?;
    abar.write32(reg(PX_CMD), cmd & !(PX_CMD_ST | PX_CMD_FRE))?;
    poll_until(Duration::from_secs(5), "port 0 to stop", || {
        Ok((abar.read32(reg(PX_CMD))? & (PX_CMD_CR | PX_CMD_FR) == 0).then_some(()))
    })?;

    // Command list at +0, received FISes at +0x400, command table at +0x800,
    // IDENTIFY data at +0x1000.
    const IOVA: u64 = 0x20_0000;
    let mem = dma_buffer(&o.container, IOVA, 0x2000)?;
    abar.write32(reg(PX_CLB), IOVA as u32)?;
    abar.write32(reg(PX_CLBU), (IOVA >> 32) as u32)?;
    abar.write32(reg(PX_FB), (IOVA + 0x400) as u32)?;
    abar.write32(reg(PX_FBU), ((IOVA + 0x400) >> 32) as u32)?;
    abar.write32(reg(PX_SERR), u32::MAX)?;
    abar.write32(reg(PX_IS), u32::MAX)?;
    abar.write32(AHCI_IS, u32::MAX)?;

    o.device.set_bus_master(true)?;
    let irqs = o.device.enable_irqs(IrqIndex::Msi, 1)?;
    let fd = irqs.eventfd(0).context("no eventfd")?;
    abar.write32(reg(PX_IE), 0x7dc0_007f)?;
    abar.write32(AHCI_GHC, (1 << 31) | (1 << 1))?;
    abar.write32(reg(PX_CMD), abar.read32(reg(PX_CMD))? | PX_CMD_FRE)?;
    abar.write32(reg(PX_CMD), abar.read32(reg(PX_CMD))? | PX_CMD_ST)?;
    // Enabling FIS receive may deliver the initial D2H FIS (and an MSI): start clean.
    std::thread::sleep(Duration::from_millis(50));
    abar.write32(reg(PX_IS), u32::MAX)?;
    abar.write32(AHCI_IS, u32::MAX)?;
    fd.read()?;

    // Command header 0: 5-dword FIS, one PRD, table at +0x800.
    mem.write::<u32>(0, 5 | (1 << 16))?;
    mem.write::<u32>(4, 0)?;
    mem.write::<u32>(8, (IOVA + 0x800) as u32)?;
    mem.write::<u32>(12, ((IOVA + 0x800) >> 32) as u32)?;
    // H2D register FIS: command IDENTIFY DEVICE.
    mem.copy_from(0x800, &[0x27, 0x80, 0xec, 0, 0, 0, 0, 0xa0])?;
    // PRD 0: 512 bytes at +0x1000, interrupt on completion.
    mem.write::<u32>(0x880, (IOVA + 0x1000) as u32)?;
    mem.write::<u32>(0x884, ((IOVA + 0x1000) >> 32) as u32)?;
    mem.write::<u32>(0x88c, 511 | (1 << 31))?;
    abar.write32(reg(PX_CI), 1)?;

    let n = fd
        .wait(Duration::from_secs(10))?
        .context("no MSI for the IDENTIFY")?;
    let is = abar.read32(reg(PX_IS))?;
    let tfd = abar.read32(reg(PX_TFD))?;
    println!("MSI fired ({n}); PxIS {is:#x} PxTFD {tfd:#x}");
    poll_until(Duration::from_secs(5), "PxCI to clear", || {
        Ok((abar.read32(reg(PX_CI))? == 0).then_some(()))
    })?;
    ensure!(tfd & 1 == 0, "task file error: {tfd:#x}");
    let mut id = [0u8; 512];
    mem.copy_to(0x1000, &mut id)?;
    let sectors = u32::from_le_bytes([id[120], id[121], id[122], id[123]]);
    println!("IDENTIFY over DMA: {sectors} sectors");
    ensure!(
        u64::from(sectors) == rig::AHCI_DISK_SECTORS,
        "IDENTIFY says {sectors} sectors, disk has {}",
        rig::AHCI_DISK_SECTORS
    );

    abar.write32(
        reg(PX_CMD),
        abar.read32(reg(PX_CMD))? & !(PX_CMD_ST | PX_CMD_FRE),
    )?;
    abar.write32(AHCI_GHC, 1 << 31)?;
    o.device.quiesce()?;
    mem.unmap()?;
    Ok(())
}

const E1000E_IVAR: u64 = 0xe4;
/// ICR causes RXQ0, RXQ1, TXQ0, TXQ1, OTHER, routed by IVAR to vectors 0..=4.
const E1000E_MSIX_CAUSES: [u32; 5] = [1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24];

/// e1000e (82574) MSI-X: five vectors with one eventfd each. With IVAR routing the
/// queue causes and "other" to vectors 0..=4, setting each cause through ICS fires its
/// own vector's eventfd and no other. Resizing keeps the surviving eventfds.
fn e1000e_msix_vectors_fire() -> Result<()> {
    let o = open(rig::E1000E)?;
    let info = o.device.irq_info(IrqIndex::Msix)?;
    println!("MSI-X: {info:?}");
    ensure!(info.count == 5 && info.eventfd, "expected 5 MSI-X vectors");
    let bar0 = o.device.bar(0)?;
    bar0.write32(e1000_regs::IMC, u32::MAX)?;
    bar0.write32(e1000_regs::ICR, u32::MAX)?;
    o.device.set_bus_master(true)?;
    let mut irqs = o.device.enable_irqs(IrqIndex::Msix, 3)?;
    o.device.resize_irqs(&mut irqs, 5)?;
    ensure!(irqs.len() == 5, "resize gave {} vectors", irqs.len());
    let ivar = (0..5u32).fold(0, |acc, v| acc | ((0x8 | v) << (4 * v)));
    bar0.write32(E1000E_IVAR, ivar)?;
    bar0.write32(
        e1000_regs::IMS,
        E1000E_MSIX_CAUSES.iter().fold(0, |a, c| a | c),
    )?;
    for fd in irqs.eventfds() {
        fd.read()?;
    }
    for (vector, cause) in E1000E_MSIX_CAUSES.iter().enumerate() {
        bar0.write32(E1000_ICS, *cause)?;
        let fd = irqs.eventfd(vector).context("missing eventfd")?;
        fd.wait(Duration::from_secs(5))?
            .with_context(|| format!("vector {vector} did not fire for cause {cause:#x}"))?;
        for (other, ofd) in irqs.eventfds().iter().enumerate() {
            ensure!(
                other == vector || ofd.read()?.is_none(),
                "vector {other} fired for cause {cause:#x} (meant for {vector})"
            );
        }
        bar0.write32(e1000_regs::ICR, *cause)?;
        println!("vector {vector} fired for cause {cause:#x}");
    }
    // Masking is not offered for MSI-X by vfio-pci: a clear error, not a silent no-op.
    if !info.maskable {
        let e = o
            .device
            .mask_irq(IrqIndex::Msix, 0)
            .unwrap_err()
            .to_string();
        ensure!(e.contains("no masking"), "mask error: {e}");
    }
    rig::let_e1000e_throttling_expire();
    o.device.resize_irqs(&mut irqs, 2)?;
    bar0.write32(E1000_ICS, E1000E_MSIX_CAUSES[1])?;
    irqs.eventfd(1)
        .context("vector 1 gone")?
        .wait(Duration::from_secs(5))?
        .context("vector 1 did not fire after shrinking to 2")?;
    bar0.write32(e1000_regs::IMC, u32::MAX)?;
    rig::let_e1000e_throttling_expire();
    o.device.disable_irqs(IrqIndex::Msix)?;
    Ok(())
}

// ---------------------------------------------------------------------- DMA

const RING: u64 = 8;

/// A frame from 52:54:00:00:00:02 to ...:03, ethertype 0x88b5, with a payload that
/// names `tag`.
fn frame(tag: &str) -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0, 0, 0, 0x03, 0x52, 0x54, 0, 0, 0, 0x02, 0x88, 0xb5,
    ];
    let text = format!("udrv vfio dma test: {tag}");
    f.extend_from_slice(text.as_bytes());
    f.extend((0..100u8).map(|i| i.wrapping_mul(7) ^ tag.len() as u8));
    f
}

/// Transmit queue of e1000 A: 8 legacy descriptors in `ring` at `ring_iova`.
struct Tx<'a> {
    bar0: &'a Region,
    ring: &'a DmaBuffer<VfioContainer>,
    next: u64,
}

impl Tx<'_> {
    /// Queues one descriptor for `len` bytes at `buf_iova` and waits until the device
    /// has processed it (TDH moved past it).
    fn send(&mut self, buf_iova: u64, len: usize) -> Result<()> {
        let d = (self.next * 16) as usize;
        self.ring.write::<u64>(d, buf_iova)?;
        // length, CSO 0, CMD = EOP | IFCS | RS
        self.ring.write::<u32>(d + 8, len as u32 | (0x0b << 24))?;
        self.ring.write::<u32>(d + 12, 0)?;
        self.next = (self.next + 1) % RING;
        self.bar0.write32(e1000_regs::TDT, self.next as u32)?;
        let want = self.next as u32;
        poll_until(Duration::from_secs(10), "TDH to reach TDT", || {
            Ok((self.bar0.read32(e1000_regs::TDH)? == want).then_some(()))
        })
    }
}

/// The frames e1000 B has received so far (descriptors with DD set), in ring order.
/// Only frames of this test's ethertype count: anything else on the hub is noise.
fn received(
    rx_ring: &DmaBuffer<VfioContainer>,
    rx_bufs: &DmaBuffer<VfioContainer>,
) -> Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    for i in 0..RING as usize {
        let status = rx_ring.read::<u8>(i * 16 + 12)?;
        if status & 1 == 0 {
            continue;
        }
        let len = rx_ring.read::<u16>(i * 16 + 8)? as usize;
        let mut f = vec![0u8; len.min(2048)];
        rx_bufs.copy_to(i * 2048, &mut f)?;
        if f.get(12..14) == Some(&[0x88, 0xb5][..]) {
            frames.push(f);
        }
    }
    Ok(frames)
}

/// Two e1000s in two groups of one container: A transmits a frame from a DMA-mapped
/// buffer and B, with its RX ring in the same IOVA space, receives exactly that frame.
/// After the buffer is unmapped the same descriptor sends nothing (the IOMMU faults the
/// read), while a frame from a still-mapped buffer arrives.
fn e1000_dma_tx_and_unmap() -> Result<()> {
    let (container, devices) = rig::open_in_one_container(&[rig::E1000_A, rig::E1000_B])?;
    let [a, b]: [VfioDevice; 2] = devices.try_into().expect("two devices asked for");
    let bar_a = a.bar(0)?;
    let bar_b = b.bar(0)?;

    let tx_ring = dma_buffer(&container, 0x10_0000, 4096)?;
    let rx_ring = dma_buffer(&container, 0x11_0000, 4096)?;
    let rx_bufs = dma_buffer(&container, 0x12_0000, RING as usize * 2048)?;
    let payload = dma_buffer(&container, 0x20_0000, 4096)?;
    let control = dma_buffer(&container, 0x21_0000, 4096)?;
    println!(
        "mappings: {:?}",
        container
            .mappings()
            .iter()
            .map(|m| m.range)
            .collect::<Vec<_>>()
    );

    // B: receive everything into 8 buffers of 2 KiB, CRC stripped.
    for i in 0..RING as usize {
        rx_ring.write::<u64>(i * 16, rx_bufs.iova_at(i * 2048)?.0)?;
        rx_ring.write::<u64>(i * 16 + 8, 0)?;
    }
    bar_b.write32(e1000_regs::RCTL, 0)?;
    bar_b.write32(e1000_regs::RDBAL, rx_ring.iova().0 as u32)?;
    bar_b.write32(e1000_regs::RDBAH, (rx_ring.iova().0 >> 32) as u32)?;
    bar_b.write32(e1000_regs::RDLEN, (RING * 16) as u32)?;
    bar_b.write32(e1000_regs::RDH, 0)?;
    bar_b.write32(e1000_regs::RDT, (RING - 1) as u32)?;
    // EN | UPE | MPE | BAM | SECRC
    bar_b.write32(
        e1000_regs::RCTL,
        (1 << 1) | (1 << 3) | (1 << 4) | (1 << 15) | (1 << 26),
    )?;
    b.set_bus_master(true)?;

    // A: transmit ring.
    bar_a.write32(e1000_regs::TCTL, 0)?;
    bar_a.write32(e1000_regs::TDBAL, tx_ring.iova().0 as u32)?;
    bar_a.write32(e1000_regs::TDBAH, (tx_ring.iova().0 >> 32) as u32)?;
    bar_a.write32(e1000_regs::TDLEN, (RING * 16) as u32)?;
    bar_a.write32(e1000_regs::TDH, 0)?;
    bar_a.write32(e1000_regs::TDT, 0)?;
    // EN | PSP | CT 0x10 | COLD 0x40
    bar_a.write32(
        e1000_regs::TCTL,
        (1 << 1) | (1 << 3) | (0x10 << 4) | (0x40 << 12),
    )?;
    a.set_bus_master(true)?;
    let mut tx = Tx {
        bar0: &bar_a,
        ring: &tx_ring,
        next: 0,
    };

    let first = frame("mapped");
    payload.copy_from(0, &first)?;
    tx.send(payload.iova().0, first.len())?;
    let got = poll_until(Duration::from_secs(10), "the frame at e1000 B", || {
        let frames = received(&rx_ring, &rx_bufs)?;
        Ok((!frames.is_empty()).then_some(frames))
    })?;
    ensure!(got.len() == 1, "B received {} frames, want 1", got.len());
    ensure!(
        got[0] == first,
        "B received {:02x?}, want {:02x?}",
        &got[0],
        &first
    );
    println!("mapped buffer: {} bytes arrived intact", first.len());

    // Unmap the payload and send the same descriptor contents again.
    let stale_iova = payload.iova().0;
    payload.unmap()?;
    tx.send(stale_iova, first.len())?;
    // Then a frame from a buffer that is still mapped, as a marker.
    let marker = frame("control");
    control.copy_from(0, &marker)?;
    tx.send(control.iova().0, marker.len())?;
    poll_until(Duration::from_secs(10), "the control frame", || {
        let frames = received(&rx_ring, &rx_bufs)?;
        Ok(frames.contains(&marker).then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let got = received(&rx_ring, &rx_bufs)?;
    let repeats = got.iter().filter(|f| **f == first).count();
    println!(
        "after unmap: {} test frames at B, {repeats} with the unmapped payload",
        got.len()
    );
    ensure!(
        got == [first.clone(), marker.clone()],
        "B got {} test frames ({repeats} with the unmapped payload); the transmit from the \
         unmapped IOVA must send nothing",
        got.len()
    );
    a.quiesce()?;
    b.quiesce()?;
    Ok(())
}

/// One container, two groups: the IOMMU reports 4 KiB pages, windows that leave out
/// the MSI range and a mapping budget; both groups are listed; a group with an open
/// device cannot leave, and can once the device is closed.
fn iommu_info_and_groups() -> Result<()> {
    let ga = rig::bind_to_vfio(rig::E1000_A)?;
    let gb = rig::bind_to_vfio(rig::E1000_B)?;
    let container = VfioContainer::open()?;
    ensure!(
        container.iommu_info().is_err(),
        "IOMMU info before any group"
    );
    let group_a = VfioGroup::open(ga)?;
    let group_b = VfioGroup::open(gb)?;
    container.attach(&group_a)?;
    container.attach(&group_b)?;
    container.attach(&group_b)?;
    let info = container.iommu_info()?;
    println!(
        "IOMMU: page sizes {:#x}, windows {:?}, dma_avail {:?}",
        info.page_sizes, info.iova_ranges, info.dma_avail
    );
    ensure!(info.page_sizes & 0x1000 != 0, "no 4 KiB pages");
    ensure!(
        info.min_page_size() == 4096,
        "min page {}",
        info.min_page_size()
    );
    ensure!(!info.iova_ranges.is_empty(), "no IOVA ranges reported");
    let msi = dma::IovaRange::new(Iova(0xfee0_0000), 0x1000)?;
    ensure!(!info.allows(&msi), "the MSI window is reported usable");
    ensure!(
        info.dma_avail.is_some_and(|n| n > 1000),
        "dma_avail {:?}",
        info.dma_avail
    );
    let mut ids: Vec<u32> = container.groups().iter().map(|g| g.id()).collect();
    ids.sort();
    let mut want = vec![ga, gb];
    want.sort();
    ensure!(ids == want, "groups {ids:?}, want {want:?}");

    // A second container cannot take a group that is in the first.
    let other = VfioContainer::open()?;
    let e = other.attach(&group_a).unwrap_err();
    ensure!(matches!(e, VfioError::GroupInOtherContainer { .. }), "{e}");

    let dev = group_b.open_device(rig::E1000_B)?;
    let e = container.detach(&group_b).unwrap_err();
    println!("detach with an open device: {e}");
    drop(dev);
    container.detach(&group_b)?;
    ensure!(container.group(gb).is_none(), "group {gb} still listed");
    container.attach(&group_b)?;
    Ok(())
}

/// Wrong offsets, regions and mappings give errors that name the device and the
/// operation, and the process carries on using the device afterwards.
fn bad_requests_are_errors() -> Result<()> {
    let o = open(rig::E1000_A)?;
    let bar0 = o.device.bar(0)?;
    let size = bar0.size();
    let e = bar0.read32(size).unwrap_err().to_string();
    ensure!(
        e == format!(
            "{} BAR0 read32 at {size:#x}: out of range (BAR is {size:#x} bytes)",
            rig::E1000_A
        ),
        "{e}"
    );
    ensure!(
        bar0.write64(size - 4, 0).is_err(),
        "straddling write accepted"
    );
    ensure!(bar0.read8(u64::MAX).is_err(), "u64::MAX offset accepted");
    let e = o.device.config().write32(0x100, 0).unwrap_err().to_string();
    ensure!(e.contains("config write32 at 0x100: out of range"), "{e}");
    let e = o.device.bar(6).unwrap_err().to_string();
    ensure!(e.contains("BAR6"), "{e}");
    let e = o.device.bar(2).unwrap_err().to_string();
    ensure!(
        e.contains("BAR2") && e.contains("does not implement"),
        "{e}"
    );
    let e = o
        .device
        .enable_irqs(IrqIndex::Msix, 4)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("MSI-X"), "{e}");
    let e = o
        .device
        .enable_irqs(IrqIndex::Intx, 2)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("1 vector"), "{e}");
    println!("region errors ok");

    // Leaked: it is mapped straight through the container, and an early return must
    // not free it under a mapping.
    let mem: &'static DmaMemory = Box::leak(Box::new(DmaMemory::allocate(4096)?));
    let at =
        |iova: u64, len: u64| DmaMapping::new(Iova(iova), mem.vaddr(), len, DmaAccess::ReadWrite);
    // SAFETY: every mapping made by `map` and `map_batch` below is of `mem`, which is
    // never freed.
    let map = |m: &DmaMapping| unsafe { o.container.map(m) };
    let e = map(&at(0xfee0_0000, 4096)?).unwrap_err().to_string();
    ensure!(e.contains("outside the IOMMU's usable IOVA windows"), "{e}");
    let e = map(&at(0x1000_0800, 4096)?).unwrap_err();
    ensure!(matches!(e, DmaError::Misaligned { .. }), "{e}");
    map(&at(0x10_0000, 4096)?)?;
    let e = map(&at(0x10_0000, 4096)?).unwrap_err();
    ensure!(matches!(e, DmaError::MapOverlap { .. }), "{e}");
    // A batch is all or nothing: its second piece overlaps, so its first is undone.
    // SAFETY: as for `map`.
    let e = unsafe {
        o.container
            .map_batch(&[at(0x20_0000, 4096)?, at(0x10_0000, 4096)?])
    }
    .unwrap_err();
    ensure!(matches!(e, DmaError::MapOverlap { .. }), "{e}");
    let left: Vec<u64> = o.container.mappings().iter().map(|m| m.iova().0).collect();
    ensure!(
        left == [0x10_0000],
        "after a refused batch the container holds {left:#x?}, not only the earlier mapping"
    );
    let nothing_there = DmaMapping::new(
        Iova(0x30_0000),
        HostVirtAddr(0x1000),
        4096,
        DmaAccess::DeviceReads,
    )?;
    // SAFETY: 0x1000 lies below vm.mmap_min_addr, so no memory of this process is
    // there: the kernel finds nothing to pin and refuses (checked below), and no
    // mapping is made.
    let e = unsafe { o.container.map(&nothing_there) };
    println!("map of an unmapped host address: {e:?}");
    ensure!(
        e.is_err(),
        "mapping an address with no memory behind it succeeded"
    );
    ensure!(
        o.container
            .unmap(dma::IovaRange::new(Iova(0x10_0000), 4096)?)?
            == 4096,
        "unmap size"
    );
    memlock_limit_refuses_mapping(&o.container)?;
    println!("mapping errors ok");

    // Still working.
    let status = bar0.read32(e1000_regs::STATUS)?;
    ensure!(
        status & e1000_regs::STATUS_LU != 0,
        "STATUS {status:#x} after the errors"
    );
    Ok(())
}

/// Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK, mapping more than the limit
/// is refused with an error that says how much is needed and how to raise the limit.
/// Runs on a thread of its own, whose capability it drops (capabilities are per
/// thread); the limit is restored afterwards.
fn memlock_limit_refuses_mapping(container: &VfioContainer) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
    // Leaked: should the map succeed and its unmap fail, the memory must stay.
    let mem: &'static DmaMemory = Box::leak(Box::new(DmaMemory::allocate(4 << 20)?));
    let mapping = DmaMapping::new(
        Iova(0x40_0000),
        mem.vaddr(),
        mem.len() as u64,
        DmaAccess::ReadWrite,
    )?;
    setrlimit(Resource::RLIMIT_MEMLOCK, 1 << 20, hard)?;
    let c = container.clone();
    let outcome = std::thread::spawn(move || -> Result<String> {
        drop_ipc_lock_on_this_thread()?;
        // SAFETY: `mem` is never freed.
        match unsafe { c.map(&mapping) } {
            Ok(()) => {
                let _ = c.unmap(mapping.range);
                bail!("4 MiB mapped under a 1 MiB RLIMIT_MEMLOCK without CAP_IPC_LOCK")
            }
            Err(e) => Ok(e.to_string()),
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("memlock thread panicked"));
    setrlimit(Resource::RLIMIT_MEMLOCK, soft, hard)?;
    let e = outcome??;
    println!("over the memlock limit: {e}");
    ensure!(
        e.contains("RLIMIT_MEMLOCK") && e.contains("ulimit -l"),
        "{e}"
    );
    Ok(())
}

/// Clears CAP_IPC_LOCK from the calling thread's effective set.
fn drop_ipc_lock_on_this_thread() -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for version 3, which `data` holds; the
    // header is a live struct of the layout the kernel expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    ensure!(r == 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above; capset reads the same two structs. pid 0 is this thread only.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    ensure!(r == 0, "capset: {}", std::io::Error::last_os_error());
    Ok(())
}

/// None of the rig's devices offers a function reset, and, each alone on the root bus,
/// none can have a bus hot reset: `reset` says so plainly, and `reset_method` agrees.
/// Quiescing (and dropping) a device turns bus mastering off and disables its IRQs.
fn reset_and_quiesce() -> Result<()> {
    for bdf in [rig::E1000_A, rig::E1000E, rig::ICH9_AHCI] {
        let o = open(bdf)?;
        match (o.device.reset_method(), o.device.reset()) {
            (Ok(m), Ok(done)) => {
                ensure!(m == done, "{bdf}: announced {m}, did {done}");
                println!("{bdf}: reset by {done}");
            }
            (Err(e1), Err(e2)) => {
                let e = e2.to_string();
                println!("{bdf}: {e}");
                ensure!(e1.to_string() == e, "reset_method and reset disagree");
                ensure!(e.starts_with(&format!("{bdf} reset: not available")), "{e}");
                ensure!(
                    e.contains("no function reset") && e.contains("hot reset"),
                    "{e}"
                );
            }
            (m, r) => bail!("{bdf}: reset_method {m:?} but reset {r:?}"),
        }
    }

    let o = open(rig::E1000_A)?;
    o.device.set_bus_master(true)?;
    ensure!(
        o.device.config().read16(0x04)? & 0x4 != 0,
        "bus master did not stick"
    );
    let irqs = o.device.enable_irqs(IrqIndex::Intx, 1)?;
    o.device.quiesce()?;
    ensure!(
        o.device.config().read16(0x04)? & 0x4 == 0,
        "bus master on after quiesce"
    );
    // INTx is disabled: a loopback trigger either fails or reaches no eventfd.
    let fd = irqs.eventfd(0).context("no eventfd")?;
    fd.read()?;
    if o.device.trigger_irq(IrqIndex::Intx, 0).is_ok() {
        ensure!(
            fd.wait(Duration::from_millis(200))?.is_none(),
            "INTx still wired after quiesce"
        );
    }

    o.device.set_bus_master(true)?;
    let _irqs = o.device.enable_irqs(IrqIndex::Intx, 1)?;
    let group = o.device.group().clone();
    drop(o.device);
    let again = group.open_device(rig::E1000_A)?;
    ensure!(
        again.config().read16(0x04)? & 0x4 == 0,
        "bus master on after drop"
    );
    println!("quiesce and drop leave bus mastering off");
    Ok(())
}

// --------------------------------------------------------------- benchmarks

/// e1000 STATUS read 20000 times through the mmap'd BAR (`Region::read32`, no
/// syscall) and 20000 times with pread on the device fd (what a trapped access costs),
/// interleaved in rounds so both see the same conditions. Prints ns per read and the
/// ratio pread/mmap.
fn bench_bar_read() -> Result<()> {
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 1000;
    let o = open(rig::E1000_A)?;
    let bar0 = o.device.bar(0)?;
    ensure!(bar0.is_mapped(e1000_regs::STATUS, 4), "STATUS not mapped");
    let file = std::fs::File::from(std::os::fd::AsFd::as_fd(&o.device).try_clone_to_owned()?);
    let at = bar0.info().offset + e1000_regs::STATUS;
    let (mut mmap_time, mut pread_time) = (Duration::ZERO, Duration::ZERO);
    let mut check = 0u32;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            check ^= bar0.read32(e1000_regs::STATUS)?;
        }
        mmap_time += t.elapsed();
        let t = Instant::now();
        let mut b = [0u8; 4];
        for _ in 0..PER_ROUND {
            file.read_exact_at(&mut b, at)?;
            check ^= u32::from_le_bytes(b);
        }
        pread_time += t.elapsed();
    }
    ensure!(check == 0, "the two paths read different values");
    let n = (ROUNDS * PER_ROUND) as f64;
    let mmap_ns = mmap_time.as_nanos() as f64 / n;
    let pread_ns = pread_time.as_nanos() as f64 / n;
    println!("BAR0 read32: mmap {mmap_ns:.0} ns, pread {pread_ns:.0} ns (TCG guest)");
    println!("ratio pread/mmap: {:.2}x", pread_ns / mmap_ns);
    Ok(())
}
