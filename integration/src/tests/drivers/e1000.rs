//! The e1000 driver: frames from 00:02.0 to 00:03.0 across the rig's hub, each one
//! checked byte for byte and in order; the NICs quiet afterwards.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use udriver::pci::PciAddress;
use udriver::vfio::{VfioContainer, VfioGroup};
use udrv_examples::e1000::frame::{FrameSpec, MacAddress};
use udrv_examples::e1000::regs::{IMS, RCTL, RCTL_EN, TCTL, TCTL_EN};
use udrv_examples::e1000::traffic::{self, TrafficConfig, TrafficReport};
use udrv_examples::e1000::{Config, E1000};
use udrv_examples::wait::Completion;
use udrv_examples::DriverError;

use super::{binary, compare, kernel, median};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        drivers_e1000:
        polling_frames_intact,
        interrupts_frames_intact,
        quiesce_stops_the_nic,
        binary_checks_frames,
        ctrl_c_leaves_nics_quiet,
        refuses_what_it_cannot_do,
    ]
}

pub fn benches() -> Vec<RigTest> {
    rig_tests![drivers: bench_e1000_tx_vs_kernel (600 s)]
}

fn address(bdf: &str) -> Result<PciAddress> {
    Ok(bdf.parse()?)
}

/// Both NICs on vfio-pci and opened by the driver.
fn open_pair(completion: Completion) -> Result<(E1000, E1000)> {
    rig::bind_to_vfio(rig::E1000_A)?;
    rig::bind_to_vfio(rig::E1000_B)?;
    let config = Config {
        completion,
        ..Config::default()
    };
    let tx = E1000::open(address(rig::E1000_A)?, &config)?;
    let rx = E1000::open(address(rig::E1000_B)?, &config)?;
    Ok((tx, rx))
}

fn check_run(tx: &mut E1000, rx: &mut E1000, config: &TrafficConfig) -> Result<TrafficReport> {
    let report = traffic::send_and_check(tx, rx, config)?;
    println!(
        "{} frames of {} bytes: {} received intact and in order in {:.3} s; \
         {} late frames of earlier runs and {} others skipped; interrupts tx {} rx {}",
        report.sent,
        config.frame_len,
        report.received,
        report.elapsed.as_secs_f64(),
        report.stale,
        report.foreign,
        report.tx_interrupts,
        report.rx_interrupts
    );
    ensure!(
        report.sent == config.frames && report.received == config.frames,
        "sent {} and received {} of {} frames",
        report.sent,
        report.received,
        config.frames
    );
    Ok(report)
}

/// Polling: the shortest and the longest frames, more than a ring's worth of each.
fn polling_frames_intact() -> Result<()> {
    let (mut tx, mut rx) = open_pair(Completion::Polling)?;
    for (frames, frame_len) in [(3000, 60), (1000, 1514), (777, 333)] {
        let config = TrafficConfig {
            frames,
            frame_len,
            ..TrafficConfig::default()
        };
        check_run(&mut tx, &mut rx, &config)?;
    }
    let counters = rx.counters()?;
    ensure!(
        counters.rx_missed == 0,
        "the receiver missed {} frames",
        counters.rx_missed
    );
    Ok(())
}

