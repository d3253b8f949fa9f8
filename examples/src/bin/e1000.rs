//! `e1000`: send numbered test frames from one e1000 NIC driven from user space and
//! check every one at another.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use udriver::pci::PciAddress;
use udrv_examples::e1000::frame::MacAddress;
use udrv_examples::e1000::traffic::{self, TrafficConfig};
use udrv_examples::e1000::{Config, E1000};
use udrv_examples::stop;
use udrv_examples::wait::Completion;

const ABOUT: &str = "Drive e1000 NICs from user space (VFIO): send test frames and check them";

const LONG_ABOUT: &str = "\
Drive Intel 8254x (e1000) NICs from user space through VFIO: send numbered test frames
from one NIC and check every one, byte for byte and in order, at another NIC on the same
network segment.

How it works: each NIC gets a transmit and a receive ring of descriptors in pinned DMA
memory, mapped for it through the IOMMU. Frames are copied into ring buffers and handed
over in batches with one write of the tail register (TDT) per batch; received frames are
taken from descriptors the NIC marked done and given back with one RDT write per batch.
Completion is learnt by polling the descriptors, or (--completion interrupts) by sleeping
on the INTx interrupt's eventfd, reading ICR and unmasking INTx in VFIO.

Before running: bind both NICs to vfio-pci (`udrv attach 0000:00:02.0 0000:00:03.0`),
and run as root or with RLIMIT_MEMLOCK raised for the rings (about 2 MiB per NIC).

On exit - also on Ctrl-C, SIGTERM or an error - both NICs are left quiet: receive and
transmit off, interrupt causes masked, INTx disabled, bus mastering off.

Example (inside the udrv rig, `integration/rig shell`):
  e1000 --tx 0000:00:02.0 --rx 0000:00:03.0 --frames 10000 --completion interrupts
  e1000 --tx 0000:00:02.0 --frames 100000            (transmit only, to broadcast)";

#[derive(Parser, Debug)]
#[command(version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// The sending NIC's PCI address, bound to vfio-pci.
    #[arg(long, value_name = "BDF")]
    tx: PciAddress,

    /// The receiving NIC's PCI address. Without it, frames are only sent (to --dst)
    /// and the transmit rate is reported.
    #[arg(long, value_name = "BDF")]
    rx: Option<PciAddress>,

    /// How many frames to send.
    #[arg(long, default_value_t = 1000)]
    frames: u64,

    /// Bytes per frame without the CRC (60..=1514).
    #[arg(long, default_value_t = 60)]
    size: usize,

    /// Frames handed over per tail-register write.
    #[arg(long, default_value_t = 32)]
    batch: usize,

    /// Descriptors per ring (a power of two, 8..=4096).
    #[arg(long, default_value_t = 512)]
    ring: usize,

    /// How the driver learns that frames were sent or received.
    #[arg(long, value_enum, default_value_t = Completion::Polling)]
    completion: Completion,

    /// Destination MAC address in transmit-only mode.
    #[arg(long, default_value_t = MacAddress::BROADCAST)]
    dst: MacAddress,

    /// Seconds the receiver may see nothing before the run fails.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    stop::run_binary("e1000", "the NICs were left quiet", || run(&args))
}

fn run(args: &Args) -> Result<()> {
    let config = Config {
        tx_descriptors: args.ring,
        rx_descriptors: args.ring,
        completion: args.completion,
    };
    let traffic = TrafficConfig {
        frames: args.frames,
        frame_len: args.size,
        batch: args.batch,
        idle_timeout: Duration::from_secs(args.timeout),
    };
    let mut tx = E1000::open(args.tx, &config).context("opening the sending NIC")?;
    let Some(rx_address) = args.rx else {
        println!(
            "e1000: {} ({}) -> {}: sending {} frames of {} bytes, batches of {}, {:?}",
            tx.name(),
            tx.mac(),
            args.dst,
            args.frames,
            args.size,
            args.batch,
            args.completion
        );
        let report = traffic::transmit(&mut tx, args.dst, &traffic)?;
        println!(
            "e1000: {} frames sent in {:.3} s ({:.0} frames/s)",
            report.sent,
            report.elapsed.as_secs_f64(),
            report.rate()
        );
        return Ok(());
    };
    let mut rx = E1000::open(rx_address, &config).context("opening the receiving NIC")?;
    println!(
        "e1000: {} ({}) -> {} ({}): {} frames of {} bytes, batches of {}, {:?}",
        tx.name(),
        tx.mac(),
        rx.name(),
        rx.mac(),
        args.frames,
        args.size,
        args.batch,
        args.completion
    );
    let report = traffic::send_and_check(&mut tx, &mut rx, &traffic)?;
    let counters = rx.counters()?;
    println!(
        "e1000: {}/{} frames received intact and in order in {:.3} s ({:.0} frames/s); \
         skipped {} late frames of earlier runs and {} other frames; \
         interrupts: tx {} rx {}; receiver missed {}",
        report.received,
        report.sent,
        report.elapsed.as_secs_f64(),
        report.received as f64 / report.elapsed.as_secs_f64(),
        report.stale,
        report.foreign,
        report.tx_interrupts,
        report.rx_interrupts,
        counters.rx_missed
    );
    Ok(())
}
