//! A real QEMU against udrv's vfio-user server: Debian sid's QEMU 11 `vfio-user-pci`
//! (from the sysroot `integration/rig setup` makes) boots the small guest kernel under
//! TCG on the host while the server serves a [`FakeDevice`] passthrough function. The
//! guest's own PCI view (sysfs), a BAR write made from inside the guest and the
//! server's DMA mappings of guest RAM are checked (udrv-qemu-guest is the harness).
//!
//! Skipped, saying why, without the kit; under `CI=true` a missing kit fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::dma::RecordingMapper;
use udrv_qemu_guest::{GuestBoot, Poke, QemuKit};

use super::*;
use crate::passthrough::fake_device::FakeDevice;
use crate::passthrough::PassthroughFunction;

/// Ids no driver of the guest kernel claims, so nothing but the test touches the
/// device (QEMU's own test vendor, a device id of ours).
const IDS: (u16, u16) = (0x1b36, 0x7f02);
const BAR0_SIZE: u64 = 0x4000;
const BAR2_SIZE: u64 = 0x20;
/// Guest RAM, all of it in one shared memfd that QEMU hands over in DMA_MAPs.
const GUEST_MIB: u64 = 256;

/// A function with a 16 KiB memory BAR0 and a 32-port IO BAR2 (the fake stores writes).
fn served_device() -> FakeDevice {
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[
        IDS.0 as u8,
        (IDS.0 >> 8) as u8,
        IDS.1 as u8,
        (IDS.1 >> 8) as u8,
    ]);
    // Class: other system peripheral. BAR0 32-bit memory, BAR2 IO.
    config[0x0a..0x0c].copy_from_slice(&[0x80, 0x08]);
    config[0x10..0x14].copy_from_slice(&0xfe00_0000u32.to_le_bytes());
    config[0x18..0x1c].copy_from_slice(&0x0000_c001u32.to_le_bytes());
    FakeDevice::new("0000:00:09.0", config)
        .with_region(0, BAR0_SIZE, false, |_| 0)
        .with_region(2, BAR2_SIZE, true, |_| 0)
}

#[test]
fn vfio_user_real_qemu_enumerates_keeps_bar_writes_and_maps_guest_ram() -> anyhow::Result<()> {
    let Some(kit) = QemuKit::for_host_test()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("served.sock");
    let fake = Arc::new(served_device());
    let mapper = Arc::new(RecordingMapper::new());
    let server = VfioUserServer::start(
        PassthroughFunction::new(fake.clone())?,
        mapper.clone(),
        ServerOptions {
            socket: socket.clone(),
            allowed_uid: None,
            session: SessionOptions::default(),
        },
    )?;
    // The mappings exist only while QEMU is connected: watch the largest amount the
    // device could reach during the boot.
    let done = AtomicBool::new(false);
    let (report, most_mapped) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0u64;
            while !done.load(Ordering::Relaxed) {
                most = most.max(mapper.mapped_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        let report = GuestBoot::new(&kit)
            .memory_mib(GUEST_MIB as u32)
            .vfio_user_device(&socket)
            .poke(Poke {
                vendor: IDS.0,
                device: IDS.1,
                bar: 0,
                offset: 0x100,
                value: 0x0dd_ba11,
            })
            .run();
        done.store(true, Ordering::Relaxed);
        (report, watcher.join().expect("the watcher thread"))
    });
    let status = server.status();
    server.stop()?;
    let report = report?;
    eprintln!(
        "QEMU 11 guest with udrv's vfio-user device: {:.2} s start to exit; {} DMA_MAPs, \
         at most {} MiB device-reachable",
        report.elapsed.as_secs_f64(),
        status.dma_maps,
        most_mapped >> 20
    );
    let function = report.function(IDS.0, IDS.1).ok_or_else(|| {
        anyhow::anyhow!(
            "the guest did not enumerate the served device: {:?}\n{}",
            report.functions,
            report.tail()
        )
    })?;
    let bar0 = function.bar(0).expect("BAR0 enumerated");
    assert_eq!((bar0.size, bar0.is_io()), (BAR0_SIZE, false), "BAR0");
    let bar2 = function.bar(2).expect("BAR2 enumerated");
    assert_eq!((bar2.size, bar2.is_io()), (BAR2_SIZE, true), "BAR2");
    assert_eq!(report.pokes.len(), 1, "{:?}", report.lines);
    assert_eq!(
        report.pokes[0].read, 0x0dd_ba11,
        "the guest reads its write back"
    );
    assert_eq!(
        fake.region_bytes(0, 0x100, 4),
        0x0dd_ba11u32.to_le_bytes(),
        "the write reached the device through udrv"
    );
    assert!(
        status.dma_maps > 0,
        "no DMA_MAP reached the server: {status:?}"
    );
    assert!(
        most_mapped >= (GUEST_MIB - 16) << 20,
        "guest RAM ({GUEST_MIB} MiB) was not mapped for the device: at most {most_mapped:#x} bytes"
    );
    Ok(())
}
