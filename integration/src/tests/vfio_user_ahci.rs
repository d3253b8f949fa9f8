//! udrv serving the rig's ich9-ahci over vfio-user to a nested QEMU 11 guest, as a
//! user runs it: `udrv serve`, then `udrv attach BDF --serve vfio-user:SOCKET`. The
//! nested guest's own ahci driver finds the rig's disk behind it, reads sectors whose
//! rig pattern the test checks and the whole disk, and writes a sector that the rig
//! reads from the disk itself once `udrv detach` has given the controller back to its
//! host driver. Before that guest, a first nested QEMU is killed while its guest reads
//! the disk: udrv leaves the controller quiesced with nothing mapped, and the next
//! QEMU on the same socket is served. Two nested boots.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use udrv_examples::disk_pattern;
use udrv_qemu_guest::{GuestBoot, QemuKit};

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

pub fn tests() -> Vec<RigTest> {
    rig_tests![vfio_user: nested_ahci_reads_and_writes_the_disk (900 s)]
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
"#,
        len = marker.len()
    )
}

/// `udrv serve` and `udrv attach --serve vfio-user:` claim the rig's ich9-ahci and
/// serve it; the nested guest's ahci driver binds it, finds the rig's disk, reads
/// sectors that hold the rig's pattern and the whole disk, and writes a sector; `udrv
/// status` shows the client's DMA_MAPs; after `udrv detach` the rig kernel's ahci
/// driver has the disk again, and the rig reads the written sector and restores it.
fn nested_ahci_reads_and_writes_the_disk() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    ensure!(
        !service_answers()?,
        "a udrv serve is already running at /run/udrv/control.sock"
    );
    rig::bind_to_host(rig::ICH9_AHCI, "ahci")?;
    let marker = format!("udrv-vfio-user-ahci-{}", std::process::id());
    let mut service = Service::start("vfio-user-ahci")?;
    let served = serve_to_nested(&kit, &marker);
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
        "udrv status while served: {} DMA_MAPs ({} mappings, {} bytes at the end), {} region \
         reads, {} region writes, {} SET_IRQS, {} error replies",
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

/// Attaches the controller with the vfio-user frontend and boots the nested guest on
/// its socket; returns the guest's report and `udrv status`'s vfio-user counters once
/// the client has gone.
fn serve_to_nested(
    kit: &QemuKit,
    marker: &str,
) -> Result<(udrv_qemu_guest::GuestReport, serde_json::Value)> {
    let printed = udrv_ok(&["attach", rig::ICH9_AHCI, "--serve", SPEC])?;
    ensure!(
        printed.contains("vfio-user-pci") && printed.contains(SOCKET),
        "udrv attach did not print the QEMU command line: {printed}"
    );
    let before = kill_mid_transfer(kit)?;
    let report = GuestBoot::new(kit)
        .memory_mib(256)
        .vfio_user_device_at(Path::new(SOCKET), NESTED_SLOT)
        .task(&ahci_task(marker))
        .timeout(Duration::from_secs(800))
        .run()?;
    let vfio_user = rig::poll_until(Duration::from_secs(10), "the client to go", || {
        let vfio_user = served_status()?;
        Ok(vfio_user["client"].is_null().then_some(vfio_user))
    })?;
    // This client's share of the counters, which count every client.
    let mut mine = vfio_user.clone();
    for key in [
        "dma_maps",
        "region_reads",
        "region_writes",
        "irq_sets",
        "error_replies",
    ] {
        let delta = vfio_user[key]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[key].as_u64().unwrap_or(0));
        mine[key] = delta.into();
    }
    Ok((report, mine))
}

/// `udrv status --json`'s vfio-user counters of the served controller. Quiet (tests
/// poll it, and each call is a line in the service's log), at most twice a second.
fn served_status() -> Result<serde_json::Value> {
    std::thread::sleep(Duration::from_millis(500));
    let out = std::process::Command::new(rig::installed_binary("udrv")?)
        .args(["status", "--json"])
        .output()
        .context("running udrv status --json")?;
    ensure!(
        out.status.success(),
        "udrv status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("udrv status --json")?;
    let served = status["served"]
        .as_array()
        .and_then(|s| s.iter().find(|d| d["address"] == rig::ICH9_AHCI))
        .with_context(|| format!("udrv status does not show the controller: {status:#}"))?;
    Ok(served["status"]["vfio_user"].clone())
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
    let config = std::fs::read(format!("/sys/bus/pci/devices/{}/config", rig::ICH9_AHCI))?;
    let command = u16::from_le_bytes([config[4], config[5]]);
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

/// SIGKILL to every nested QEMU (the only QEMU processes inside the rig).
fn kill_nested_qemu() -> Result<()> {
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("qemu-system-x86_64") {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    ensure!(killed > 0, "no nested QEMU to kill");
    Ok(())
}

/// The nested guest's side: its ahci driver bound the served controller, the disk has
/// the rig disk's size, the checked sectors hold the rig's pattern, the whole disk
/// read, and the marked sector read back as written.
fn check_guest(report: &udrv_qemu_guest::GuestReport, marker: &str) -> Result<()> {
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
    let name = rig::wait_for(|| rig::block_device(rig::ICH9_AHCI, rig::AHCI_DISK_SECTORS))?;
    let path = format!("/dev/{name}");
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
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
