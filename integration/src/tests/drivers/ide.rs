//! The IDE driver on the rig's piix3-ide (legacy mode, 8 MiB patterned disk as primary
//! master): PIO and DMA reads checked against the disk pattern, writes that round-trip
//! across both modes, the controller quiet after Ctrl-C.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use udriver::pci::PciAddress;
use udriver::vfio::{VfioContainer, VfioGroup};
use udrv_examples::ata::SECTOR_SIZE;
use udrv_examples::block::{self, BlockDevice};
use udrv_examples::disk_pattern;
use udrv_examples::ide::regs::{BM_ACTIVE, BM_COMMAND, BM_START, BM_STATUS};
use udrv_examples::ide::{Ide, Transfer};
use udrv_examples::DriverError;

use super::{binary, compare, kernel, median};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        drivers_ide:
        identify_and_pio_reads,
        dma_reads_whole_disk,
        writes_round_trip,
        bad_requests_are_errors,
        binary_reads_and_writes (300 s),
        ctrl_c_leaves_controller_quiet,
    ]
}

pub fn benches() -> Vec<RigTest> {
    rig_tests![drivers: bench_ide_read_vs_kernel (600 s)]
}

pub fn open(transfer: Transfer) -> Result<Ide> {
    rig::bind_to_vfio(rig::PIIX3_IDE)?;
    let address: PciAddress = rig::PIIX3_IDE.parse()?;
    Ok(Ide::open(address, transfer)?)
}

/// IDENTIFY says what QEMU attached; PIO reads at the start, across a 256-sector
/// command boundary and at the very end hold the pattern.
fn identify_and_pio_reads() -> Result<()> {
    let mut ide = open(Transfer::Pio)?;
    let id = ide.identity().clone();
    println!("{id:?}");
    ensure!(id.model.contains("QEMU HARDDISK"), "model {:?}", id.model);
    ensure!(
        id.sectors == rig::IDE_DISK_SECTORS,
        "{} sectors, the rig's disk has {}",
        id.sectors,
        rig::IDE_DISK_SECTORS
    );
    ensure!(id.dma, "the disk does not offer DMA");
    let last = rig::IDE_DISK_SECTORS;
    for (lba, count) in [(0, 300), (250, 20), (last - 64, 64)] {
        let r = block::read_sequential(&mut ide, lba, count, true)?;
        println!(
            "PIO: sectors {lba}..{} hold the pattern ({:.2} MB/s)",
            lba + count,
            r.mb_per_s()
        );
    }
    Ok(())
}

/// Bus-master DMA reads the whole disk, every sector checked.
fn dma_reads_whole_disk() -> Result<()> {
    let mut ide = open(Transfer::Dma)?;
    let r = block::read_sequential(&mut ide, 0, rig::IDE_DISK_SECTORS, true)?;
    println!(
        "DMA: all {} sectors hold the pattern ({} bytes in {:.3} s, {:.2} MB/s)",
        rig::IDE_DISK_SECTORS,
        r.bytes,
        r.elapsed.as_secs_f64(),
        r.mb_per_s()
    );
    ensure!(
        ide.bus_master_status()? & BM_ACTIVE == 0,
        "the DMA engine is still active"
    );
    Ok(())
}

/// Writes round-trip in each mode, and across modes: what PIO wrote, DMA reads back,
/// and the reverse. The disk holds its pattern afterwards.
fn writes_round_trip() -> Result<()> {
    let mut ide = open(Transfer::Pio)?;
    let end = rig::IDE_DISK_SECTORS;
    for transfer in [Transfer::Pio, Transfer::Dma] {
        ide.set_transfer(transfer);
        for (lba, count) in [(1000, 8), (250, 12), (end - 3, 3)] {
            block::write_round_trip(&mut ide, lba, count)?;
            println!("{transfer:?}: {count} sectors at {lba} written, read back, restored");
        }
    }
    // Across modes: 300 sectors (two commands each way), inverted pattern.
    let (lba, count) = (4000u64, 300usize);
    let written: Vec<u8> = (lba..lba + count as u64)
        .flat_map(|s| disk_pattern::sector(s).map(|b| !b))
        .collect();
    for (write, read) in [
        (Transfer::Pio, Transfer::Dma),
        (Transfer::Dma, Transfer::Pio),
    ] {
        ide.set_transfer(write);
        ide.write_sectors(lba, &written)?;
        ide.flush()?;
        let mut back = vec![0u8; count * SECTOR_SIZE];
        ide.set_transfer(read);
        ide.read_sectors(lba, &mut back)?;
        ensure!(
            back == written,
            "{write:?} write read back by {read:?} differs"
        );
        println!("{count} sectors written by {write:?} read back equal by {read:?}");
    }
    let original: Vec<u8> = (lba..lba + count as u64)
        .flat_map(disk_pattern::sector)
        .collect();
    ide.set_transfer(Transfer::Dma);
    ide.write_sectors(lba, &original)?;
    ide.flush()?;
    block::read_sequential(&mut ide, 0, rig::IDE_DISK_SECTORS, true)
        .context("the disk after the write tests")?;
    println!("the whole disk holds its pattern again");
    Ok(())
}

