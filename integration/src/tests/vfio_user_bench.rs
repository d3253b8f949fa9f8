//! `integration/rig bench vfio_user`: udrv's vfio-user serving of the rig's devices
//! against the anchor, QEMU 11.1's own kernel `vfio-pci` passthrough of the same
//! devices to the same nested guest kernel, in the same rig boot. Three nested boots,
//! each giving the guest all its devices at once:
//!
//! - vfio-pci (the anchor): `-device vfio-pci,host=...` for the e1000e and the
//!   ich9-ahci. The piix3-ide cannot be passed this way (legacy mode: QEMU's `vfio-pci`
//!   shows its fixed ports as BARs the guest's driver ignores, and it has no INTx; see
//!   [`super::vfio_user`]), so its figures are udrv's alone.
//! - udrv trapped: udrv serves the e1000e, the ich9-ahci and the piix3-ide over
//!   vfio-user (`vfio-user:SOCK`), every BAR access a message to udrv.
//! - udrv direct: the e1000e and the ich9-ahci served with `direct-mmio`: QEMU maps
//!   the BARs through the VFIO device fd udrv hands it, as `vfio-pci` does.
//!
//! Every boot has the same guest: the same kernel and command line, 256 MiB, QEMU's
//! Intel IOMMU (`caching-mode=on,aw-bits=39`, guest `intel_iommu=on iommu.passthrough=1
//! iommu.strict=1`), the devices at the same slots, and the same task (measured inside
//! the guest by `guest-probe`, a static binary put into its initramfs):
//!
//! - MMIO: 32-bit reads of the e1000e's STATUS register (BAR0 + 0x8) through
//!   /dev/mem, with the guest's e1000e driver bound: µs per read, median of rounds.
//! - ping: the guest's e1000e pings the rig kernel's e1000 A across QEMU's hub,
//!   back to back (`ping -A`): average round-trip time.
//! - disk: O_DIRECT sequential reads of the whole ich9-ahci disk (16 MiB) and, when
//!   served, the whole piix3-ide disk (8 MiB, bus-master DMA), in 32 KiB reads
//!   ([`LARGE_READ`] says why no larger): MB/s.
//! - one guest DMA map: the guest's IOMMU groups start as identity domains (QEMU then
//!   maps all guest RAM for the device once, and no I/O maps anything); the task times
//!   4 KiB O_DIRECT reads of the ahci disk, switches the ahci's group to a strict DMA
//!   domain (unbind, `echo DMA > /sys/kernel/iommu_groups/N/type`, rebind) and times the
//!   same reads again. Each read then makes the guest map and unmap its buffer: QEMU
//!   forwards the map and the unmap (caching mode) as a kernel VFIO_IOMMU_MAP_DMA /
//!   UNMAP_DMA (vfio-pci) or as a vfio-user DMA_MAP / DMA_UNMAP to udrv, which makes
//!   the same ioctls. The extra time per read, DMA domain minus identity, is the cost of
//!   one map and one unmap as the guest sees it, measured the same way on both sides.
//!   udrv's own counters, sampled during the boot, give the DMA_MAPs and DMA_UNMAPs it
//!   handled per read after the switch (the driver's re-probe included).
//!
//! Ratios are udrv over vfio-pci (latencies: lower is better; MB/s: higher is better),
//! with the goals of issue 19. The figures are for the one-CPU rig under TCG, where
//! the nested guest runs TCG inside TCG: only ratios within this boot mean anything.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use udrv_qemu_guest::{GuestBoot, GuestReport, QemuKit};
use vpci::frontend::vfio_user::{VfioUserServer, VfioUserStatus};
use vpci::passthrough::VfioPassthroughDevice;

