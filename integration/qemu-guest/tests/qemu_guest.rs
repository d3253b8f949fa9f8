//! The QEMU 11 guest harness on the host (integration/src/qemu_guest.rs), proved on a
//! device QEMU emulates itself: the small guest kernel enumerates it with its ids and BAR
//! sizes, and a BAR register written from inside the guest reads back. The vfio-user
//! tests use the same harness against udrv.
//!
//! Skipped, saying why, when `integration/rig setup` has not made the QEMU 11 sysroot and
//! guest kernel; under `CI=true` a missing kit fails instead.

use udrv_qemu_guest::{GuestBoot, Poke, QemuKit};

/// Intel 82540EM, QEMU's `e1000`.
const E1000_IDS: (u16, u16) = (0x8086, 0x100e);
/// RAL0, receive address low: a plain read/write register of the e1000.
const E1000_RAL0: u64 = 0x5400;

#[test]
fn qemu_guest_enumerates_a_device_and_reads_back_a_bar_write() -> anyhow::Result<()> {
    let Some(kit) = QemuKit::for_host_test()? else {
        return Ok(());
    };
    let report = GuestBoot::new(&kit)
        .args([
            "-device",
            "e1000,addr=03.0,netdev=n0",
            "-netdev",
            "user,id=n0,restrict=on",
        ])
        .poke(Poke {
            vendor: E1000_IDS.0,
            device: E1000_IDS.1,
            bar: 0,
            offset: E1000_RAL0,
            value: 0x5a17_c0de,
        })
        .run()?;
    eprintln!(
        "guest: QEMU ran {:.2} s; init at {:?} s, done at {:?} s of guest uptime",
        report.elapsed.as_secs_f64(),
        report.up_at,
        report.done_at
    );
    let nic = report.function(E1000_IDS.0, E1000_IDS.1).ok_or_else(|| {
        anyhow::anyhow!(
            "the guest did not enumerate the e1000: {:?}",
            report.functions
        )
    })?;
    assert_eq!(nic.bdf, "0000:00:03.0");
    assert_eq!(nic.class >> 8, 0x0200, "an Ethernet controller");
    let bar0 = nic.bar(0).expect("the e1000 has BAR0");
    assert_eq!(
        (bar0.size, bar0.is_io()),
        (128 * 1024, false),
        "BAR0: 128 KiB of memory"
    );
    let bar1 = nic.bar(1).expect("the e1000 has BAR1");
    assert_eq!((bar1.size, bar1.is_io()), (64, true), "BAR1: 64 IO ports");
    assert_eq!(
        report.pokes.len(),
        1,
        "one poke reported: {:?}",
        report.lines
    );
    let poke = &report.pokes[0];
    assert_eq!(
        (poke.bdf.as_str(), poke.bar, poke.offset),
        ("0000:00:03.0", 0, E1000_RAL0)
    );
    assert_eq!(
        poke.read, 0x5a17_c0de,
        "RAL0 reads back what the guest wrote"
    );
    // The host bridge is there too: the report covers every function.
    assert!(
        report.function(0x8086, 0x29c0).is_some(),
        "q35's host bridge: {:?}",
        report.functions
    );
    Ok(())
}
