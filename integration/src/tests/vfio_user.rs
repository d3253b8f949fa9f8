//! udrv serving the rig's real devices over vfio-user to a nested QEMU 11 guest: the
//! rig's e1000e claimed through VFIO in the rig, served by udrv's vfio-user server
//! (`vpci::frontend::vfio_user`, what `udrv attach BDF --serve vfio-user:SOCK` runs),
//! and the nested guest's own e1000e driver using it through QEMU's `vfio-user-pci`.
//! The same device in the same kind of boot as the anchor in [`super::nested`], where
//! QEMU's own kernel `vfio-pci` passes it through.
//!
//! The nested guest runs with QEMU's Intel IOMMU (`caching-mode=on`, guest
//! `intel_iommu=on`, strict invalidation): every DMA mapping its e1000e driver makes
//! arrives as a vfio-user DMA_MAP and every unmap as a DMA_UNMAP, so the device reaches
//! only the pages the guest's driver has mapped at that moment, not all guest RAM.
//!
//! The rig's piix3-ide, the seed's device, goes the same way where QEMU's own
//! `vfio-pci` fails (legacy mode: fixed ports and ISA IRQ 14): udrv shows it in native
//! mode and raises the INTx it derives from the device's state, and the nested
//! guest's ata_piix reads and writes the rig's disk through it.
//!
//! A nested boot costs a minute or more under TCG-in-TCG: the checks share one boot.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use udriver::pci::PciAddress;
use udrv_examples::block::BlockDevice;
use udrv_examples::disk_pattern::{self, SECTOR_SIZE};
use udrv_examples::ide::{Ide, Transfer};
use udrv_qemu_guest::{GuestBoot, GuestReport, QemuKit};
use vpci::frontend::vfio_user::{
    DmaLimits, ServerOptions, SessionOptions, VfioUserServer, VfioUserStatus,
};
use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};

use super::nested::{e1000e_task, E1000E_IDS, NESTED_ADDRESS, NESTED_E1000E, NESTED_E1000E_SLOT};
use super::uml_served::{bring_up_peer, NO_THROTTLING};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// The socket udrv serves the e1000e on.
const SOCKET: &str = "/tmp/udrv-vfio-user-e1000e.sock";
/// Nested guest RAM: all of it in one shared memfd whose pages QEMU hands over in
/// DMA_MAPs.
const GUEST_MIB: u64 = 256;
/// The most the device may reach at once while the guest's traffic flows: the
/// e1000e's rings and receive buffers, far below guest RAM.
const MOST_MAPPED_IN_TRAFFIC: u64 = (GUEST_MIB << 20) / 16;

/// The socket udrv serves the piix3-ide on.
const IDE_SOCKET: &str = "/tmp/udrv-vfio-user-ide.sock";
/// Where the nested guest finds the served piix3-ide (where the rig has it).
const NESTED_IDE_SLOT: &str = "05.0";
const NESTED_IDE: &str = "0000:00:05.0";
/// The sector the nested guest writes (with the bit-inverted pattern of its own),
/// read back by the rig, then restored.
const WRITTEN_LBA: u64 = 12_345;
/// The run of sectors the nested guest reads and compares, from sector 2048: 1 MiB.
const READ_RUN: (u64, u64) = (2048, 2048);

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        vfio_user:
        nested_e1000e_binds_links_and_pings (900 s),
        nested_ide_reads_and_writes_the_disk (900 s),
    ]
}

/// What the watcher saw of the server while the nested guest ran. The guest's
/// traffic runs from the rig first hearing from it to the rig's last answered ping.
#[derive(Debug, Default)]
struct Watched {
    /// The server's counters when the guest's traffic started.
    at_traffic_start: Option<VfioUserStatus>,
    /// The last snapshot taken during the traffic, the client connected.
    at_traffic_end: Option<VfioUserStatus>,
    /// The most bytes the device could reach at any moment of the traffic.
    most_mapped_in_traffic: u64,
    /// The most DMA mappings at any moment of the traffic.
    most_mappings_in_traffic: u64,
    /// The most bytes the device could reach at any moment of the boot.
    most_mapped: u64,
    /// The most bytes the device could reach after the traffic, until QEMU left.
    most_mapped_after_traffic: u64,
}