use super::nested::{NESTED_ADDRESS, NESTED_E1000E, NESTED_E1000E_SLOT};
use super::uml_bench::median;
use super::uml_served::{bring_up_peer, NO_THROTTLING, PEER};
use super::vfio_user::serve_with;
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// Nested guest RAM (MiB): one shared memfd for the served devices.
const GUEST_MIB: u64 = 256;
/// Where the nested guest has the ich9-ahci and the piix3-ide (as in the rig).
const NESTED_AHCI_SLOT: &str = "06.0";
const NESTED_AHCI: &str = "0000:00:06.0";
const NESTED_IDE_SLOT: &str = "05.0";
const NESTED_IDE: &str = "0000:00:05.0";
/// STATUS of the 82574: a register every read of which reaches the device.
const E1000E_STATUS: u64 = 0x8;
/// MMIO reads per round, and rounds (the median round counts).
const MMIO_READS: u64 = 400;
const MMIO_ROUNDS: u64 = 5;
/// Back-to-back pings timed (after three that resolve the neighbour).
const PINGS: u32 = 50;
/// The read size for MB/s: the largest whose AHCI PRD table (at most 8 entries of 16
/// bytes, one per 4 KiB page of the aligned buffer) never crosses a page of the
/// guest's command tables, wherever the slot's table starts (Linux's ahci puts them
/// 0xb00 bytes apart after 0x500 bytes of command list and FIS, so a table's PRDT
/// starts at most 0x80 bytes before a page's end). The rig's QEMU 7.2 AHCI maps a PRD
/// table in one piece through the rig's IOMMU and, when the table crosses into a page
/// not physically contiguous with the one before (the nested guest's RAM is scattered
/// over the rig's), fails the command and then aborts on an assertion, taking the
/// whole rig down: seen with 64 KiB reads.
const LARGE_READ: u64 = 32 * 1024;
/// The small reads timed with the guest's IOMMU off (identity) and on (DMA domain):
/// this many bytes in 4 KiB reads, per round.
const SMALL_READ: u64 = 4096;
const SMALL_BYTES: u64 = 512 * 1024;
const SMALL_ROUNDS: usize = 3;
/// One nested boot with its measurements; past this is a hang.
const BOOT_TIMEOUT: Duration = Duration::from_secs(700);

pub fn benches() -> Vec<RigTest> {
    rig_tests![vfio_user_bench: against_vfio_pci (2100 s)]
}

/// How the nested guest gets its devices.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// QEMU's own `vfio-pci` (the anchor).
    VfioPci,
    /// udrv over vfio-user, every BAR access trapped.
    Trapped,
    /// udrv over vfio-user with `direct-mmio`.
    Direct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::VfioPci => "vfio-pci",
            Mode::Trapped => "udrv trapped",
            Mode::Direct => "udrv direct-mmio",
        }
    }
}

