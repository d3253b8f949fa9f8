//! udrv serving the rig's ich9-ahci over vfio-user to a nested QEMU 11 guest, as a
//! user runs it: `udrv serve`, then `udrv attach BDF --serve vfio-user:SOCKET`. The
//! nested guest's own ahci driver finds the rig's disk behind it, reads sectors whose
//! rig pattern the test checks and the whole disk, and writes a sector that the rig
//! reads from the disk itself once `udrv detach` has given the controller back to its
//! host driver. Before that guest, a first nested QEMU is killed while its guest reads
//! the disk: udrv leaves the controller quiesced with nothing mapped, and the next
//! QEMU on the same socket is served. Once that guest's checks are done it reads the
//! disk in a loop, and `udrv serve` itself is killed with -9: the controller stays
//! claimed and recorded, what QEMU and its guest saw is printed, and a new `udrv
//! serve` recovers the claim and serves the socket again, to a vfio-user client that
//! reads the controller's registers and maps memory for it. Two nested boots.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use udriver::claim::{ClaimPhase, StateFile};
use udrv_examples::disk_pattern;
use udrv_qemu_guest::{GuestBoot, GuestReport, QemuKit};

use super::service::{service_answers, udrv_ok, Service};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// The socket udrv serves the ich9-ahci on.
const SOCKET: &str = "/run/udrv/ahci.sock";
/// The frontend `udrv attach --serve` is given.
const SPEC: &str = "vfio-user:/run/udrv/ahci.sock";
/// Where the nested guest puts the served controller (its own q35 SATA is at 1f.2).
const NESTED_SLOT: &str = "06.0";
const NESTED_BDF: &str = "0000:00:06.0";
/// Sectors whose first bytes the guest prints: the first, a few inside, the last.
const CHECKED_SECTORS: [u64; 4] = [0, 1, 4097, rig::AHCI_DISK_SECTORS - 1];
/// How many leading bytes of a checked sector the guest prints.
const CHECKED_BYTES: usize = 32;
/// The sector the guest writes (restored to the pattern afterwards).
const MARKED_SECTOR: u64 = 200;
/// The service's claim state file (its default).
const STATE: &str = "/run/udrv/state.json";
/// The rig-side end of the nested guest's second serial port: the guest writes a line
/// there when its checks are done and after each pass of its read loop, which the
/// test reads while the guest runs (the console comes back only when QEMU exits).
const PROGRESS: &str = "/tmp/udrv-vfio-user-ahci-progress";
/// Region writes after the guest's first read pass past which its loop is surely in
/// the middle of the second.
const WRITES_INTO_LOOP: u64 = 200;
/// How long the test watches the client after killing the service, before starting
/// it again: long enough for the guest's driver to time out a command (30 s) and say so.
const WATCH_KILLED_CLIENT: Duration = Duration::from_secs(90);

/// The rig kernel's huge-page policy for its internal shmem mount, where the nested
/// QEMU's memfd guest RAM lives.
const SHMEM_HUGE: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

pub fn tests() -> Vec<RigTest> {
    rig_tests![vfio_user: nested_ahci_reads_and_writes_the_disk (1500 s)]
}

