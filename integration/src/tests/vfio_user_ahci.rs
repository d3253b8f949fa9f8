//! udrv serving the rig's ich9-ahci over vfio-user to a nested QEMU 11 guest: the
//! nested guest's own ahci driver finds the rig's disk behind it, reads sectors whose
//! rig pattern the test checks and the whole disk, and writes a sector that the rig
//! then reads from the disk itself. One nested boot.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use udrv_examples::ahci::{Ahci, Config};
use udrv_examples::block::BlockDevice;
use udrv_examples::disk_pattern;
use udrv_qemu_guest::{GuestBoot, QemuKit};
use vpci::frontend::vfio_user::{DmaLimits, ServerOptions, SessionOptions, VfioUserServer};
use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};

use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// The socket udrv serves the ich9-ahci on.
const SOCKET: &str = "/tmp/udrv-vfio-user-ahci.sock";
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

/// udrv claims the rig's ich9-ahci and serves it over vfio-user; the nested guest's
/// ahci driver binds it, finds the rig's disk, reads sectors that hold the rig's
/// pattern and the whole disk, and writes a sector; after QEMU has gone the rig reads
/// that sector from the disk with the examples' AHCI driver and restores it.
fn nested_ahci_reads_and_writes_the_disk() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    let marker = format!("udrv-vfio-user-ahci-{}", std::process::id());
    let (container, mut devices) = rig::open_in_one_container(&[rig::ICH9_AHCI])?;
    let device = devices.pop().context("the ich9-ahci was not opened")?;
    let iova_ranges = container.iommu_info()?.iova_ranges;
    let function = PassthroughFunction::new(VfioPassthroughDevice::new(device)?)?;
    let socket = Path::new(SOCKET);
    let server = VfioUserServer::start(
        function,
        Arc::new(container),
        ServerOptions {
            socket: socket.to_path_buf(),
            allowed_uid: None,
            session: SessionOptions {
                direct_mmio: false,
                dma_limits: DmaLimits { iova_ranges },
            },
        },
    )?;
    println!("{} served over vfio-user on {SOCKET}", rig::ICH9_AHCI);
    let report = GuestBoot::new(&kit)
        .memory_mib(256)
        .vfio_user_device_at(socket, NESTED_SLOT)
        .task(&ahci_task(&marker))
        .timeout(Duration::from_secs(800))
        .run();
    let gone = rig::poll_until(Duration::from_secs(10), "the client to go", || {
        Ok(server.status().client.is_none().then_some(()))
    });
    let status = server.status();
    let stopped = server.stop();
    let report = report?;
    gone?;
    stopped?;
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
        report.values("sector").len() == CHECKED_SECTORS.len(),
        "the guest printed {} of {} checked sectors; console:\n{}",
        report.values("sector").len(),
        CHECKED_SECTORS.len(),
        report.tail()
    );
    ensure!(
        value("whole-read").as_deref() == Some("ok"),
        "the nested guest's read of the whole disk: {:?}; console:\n{}",
        value("whole-read"),
        report.tail()
    );
    ensure!(
        value("marked").as_deref() == Some(marker.as_str()),
        "sector {MARKED_SECTOR} read back in the nested guest: {:?}",
        value("marked")
    );
    println!(
        "nested ahci over vfio-user: sectors {CHECKED_SECTORS:?} hold the rig's pattern, the \
         whole disk read, sector {MARKED_SECTOR} written; udrv: {} DMA_MAPs, {} region \
         reads, {} region writes, {} SET_IRQS, {} error replies",
        status.dma_maps,
        status.region_reads,
        status.region_writes,
        status.irq_sets,
        status.error_replies
    );
    ensure!(
        status.error_replies == 0,
        "udrv refused requests of QEMU's: {:?}",
        status.last_error
    );

    // The rig reads the sector from the disk itself, then restores the pattern.
    let mut ahci = Ahci::open(rig::ICH9_AHCI.parse()?, &Config::default())?;
    let mut got = [0u8; 512];
    ahci.read_sectors(MARKED_SECTOR, &mut got)?;
    ahci.write_sectors(MARKED_SECTOR, &disk_pattern::sector(MARKED_SECTOR))?;
    ahci.flush()?;
    let mut want = [0u8; 512];
    want[..marker.len()].copy_from_slice(marker.as_bytes());
    ensure!(
        got == want,
        "sector {MARKED_SECTOR} on the disk after the nested guest wrote it: {:02x?}..., want \
         {:02x?}...",
        &got[..32],
        &want[..32]
    );
    println!("sector {MARKED_SECTOR} as the nested guest wrote it is on the disk (restored)");
    Ok(())
}