/// udrv's side of a served boot.
#[derive(Debug, Default)]
struct UdrvFigures {
    /// The ahci server's DMA_MAPs and DMA_UNMAPs after the guest switched the ahci to a
    /// DMA domain (from the last sample with all guest RAM mapped to QEMU's exit).
    maps_after_switch: Option<DmaPhase>,
    /// Each server's counters once QEMU had gone: (device, status).
    after: Vec<(&'static str, VfioUserStatus)>,
}

/// What one boot measured.
#[derive(Debug, Default)]
struct Figures {
    /// µs per MMIO read of STATUS, and the value read.
    mmio_us: Option<f64>,
    mmio_value: Option<String>,
    /// Average ping round trip (ms), and replies out of [`PINGS`].
    ping_ms: Option<f64>,
    ping_received: Option<u32>,
    /// Whole-disk O_DIRECT reads, MB/s.
    ahci_mbs: Option<f64>,
    ide_mbs: Option<f64>,
    /// µs per 4 KiB read of the ahci disk, identity domain and DMA domain (medians).
    small_off_us: Option<f64>,
    small_on_us: Option<f64>,
    /// The ahci group's domain type after the switch.
    ahci_domain: Option<String>,
    /// Failed ATA commands in the nested guest's log (libata retries skew figures).
    ata_errors: Option<String>,
    /// The IDE's transfer mode in the nested guest.
    ide_xfer: Option<String>,
    /// QEMU start to exit.
    boot_s: f64,
    udrv: Option<UdrvFigures>,
}

/// The nested guest's task; `@...@` words are filled in by [`task`].
const TASK: &str = r#"#!/bin/sh
e=/sys/bus/pci/devices/@E1000E@
a=/sys/bus/pci/devices/@AHCI@
i=/sys/bus/pci/devices/@IDE@
probe() { key=$1; shift; echo "@@guest probe $key $(/bin/guest-probe "$@" 2>&1)"; }
# The block device with $2 sectors behind the controller at $1.
disk_of() {
  for n in $(seq 1 150); do
    for b in $1/ata*/host*/target*/*/block/*; do
      [ "$(cat "$b/size" 2>/dev/null)" = "$2" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    sleep 0.2
  done
  return 1
}
for n in $(seq 1 50); do [ -e "$e/net" ] && break; sleep 0.2; done
ifname=$(ls "$e/net" 2>/dev/null | head -n 1)
echo "@@guest e1000e $(basename "$(readlink "$e/driver")") $ifname"
if [ -n "$ifname" ]; then
  ip link set dev "$ifname" up
  for n in $(seq 1 100); do [ "$(cat /sys/class/net/$ifname/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
  ip address add @ADDRESS@/24 dev "$ifname"
  bar0=$(head -n 1 "$e/resource" | cut -d' ' -f1)
  probe mmio mmio-read "$(printf '0x%x' $((bar0 + @STATUS@)))" @MMIO_READS@ @MMIO_ROUNDS@
  ping -c 3 -W 3 @PEER@ >/dev/null 2>&1
  out=$(ping -c @PINGS@ -A -W 5 -q @PEER@)
  received=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  avg=$(echo "$out" | sed -n 's/.*min\/avg\/max = [^/]*\/\([^/]*\)\/.*/\1/p')
  echo "@@guest ping received=${received:-0} avg_ms=$avg"
fi
disk=$(disk_of "$a" @AHCI_SECTORS@)
echo "@@guest ahci-disk $disk"
if [ -n "$disk" ]; then
  # Let the partition scan that follows a new disk finish first.
  sleep 1
  probe ahci-read read-disk "$disk" @AHCI_BYTES@ @LARGE@
  for r in $(seq 1 @SMALL_ROUNDS@); do probe small-off read-disk "$disk" @SMALL_BYTES@ @SMALL@; done
  group=$(basename "$(readlink "$a/iommu_group")")
  echo @AHCI@ > "$a/driver/unbind"
  echo DMA > "/sys/kernel/iommu_groups/$group/type"
  echo "@@guest ahci-domain $(cat "/sys/kernel/iommu_groups/$group/type")"
  echo @AHCI@ > /sys/bus/pci/drivers/ahci/bind
  disk=$(disk_of "$a" @AHCI_SECTORS@)
  echo "@@guest ahci-disk-dma $disk"
  if [ -n "$disk" ]; then
    sleep 1
    for r in $(seq 1 @SMALL_ROUNDS@); do probe small-on read-disk "$disk" @SMALL_BYTES@ @SMALL@; done
  fi
fi
if [ -e "$i" ]; then
  disk=$(disk_of "$i" @IDE_SECTORS@)
  echo "@@guest ide-xfer $(cat $i/ata*/link*/dev*/ata_device/dev*/xfer_mode 2>/dev/null | tr '\n' ' ')"
  [ -n "$disk" ] && probe ide-read read-disk "$disk" @IDE_BYTES@ @LARGE@
fi
echo "@@guest ata-errors $(dmesg | grep -c 'failed command')"
"#;

fn task() -> String {
    let fills: [(&str, String); 17] = [
        ("@E1000E@", NESTED_E1000E.into()),
        ("@AHCI@", NESTED_AHCI.into()),
        ("@IDE@", NESTED_IDE.into()),
        ("@ADDRESS@", NESTED_ADDRESS.into()),
        ("@PEER@", PEER.into()),
        ("@STATUS@", E1000E_STATUS.to_string()),
        ("@MMIO_READS@", MMIO_READS.to_string()),
        ("@MMIO_ROUNDS@", MMIO_ROUNDS.to_string()),
        ("@PINGS@", PINGS.to_string()),
        ("@AHCI_SECTORS@", rig::AHCI_DISK_SECTORS.to_string()),
        ("@AHCI_BYTES@", (rig::AHCI_DISK_SECTORS * 512).to_string()),
        ("@IDE_SECTORS@", rig::IDE_DISK_SECTORS.to_string()),
        ("@IDE_BYTES@", (rig::IDE_DISK_SECTORS * 512).to_string()),
        ("@LARGE@", LARGE_READ.to_string()),
        ("@SMALL@", SMALL_READ.to_string()),
        ("@SMALL_BYTES@", SMALL_BYTES.to_string()),
        ("@SMALL_ROUNDS@", SMALL_ROUNDS.to_string()),
    ];
    fills.iter().fold(TASK.to_string(), |text, (word, value)| {
        text.replace(word, value)
    })
}

/// The `key=value` field of a probe or guest line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn number(line: &str, key: &str) -> Option<f64> {
    field(line, key)?.parse().ok()
}

/// The figures in a nested guest's report.
fn parse(report: &GuestReport) -> Figures {
    let probes = |key: &str| -> Vec<&str> {
        report
            .values("probe")
            .into_iter()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .collect()
    };
    let first = |key: &str| report.values(key).first().map(|v| v.to_string());
    // MB/s of a read of the whole disk (`bytes` is what was read).
    let mb_per_s = |key: &str, bytes: u64| {
        probes(key)
            .first()
            .filter(|l| number(l, "bytes") == Some(bytes as f64))
            .and_then(|l| number(l, "mb_per_s"))
    };
    // µs per small read, the median of the rounds that read everything asked.
    let small = |key: &str| {
        let each: Vec<f64> = probes(key)
            .iter()
            .filter(|l| number(l, "bytes") == Some(SMALL_BYTES as f64))
            .filter_map(|l| number(l, "seconds"))
            .map(|s| s * 1e6 / (SMALL_BYTES / SMALL_READ) as f64)
            .collect();
        (!each.is_empty()).then(|| median(each))
    };
    let mmio = probes("mmio").first().map(|l| l.to_string());
    let ping = first("ping");
    Figures {
        mmio_us: mmio.as_deref().and_then(|l| number(l, "us")),
        mmio_value: mmio
            .as_deref()
            .and_then(|l| field(l, "value").map(String::from)),
        ping_ms: ping.as_deref().and_then(|l| number(l, "avg_ms")),
        ping_received: ping
            .as_deref()
            .and_then(|l| field(l, "received")?.parse().ok()),
        ahci_mbs: mb_per_s("ahci-read", rig::AHCI_DISK_SECTORS * 512),
        ide_mbs: mb_per_s("ide-read", rig::IDE_DISK_SECTORS * 512),
        small_off_us: small("small-off"),
        small_on_us: small("small-on"),
        ahci_domain: first("ahci-domain"),
        ata_errors: first("ata-errors"),
        ide_xfer: first("ide-xfer").map(|x| x.trim().to_string()),
        boot_s: report.elapsed.as_secs_f64(),
        udrv: None,
    }
}

/// The guest every mode boots, without its devices.
fn guest<'a>(kit: &'a QemuKit, probe: &[u8]) -> GuestBoot<'a> {
    GuestBoot::new(kit)
        .memory_mib(GUEST_MIB as u32)
        .kernel_args([
            NO_THROTTLING,
            "intel_iommu=on",
            "iommu.passthrough=1",
            "iommu.strict=1",
        ])
        // The IOMMU before the devices; caching mode makes the guest report every new
        // mapping, which QEMU forwards (vfio-pci requires it). vfio-pci also refuses a
        // guest IOMMU with more address bits than the rig's (39).
        .args(["-device", "intel-iommu,caching-mode=on,aw-bits=39"])
        .file("bin/guest-probe", 0o755, probe.to_vec())
        .task(&task())
        .timeout(BOOT_TIMEOUT)
}