/// Requests past the end or of partial sectors are refused without touching the
/// disk, and the driver goes on working.
fn bad_requests_are_errors() -> Result<()> {
    let mut ide = open(Transfer::Dma)?;
    let end = rig::IDE_DISK_SECTORS;
    let mut two = vec![0u8; 2 * SECTOR_SIZE];
    for transfer in [Transfer::Pio, Transfer::Dma] {
        ide.set_transfer(transfer);
        let e = ide.read_sectors(end - 1, &mut two).unwrap_err();
        println!("{transfer:?}: {e}");
        ensure!(matches!(e, DriverError::Request { .. }), "{e}");
        let e = ide.write_sectors(0, &two[..100]).unwrap_err();
        ensure!(matches!(e, DriverError::Request { .. }), "{e}");
    }
    ide.read_sectors(end - 2, &mut two)?;
    disk_pattern::verify(end - 2, &two).map_err(anyhow::Error::msg)?;
    println!("still reads the last two sectors");
    Ok(())
}

/// The `ide` binary as a user runs it: both modes, verification, a write test.
fn binary_reads_and_writes() -> Result<()> {
    rig::bind_to_vfio(rig::PIIX3_IDE)?;
    let done = binary::run(
        "ide",
        &[
            "--device",
            rig::PIIX3_IDE,
            "--sectors",
            "2048",
            "--verify-pattern",
            "--write-test",
            "3000",
        ],
    )?;
    ensure!(done.status.success(), "ide failed: {}", done.status);
    for line in [
        "Pio: 1048576 bytes",
        "Dma: 1048576 bytes",
        "every sector holds the disk pattern",
        "Pio: 8 sectors at LBA 3000 written, read back equal, original restored",
        "Dma: 8 sectors at LBA 3000 written, read back equal, original restored",
    ] {
        ensure!(done.stdout.contains(line), "ide did not print {line:?}");
    }
    let help = binary::run("ide", &["--help"])?;
    ensure!(help.status.success() && help.stdout.contains("nIEN"));
    Ok(())
}

/// Ctrl-C during a long PIO read: exit 130, the bus-master engine stopped, the disk
/// idle, and the next driver finds it working.
fn ctrl_c_leaves_controller_quiet() -> Result<()> {
    rig::bind_to_vfio(rig::PIIX3_IDE)?;
    let done = binary::interrupt(
        "ide",
        &["--device", rig::PIIX3_IDE, "--transfer", "pio"],
        "reading",
        Duration::from_millis(500),
    )?;
    ensure!(
        done.status.code() == Some(130),
        "ide should exit with 130 after Ctrl-C, not {}",
        done.status
    );
    {
        let group = VfioGroup::open(rig::bind_to_vfio(rig::PIIX3_IDE)?)?;
        let container = VfioContainer::open()?;
        container.attach(&group)?;
        let device = group.open_device(rig::PIIX3_IDE)?;
        let bm = device.bar(4)?;
        let (command, status) = (bm.read8(BM_COMMAND)?, bm.read8(BM_STATUS)?);
        let alt = device.bar(1)?.read8(0)?;
        println!("after Ctrl-C: BMICX {command:#04x} BMISX {status:#04x} alt status {alt:#04x}");
        ensure!(command & BM_START == 0, "the DMA engine was left started");
        ensure!(alt & 0x88 == 0, "the disk was left busy or mid-transfer");
    }
    let mut ide = open(Transfer::Dma)?;
    block::read_sequential(&mut ide, 0, 512, true)?;
    println!("the next driver reads the pattern");
    Ok(())
}

