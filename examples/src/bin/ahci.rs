//! `ahci`: read (and optionally write) the disk on one port of an AHCI controller from
//! user space, with completion by MSI or by polling.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use udriver::pci::PciAddress;
use udrv_examples::ahci::{Ahci, Config};
use udrv_examples::block::{self, BlockDevice};
use udrv_examples::stop;
use udrv_examples::wait::Completion;

const ABOUT: &str = "Drive an AHCI SATA port from user space (VFIO): identify, read, write";

const LONG_ABOUT: &str = "\
Drive the disk on one port of an AHCI controller (such as QEMU's ich9-ahci) from user
space through VFIO: identify it, read it sequentially, check it against the udrv rig's
disk pattern, and optionally write sectors and read them back.

How it works: ABAR (BAR5) is mmap'd, so registers are plain loads and stores. The port
gets a command list, a received-FIS area and a command table in pinned DMA memory mapped
through the IOMMU, plus a data buffer. Each command is an H2D register FIS (READ DMA EXT,
WRITE DMA EXT, IDENTIFY DEVICE, FLUSH CACHE EXT) and a PRDT in the table, a header in
slot 0 of the command list, and a write of PxCI. It is done when the HBA clears the
PxCI bit: learnt from the MSI's eventfd (--completion interrupts, the default; the
driver falls back to polling if the controller has no MSI), or by polling
(--completion polling) the received-FIS area in memory, where the disk's final
register FIS lands, with PxCI read to confirm.

Before running: bind the controller to vfio-pci (`udrv attach 0000:00:06.0`). Every
port of the controller goes with it: nothing may use any of its disks meanwhile.

--write-test LBA writes 8 sectors at LBA with data that differs in every byte, reads
them back and compares, then writes the original sectors back and checks them.

On exit - also on Ctrl-C, SIGTERM or an error - the port is left quiet: command and FIS
engines stopped, port and HBA interrupts off, MSI disabled, bus mastering off.

Example (inside the udrv rig): ahci --device 0000:00:06.0 --verify-pattern --write-test 5000";

#[derive(Parser, Debug)]
#[command(version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// The AHCI controller's PCI address, bound to vfio-pci.
    #[arg(long, value_name = "BDF")]
    device: PciAddress,

    /// The port with the disk.
    #[arg(long, default_value_t = 0)]
    port: u8,

    /// How the driver learns that a command has completed.
    #[arg(long, value_enum, default_value_t = Completion::Interrupts)]
    completion: Completion,

    /// KiB moved per command (the data buffer's size), up to 32768.
    #[arg(long, default_value_t = 1024)]
    transfer_kib: usize,

    /// First sector to read.
    #[arg(long, default_value_t = 0)]
    lba: u64,

    /// Sectors to read; the rest of the disk when not given.
    #[arg(long)]
    sectors: Option<u64>,

    /// Read the range this many times (for throughput).
    #[arg(long, default_value_t = 1)]
    passes: u32,

    /// Check every sector read against the udrv rig's disk pattern.
    #[arg(long)]
    verify_pattern: bool,

    /// Write-and-restore 8 sectors at this LBA.
    #[arg(long, value_name = "LBA")]
    write_test: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    stop::run_binary("ahci", "the port was left quiet", || run(&args))
}

fn run(args: &Args) -> Result<()> {
    let config = Config {
        port: args.port,
        completion: args.completion,
        max_transfer: args.transfer_kib.saturating_mul(1024),
    };
    let mut ahci = Ahci::open(args.device, &config).context("opening the AHCI port")?;
    let id = ahci.identity().clone();
    println!(
        "ahci: {} port {}: \"{}\" serial \"{}\" firmware \"{}\", {} sectors ({} MiB), LBA48 {}",
        ahci.name(),
        ahci.port(),
        id.model,
        id.serial,
        id.firmware,
        id.sectors,
        id.sectors / 2048,
        if id.lba48 { "yes" } else { "no" }
    );
    let count = args
        .sectors
        .unwrap_or_else(|| ahci.sectors().saturating_sub(args.lba));
    println!(
        "ahci: reading {count} sectors from LBA {}, {} KiB per command, {:?}, {} pass(es)",
        args.lba,
        args.transfer_kib,
        ahci.completion(),
        args.passes
    );
    for pass in 1..=args.passes {
        let report = block::read_sequential(&mut ahci, args.lba, count, args.verify_pattern)?;
        println!("ahci: pass {pass}: {report}");
    }
    if let Some(lba) = args.write_test {
        block::write_round_trip(&mut ahci, lba, 8)?;
        println!("ahci: 8 sectors at LBA {lba} written, read back equal, original restored");
    }
    println!("ahci: {} MSIs taken", ahci.interrupts());
    Ok(())
}