/// Whether the rig kernel's `peer` has heard from the nested guest: a complete ARP
/// entry for [`NESTED_ADDRESS`] (the guest has its address, its link is up and it has
/// sent a frame; the rig's own pings leave only an incomplete entry).
fn nested_heard(peer: &str) -> bool {
    std::fs::read_to_string("/proc/net/arp").is_ok_and(|table| {
        table.lines().any(|line| {
            // IP address, HW type, Flags, HW address, Mask, Device
            let words: Vec<&str> = line.split_whitespace().collect();
            words.len() == 6
                && words[0] == NESTED_ADDRESS
                && words[5] == peer
                && u32::from_str_radix(words[2].trim_start_matches("0x"), 16)
                    .is_ok_and(|flags| flags & 0x2 != 0)
        })
    })
}

/// Samples the server every few milliseconds until `done`: its counters when the
/// nested guest's traffic starts (the rig's `peer` has heard from it) and ends
/// (`traffic_over`, the rig's pings answered), and the most memory mapped for the
/// device during the boot, the traffic and after it.
fn watch(
    server: &VfioUserServer<VfioPassthroughDevice>,
    peer: &str,
    traffic_over: &AtomicBool,
    done: &AtomicBool,
) -> Watched {
    let mut watched = Watched::default();
    while !done.load(Ordering::Relaxed) {
        let status = server.status();
        watched.most_mapped = watched.most_mapped.max(status.dma_mapped_bytes);
        if status.client.is_some() && watched.at_traffic_start.is_some() {
            if traffic_over.load(Ordering::Relaxed) {
                watched.most_mapped_after_traffic = watched
                    .most_mapped_after_traffic
                    .max(status.dma_mapped_bytes);
            } else {
                watched.most_mapped_in_traffic =
                    watched.most_mapped_in_traffic.max(status.dma_mapped_bytes);
                watched.most_mappings_in_traffic =
                    watched.most_mappings_in_traffic.max(status.dma_mappings);
                watched.at_traffic_end = Some(status);
            }
        } else if watched.at_traffic_start.is_none() && nested_heard(peer) {
            watched.at_traffic_start = Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    watched
}

/// Pings the nested guest from the rig until three pings were answered or `done`,
/// then sets `over`; returns each answered ping's round-trip time line.
fn ping_nested(done: &AtomicBool, over: &AtomicBool) -> Vec<String> {
    let mut answered = Vec::new();
    while answered.len() < 3 && !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        match rig::sh(&format!("ping -c 1 -W 2 {NESTED_ADDRESS}")) {
            Ok(out) => answered.push(
                out.lines()
                    .find(|l| l.contains("time="))
                    .unwrap_or_default()
                    .to_string(),
            ),
            // Not up yet: no answer to ARP, or no address.
            Err(_) => {
                let spent = started.elapsed();
                if spent < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_secs(1) - spent);
                }
            }
        }
    }
    over.store(true, Ordering::Relaxed);
    answered
}

/// udrv claims the rig's e1000e and serves it over vfio-user; the nested QEMU 11
/// guest's e1000e driver binds it through `vfio-user-pci` behind the guest's IOMMU,
/// the link comes up, it pings the rig kernel's e1000 across QEMU's hub and answers
/// the rig's pings, with the device's interrupts and DMA served by udrv. udrv's
/// counters show the client, DMA_MAPs and DMA_UNMAPs made while the traffic flowed
/// (the guest's per-request mappings), never more than a sixteenth of guest RAM
/// mapped meanwhile, the BAR accesses, and nothing mapped once QEMU has gone.
fn nested_e1000e_binds_links_and_pings() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    let peer = bring_up_peer()?;
    let result = serve_e1000e_to_nested(&kit, &peer);
    let _ = rig::sh(&format!(
        "ip address flush dev {peer} && ip link set dev {peer} down"
    ));
    result
}

/// Claims `bdf` in a container of its own and serves it over vfio-user on `socket`,
/// as the service's vfio-user launcher does (trapped BARs, the container's IOVA
/// ranges as the DMA limits).
fn serve(bdf: &str, socket: &Path) -> Result<VfioUserServer<VfioPassthroughDevice>> {
    serve_with(bdf, socket, false)
}