/// The nested guest's task: find the served controller's disk, print the first bytes
/// of the checked sectors, read the whole disk, write `marker` into the marked sector
/// and read it back past the page cache.
fn ahci_task(marker: &str) -> String {
    let sectors = CHECKED_SECTORS.map(|s| s.to_string()).join(" ");
    format!(
        r#"#!/bin/sh
d=/sys/bus/pci/devices/{NESTED_BDF}
disk=
for i in $(seq 1 100); do
  disk=$(ls -d $d/ata*/host*/target*/*/block/* 2>/dev/null | head -n 1)
  [ -n "$disk" ] && break
  sleep 0.2
done
echo "@@guest driver $(basename "$(readlink "$d/driver")")"
[ -n "$disk" ] || exit 0
name=$(basename "$disk")
echo "@@guest disk $name sectors $(cat /sys/block/$name/size)"
for s in {sectors}; do
  echo "@@guest sector $s $(dd if=/dev/$name bs=512 skip=$s count=1 2>/dev/null | od -A n -t x1 -v -N {CHECKED_BYTES} | tr -d ' \n')"
done
if dd if=/dev/$name of=/dev/null bs=64k 2>/dev/null; then echo "@@guest whole-read ok"; else echo "@@guest whole-read failed"; fi
printf '%s' '{marker}' | dd of=/dev/$name bs=512 seek={MARKED_SECTOR} count=1 conv=sync,fsync 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
echo "@@guest marked $(dd if=/dev/$name bs=512 skip={MARKED_SECTOR} count=1 2>/dev/null | head -c {len})"
# Checks done: from here the guest reads the disk until QEMU goes, while the rig kills
# the service; each pass's outcome, and the kernel's messages once a second, also go
# to the second serial port, which the rig reads as they come.
echo "checks-done" > /dev/ttyS1
dmesg -c > /dev/null
(while true; do dmesg -c; sleep 1; done) > /dev/ttyS1 &
n=0
while true; do
  n=$((n + 1))
  echo 3 > /proc/sys/vm/drop_caches
  if dd if=/dev/$name of=/dev/null bs=64k 2>/tmp/dd.err; then r=ok; else r="failed: $(tail -n 1 /tmp/dd.err)"; fi
  echo "@@guest pass $n $r"
  echo "pass $n $r" > /dev/ttyS1
done
"#,
        len = marker.len()
    )
}

/// `udrv serve` and `udrv attach --serve vfio-user:` claim the rig's ich9-ahci and
/// serve it; the nested guest's ahci driver binds it, finds the rig's disk, reads
/// sectors that hold the rig's pattern and the whole disk, and writes a sector; `udrv
/// status` shows the client's DMA_MAPs; `kill -9` of the service mid-transfer leaves
/// the controller claimed, recorded and with bus mastering off, and a new service
/// serves it again; after `udrv detach` the rig kernel's ahci driver has the disk
/// again, and the rig reads the written sector and restores it.
fn nested_ahci_reads_and_writes_the_disk() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    ensure!(
        !service_answers()?,
        "a udrv serve is already running at /run/udrv/control.sock"
    );
    rig::bind_to_host(rig::ICH9_AHCI, "ahci")?;
    let marker = format!("udrv-vfio-user-ahci-{}", std::process::id());
    let mut service = Service::start("vfio-user-ahci")?;
    let served = serve_to_nested(&kit, &marker, &mut service);
    // The controller back to its host driver whatever happened, then the service gone.
    let detached = udrv_ok(&["detach", rig::ICH9_AHCI]);
    let stopped = service.signal(Signal::SIGTERM);
    let (report, vfio_user) = served?;
    detached?;
    ensure!(
        stopped?.success(),
        "udrv serve failed; its log:\n{}",
        service.log()
    );
    check_guest(&report, &marker)?;
    println!(
        "udrv status while served, up to the kill: {} DMA_MAPs ({} mappings, {} bytes then), \
         {} region reads, {} region writes, {} SET_IRQS, {} error replies",
        vfio_user["dma_maps"],
        vfio_user["dma_mappings"],
        vfio_user["dma_mapped_bytes"],
        vfio_user["region_reads"],
        vfio_user["region_writes"],
        vfio_user["irq_sets"],
        vfio_user["error_replies"]
    );
    ensure!(
        vfio_user["dma_maps"].as_u64().is_some_and(|n| n > 0) && vfio_user["error_replies"] == 0,
        "udrv status of the served controller: {vfio_user:#}"
    );
    check_disk(&marker)
}

/// Nested guest RAM (memfds) on 2 MiB huge pages while it lives, the rig's policy
/// back afterwards. The rig's QEMU 7.2 AHCI maps a command's PRDT in one piece and
/// fails the command ("PRDT length for NCQ command (0x0) is smaller than the requested
/// size") when the table crosses into a page that is not contiguous with the previous
/// one in the rig's memory; the nested guest's command tables are in its RAM, which
/// udrv maps into the controller's IOMMU as the client gives it (see also
/// `uml_memory_dir`).
struct HugeShmem(String);

impl HugeShmem {
    fn on() -> Result<Self> {
        let policies =
            std::fs::read_to_string(SHMEM_HUGE).with_context(|| format!("reading {SHMEM_HUGE}"))?;
        let was = policies
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
            .with_context(|| format!("{SHMEM_HUGE} names no policy in use: {policies}"))?
            .to_string();
        // Free 2 MiB blocks for the huge pages.
        let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
        std::fs::write(SHMEM_HUGE, "always").with_context(|| format!("writing {SHMEM_HUGE}"))?;
        Ok(Self(was))
    }
}

impl Drop for HugeShmem {
    fn drop(&mut self) {
        let _ = std::fs::write(SHMEM_HUGE, &self.0);
    }
}

/// Attaches the controller with the vfio-user frontend, kills a first nested QEMU
/// mid-transfer, then boots the checking guest on the same socket and kills the
/// service under it once its checks are done (`service` is then the restarted one);
/// returns the guest's report and `udrv status`'s vfio-user counters of its session
/// just before the kill.
fn serve_to_nested(
    kit: &QemuKit,
    marker: &str,
    service: &mut Service,
) -> Result<(GuestReport, serde_json::Value)> {
    let printed = udrv_ok(&["attach", rig::ICH9_AHCI, "--serve", SPEC])?;
    ensure!(
        printed.contains("vfio-user-pci") && printed.contains(SOCKET),
        "udrv attach did not print the QEMU command line: {printed}"
    );
    // The first QEMU as it always ran: on small pages. In the full rig run, with huge
    // pages on for it as well, it exited by itself 16 s after connecting.
    let before = kill_mid_transfer(kit)?;
    // Only the reading guest's RAM on huge pages (the rig's AHCI then takes its large
    // NCQ reads), while it lives.
    let _huge = HugeShmem::on()?;
    let _ = std::fs::remove_file(PROGRESS);
    let boot = GuestBoot::new(kit)
        .memory_mib(256)
        .vfio_user_device_at(Path::new(SOCKET), NESTED_SLOT)
        .args(["-serial".to_string(), format!("file:{PROGRESS}")])
        .task(&ahci_task(marker))
        .timeout(Duration::from_secs(1100));
    let (report, at_kill) = std::thread::scope(|scope| {
        let guest = scope.spawn(|| boot.run_to_exit());
        let at_kill = kill_service_under_client(service);
        // The guest reads until QEMU goes: whatever happened above, it goes now.
        if !nested_qemu_pids().is_empty() {
            let _ = kill_nested_qemu();
        }
        let report = guest
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the nested boot's thread panicked")));
        (report, at_kill)
    });
    let report = report?;
    let (at_kill, seen_before_kill) = at_kill.with_context(|| {
        format!(
            "killing udrv serve under the nested QEMU; QEMU's stderr: {}\nconsole tail:\n{}",
            report.qemu_stderr.trim(),
            report.tail()
        )
    })?;
    print_what_the_killed_client_saw(&report, seen_before_kill);
    probe_restarted_socket()?;
    // That client's share of the counters, which count every client.
    let mut mine = at_kill.clone();
    for key in [
        "dma_maps",
        "region_reads",
        "region_writes",
        "irq_sets",
        "error_replies",
    ] {
        let delta = at_kill[key]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[key].as_u64().unwrap_or(0));
        mine[key] = delta.into();
    }
    Ok((report, mine))
}

/// The lines of the progress file (the nested guest's second serial port).
fn progress() -> Vec<String> {
    std::fs::read_to_string(PROGRESS)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Waits for the nested guest's checks and a first good pass of its read loop, lets it
/// get into the second pass, then
/// SIGKILLs `udrv serve` under it: checks the controller was left claimed, recorded
/// and with bus mastering off, watches QEMU and its guest for a while, starts the
/// service again (into `service`) and checks it recovered the claim and serves the
/// socket. Returns the counters of the killed session just before the kill, and how
/// many progress lines the guest had written by then.
fn kill_service_under_client(service: &mut Service) -> Result<(serde_json::Value, usize)> {
    // A first whole pass of the read loop, done before the kill: the served disk
    // reads without error in the loop, as in the checks.
    let first = rig::poll_until(
        Duration::from_secs(1000),
        "the nested guest's checks and first read pass",
        || {
            std::thread::sleep(Duration::from_millis(500));
            if let Some(line) = progress().into_iter().find(|l| l.starts_with("pass 1 ")) {
                return Ok(Some(line));
            }
            ensure!(
                !nested_qemu_pids().is_empty(),
                "the nested QEMU exited before its guest's first read pass"
            );
            Ok(None)
        },
    )?;
    ensure!(
        first == "pass 1 ok",
        "the nested guest's first read pass through udrv: `{first}`; since its checks:\n{}",
        progress().join("\n")
    );
    let into_loop = served_status()?;
    let writes = |v: &serde_json::Value| v["region_writes"].as_u64().unwrap_or(0);
    let at_kill = rig::poll_until(
        Duration::from_secs(300),
        "the nested guest's second read pass",
        || {
            let v = served_status()?;
            Ok(
                (writes(&v) > writes(&into_loop) + WRITES_INTO_LOOP && !v["client"].is_null())
                    .then_some(v),
            )
        },
    )?;
    let seen_before_kill = progress().len();
    println!(
        "$ kill -9 {}   # udrv serve, its client QEMU (pid {}) reading the disk: {} DMA \
         mappings, {} region writes",
        service.pid(),
        at_kill["client"]["pid"],
        at_kill["dma_mappings"],
        at_kill["region_writes"]
    );
    service.signal(Signal::SIGKILL)?;
    let killed_at = std::time::Instant::now();

    // Between the kill and the restart: the claim stays, as recorded; the kernel's
    // vfio-pci, its last user gone, turned bus mastering off.
    let driver = rig::driver_of(rig::ICH9_AHCI);
    let claims = StateFile::read(Path::new(STATE))?.claims;
    let record = claims
        .iter()
        .find(|c| c.address.to_string() == rig::ICH9_AHCI)
        .with_context(|| format!("{STATE} lost the claim of {}: {claims:?}", rig::ICH9_AHCI))?;
    let command = command_register()?;
    println!(
        "after the kill: {} on {driver:?}, claim recorded ({:?}, serve {:?}, original driver \
         {:?}), command register {command:#06x}, socket file left: {}",
        rig::ICH9_AHCI,
        record.phase,
        record.serve,
        record.original_driver,
        Path::new(SOCKET).exists()
    );
    ensure!(
        driver.as_deref() == Some("vfio-pci"),
        "{} left vfio-pci when the service was killed: {driver:?}",
        rig::ICH9_AHCI
    );
    ensure!(
        record.phase == ClaimPhase::Attached
            && record.serve.as_deref() == Some(SPEC)
            && record.original_driver.as_deref() == Some("ahci"),
        "the claim as recorded after the kill: {record:?}"
    );
    ensure!(
        command & 0x4 == 0,
        "bus mastering on with no service (command {command:#06x})"
    );

    // What the client does without its server: exit, or its guest's reads fail.
    while killed_at.elapsed() < WATCH_KILLED_CLIENT
        && !nested_qemu_pids().is_empty()
        && !progress()[seen_before_kill..]
            .iter()
            .any(|l| l.starts_with("pass ") && l.contains("failed"))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{:.1} s after the kill: nested QEMU {}",
        killed_at.elapsed().as_secs_f64(),
        if nested_qemu_pids().is_empty() {
            "gone"
        } else {
            "still running"
        }
    );

    *service = Service::start("vfio-user-ahci-restarted")?;
    service.ensure_logged("recovered: serving again after a restart")?;
    let status = quiet_status()?;
    let served = status["served"]
        .as_array()
        .and_then(|s| s.iter().find(|d| d["address"] == rig::ICH9_AHCI))
        .with_context(|| format!("not served after the restart: {status:#}"))?;
    ensure!(
        served["recovered"] == true && served["frontend"] == SPEC,
        "not served again after the restart: {served:#}"
    );
    udrv_ok(&["status"])?;
    let vfio_user = served_status()?;
    println!(
        "restarted service: {} served again (recovered), socket {}, client {} (the killed \
         session's QEMU {})",
        rig::ICH9_AHCI,
        vfio_user["socket"],
        vfio_user["client"],
        if nested_qemu_pids().is_empty() {
            "is gone"
        } else {
            "is still running and did not reconnect"
        }
    );
    Ok((at_kill, seen_before_kill))
}

/// What QEMU and its guest showed of the service's death: QEMU's exit and its
/// messages, and the guest's read passes and kernel messages from its checks to the
/// kill and after it (as its second serial port had them).
fn print_what_the_killed_client_saw(report: &GuestReport, seen_before_kill: usize) {
    println!(
        "the killed service's client: QEMU exited with {} after {:.1} s",
        report.status,
        report.elapsed.as_secs_f64()
    );
    println!("  QEMU's stderr:");
    for line in report.qemu_stderr.lines() {
        println!("  | {line}");
    }
    let lines = progress();
    let (before, after) = lines.split_at(seen_before_kill.min(lines.len()));
    for (when, lines) in [
        ("from its checks to the kill", before),
        ("after the kill", after),
    ] {
        println!("  the guest's read loop and kernel {when}:");
        for line in lines.iter().take(40) {
            println!("  | {line}");
        }
        if lines.len() > 40 {
            println!("  | ... {} more", lines.len() - 40);
        }
    }
}

/// A vfio-user client on the restarted service's socket doing real work on the
/// controller: the protocol handshake and device info, the config space's ids, the
/// AHCI registers of BAR 5 (version 1.0, six ports), and a page of its memory mapped
/// into the controller's IOMMU and unmapped again.
fn probe_restarted_socket() -> Result<()> {
    /// VFIO_PCI_CONFIG_REGION_INDEX.
    const CONFIG: u32 = 7;
    /// The AHCI base address (ABAR).
    const ABAR: u32 = 5;
    let mut client = vfio_user::Client::new(Path::new(SOCKET))
        .map_err(|e| anyhow::anyhow!("connecting to {SOCKET}: {e:?}"))?;
    let read32 = |client: &mut vfio_user::Client, region: u32, offset: u64| -> Result<u32> {
        let mut word = [0u8; 4];
        client
            .region_read(region, offset, &mut word)
            .map_err(|e| anyhow::anyhow!("reading region {region} at {offset:#x}: {e:?}"))?;
        Ok(u32::from_le_bytes(word))
    };
    let ids = read32(&mut client, CONFIG, 0)?;
    let abar = client.region(ABAR).map_or(0, |r| r.size);
    let version = read32(&mut client, ABAR, 0x10)?;
    let ports = read32(&mut client, ABAR, 0x0c)?;
    let ram_path = "/dev/shm/udrv-vfio-user-probe";
    let ram = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(ram_path)?;
    ram.set_len(4096)?;
    let iova = 0x1000_0000;
    client
        .dma_map(0, iova, 4096, std::os::fd::AsRawFd::as_raw_fd(&ram))
        .map_err(|e| anyhow::anyhow!("DMA_MAP: {e:?}"))?;
    let mapped = served_status()?;
    client
        .dma_unmap(iova, 4096)
        .map_err(|e| anyhow::anyhow!("DMA_UNMAP: {e:?}"))?;
    let unmapped = served_status()?;
    let _ = client.shutdown();
    drop(client);
    let _ = std::fs::remove_file(ram_path);
    let after = rig::poll_until(Duration::from_secs(10), "the probe to go", || {
        let v = served_status()?;
        Ok(v["client"].is_null().then_some(v))
    })?;
    println!(
        "vfio-user client on the restarted socket: ids {:04x}:{:04x}, BAR5 {abar} bytes, AHCI \
         version {version:#010x}, ports implemented {ports:#x}; DMA_MAP of a page: {} \
         mapping(s), {} bytes; after DMA_UNMAP: {}; clients served {}, error replies {}",
        ids & 0xffff,
        ids >> 16,
        mapped["dma_mappings"],
        mapped["dma_mapped_bytes"],
        unmapped["dma_mappings"],
        after["clients_served"],
        after["error_replies"]
    );
    ensure!(
        ids == 0x2922_8086,
        "the restarted socket's config space has ids {ids:#010x}, want the ich9-ahci's 8086:2922"
    );
    ensure!(
        abar == 0x1000 && version == 0x0001_0000 && ports == 0x3f,
        "the restarted socket's BAR 5 ({abar} bytes): version {version:#x}, ports {ports:#x}; \
         want the rig's ich9-ahci (4 KiB, AHCI 1.0, six ports)"
    );
    ensure!(
        mapped["dma_mappings"] == 1
            && mapped["dma_mapped_bytes"] == 4096
            && unmapped["dma_mappings"] == 0
            && after["error_replies"] == 0
            && after["clients_served"].as_u64() >= Some(1),
        "the restarted service's counters around the probe: mapped {mapped:#}, unmapped \
         {unmapped:#}, after {after:#}"
    );
    Ok(())
}

/// The controller's PCI command register, as the rig kernel sees it.
fn command_register() -> Result<u16> {
    let config = std::fs::read(format!("/sys/bus/pci/devices/{}/config", rig::ICH9_AHCI))?;
    Ok(u16::from_le_bytes([config[4], config[5]]))
}

/// `udrv status --json`'s vfio-user counters of the served controller. Quiet (tests
/// poll it, and each call is a line in the service's log), at most twice a second.
fn served_status() -> Result<serde_json::Value> {
    std::thread::sleep(Duration::from_millis(500));
    let status = quiet_status()?;
    let served = status["served"]
        .as_array()
        .and_then(|s| s.iter().find(|d| d["address"] == rig::ICH9_AHCI))
        .with_context(|| format!("udrv status does not show the controller: {status:#}"))?;
    Ok(served["status"]["vfio_user"].clone())
}

/// `udrv status --json`, not printed.
fn quiet_status() -> Result<serde_json::Value> {
    let out = std::process::Command::new(rig::installed_binary("udrv")?)
        .args(["status", "--json"])
        .output()
        .context("running udrv status --json")?;
    ensure!(
        out.status.success(),
        "udrv status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("udrv status --json")
}

/// A nested guest that reads the disk over and over.
const READ_FOREVER_TASK: &str = r#"#!/bin/sh
d=/sys/bus/pci/devices/0000:00:06.0
for i in $(seq 1 100); do
  disk=$(ls -d $d/ata*/host*/target*/*/block/* 2>/dev/null | head -n 1)
  [ -n "$disk" ] && break
  sleep 0.2
done
# Each pass from the disk, not the page cache.
while true; do
  echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/$(basename "$disk") of=/dev/null bs=64k 2>/dev/null
done
"#;

/// Region writes past which the reading guest is surely in the middle of its reads:
/// a whole good run, probe and all, makes under 500.
const WRITES_MID_TRANSFER: u64 = 1500;

/// A nested QEMU killed (SIGKILL) while its guest reads the disk: udrv sees the client
/// go and leaves the controller quiesced, bus mastering off and nothing mapped; returns
/// the counters then, for the next client's to be told from them.
fn kill_mid_transfer(kit: &QemuKit) -> Result<serde_json::Value> {
    let boot = GuestBoot::new(kit)
        .memory_mib(256)
        .vfio_user_device_at(Path::new(SOCKET), NESTED_SLOT)
        .task(READ_FOREVER_TASK)
        .timeout(Duration::from_secs(600));
    let reading = std::thread::scope(|scope| {
        let guest = scope.spawn(|| boot.run());
        let reading = rig::poll_until(
            Duration::from_secs(500),
            "the nested guest reading the disk",
            || {
                let v = served_status()?;
                let writes = v["region_writes"].as_u64().unwrap_or(0);
                Ok((writes > WRITES_MID_TRANSFER).then_some(v))
            },
        );
        let killed = kill_nested_qemu();
        // QEMU killed: its run is an error, as it should be.
        let _ = guest.join();
        killed.and(reading)
    })?;
    let after = rig::poll_until(
        Duration::from_secs(10),
        "the killed client's session to end",
        || {
            let v = served_status()?;
            Ok(v["client"].is_null().then_some(v))
        },
    )?;
    let command = command_register()?;
    println!(
        "nested QEMU killed mid-transfer ({} region writes, {} DMA mappings then): udrv \
         ended its session; {} mappings left, command register {command:#06x}",
        reading["region_writes"], reading["dma_mappings"], after["dma_mappings"]
    );
    ensure!(
        after["dma_mappings"] == 0 && after["dma_mapped_bytes"] == 0,
        "memory still mapped after the killed client: {after:#}"
    );
    ensure!(
        command & 0x4 == 0,
        "bus mastering still on after the killed client (command {command:#06x})"
    );
    Ok(after)
}

/// The nested QEMU processes (the only QEMU processes inside the rig).
fn nested_qemu_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_string_lossy()
                .parse::<i32>()
                .ok()
        })
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("qemu-system-x86_64")
        })
        .collect()
}

/// SIGKILL to every nested QEMU.
fn kill_nested_qemu() -> Result<()> {
    let pids = nested_qemu_pids();
    ensure!(!pids.is_empty(), "no nested QEMU to kill");
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    Ok(())
}

/// The nested guest's side: its ahci driver bound the served controller, the disk has
/// the rig disk's size, the checked sectors hold the rig's pattern, the whole disk
/// read, and the marked sector read back as written.
fn check_guest(report: &GuestReport, marker: &str) -> Result<()> {
    let value = |key: &str| report.values(key).first().map(|v| v.to_string());
    println!(
        "nested boot (small kernel, vfio-user ich9-ahci): QEMU start to exit {:.1} s; disk {}",
        report.elapsed.as_secs_f64(),
        value("disk").unwrap_or_default()
    );
    ensure!(
        value("driver").as_deref() == Some("ahci"),
        "the nested ahci driver did not bind the served controller ({:?}); console:\n{}",
        value("driver"),
        report.tail()
    );
    let disk = value("disk").unwrap_or_default();
    ensure!(
        disk.ends_with(&format!("sectors {}", rig::AHCI_DISK_SECTORS)),
        "the nested guest's disk behind the served controller: `{disk}`; console:\n{}",
        report.tail()
    );
    ensure!(
        report.values("sector").len() == CHECKED_SECTORS.len(),
        "the guest printed {} of {} checked sectors; console:\n{}",
        report.values("sector").len(),
        CHECKED_SECTORS.len(),
        report.tail()
    );
    for line in report.values("sector") {
        let (lba, hex) = line.split_once(' ').unwrap_or((line, ""));
        let lba: u64 = lba.parse().context("a sector line's number")?;
        let want: String = disk_pattern::sector(lba)[..CHECKED_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ensure!(
            hex == want,
            "sector {lba} as the nested guest read it: {hex}, want the rig's pattern {want}"
        );
    }
    ensure!(
        value("whole-read").as_deref() == Some("ok"),
        "the nested guest's read of the whole disk: {:?}; console:\n{}",
        value("whole-read"),
        report.tail()
    );
    ensure!(
        value("marked").as_deref() == Some(marker),
        "sector {MARKED_SECTOR} read back in the nested guest: {:?}",
        value("marked")
    );
    println!(
        "nested ahci over vfio-user: sectors {CHECKED_SECTORS:?} hold the rig's pattern, the \
         whole disk read, sector {MARKED_SECTOR} written and read back"
    );
    Ok(())
}

/// The rig kernel's ahci driver, given the controller back, reads the marked sector as
/// the nested guest wrote it; the sector is then restored to the pattern.
fn check_disk(marker: &str) -> Result<()> {
    // The disk's node can show before the disk opens (ENXIO while it is probed).
    let (path, mut disk) = rig::wait_for(|| {
        let name = rig::block_device(rig::ICH9_AHCI, rig::AHCI_DISK_SECTORS)?;
        let path = format!("/dev/{name}");
        let disk = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        Ok((path, disk))
    })?;
    let at = SeekFrom::Start(MARKED_SECTOR * 512);
    let mut got = [0u8; 512];
    disk.seek(at)?;
    disk.read_exact(&mut got)?;
    disk.seek(at)?;
    disk.write_all(&disk_pattern::sector(MARKED_SECTOR))?;
    disk.sync_all()?;
    let mut want = [0u8; 512];
    want[..marker.len()].copy_from_slice(marker.as_bytes());
    ensure!(
        got == want,
        "sector {MARKED_SECTOR} of {path} after the nested guest wrote it: {:02x?}..., want \
         {:02x?}...",
        &got[..32],
        &want[..32]
    );
    println!("sector {MARKED_SECTOR} as the nested guest wrote it is on {path} (restored)");
    Ok(())
}
