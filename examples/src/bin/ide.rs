//! `ide`: read (and optionally write) the primary master disk of a legacy IDE
//! controller from user space, by PIO and by bus-master DMA.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use udriver::pci::PciAddress;
use udrv_examples::block::{self, BlockDevice};
use udrv_examples::ide::{Ide, Transfer};
use udrv_examples::stop;

const ABOUT: &str = "Drive a legacy IDE controller from user space (VFIO): PIO and DMA sector I/O";

const LONG_ABOUT: &str = "\
Drive the primary master disk of a PCI IDE controller in legacy mode (such as QEMU's
PIIX3) from user space through VFIO: identify it, read sectors by PIO and by bus-master
DMA, check them against the udrv rig's disk pattern, and optionally write sectors and
read them back.

How it works: VFIO exposes the legacy ports (0x1f0-0x1f7, 0x3f6 and the bus-master
block) as IO-port regions, reached with pread/pwrite on the device fd - one system call
per register access. PIO moves each sector through the data port 32 bits at a time. DMA
writes a PRD table into pinned DMA memory mapped through the IOMMU, points the
bus-master engine at it, issues READ DMA or WRITE DMA and starts the engine. The legacy
channel's interrupt is ISA IRQ 14, which VFIO cannot deliver, so the driver keeps the
device's interrupt off (nIEN) and polls.

Before running: bind the controller to vfio-pci (`udrv attach 0000:00:05.0`). Nothing
else may use the disk meanwhile.

--write-test LBA writes 8 sectors at LBA with data that differs in every byte, reads
them back and compares, then writes the original sectors back and checks them: it
changes the disk only for that moment, but do not use it on a disk you care about.

On exit - also on Ctrl-C, SIGTERM or an error - the controller is left quiet: bus-master
engine stopped, the channel reset (ending any command), its interrupt off, bus mastering
off.

Example (inside the udrv rig): ide --device 0000:00:05.0 --verify-pattern --write-test 1000";

#[derive(Parser, Debug)]
#[command(version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// The IDE controller's PCI address, bound to vfio-pci.
    #[arg(long, value_name = "BDF")]
    device: PciAddress,

    /// Transfer mode; both runs the reads once by PIO and once by DMA.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    transfer: Mode,

    /// First sector to read.
    #[arg(long, default_value_t = 0)]
    lba: u64,

    /// Sectors to read; the rest of the disk when not given.
    #[arg(long)]
    sectors: Option<u64>,

    /// Check every sector read against the udrv rig's disk pattern.
    #[arg(long)]
    verify_pattern: bool,

    /// Write-and-restore 8 sectors at this LBA, in each transfer mode.
    #[arg(long, value_name = "LBA")]
    write_test: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Pio,
    Dma,
    Both,
}

fn main() -> ExitCode {
    let args = Args::parse();
    stop::run_binary("ide", "the controller was left quiet", || run(&args))
}

fn run(args: &Args) -> Result<()> {
    let modes: &[Transfer] = match args.transfer {
        Mode::Pio => &[Transfer::Pio],
        Mode::Dma => &[Transfer::Dma],
        Mode::Both => &[Transfer::Pio, Transfer::Dma],
    };
    let mut ide = Ide::open(args.device, modes[0]).context("opening the IDE controller")?;
    let id = ide.identity().clone();
    println!(
        "ide: {} primary master: \"{}\" serial \"{}\" firmware \"{}\", {} sectors ({} MiB), DMA {}",
        ide.name(),
        id.model,
        id.serial,
        id.firmware,
        id.sectors,
        id.sectors / 2048,
        if id.dma { "yes" } else { "no" }
    );
    let count = args
        .sectors
        .unwrap_or_else(|| ide.sectors().saturating_sub(args.lba));
    for &mode in modes {
        ide.set_transfer(mode);
        println!(
            "ide: reading {count} sectors from LBA {} by {mode:?}",
            args.lba
        );
        let report = block::read_sequential(&mut ide, args.lba, count, args.verify_pattern)?;
        println!("ide: {mode:?}: {report}");
    }
    if let Some(lba) = args.write_test {
        for &mode in modes {
            ide.set_transfer(mode);
            block::write_round_trip(&mut ide, lba, 8)?;
            println!(
                "ide: {mode:?}: 8 sectors at LBA {lba} written, read back equal, original restored"
            );
        }
    }
    Ok(())
}