/// [`serve`], with the client offered direct BAR access when `direct_mmio` (the
/// launcher's `vfio-user:SOCK,direct-mmio`).
pub(super) fn serve_with(
    bdf: &str,
    socket: &Path,
    direct_mmio: bool,
) -> Result<VfioUserServer<VfioPassthroughDevice>> {
    let (container, mut devices) = rig::open_in_one_container(&[bdf])?;
    let device = devices
        .pop()
        .with_context(|| format!("{bdf} was not opened"))?;
    let iova_ranges = container.iommu_info()?.iova_ranges;
    let function = PassthroughFunction::new(VfioPassthroughDevice::new(device)?)?;
    let server = VfioUserServer::start(
        function,
        Arc::new(container),
        ServerOptions {
            socket: socket.to_path_buf(),
            allowed_uid: None,
            session: SessionOptions {
                direct_mmio,
                dma_limits: DmaLimits { iova_ranges },
            },
        },
    )?;
    println!(
        "{bdf} served over vfio-user on {}{}",
        socket.display(),
        if direct_mmio { " (direct-mmio)" } else { "" }
    );
    Ok(server)
}

fn serve_e1000e_to_nested(kit: &QemuKit, peer: &str) -> Result<()> {
    let socket = Path::new(SOCKET);
    let server = serve(rig::E1000E, socket)?;
    let boot = GuestBoot::new(kit)
        .memory_mib(GUEST_MIB as u32)
        .kernel_args([NO_THROTTLING, "intel_iommu=on", "iommu.strict=1"])
        // The IOMMU before the device; caching mode makes the guest report every new
        // mapping, which QEMU forwards as a DMA_MAP.
        .args(["-device", "intel-iommu,caching-mode=on"])
        .vfio_user_device_at(socket, NESTED_E1000E_SLOT)
        .task(&e1000e_task(true))
        .timeout(Duration::from_secs(800));
    let (done, traffic_over) = (AtomicBool::new(false), AtomicBool::new(false));
    let (report, watched, rig_pings) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch(&server, peer, &traffic_over, &done));
        let pinger = scope.spawn(|| ping_nested(&done, &traffic_over));
        let report = boot.run();
        done.store(true, Ordering::Relaxed);
        (
            report,
            watcher.join().unwrap_or_default(),
            pinger.join().unwrap_or_default(),
        )
    });
    // QEMU has exited: the session ends (device quiesced, DMA unmapped) when the
    // server sees the end of the connection.
    let after = rig::poll_until(Duration::from_secs(10), "the client to go", || {
        let status = server.status();
        Ok(status.client.is_none().then_some(status))
    });
    let stopped = server.stop();
    let report = report?;
    let after = after?;
    stopped?;
    check_guest(&report)?;
    println!(
        "nested boot (small kernel, vfio-user e1000e): QEMU start to exit {:.1} s; nested \
         init at {:.1} s, done at {:.1} s of nested uptime",
        report.elapsed.as_secs_f64(),
        report.up_at.unwrap_or(f64::NAN),
        report.done_at.unwrap_or(f64::NAN)
    );
    let value = |key: &str| report.values(key).first().map(|v| v.to_string());
    println!(
        "nested e1000e over vfio-user: link {}, ping {}/3 (rtt min/avg/max {} ms), MSI-X \
         vectors seen: {}",
        value("carrier").unwrap_or_default(),
        value("ping-received").unwrap_or_default(),
        value("ping-rtt").unwrap_or_default(),
        value("msix").unwrap_or_default()
    );
    println!("rig -> nested guest: {} ping(s) answered", rig_pings.len());
    for line in &rig_pings {
        println!("  {line}");
    }
    let answered: u64 = value("echo-requests-answered")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ensure!(
        rig_pings.len() == 3 && answered >= 3,
        "the rig's pings of the nested guest: {} answered in the rig, the guest answered \
         {answered}; console:\n{}",
        rig_pings.len(),
        report.tail()
    );
    check_server(&watched, &after)
}