/// Interrupts: INTx eventfds wake the driver, which reads ICR and unmasks.
fn interrupts_frames_intact() -> Result<()> {
    let (mut tx, mut rx) = open_pair(Completion::Interrupts)?;
    let config = TrafficConfig {
        frames: 3000,
        frame_len: 128,
        ..TrafficConfig::default()
    };
    let report = check_run(&mut tx, &mut rx, &config)?;
    ensure!(
        report.tx_interrupts > 0,
        "the sender never took an interrupt for its write-backs"
    );
    // A receiver asleep on an empty ring is woken by the frame's interrupt: it waits
    // in a thread of its own while this one sends. First a wait with nothing coming
    // services any interrupt still pending from the run, so that the count below
    // moves only for the new frame.
    ensure!(
        !rx.wait_rx(Duration::from_millis(300))?,
        "a frame arrived unsent"
    );
    let before = rx.interrupts();
    let waiter = std::thread::spawn(move || {
        let woken = rx.wait_rx(Duration::from_secs(10));
        (rx, woken)
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut frame = Vec::new();
    FrameSpec {
        dst: E1000_B_MAC,
        src: tx.mac(),
        run: traffic::new_run_id(),
        len: 60,
    }
    .build(0, &mut frame);
    tx.send([&frame[..]])?;
    let (rx, woken) = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the waiter panicked"))?;
    ensure!(woken?, "the sleeping receiver was not woken within 10 s");
    ensure!(
        rx.interrupts() > before,
        "the receiver woke without an interrupt"
    );
    println!(
        "a receiver asleep on its INTx eventfd woke for one frame ({} interrupts in all)",
        rx.interrupts()
    );
    Ok(())
}

/// Opens `bdf` with VFIO directly and reads RCTL, TCTL and IMS from BAR0.
fn nic_registers(bdf: &str) -> Result<(u32, u32, u32)> {
    let group = VfioGroup::open(rig::bind_to_vfio(bdf)?)?;
    let container = VfioContainer::open()?;
    container.attach(&group)?;
    let device = group.open_device(bdf)?;
    let bar0 = device.bar(0)?;
    Ok((bar0.read32(RCTL)?, bar0.read32(TCTL)?, bar0.read32(IMS)?))
}

fn ensure_quiet(bdf: &str, (rctl, tctl, ims): (u32, u32, u32)) -> Result<()> {
    println!("{bdf}: RCTL {rctl:#010x} TCTL {tctl:#010x} IMS {ims:#010x}");
    ensure!(rctl & RCTL_EN == 0, "{bdf}: receive still enabled");
    ensure!(tctl & TCTL_EN == 0, "{bdf}: transmit still enabled");
    ensure!(ims == 0, "{bdf}: interrupt causes still unmasked");
    Ok(())
}

/// After quiesce: bus mastering off in config space, receive and transmit off, every
/// interrupt cause masked.
fn quiesce_stops_the_nic() -> Result<()> {
    let (mut tx, mut rx) = open_pair(Completion::Interrupts)?;
    check_run(
        &mut tx,
        &mut rx,
        &TrafficConfig {
            frames: 100,
            ..TrafficConfig::default()
        },
    )?;
    for nic in [&mut tx, &mut rx] {
        nic.quiesce()?;
        let command = nic.device().vfio().config().read16(0x04)?;
        ensure!(
            command & 0x4 == 0,
            "{}: bus mastering still on (command {command:#06x})",
            nic.name()
        );
        let regs = (
            nic.read_register(RCTL)?,
            nic.read_register(TCTL)?,
            nic.read_register(IMS)?,
        );
        ensure_quiet(nic.name(), regs)?;
    }
    Ok(())
}

/// The `e1000` binary as a user runs it.
fn binary_checks_frames() -> Result<()> {
    rig::bind_to_vfio(rig::E1000_A)?;
    rig::bind_to_vfio(rig::E1000_B)?;
    let done = binary::run(
        "e1000",
        &[
            "--tx",
            rig::E1000_A,
            "--rx",
            rig::E1000_B,
            "--frames",
            "2000",
            "--size",
            "200",
            "--completion",
            "interrupts",
        ],
    )?;
    ensure!(done.status.success(), "e1000 failed: {}", done.status);
    ensure!(
        done.stdout
            .contains("2000/2000 frames received intact and in order"),
        "e1000 did not report 2000 intact frames"
    );
    let help = binary::run("e1000", &["--help"])?;
    ensure!(
        help.status.success() && help.stdout.contains("udrv attach"),
        "e1000 --help does not say how to prepare the NICs"
    );
    Ok(())
}

/// Ctrl-C in the middle of a long run: the binary stops through its normal path and
/// both NICs are left with receive, transmit and interrupts off.
fn ctrl_c_leaves_nics_quiet() -> Result<()> {
    rig::bind_to_vfio(rig::E1000_A)?;
    rig::bind_to_vfio(rig::E1000_B)?;
    let done = binary::interrupt(
        "e1000",
        &[
            "--tx",
            rig::E1000_A,
            "--rx",
            rig::E1000_B,
            "--frames",
            "100000000",
            "--completion",
            "interrupts",
        ],
        "frames of",
        // Past the first frame's wait (about a second in QEMU), into the stream.
        Duration::from_millis(1500),
    )?;
    ensure!(
        done.status.code() == Some(130),
        "e1000 should exit with 130 after Ctrl-C, not {}",
        done.status
    );
    ensure!(
        done.stderr.contains("stopped by a signal"),
        "e1000 did not say it was stopped"
    );
    for bdf in [rig::E1000_A, rig::E1000_B] {
        ensure_quiet(bdf, nic_registers(bdf).context(bdf)?)?;
    }
    Ok(())
}

/// The driver refuses a device that is not an e1000 (naming what it found), rings of
/// sizes the NIC cannot take, and frames Ethernet cannot carry; after a refused frame
/// the NIC goes on working.
fn refuses_what_it_cannot_do() -> Result<()> {
    rig::bind_to_vfio(rig::PIIX3_IDE)?;
    let e = E1000::open(address(rig::PIIX3_IDE)?, &Config::default())
        .err()
        .context("the e1000 driver took the IDE controller")?;
    println!("{e}");
    ensure!(
        e.to_string().contains("not an Intel 8254x"),
        "unexpected error: {e}"
    );

    rig::bind_to_vfio(rig::E1000_A)?;
    let e = E1000::open(
        address(rig::E1000_A)?,
        &Config {
            tx_descriptors: 100,
            ..Config::default()
        },
    )
    .err()
    .context("a ring of 100 descriptors was accepted")?;
    println!("{e}");
    ensure!(
        e.to_string().contains("power of two"),
        "unexpected error: {e}"
    );

    let (mut tx, mut rx) = open_pair(Completion::Polling)?;
    let big = vec![0u8; 1515];
    let e = tx.send([&big[..]]).unwrap_err();
    println!("{e}");
    ensure!(
        matches!(e, DriverError::Request { .. }),
        "unexpected error: {e}"
    );
    check_run(
        &mut tx,
        &mut rx,
        &TrafficConfig {
            frames: 50,
            ..TrafficConfig::default()
        },
    )?;
    Ok(())
}

/// The MAC address the rig's QEMU command line gives e1000 B.
const E1000_B_MAC: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x03]);
/// Frames per measurement, and measurements per contender.
const BENCH_FRAMES: u64 = 20_000;
const BENCH_ROUNDS: usize = 3;
/// Minimum-size frames: the per-frame cost is what differs between the drivers.
const BENCH_FRAME_LEN: usize = 60;

