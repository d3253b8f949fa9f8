//! `integration/rig bench uml`, the disk: the rig's ich9-ahci disk read by the same UML
//! guest two ways, in the same boot, with the same UML build and the same O_DIRECT reads
//! inside UML (`guest-probe read-disk`, integration/guest/uml/bench.sh):
//!
//! - served: udrv's UML frontend serves the ich9-ahci (claimed through VFIO) and UML's
//!   own ahci driver drives it.
//! - ubd (the anchor): the rig kernel's ahci driver owns the same disk and UML reads its
//!   block device through UML's ubd driver (`ubd0r=/dev/sdX`), the way a UML guest
//!   reaches a disk without udrv. UML's own VFIO driver cannot be the anchor here: it
//!   drives MSI-X devices only and the ich9-ahci has MSI only. ubd opens the host file
//!   without O_DIRECT (os_open_file in UML 7.2 has no such flag; its I/O thread preads
//!   each page-sized segment), so its reads go through the rig kernel's page cache and
//!   readahead: that cache is dropped before every ubd run, and the rig kernel's disk
//!   counters must show the whole disk read from the device.
//!
//! Its figures are taken on the one-CPU rig. With two CPUs (`UDRV_RIG_SMP=2`), served
//! runs failed now and then (a timed-out read, a UML warning at boot), pinned to one
//! CPU with the worker or not: UML 7.2's send_cmd race (see vpci's UML frontend).
//!
//! The rig kernel reading the disk itself with O_DIRECT (no UML at all) is printed as
//! context, measured once before any UML run (see [`bind_ahci_to_host`] for why). The
//! UML paths are measured [`ROUNDS`] times, alternating, and the medians compared. In
//! served runs UML waits for the rig before and after its reads, so the frontend's
//! counters read then cover exactly the reads: they give each block request's MMIO
//! accesses, interrupts, worker wake-ups and worker time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vpci::frontend::FrontendStatus;

use super::drivers::kernel;
use super::uml::{nonce, run_uml, RunningUml, UmlRun};
use super::uml_bench::median;
use super::uml_served::{self, Served};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// The disk on AHCI port 0: 16 MiB of the sector pattern.
const DISK_BYTES: u64 = rig::AHCI_DISK_SECTORS * 512;
/// The read sizes, in UML and in the rig kernel alike.
const BLOCKS: [usize; 2] = [64 * 1024, 1024 * 1024];
/// Measurements of each UML path and read size; the median counts.
const ROUNDS: usize = 5;
/// A UML boot, its reads and power-off; past this is a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// UML's /tmp, seen from the rig (UML's root is /rig/uml/root over hostfs): the gate
/// files of bench.sh.
const GO: &str = "/rig/uml/root/tmp/udrv-bench-go";
const RELEASE: &str = "/rig/uml/root/tmp/udrv-bench-release";

pub fn benches() -> Vec<RigTest> {
    rig_tests![uml_bench_disk: served_vs_ubd (1200 s)]
}

/// What UML measured in one read of the whole disk.
#[derive(Clone, Copy, Debug)]
struct UmlRead {
    mb_per_s: f64,
    seconds: f64,
    /// Requests UML's block layer completed, and their summed issue-to-completion time.
    requests: f64,
    request_ms: f64,
}

impl UmlRead {
    fn parse(output: &str) -> Result<Self> {
        let field = |key: &str| -> Result<f64> {
            output
                .lines()
                .filter_map(|l| l.strip_prefix("guest-probe: read-disk "))
                .flat_map(str::split_whitespace)
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .with_context(|| {
                    format!(
                        "no read-disk {key} in UML's output:\n{}",
                        super::uml::tail_of(output)
                    )
                })
        };
        let bytes = field("bytes")?;
        ensure!(
            bytes >= DISK_BYTES as f64,
            "UML read {bytes} bytes of the {DISK_BYTES}-byte disk"
        );
        Ok(Self {
            mb_per_s: field("mb_per_s")?,
            seconds: field("seconds")?,
            requests: field("requests")?,
            request_ms: field("request_ms")?,
        })
    }
}

/// UML's command line for the disk bench task: disk `disk` (`sd`: the served AHCI;
/// `ubd`) read in `block`-byte reads.
fn task_args(disk: &str, block: usize, gate: bool) -> Vec<String> {
    let mut args = vec![
        "udrv_uml_bench=disk".to_string(),
        format!("udrv_uml_disk={disk}"),
        format!("udrv_uml_block={block}"),
    ];
    if gate {
        args.push("udrv_uml_gate=1".into());
    }
    args
}

/// The bench task succeeded, and no served read timed out (a 40 ms wait would skew
/// the figures).
fn ensure_task_ok(run: &UmlRun, nonce: &str) -> Result<()> {
    uml_served::ensure_task_ok(run, nonce, "bench")?;
    let timeouts = run.output.matches("um virt-pci delay").count();
    ensure!(
        timeouts == 0,
        "UML timed out waiting for {timeouts} served read(s); console:\n{}",
        run.tail()
    );
    Ok(())
}

