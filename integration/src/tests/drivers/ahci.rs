//! The AHCI driver on the rig's ich9-ahci (port 0: 16 MiB patterned disk, port 1: a
//! 4 MiB ext2 filesystem): whole-disk reads checked against the pattern by MSI and by
//! polling, writes that round-trip, errors for what cannot be done, the port quiet
//! after Ctrl-C.

use std::time::Duration;

use anyhow::{ensure, Result};
use udriver::pci::PciAddress;
use udriver::vfio::{VfioContainer, VfioGroup};
use udrv_examples::ahci::regs::{port_reg, CMD_FRE, CMD_ST, GHC, GHC_IE, PX_CMD, PX_IE};
use udrv_examples::ahci::{Ahci, Config};
use udrv_examples::ata::SECTOR_SIZE;
use udrv_examples::block::{self, BlockDevice};
use udrv_examples::disk_pattern;
use udrv_examples::wait::Completion;
use udrv_examples::DriverError;

use super::{binary, compare, kernel, median};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        drivers_ahci:
        msi_reads_whole_disk,
        polling_reads_whole_disk,
        writes_round_trip,
        port1_holds_ext2,
        bad_requests_are_errors,
        binary_reads_and_writes,
        ctrl_c_leaves_port_quiet,
    ]
}

pub fn benches() -> Vec<RigTest> {
    rig_tests![drivers: bench_ahci_read_vs_kernel (600 s)]
}

pub fn open(config: &Config) -> Result<Ahci> {
    rig::bind_to_vfio(rig::ICH9_AHCI)?;
    let address: PciAddress = rig::ICH9_AHCI.parse()?;
    Ok(Ahci::open(address, config)?)
}

fn read_whole_disk(completion: Completion) -> Result<Ahci> {
    let mut ahci = open(&Config {
        completion,
        ..Config::default()
    })?;
    let id = ahci.identity().clone();
    println!("{id:?}");
    ensure!(id.model.contains("QEMU HARDDISK"), "model {:?}", id.model);
    ensure!(
        id.sectors == rig::AHCI_DISK_SECTORS,
        "{} sectors, the rig's disk has {}",
        id.sectors,
        rig::AHCI_DISK_SECTORS
    );
    let r = block::read_sequential(&mut ahci, 0, rig::AHCI_DISK_SECTORS, true)?;
    println!(
        "{completion:?}: all {} sectors hold the pattern ({} bytes in {:.3} s, {:.2} MB/s), {} MSIs",
        rig::AHCI_DISK_SECTORS,
        r.bytes,
        r.elapsed.as_secs_f64(),
        r.mb_per_s(),
        ahci.interrupts()
    );
    Ok(ahci)
}

/// Completion by MSI: IDENTIFY, then the whole disk, every sector checked.
fn msi_reads_whole_disk() -> Result<()> {
    let ahci = read_whole_disk(Completion::Interrupts)?;
    ensure!(
        ahci.interrupts() > 0,
        "no MSI arrived: every completion was found by polling"
    );
    Ok(())
}

/// Completion by polling PxCI: the same reads, no interrupts.
fn polling_reads_whole_disk() -> Result<()> {
    let ahci = read_whole_disk(Completion::Polling)?;
    ensure!(ahci.interrupts() == 0, "polling mode took interrupts");
    Ok(())
}

/// Writes round-trip: with the default buffer, at the start, middle and end; with a
/// 4 KiB buffer, a 20-sector write spans three commands. The disk holds its pattern
/// afterwards.
fn writes_round_trip() -> Result<()> {
    let end = rig::AHCI_DISK_SECTORS;
    {
        let mut ahci = open(&Config::default())?;
        for (lba, count) in [(0, 8), (12345, 64), (end - 8, 8)] {
            block::write_round_trip(&mut ahci, lba, count)?;
            println!("{count} sectors at {lba} written, read back, restored");
        }
    }
    {
        let mut small = open(&Config {
            max_transfer: 4096,
            completion: Completion::Polling,
            ..Config::default()
        })?;
        block::write_round_trip(&mut small, 100, 20)?;
        println!("20 sectors at 100 in 4 KiB commands written, read back, restored");
    }
    let mut ahci = open(&Config::default())?;
    block::read_sequential(&mut ahci, 0, end, true)?;
    println!("the whole disk holds its pattern again");
    Ok(())
}