/// The kernel's e1000 driver on A, bound once, sending `BENCH_FRAMES` frames from a
/// packet socket (after a warm-up), `BENCH_ROUNDS` times; frames per second of each.
fn kernel_tx_rates() -> Result<Vec<f64>> {
    rig::bind_to_host(rig::E1000_A, "e1000")?;
    let ifname = kernel::interface_of(rig::E1000_A)?;
    kernel::bring_up(&ifname)?;
    let src: MacAddress = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?
        .trim()
        .parse()
        .map_err(anyhow::Error::msg)?;
    let spec = FrameSpec {
        dst: E1000_B_MAC,
        src,
        run: traffic::new_run_id(),
        len: BENCH_FRAME_LEN,
    };
    kernel::transmit(&ifname, &spec, 2000)?;
    let mut rates = Vec::new();
    for _ in 0..BENCH_ROUNDS {
        let t = kernel::transmit(&ifname, &spec, BENCH_FRAMES)?;
        let rate = BENCH_FRAMES as f64 / t.as_secs_f64();
        println!(
            "  kernel e1000 ({ifname}) + AF_PACKET: {BENCH_FRAMES} frames in {:.3} s, {rate:.0} frames/s",
            t.as_secs_f64()
        );
        rates.push(rate);
    }
    rig::sh(&format!("ip link set dev {ifname} down"))?;
    Ok(rates)
}

/// This driver on A sending `BENCH_FRAMES` frames in batches of 32 (after a warm-up),
/// `BENCH_ROUNDS` times; frames per second of each.
fn udrv_tx_rates(completion: Completion) -> Result<Vec<f64>> {
    rig::bind_to_vfio(rig::E1000_A)?;
    let mut tx = E1000::open(
        address(rig::E1000_A)?,
        &Config {
            completion,
            ..Config::default()
        },
    )?;
    let config = TrafficConfig {
        frames: BENCH_FRAMES,
        frame_len: BENCH_FRAME_LEN,
        batch: 32,
        idle_timeout: Duration::from_secs(30),
    };
    traffic::transmit(
        &mut tx,
        E1000_B_MAC,
        &TrafficConfig {
            frames: 2000,
            ..config
        },
    )?;
    let mut rates = Vec::new();
    for _ in 0..BENCH_ROUNDS {
        let r = traffic::transmit(&mut tx, E1000_B_MAC, &config)?;
        println!(
            "  udrv e1000 ({completion:?}): {} frames in {:.3} s, {:.0} frames/s",
            r.sent,
            r.elapsed.as_secs_f64(),
            r.rate()
        );
        rates.push(r.rate());
    }
    let expected = 2000 + BENCH_FRAMES * BENCH_ROUNDS as u64;
    let sent_by_nic = u64::from(tx.counters()?.tx_frames);
    ensure!(
        sent_by_nic == expected,
        "the NIC counted {sent_by_nic} frames sent, not {expected}"
    );
    Ok(rates)
}

/// Transmit rate of e1000 A: the kernel's e1000 driver fed by a packet socket, against
/// this driver (batches of 32, polling and interrupts), the same minimum-size frames
/// to e1000 B in every case. B stays quiet on vfio-pci, so receiving costs the same
/// (nothing) for all. A measurement runs from the first frame handed over to the last
/// transmit completion. The medians of three measurements are compared.
fn bench_e1000_tx_vs_kernel() -> Result<()> {
    rig::bind_to_vfio(rig::E1000_B)?;
    let kernel = median(kernel_tx_rates()?);
    let polling = median(udrv_tx_rates(Completion::Polling)?);
    let interrupts = median(udrv_tx_rates(Completion::Interrupts)?);
    compare(
        "e1000 TX, 60-byte frames, polling (medians)",
        "frames/s",
        polling,
        kernel,
        "kernel e1000 + AF_PACKET",
    );
    compare(
        "e1000 TX, 60-byte frames, interrupts (medians)",
        "frames/s",
        interrupts,
        kernel,
        "kernel e1000 + AF_PACKET",
    );
    Ok(())
}