/// The nested guest's side: the served e1000e enumerated where the anchor puts it,
/// its driver bound, the link up at 1000 Mb/s, three pings of the rig answered.
fn check_guest(report: &GuestReport) -> Result<()> {
    let nic = report
        .function(E1000E_IDS.0, E1000E_IDS.1)
        .with_context(|| {
            format!(
                "the nested guest did not enumerate the served e1000e: {:?}\n{}",
                report.functions,
                report.tail()
            )
        })?;
    ensure!(nic.bdf == NESTED_E1000E, "e1000e at {}", nic.bdf);
    let bar0 = nic.bar(0).context("the served e1000e has no BAR0")?;
    ensure!(
        bar0.size == 128 * 1024 && !bar0.is_io(),
        "served e1000e BAR0: {bar0:?}"
    );
    let value = |key: &str| report.values(key).first().map(|v| v.to_string());
    ensure!(
        value("driver").as_deref() == Some("e1000e"),
        "the nested e1000e driver did not bind the served device ({:?}); console:\n{}",
        value("driver"),
        report.tail()
    );
    let carrier = value("carrier").unwrap_or_default();
    ensure!(
        carrier.starts_with("1 speed 1000"),
        "served e1000e link: `{carrier}`; console:\n{}",
        report.tail()
    );
    let received = value("ping-received").unwrap_or_default();
    ensure!(
        received == "3",
        "the nested guest's ping of the rig's e1000 through udrv got {received}/3 replies; \
         console:\n{}",
        report.tail()
    );
    Ok(())
}

/// udrv's side: while the guest's traffic flowed a client was connected, DMA_MAPs and
/// DMA_UNMAPs kept arriving and little memory was mapped at any moment; BAR accesses
/// and interrupt wiring went through udrv, no request of QEMU's was refused; after
/// QEMU left, nothing is mapped.
fn check_server(watched: &Watched, after: &VfioUserStatus) -> Result<()> {
    let (Some(start), Some(during)) = (&watched.at_traffic_start, &watched.at_traffic_end) else {
        anyhow::bail!("no client seen during the guest's traffic: {watched:?}");
    };
    let maps_in_traffic = during.dma_maps - start.dma_maps;
    let unmaps_in_traffic = during.dma_unmaps - start.dma_unmaps;
    println!(
        "udrv during the traffic: client {:?}, {maps_in_traffic} DMA_MAPs, \
         {unmaps_in_traffic} DMA_UNMAPs, at most {} mappings and {} KiB device-reachable at \
         once (guest RAM {GUEST_MIB} MiB)",
        during.client,
        watched.most_mappings_in_traffic,
        watched.most_mapped_in_traffic >> 10,
    );
    println!(
        "udrv over the whole boot: {} DMA_MAPs, {} DMA_UNMAPs, at most {} MiB mapped ({} MiB \
         after the traffic, until QEMU left), {} region reads, {} region writes, {} \
         SET_IRQS, {} resets, {} error replies, last error {:?}",
        after.dma_maps,
        after.dma_unmaps,
        watched.most_mapped >> 20,
        watched.most_mapped_after_traffic >> 20,
        after.region_reads,
        after.region_writes,
        after.irq_sets,
        after.resets,
        after.error_replies,
        after.last_error
    );
    ensure!(
        during.client.is_some() && watched.most_mappings_in_traffic > 0,
        "udrv showed no client or no DMA mapping during the traffic: {watched:?}"
    );
    ensure!(
        maps_in_traffic > 0 && unmaps_in_traffic > 0,
        "the guest's per-request DMA mappings did not reach udrv during its traffic \
         ({maps_in_traffic} DMA_MAPs, {unmaps_in_traffic} DMA_UNMAPs): {watched:?}"
    );
    ensure!(
        watched.most_mapped_in_traffic <= MOST_MAPPED_IN_TRAFFIC,
        "behind the guest's IOMMU the device could reach {} KiB at once during the \
         traffic (limit {} KiB of {GUEST_MIB} MiB)",
        watched.most_mapped_in_traffic >> 10,
        MOST_MAPPED_IN_TRAFFIC >> 10
    );
    ensure!(
        after.region_reads > 0 && after.region_writes > 0 && after.irq_sets > 0,
        "BAR accesses or interrupt wiring did not go through udrv: {after:?}"
    );
    ensure!(
        after.error_replies == 0,
        "udrv refused {} of QEMU's requests; the last: {:?}",
        after.error_replies,
        after.last_error
    );
    ensure!(
        after.clients_served == 1 && after.dma_mappings == 0 && after.dma_mapped_bytes == 0,
        "after QEMU left: {after:?}"
    );
    Ok(())
}