/// Sectors read and read requests completed by the rig kernel's disk `dev`.
fn device_reads(dev: &Path) -> Result<(u64, u64)> {
    let name = dev.file_name().context("no device name")?.to_string_lossy();
    let path = format!("/sys/block/{name}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().with_context(|| format!("{path}: {f:?}")))
        .collect::<Result<_>>()?;
    ensure!(fields.len() >= 3, "{path}: {} fields", fields.len());
    Ok((fields[2], fields[0]))
}

/// One ubd run: the rig kernel's page cache dropped, UML reading `dev` through ubd.
/// Returns UML's figures and the read requests the rig kernel's disk served.
fn ubd_read(dev: &Path, block: usize) -> Result<(UmlRead, u64)> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")?;
    let (sectors_before, requests_before) = device_reads(dev)?;
    let nonce = nonce();
    let mut args = task_args("ubd", block, false);
    args.push(format!("ubd0r={}", dev.display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_uml(&nonce, Some("bench"), &args)?;
    ensure_task_ok(&run, &nonce)?;
    let read = UmlRead::parse(&run.output)?;
    let (sectors_after, requests_after) = device_reads(dev)?;
    let sectors = sectors_after - sectors_before;
    ensure!(
        sectors >= rig::AHCI_DISK_SECTORS,
        "ubd read {sectors} sectors from {} (the disk has {}): the rig kernel's page \
         cache answered instead of the device",
        dev.display(),
        rig::AHCI_DISK_SECTORS
    );
    Ok((read, requests_after - requests_before))
}

/// The frontend's counters kept per run.
const COUNTERS: usize = 9;
const COUNTER_NAMES: [&str; COUNTERS] = [
    "MMIO reads",
    "MMIO writes",
    "config accesses",
    "interrupts",
    "command batches",
    "irq-buffer kicks",
    "µs serving commands",
    "µs of them in BAR accesses",
    "µs delivering interrupts",
];

/// The frontend's counters from `a` to `b` (times in µs).
fn counters_between(a: &FrontendStatus, b: &FrontendStatus) -> [f64; COUNTERS] {
    let us = |ns: u64| ns as f64 / 1e3;
    [
        (b.mmio_reads - a.mmio_reads) as f64,
        (b.mmio_writes - a.mmio_writes) as f64,
        (b.config_accesses - a.config_accesses) as f64,
        (b.interrupts - a.interrupts) as f64,
        (b.command_batches - a.command_batches) as f64,
        (b.irq_buffer_kicks - a.irq_buffer_kicks) as f64,
        us(b.command_ns - a.command_ns),
        us(b.bar_access_ns - a.bar_access_ns),
        us(b.interrupt_ns - a.interrupt_ns),
    ]
}

/// One served run: UML's ahci on the frontend, the frontend's counters read just
/// before and just after UML's reads.
fn served_read(disk: &Served, block: usize) -> Result<(UmlRead, [f64; COUNTERS])> {
    for gate in [GO, RELEASE] {
        let _ = std::fs::remove_file(gate);
    }
    let nonce = nonce();
    let mut args = task_args("sd", block, true);
    args.push(disk.arg.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut uml = RunningUml::start(&nonce, Some("bench"), &args)?;
    uml.wait_for_line("uml: disk /dev/", RUN_TIMEOUT)?;
    let before = disk.status();
    std::fs::write(GO, b"").with_context(|| format!("creating {GO}"))?;
    uml.wait_for_line("uml: disk read done", RUN_TIMEOUT)?;
    let after = disk.status();
    std::fs::write(RELEASE, b"").with_context(|| format!("creating {RELEASE}"))?;
    let run = uml.finish(RUN_TIMEOUT)?;
    ensure_task_ok(&run, &nonce)?;
    Ok((
        UmlRead::parse(&run.output)?,
        counters_between(&before, &after),
    ))
}

/// The rig kernel's ahci on the disk; returns its block device.
///
/// QEMU 7.2's AHCI maps a command's PRDT in one piece and fails the command when the
/// table crosses into a page not contiguous with the one before (in the rig guest's
/// memory, behind the IOMMU). The kernel's command tables are one coherent DMA
/// allocation that the IOMMU DMA layer builds from single pages, and a 1 MiB O_DIRECT
/// read into scattered pages fills a long PRDT: once UML runs have fragmented memory,
/// such commands fail (libata retries them, taking seconds). Hence the rig kernel's own
/// reads are timed before any UML run, and failures are looked for after each phase.
fn bind_ahci_to_host() -> Result<PathBuf> {
    rig::bind_to_host(rig::ICH9_AHCI, "ahci")?;
    kernel::block_device_of(rig::ICH9_AHCI, rig::AHCI_DISK_SECTORS)
}

/// Commands the rig kernel's libata reported failed so far (its log).
fn failed_commands() -> Result<usize> {
    Ok(rig::sh("dmesg")?.matches("failed command").count())
}

/// All rounds of one read size.
#[derive(Default)]
struct Rounds {
    served: Vec<UmlRead>,
    served_counters: Vec<[f64; COUNTERS]>,
    ubd: Vec<UmlRead>,
    ubd_device_requests: Vec<f64>,
    kernel_mbs: f64,
}

fn served_vs_ubd() -> Result<()> {
    let dev = bind_ahci_to_host()?;
    let name = dev.file_name().unwrap_or_default().to_string_lossy();
    let read_ahead = rig::sh(&format!("cat /sys/block/{name}/queue/read_ahead_kb"))?;
    println!(
        "rig kernel: {} on ahci, read-ahead {} KiB (ubd's reads go through it)",
        dev.display(),
        read_ahead.trim()
    );
    let mut rounds: Vec<Rounds> = BLOCKS.iter().map(|_| Rounds::default()).collect();
    let failed = failed_commands()?;
    for (block, r) in BLOCKS.iter().zip(&mut rounds) {
        let (bytes, secs) = kernel::read_direct(&dev, rig::AHCI_DISK_SECTORS, *block, 1)?;
        r.kernel_mbs = bytes as f64 / secs.as_secs_f64() / 1e6;
    }
    let failed_context = failed_commands()? - failed;
    for round in 0..ROUNDS {
        let dev = bind_ahci_to_host()?;
        let failed = failed_commands()?;
        for (block, r) in BLOCKS.iter().zip(&mut rounds) {
            let (read, device_requests) = ubd_read(&dev, *block)?;
            r.ubd.push(read);
            r.ubd_device_requests.push(device_requests as f64);
        }
        let failed = failed_commands()? - failed;
        if failed > 0 {
            println!(
                "note: round {round}: the rig kernel's ahci failed {failed} command(s) during \
                 the ubd runs (see bind_ahci_to_host); they include libata's retries"
            );
        }
        let disk = Served::start(rig::ICH9_AHCI, "bench-ahci")?;
        for (block, r) in BLOCKS.iter().zip(&mut rounds) {
            let (read, counters) = served_read(&disk, *block)?;
            r.served.push(read);
            r.served_counters.push(counters);
        }
        disk.stop()?;
    }

    let mut ratios = Vec::new();
    for (block, r) in BLOCKS.iter().zip(&rounds) {
        let kib = block / 1024;
        let pick =
            |reads: &[UmlRead], f: fn(&UmlRead) -> f64| median(reads.iter().map(f).collect());
        let served_mbs = pick(&r.served, |x| x.mb_per_s);
        let ubd_mbs = pick(&r.ubd, |x| x.mb_per_s);
        println!(
            "{kib} KiB reads of the whole {} MiB disk:",
            DISK_BYTES >> 20
        );
        let reads_per_disk = DISK_BYTES as f64 / *block as f64;
        for (path, reads) in [("served", &r.served), ("ubd", &r.ubd)] {
            println!(
                "  {path:<6} {:>8.2} MB/s (rounds {:.2?}); {:.0} block requests, {:.3} ms each \
                 in UML's block layer; {:.3} ms per read()",
                pick(reads, |x| x.mb_per_s),
                reads.iter().map(|x| x.mb_per_s).collect::<Vec<_>>(),
                pick(reads, |x| x.requests),
                pick(reads, |x| x.request_ms / x.requests.max(1.0)),
                pick(reads, |x| x.seconds) * 1e3 / reads_per_disk,
            );
        }
        println!(
            "  ubd: the rig kernel's disk served {:.0} read requests for it",
            median(r.ubd_device_requests.clone())
        );
        println!(
            "  rig kernel ahci, O_DIRECT, no UML: {:.2} MB/s{}",
            r.kernel_mbs,
            if failed_context > 0 {
                format!(
                    " (its ahci failed {failed_context} command(s) meanwhile: see \
                     bind_ahci_to_host)"
                )
            } else {
                String::new()
            }
        );
        let per_request: Vec<String> = COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let each = r
                    .served_counters
                    .iter()
                    .zip(&r.served)
                    .map(|(c, read)| c[i] / read.requests.max(1.0));
                format!("{:.2} {name}", median(each.collect()))
            })
            .collect();
        println!("  served, per block request: {}", per_request.join(", "));
        ratios.push((kib, served_mbs, ubd_mbs, r.kernel_mbs));
    }
    println!("ratios, served / direct:");
    for (kib, served, ubd, kernel) in ratios {
        println!(
            "  disk read MB/s {kib:>5} KiB reads {served:>8.2} / {ubd:>8.2} (ubd) = {:.2} \
             (goal >= 0.8); / {kernel:.2} (rig kernel ahci, context) = {:.2}",
            served / ubd,
            served / kernel
        );
    }
    Ok(())
}