/// The anchor: QEMU's own vfio-pci passthrough of the e1000e and the ich9-ahci.
fn boot_vfio_pci(kit: &QemuKit, probe: &[u8]) -> Result<Figures> {
    rig::bind_to_vfio(rig::E1000E)?;
    rig::bind_to_vfio(rig::ICH9_AHCI)?;
    let report = guest(kit, probe)
        .args([
            "-device".to_string(),
            format!("vfio-pci,host={},addr={NESTED_E1000E_SLOT}", rig::E1000E),
            "-device".to_string(),
            format!("vfio-pci,host={},addr={NESTED_AHCI_SLOT}", rig::ICH9_AHCI),
        ])
        .run()?;
    send_console("vfio-pci", &report)?;
    Ok(parse(&report))
}

/// The nested guest's console back to the host as
/// target/rig/files/vfio-user-bench-NAME.log (its kernel log says what failed).
fn send_console(name: &str, report: &GuestReport) -> Result<()> {
    crate::harness::send_file(
        &format!("vfio-user-bench-{name}.log"),
        report.console.as_bytes(),
    )
}

/// A served device: its name in the output and its server.
type Server = (&'static str, VfioUserServer<VfioPassthroughDevice>);

/// udrv serving the e1000e and the ich9-ahci (and in trapped mode the piix3-ide) to
/// one nested guest; the ahci server sampled during the boot.
fn boot_udrv(kit: &QemuKit, probe: &[u8], direct: bool) -> Result<Figures> {
    let mut devices = vec![
        ("e1000e", rig::E1000E, NESTED_E1000E_SLOT, direct),
        ("ich9-ahci", rig::ICH9_AHCI, NESTED_AHCI_SLOT, direct),
    ];
    if !direct {
        // IO-port BARs only: direct-mmio would change nothing for it.
        devices.push(("piix3-ide", rig::PIIX3_IDE, NESTED_IDE_SLOT, false));
    }
    let mut servers: Vec<Server> = Vec::new();
    let mut boot = guest(kit, probe);
    for (name, bdf, slot, direct) in devices {
        let socket = format!("/tmp/udrv-bench-{name}.sock");
        servers.push((name, serve_with(bdf, Path::new(&socket), direct)?));
        boot = boot.vfio_user_device_at(Path::new(&socket), slot);
    }
    let ahci = &servers[1].1;
    let done = AtomicBool::new(false);
    let (report, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(ahci, &done));
        let report = boot.run();
        done.store(true, Ordering::Relaxed);
        (report, sampler.join().unwrap_or_default())
    });
    let mut after = Vec::new();
    for (name, server) in &servers {
        let status = rig::poll_until(Duration::from_secs(10), "the client to go", || {
            let status = server.status();
            Ok(status.client.is_none().then_some(status))
        });
        after.push((*name, status));
    }
    let mut stopped = Ok(());
    for (_, server) in servers {
        stopped = stopped.and(server.stop().map(drop));
    }
    let report = report?;
    stopped?;
    send_console(
        if direct {
            "udrv-direct"
        } else {
            "udrv-trapped"
        },
        &report,
    )?;
    let mut figures = parse(&report);
    figures.udrv = Some(UdrvFigures {
        maps_after_switch: maps_after_switch(&samples),
        after: after
            .into_iter()
            .map(|(name, status)| Ok((name, status?)))
            .collect::<Result<_>>()?,
    });
    Ok(figures)
}