/// The nested guest's check of the served disk: the driver bound, the disk's size, a
/// 1 MiB run, the first and the last 4 KiB compared with the pattern the rig put in
/// its initramfs; a sector written (flushed) and read back after dropping the caches.
fn ide_task() -> String {
    let (first, count) = READ_RUN;
    format!(
        r#"#!/bin/sh
d=/sys/bus/pci/devices/{NESTED_IDE}
for i in $(seq 1 300); do [ -b /dev/sda ] && break; sleep 0.2; done
echo "@@guest driver $(basename "$(readlink "$d/driver")")"
echo "@@guest sectors $(cat /sys/block/sda/size 2>/dev/null)"
echo "@@guest xfer $(cat /sys/class/ata_device/dev*/xfer_mode 2>/dev/null | sort -u | tr '\n' ' ')"
[ -b /dev/sda ] || exit 0
same() {{ if cmp -s - "$1"; then echo equal; else echo differs; fi; }}
echo "@@guest read-run $(dd if=/dev/sda bs=512 skip={first} count={count} 2>/dev/null | same /ide-run)"
echo "@@guest read-first $(dd if=/dev/sda bs=4096 count=1 2>/dev/null | same /ide-first)"
echo "@@guest read-last $(dd if=/dev/sda bs=4096 skip=$(( $(cat /sys/block/sda/size) / 8 - 1 )) count=1 2>/dev/null | same /ide-last)"
dd if=/ide-written of=/dev/sda bs=512 seek={WRITTEN_LBA} count=1 conv=fsync 2>/dev/null
echo "@@guest write-status $?"
sync
echo 3 > /proc/sys/vm/drop_caches
echo "@@guest written-read-back $(dd if=/dev/sda bs=512 skip={WRITTEN_LBA} count=1 2>/dev/null | same /ide-written)"
echo "@@guest irqs $(grep ata_piix /proc/interrupts | tr -s ' ')"
"#
    )
}

/// The pattern of `count` sectors from `first`.
fn pattern(first: u64, count: u64) -> Vec<u8> {
    (first..first + count)
        .flat_map(disk_pattern::sector)
        .collect()
}