/// Passes over the whole 8 MiB disk for the DMA measurements, and measurements per
/// contender.
const BENCH_DMA_PASSES: u32 = 8;
const BENCH_ROUNDS: usize = 3;
/// Sectors read by PIO (1 MiB): PIO is slow, one system call per 4 bytes here.
const BENCH_PIO_SECTORS: u64 = 2048;
/// Sectors per command, for every contender: the most one LBA28 command moves.
const BENCH_CHUNK: usize = 256;

/// The kernel's ata_piix, bound once: DMA with O_DIRECT reads of 128 KiB, PIO with
/// READ SECTORS through SG_IO; `BENCH_ROUNDS` (DMA, PIO) measurements in MB/s.
fn kernel_read_rates() -> Result<Vec<(f64, f64)>> {
    let sectors = rig::IDE_DISK_SECTORS;
    rig::bind_to_host(rig::PIIX3_IDE, "ata_piix")?;
    let dev = kernel::block_device_of(rig::PIIX3_IDE, sectors)?;
    kernel::read_direct(&dev, sectors, BENCH_CHUNK * SECTOR_SIZE, 1)?;
    let mut rates = Vec::new();
    for _ in 0..BENCH_ROUNDS {
        let (bytes, t) =
            kernel::read_direct(&dev, sectors, BENCH_CHUNK * SECTOR_SIZE, BENCH_DMA_PASSES)?;
        let dma = bytes as f64 / t.as_secs_f64() / 1e6;
        println!(
            "  kernel ata_piix ({}), DMA, O_DIRECT 128 KiB reads: {bytes} bytes in {:.3} s, {dma:.2} MB/s",
            dev.display(),
            t.as_secs_f64()
        );
        let (bytes, t) = kernel::read_pio(&dev, BENCH_PIO_SECTORS, BENCH_CHUNK)?;
        let pio = bytes as f64 / t.as_secs_f64() / 1e6;
        println!(
            "  kernel ata_piix, PIO READ SECTORS via SG_IO: {bytes} bytes in {:.3} s, {pio:.2} MB/s",
            t.as_secs_f64()
        );
        rates.push((dma, pio));
    }
    Ok(rates)
}

/// This driver: READ DMA and READ SECTORS of 256 sectors; `BENCH_ROUNDS` (DMA, PIO)
/// measurements in MB/s.
fn udrv_read_rates() -> Result<Vec<(f64, f64)>> {
    let sectors = rig::IDE_DISK_SECTORS;
    let mut ide = open(Transfer::Dma)?;
    block::read_sequential(&mut ide, 0, sectors, true)?;
    let mut rates = Vec::new();
    for _ in 0..BENCH_ROUNDS {
        ide.set_transfer(Transfer::Dma);
        let (mut bytes, mut t) = (0, Duration::ZERO);
        for _ in 0..BENCH_DMA_PASSES {
            let r = block::read_sequential(&mut ide, 0, sectors, false)?;
            bytes += r.bytes;
            t += r.elapsed;
        }
        let dma = bytes as f64 / t.as_secs_f64() / 1e6;
        println!(
            "  udrv ide, READ DMA of 256 sectors: {bytes} bytes in {:.3} s, {dma:.2} MB/s",
            t.as_secs_f64()
        );
        ide.set_transfer(Transfer::Pio);
        let r = block::read_sequential(&mut ide, 0, BENCH_PIO_SECTORS, true)?;
        println!(
            "  udrv ide, PIO READ SECTORS of 256 sectors: {} bytes in {:.3} s, {:.2} MB/s",
            r.bytes,
            r.elapsed.as_secs_f64(),
            r.mb_per_s()
        );
        rates.push((dma, r.mb_per_s()));
    }
    Ok(rates)
}

/// Sequential reads of the primary master, by DMA and by PIO: the kernel's ata_piix
/// against this driver, 256 sectors per command for all; medians of three
/// measurements each.
fn bench_ide_read_vs_kernel() -> Result<()> {
    let kernel = kernel_read_rates()?;
    let udrv = udrv_read_rates()?;
    let dma = |v: &[(f64, f64)]| median(v.iter().map(|r| r.0).collect());
    let pio = |v: &[(f64, f64)]| median(v.iter().map(|r| r.1).collect());
    compare(
        "IDE sequential read, DMA (medians)",
        "MB/s",
        dma(&udrv),
        dma(&kernel),
        "kernel ata_piix DMA",
    );
    compare(
        "IDE sequential read, PIO (medians)",
        "MB/s",
        pio(&udrv),
        pio(&kernel),
        "kernel ata_piix PIO",
    );
    Ok(())
}