/// Samples `server` every 20 ms until `done`, while a client is connected.
fn sample(
    server: &VfioUserServer<VfioPassthroughDevice>,
    done: &AtomicBool,
) -> Vec<VfioUserStatus> {
    let mut samples = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let status = server.status();
        if status.client.is_some() {
            samples.push(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    samples
}

/// The ahci's page-sized DMA traffic as udrv saw it: its DMA_MAPs and DMA_UNMAPs
/// and the time it spent handling them, over the sampling intervals in which the
/// memory the device could reach changed by less than [`SMALL_CHANGE`] (the guest's
/// per-request maps after the switch; the whole-RAM maps and unmaps of the identity
/// domain fall in other intervals), and the device-reachable bytes at the last sample.
#[derive(Debug, Default, PartialEq, Eq)]
struct DmaPhase {
    maps: u64,
    unmaps: u64,
    map_ns: u64,
    unmap_ns: u64,
    mapped_at_end: u64,
}

/// An interval in which device-reachable memory changed by less than this holds
/// only page-sized maps and unmaps.
const SMALL_CHANGE: u64 = 1 << 20;

fn maps_after_switch(samples: &[VfioUserStatus]) -> Option<DmaPhase> {
    let mut phase = DmaPhase {
        mapped_at_end: samples.last()?.dma_mapped_bytes,
        ..DmaPhase::default()
    };
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.dma_mapped_bytes.abs_diff(a.dma_mapped_bytes) >= SMALL_CHANGE {
            continue;
        }
        phase.maps += b.dma_maps - a.dma_maps;
        phase.unmaps += b.dma_unmaps - a.dma_unmaps;
        phase.map_ns += b.dma_map_ns - a.dma_map_ns;
        phase.unmap_ns += b.dma_unmap_ns - a.dma_unmap_ns;
    }
    Some(phase)
}

fn against_vfio_pci() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    let probe = std::fs::read(rig::installed_binary("guest-probe")?)
        .context("reading guest-probe for the nested guest")?;
    // VFIO pins all nested guest RAM: lift the locked-memory limit for QEMU.
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    )
    .context("raising RLIMIT_MEMLOCK for QEMU's vfio-pci")?;
    let peer = bring_up_peer()?;
    let mut runs: Vec<(Mode, Result<Figures>)> = Vec::new();
    for mode in [Mode::VfioPci, Mode::Trapped, Mode::Direct] {
        let figures = match mode {
            Mode::VfioPci => boot_vfio_pci(&kit, &probe),
            Mode::Trapped => boot_udrv(&kit, &probe, false),
            Mode::Direct => boot_udrv(&kit, &probe, true),
        };
        match &figures {
            Ok(f) => println!("{}: {f:?}\n", mode.name()),
            Err(e) => println!("{}: FAILED: {e:?}\n", mode.name()),
        }
        runs.push((mode, figures));
    }
    let _ = rig::sh(&format!(
        "ip address flush dev {peer} && ip link set dev {peer} down"
    ));
    // The devices back on their host drivers, for whatever runs next.
    for (bdf, driver) in [
        (rig::E1000E, "e1000e"),
        (rig::ICH9_AHCI, "ahci"),
        (rig::PIIX3_IDE, "ata_piix"),
    ] {
        if let Err(e) = rig::bind_to_host(bdf, driver) {
            println!("note: {bdf} not given back to {driver}: {e:#}");
        }
    }
    let figures = |mode: Mode| {
        runs.iter()
            .find(|(m, _)| *m == mode)
            .and_then(|(_, f)| f.as_ref().ok())
    };
    let anchor = figures(Mode::VfioPci);
    print_table(anchor, figures(Mode::Trapped), figures(Mode::Direct));
    for mode in [Mode::Trapped, Mode::Direct] {
        if let Some(f) = figures(mode) {
            print_udrv(mode, f);
        }
    }
    match socket_round_trip_us() {
        Ok(us) => println!(
            "rig: a one-word round trip over a UNIX socket between two threads of one process \
             costs {us:.1} µs (what every trapped access and DMA map adds to QEMU's wait, \
             before udrv's own handling)"
        ),
        Err(e) => println!("rig: socket round trip not measured: {e:#}"),
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|(_, f)| f.is_err())
        .map(|(m, _)| m.name())
        .collect();
    if !failed.is_empty() {
        bail!("these boots failed: {}", failed.join(", "));
    }
    let anchor = anchor.context("no anchor figures")?;
    ensure!(
        anchor.ping_received == Some(PINGS),
        "the anchor's pings: {:?} of {PINGS} answered",
        anchor.ping_received
    );
    Ok(())
}