/// The seed's own device where QEMU's own passthrough fails: udrv claims the rig's
/// legacy-mode piix3-ide and serves it over vfio-user in native mode with the INTx it
/// derives; the nested QEMU 11 guest's ata_piix binds it, finds the 8 MiB disk, reads
/// a 1 MiB run and the first and last 4 KiB holding the rig disk's pattern, and writes
/// a sector that the rig's own IDE driver reads back from the disk afterwards.
fn nested_ide_reads_and_writes_the_disk() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    let written: Vec<u8> = disk_pattern::sector(WRITTEN_LBA)
        .iter()
        .map(|b| !b)
        .collect();
    let (report, after) = serve_ide_to_nested(&kit, &written)?;
    // The rig reads the written sector from the disk with its own driver, then puts
    // the pattern back.
    let address: PciAddress = rig::PIIX3_IDE.parse()?;
    let mut ide = Ide::open(address, Transfer::Pio)?;
    let mut on_disk = vec![0u8; SECTOR_SIZE];
    ide.read_sectors(WRITTEN_LBA, &mut on_disk)?;
    ide.write_sectors(WRITTEN_LBA, &disk_pattern::sector(WRITTEN_LBA))?;
    ide.flush()?;
    let mut restored = vec![0u8; SECTOR_SIZE];
    ide.read_sectors(WRITTEN_LBA, &mut restored)?;
    drop(ide);
    let value = |key: &str| report.values(key).first().map(|v| v.to_string());
    println!(
        "nested boot (small kernel, vfio-user piix3-ide): QEMU start to exit {:.1} s; nested \
         init at {:.1} s, done at {:.1} s of nested uptime",
        report.elapsed.as_secs_f64(),
        report.up_at.unwrap_or(f64::NAN),
        report.done_at.unwrap_or(f64::NAN)
    );
    println!(
        "nested ata_piix over vfio-user: driver {}, {} sectors, transfer mode {}, 1 MiB run \
         {}, first 4 KiB {}, last 4 KiB {}, write status {}, read back {}; interrupts: {}",
        value("driver").unwrap_or_default(),
        value("sectors").unwrap_or_default(),
        value("xfer").unwrap_or_default(),
        value("read-run").unwrap_or_default(),
        value("read-first").unwrap_or_default(),
        value("read-last").unwrap_or_default(),
        value("write-status").unwrap_or_default(),
        value("written-read-back").unwrap_or_default(),
        value("irqs").unwrap_or_default(),
    );
    println!(
        "udrv: {} region reads, {} region writes, {} SET_IRQS, {} derived INTx raised, {} \
         DMA_MAPs, {} error replies, last error {:?}",
        after.region_reads,
        after.region_writes,
        after.irq_sets,
        after.derived_intx_signals,
        after.dma_maps,
        after.error_replies,
        after.last_error
    );
    println!(
        "rig read sector {WRITTEN_LBA} back: {}; pattern restored: {}",
        if on_disk == written {
            "the nested guest's write"
        } else {
            "NOT the nested guest's write"
        },
        restored[..] == disk_pattern::sector(WRITTEN_LBA)[..]
    );
    ensure!(
        value("driver").as_deref() == Some("ata_piix"),
        "ata_piix did not bind the served piix3-ide ({:?}); console:\n{}",
        value("driver"),
        report.tail()
    );
    ensure!(
        value("sectors") == Some(rig::IDE_DISK_SECTORS.to_string()),
        "the nested guest found no disk of {} sectors ({:?}); console:\n{}",
        rig::IDE_DISK_SECTORS,
        value("sectors"),
        report.tail()
    );
    for key in ["read-run", "read-first", "read-last", "written-read-back"] {
        ensure!(
            value(key).as_deref() == Some("equal"),
            "nested guest {key}: {:?}; console:\n{}",
            value(key),
            report.tail()
        );
    }
    ensure!(
        on_disk == written,
        "sector {WRITTEN_LBA} on the rig's disk does not hold what the nested guest wrote"
    );
    ensure!(
        restored[..] == disk_pattern::sector(WRITTEN_LBA)[..],
        "sector {WRITTEN_LBA} was not restored"
    );
    ensure!(
        after.derived_intx_signals > 0 && after.error_replies == 0,
        "udrv: {} derived INTx raised, {} error replies (last {:?})",
        after.derived_intx_signals,
        after.error_replies,
        after.last_error
    );
    Ok(())
}

/// Serve the piix3-ide to one nested boot running [`ide_task`]; the guest's report
/// and udrv's counters once QEMU has gone (the device quiesced, given back).
fn serve_ide_to_nested(kit: &QemuKit, written: &[u8]) -> Result<(GuestReport, VfioUserStatus)> {
    let socket = Path::new(IDE_SOCKET);
    let server = serve(rig::PIIX3_IDE, socket)?;
    let last = rig::IDE_DISK_SECTORS - 8;
    let report = GuestBoot::new(kit)
        .memory_mib(GUEST_MIB as u32)
        .kernel_args([NO_THROTTLING])
        .vfio_user_device_at(socket, NESTED_IDE_SLOT)
        .file("ide-run", 0o644, pattern(READ_RUN.0, READ_RUN.1))
        .file("ide-first", 0o644, pattern(0, 8))
        .file("ide-last", 0o644, pattern(last, 8))
        .file("ide-written", 0o644, written.to_vec())
        .task(&ide_task())
        .timeout(Duration::from_secs(800))
        .run();
    let after = rig::poll_until(Duration::from_secs(10), "the client to go", || {
        let status = server.status();
        Ok(status.client.is_none().then_some(status))
    });
    // The device goes back to nobody: the rig's own driver opens it next.
    let stopped = server.stop().map(drop);
    let report = report?;
    let after = after?;
    stopped?;
    Ok((report, after))
}