/// Port 1 is the other disk: IDENTIFY gives its size, and sector 2 holds the ext2
/// superblock (magic 0xef53 at byte 56).
fn port1_holds_ext2() -> Result<()> {
    let mut ahci = open(&Config {
        port: 1,
        ..Config::default()
    })?;
    let sectors = ahci.identity().sectors;
    println!("port 1: {:?}", ahci.identity());
    ensure!(
        sectors == 8192,
        "port 1 has {sectors} sectors, the rig's fs disk 8192"
    );
    let mut superblock = vec![0u8; 2 * SECTOR_SIZE];
    ahci.read_sectors(2, &mut superblock)?;
    let magic = u16::from_le_bytes([superblock[56], superblock[57]]);
    ensure!(
        magic == 0xef53,
        "no ext2 superblock on port 1 (magic {magic:#06x})"
    );
    println!("port 1 sector 2: ext2 superblock, magic {magic:#06x}");
    Ok(())
}

/// Requests the disk cannot serve, ports without a disk and ports that do not exist
/// are errors that say so; the driver goes on working.
fn bad_requests_are_errors() -> Result<()> {
    for (port, expect) in [(3u8, "no disk on port 3"), (9, "port 9 is not implemented")] {
        let e = open(&Config {
            port,
            ..Config::default()
        })
        .unwrap_err();
        println!("port {port}: {e}");
        ensure!(e.to_string().contains(expect), "port {port}: {e}");
    }
    let e = open(&Config {
        max_transfer: 1000,
        ..Config::default()
    })
    .unwrap_err();
    println!("{e}");
    ensure!(e.to_string().contains("multiple of 512"), "{e}");

    let mut ahci = open(&Config::default())?;
    let end = rig::AHCI_DISK_SECTORS;
    let mut two = vec![0u8; 2 * SECTOR_SIZE];
    let e = ahci.read_sectors(end - 1, &mut two).unwrap_err();
    println!("{e}");
    ensure!(matches!(e, DriverError::Request { .. }), "{e}");
    let e = ahci.write_sectors(0, &two[..511]).unwrap_err();
    ensure!(matches!(e, DriverError::Request { .. }), "{e}");
    ahci.read_sectors(end - 2, &mut two)?;
    disk_pattern::verify(end - 2, &two).map_err(anyhow::Error::msg)?;
    println!("still reads the last two sectors");
    Ok(())
}

/// The `ahci` binary as a user runs it.
fn binary_reads_and_writes() -> Result<()> {
    rig::bind_to_vfio(rig::ICH9_AHCI)?;
    let done = binary::run(
        "ahci",
        &[
            "--device",
            rig::ICH9_AHCI,
            "--verify-pattern",
            "--write-test",
            "5000",
            "--transfer-kib",
            "256",
        ],
    )?;
    ensure!(done.status.success(), "ahci failed: {}", done.status);
    for line in [
        "16777216 bytes",
        "every sector holds the disk pattern",
        "8 sectors at LBA 5000 written, read back equal, original restored",
    ] {
        ensure!(done.stdout.contains(line), "ahci did not print {line:?}");
    }
    let help = binary::run("ahci", &["--help"])?;
    ensure!(help.status.success() && help.stdout.contains("PxCI"));
    Ok(())
}

/// Ctrl-C during long reads: exit 130, the port's engines stopped, its interrupts and
/// the HBA's off; the next driver finds the disk working.
fn ctrl_c_leaves_port_quiet() -> Result<()> {
    rig::bind_to_vfio(rig::ICH9_AHCI)?;
    let done = binary::interrupt(
        "ahci",
        &["--device", rig::ICH9_AHCI, "--passes", "100000"],
        "reading",
        Duration::from_millis(500),
    )?;
    ensure!(
        done.status.code() == Some(130),
        "ahci should exit with 130 after Ctrl-C, not {}",
        done.status
    );
    {
        let group = VfioGroup::open(rig::bind_to_vfio(rig::ICH9_AHCI)?)?;
        let container = VfioContainer::open()?;
        container.attach(&group)?;
        let device = group.open_device(rig::ICH9_AHCI)?;
        let abar = device.bar(5)?;
        let (cmd, ie, ghc) = (
            abar.read32(port_reg(0, PX_CMD))?,
            abar.read32(port_reg(0, PX_IE))?,
            abar.read32(GHC)?,
        );
        println!("after Ctrl-C: PxCMD {cmd:#010x} PxIE {ie:#010x} GHC {ghc:#010x}");
        ensure!(
            cmd & (CMD_ST | CMD_FRE) == 0,
            "port 0's engines were left running"
        );
        ensure!(ie == 0 && ghc & GHC_IE == 0, "interrupts were left enabled");
    }
    let mut ahci = open(&Config::default())?;
    block::read_sequential(&mut ahci, 0, 4096, true)?;
    println!("the next driver reads the pattern");
    Ok(())
}