/// µs per request and reply over a UNIX stream socket pair between two threads, the
/// transport a vfio-user message uses (median of rounds), for the breakdown.
fn socket_round_trip_us() -> Result<f64> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const TRIPS: usize = 500;
    let (mut client, mut server) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut word = [0u8; 8];
        for _ in 0..TRIPS * 3 {
            server.read_exact(&mut word)?;
            server.write_all(&word)?;
        }
        Ok(())
    });
    let mut rounds = Vec::new();
    let mut word = [0u8; 8];
    for _ in 0..3 {
        let started = std::time::Instant::now();
        for _ in 0..TRIPS {
            client.write_all(&word)?;
            client.read_exact(&mut word)?;
        }
        rounds.push(started.elapsed().as_secs_f64() * 1e6 / TRIPS as f64);
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(median(rounds))
}

/// Lower-is-better or higher-is-better, and the goal on udrv / vfio-pci.
#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
    None,
}

impl Goal {
    fn text(self, ratio: Option<f64>) -> String {
        let (want, met) = match self {
            Goal::AtMost(g) => (format!("<= {g}"), ratio.map(|r| r <= g)),
            Goal::AtLeast(g) => (format!(">= {g}"), ratio.map(|r| r >= g)),
            Goal::None => return "(context)".into(),
        };
        match met {
            Some(true) => format!("{want} met"),
            Some(false) => format!("{want} MISSED"),
            None => want,
        }
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

fn print_table(anchor: Option<&Figures>, trapped: Option<&Figures>, direct: Option<&Figures>) {
    /// A figure of a boot.
    type Pick = fn(&Figures) -> Option<f64>;
    let dma_delta: Pick = |f| Some(f.small_on_us? - f.small_off_us?);
    let rows: [(&str, Pick, Goal, Goal); 6] = [
        (
            "MMIO read, e1000e STATUS (µs)",
            |f| f.mmio_us,
            Goal::None,
            Goal::AtMost(1.2),
        ),
        (
            "ping RTT avg (ms)",
            |f| f.ping_ms,
            Goal::AtMost(1.2),
            Goal::AtMost(1.2),
        ),
        (
            "ahci read, 32 KiB O_DIRECT (MB/s)",
            |f| f.ahci_mbs,
            Goal::AtLeast(0.9),
            Goal::AtLeast(0.9),
        ),
        (
            "ide DMA read, 32 KiB O_DIRECT (MB/s)",
            |f| f.ide_mbs,
            Goal::AtLeast(0.9),
            Goal::AtLeast(0.9),
        ),
        (
            "4 KiB read, vIOMMU off (µs)",
            |f| f.small_off_us,
            Goal::None,
            Goal::None,
        ),
        (
            "4 KiB read, vIOMMU on (µs)",
            |f| f.small_on_us,
            Goal::None,
            Goal::None,
        ),
    ];
    println!("udrv over vfio-user against QEMU's own vfio-pci, same devices, same nested guest:");
    println!(
        "{:<46} {:>10} {:>18} {:>10} {:>7}  goal",
        "metric", "vfio-pci", "udrv", "udrv", "ratio"
    );
    let line = |metric: &str, a: Option<f64>, mode: &str, u: Option<f64>, goal: Goal| {
        let ratio = a.zip(u).map(|(a, u)| u / a);
        println!(
            "{metric:<46} {:>10} {mode:>18} {:>10} {:>7}  {}",
            cell(a),
            cell(u),
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
            goal.text(ratio)
        );
    };
    let pick = |f: Option<&Figures>, p: Pick| f.and_then(p);
    for (metric, p, trapped_goal, direct_goal) in rows {
        let a = pick(anchor, p);
        line(metric, a, "trapped", pick(trapped, p), trapped_goal);
        if direct.is_some_and(|d| p(d).is_some()) || metric.starts_with("MMIO") {
            line(metric, a, "direct-mmio", pick(direct, p), direct_goal);
        }
    }
    let a = pick(anchor, dma_delta);
    for (mode, f) in [("trapped", trapped), ("direct-mmio", direct)] {
        line(
            "one DMA map+unmap: 4 KiB read on - off (µs)",
            a,
            mode,
            pick(f, dma_delta),
            Goal::AtMost(1.2),
        );
    }
    println!(
        "(the ide row: the anchor cannot run it, QEMU's vfio-pci gives the guest's \
         ata_piix no disk on the legacy-mode piix3-ide; the figures are udrv's alone)"
    );
    for (name, f) in [
        ("vfio-pci", anchor),
        ("udrv trapped", trapped),
        ("udrv direct-mmio", direct),
    ] {
        if let Some(f) = f {
            println!(
                "{name}: boot {:.0} s; STATUS read {}; {:?}/{PINGS} pings answered; ahci group \
                 after the switch {:?}; failed ATA commands {:?}; ide transfer mode {:?}",
                f.boot_s,
                f.mmio_value.as_deref().unwrap_or("-"),
                f.ping_received,
                f.ahci_domain,
                f.ata_errors,
                f.ide_xfer
            );
        }
    }
}

/// udrv's counters for a served boot: DMA_MAPs per small read after the switch, and
/// each device's totals.
fn print_udrv(mode: Mode, f: &Figures) {
    let Some(udrv) = &f.udrv else { return };
    let reads = SMALL_ROUNDS as u64 * SMALL_BYTES / SMALL_READ;
    let per = |ns: u64, n: u64| ns as f64 / 1e3 / n.max(1) as f64;
    match &udrv.maps_after_switch {
        Some(p) => println!(
            "{}: the ahci's page-sized DMA traffic (sampling intervals in which its \
             device-reachable memory changed by < 1 MiB): {} DMA_MAPs and {} DMA_UNMAPs \
             ({:.2} and {:.2} per 4 KiB read of the {reads} after the switch, the driver's \
             re-probe and the boot included), {:.1} µs in udrv per DMA_MAP and {:.1} µs per \
             DMA_UNMAP (parsed to reply built); {} KiB device-reachable at the end",
            mode.name(),
            p.maps,
            p.unmaps,
            p.maps as f64 / reads as f64,
            p.unmaps as f64 / reads as f64,
            per(p.map_ns, p.maps),
            per(p.unmap_ns, p.unmaps),
            p.mapped_at_end >> 10,
        ),
        None => println!("{}: no samples of the ahci's server", mode.name()),
    }
    for (name, s) in &udrv.after {
        println!(
            "  {name}: {} messages, {} region reads, {} region writes ({:.1} µs in udrv \
             each), {} DMA_MAPs ({:.1} µs each), {} DMA_UNMAPs ({:.1} µs each), {} SET_IRQS, \
             {} derived INTx, {} error replies (last {:?})",
            s.messages,
            s.region_reads,
            s.region_writes,
            per(s.region_access_ns, s.region_reads + s.region_writes),
            s.dma_maps,
            per(s.dma_map_ns, s.dma_maps),
            s.dma_unmaps,
            per(s.dma_unmap_ns, s.dma_unmaps),
            s.irq_sets,
            s.derived_intx_signals,
            s.error_replies,
            s.last_error
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_has_every_placeholder_filled() {
        let task = task();
        let left: Vec<&str> = task
            .split('@')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .collect();
        assert!(left.is_empty(), "unfilled: {left:?}");
        assert!(task.contains(&format!("ping -c {PINGS} -A")));
    }

    #[test]
    fn figures_come_from_the_guest_lines() {
        let line = "guest-probe: read-disk dev=/dev/sda block=4096 bytes=524288 \
                    seconds=0.500000 mb_per_s=1.048 requests=128 request_ms=400";
        assert_eq!(field(line, "bytes"), Some("524288"));
        assert_eq!(number(line, "seconds"), Some(0.5));
        assert_eq!(field(line, "dev"), Some("/dev/sda"));
        assert_eq!(number(line, "missing"), None);
    }

    #[test]
    fn page_sized_dma_traffic_leaves_out_whole_ram_maps() {
        let at = |maps, unmaps, mapped, map_ns, unmap_ns| VfioUserStatus {
            dma_maps: maps,
            dma_unmaps: unmaps,
            dma_mapped_bytes: mapped,
            dma_map_ns: map_ns,
            dma_unmap_ns: unmap_ns,
            ..Default::default()
        };
        let ram = GUEST_MIB << 20;
        let samples = [
            at(0, 0, 0, 0, 0),
            // Guest RAM mapped at boot: left out.
            at(3, 0, ram, 900_000, 0),
            // Per-request pages.
            at(13, 8, ram + 8192, 910_000, 4_000),
            at(23, 18, ram + 8192, 920_000, 9_000),
            // RAM unmapped at the switch: left out.
            at(24, 20, 4096, 921_000, 99_000),
            at(34, 30, 4096, 931_000, 104_000),
        ];
        assert_eq!(
            maps_after_switch(&samples),
            Some(DmaPhase {
                maps: 30,
                unmaps: 28,
                map_ns: 30_000,
                unmap_ns: 14_000,
                mapped_at_end: 4096,
            })
        );
        assert_eq!(maps_after_switch(&[]), None);
    }
}