/// Passes over the whole 16 MiB disk per measurement, and measurements per contender.
const BENCH_PASSES: u32 = 16;
const BENCH_ROUNDS: usize = 3;
/// Bytes per request: the same for the kernel (one 1 MiB O_DIRECT read is one
/// request) and for the driver (one READ DMA EXT).
const BENCH_CHUNK: usize = 1 << 20;

/// The kernel's ahci reading the disk with O_DIRECT: a checked warm-up pass, then
/// `BENCH_ROUNDS` measurements of `BENCH_PASSES` passes; MB/s of each.
///
/// The kernel is bound once, before this driver runs. QEMU 7.2's AHCI model cannot
/// follow a command table across two IOMMU pages that are not contiguous in guest
/// memory (it fails the command, then aborts on an assertion), and the kernel's
/// coherent DMA allocations, made at probe, get non-contiguous pages once memory is
/// fragmented; compacting memory first and probing once keeps the baseline clear of it.
fn kernel_read_rates() -> Result<Vec<f64>> {
    let sectors = rig::AHCI_DISK_SECTORS;
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    rig::bind_to_host(rig::ICH9_AHCI, "ahci")?;
    let dev = kernel::block_device_of(rig::ICH9_AHCI, sectors)?;
    kernel::read_direct(&dev, sectors, BENCH_CHUNK, 1)?;
    let mut rates = Vec::new();
    for _ in 0..BENCH_ROUNDS {
        let (bytes, t) = kernel::read_direct(&dev, sectors, BENCH_CHUNK, BENCH_PASSES)?;
        let mbs = bytes as f64 / t.as_secs_f64() / 1e6;
        println!(
            "  kernel ahci ({}), O_DIRECT 1 MiB reads: {bytes} bytes in {:.3} s, {mbs:.1} MB/s",
            dev.display(),
            t.as_secs_f64()
        );
        rates.push(mbs);
    }
    Ok(rates)
}

/// This driver reading the disk in 1 MiB commands: a checked warm-up pass, then
/// `BENCH_ROUNDS` measurements of `BENCH_PASSES` passes; MB/s of each.
fn udrv_read_rates(completion: Completion) -> Result<Vec<f64>> {
    let sectors = rig::AHCI_DISK_SECTORS;
    let mut ahci = open(&Config {
        completion,
        max_transfer: BENCH_CHUNK,
        ..Config::default()
    })?;
    block::read_sequential(&mut ahci, 0, sectors, true)?;
    let mut rates = Vec::new();
    for _ in 0..BENCH_ROUNDS {
        let (mut bytes, mut t) = (0, Duration::ZERO);
        for _ in 0..BENCH_PASSES {
            let r = block::read_sequential(&mut ahci, 0, sectors, false)?;
            bytes += r.bytes;
            t += r.elapsed;
        }
        let mbs = bytes as f64 / t.as_secs_f64() / 1e6;
        println!(
            "  udrv ahci ({completion:?}), 1 MiB commands: {bytes} bytes in {:.3} s, {mbs:.1} MB/s",
            t.as_secs_f64()
        );
        rates.push(mbs);
    }
    println!("  ({} MSIs in all)", ahci.interrupts());
    Ok(rates)
}

/// Sequential reads of the port-0 disk: the kernel's ahci driver with O_DIRECT reads
/// of 1 MiB, against this driver with 1 MiB commands (MSI, and polling); medians of
/// three measurements each.
fn bench_ahci_read_vs_kernel() -> Result<()> {
    let kernel = median(kernel_read_rates()?);
    let msi = median(udrv_read_rates(Completion::Interrupts)?);
    let polling = median(udrv_read_rates(Completion::Polling)?);
    compare(
        "AHCI sequential read, MSI (medians)",
        "MB/s",
        msi,
        kernel,
        "kernel ahci O_DIRECT",
    );
    compare(
        "AHCI sequential read, polling (medians)",
        "MB/s",
        polling,
        kernel,
        "kernel ahci O_DIRECT",
    );
    Ok(())
}
