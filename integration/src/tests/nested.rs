//! Nested QEMU in the rig: Debian sid's QEMU 11 (integration/qemu11, from the sysroot
//! the rig copies into /rig/qemu only for these tests) boots the small guest kernel
//! inside the rig guest, under TCG. With QEMU's own `vfio-pci` it is the anchor that
//! udrv's vfio-user serving of the same device to the same nested guest is compared
//! with.
//!
//! A nested boot costs about a minute under TCG-in-TCG, so each test batches its checks
//! into one boot.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::uml_served::{bring_up_peer, PEER};
use crate::harness::{rig_tests, RigTest};
use crate::rig;
use udrv_qemu_guest::{GuestBoot, QemuKit};

/// The nested guest's address on the hub; the rig kernel's e1000 A is [`PEER`].
pub(super) const NESTED_ADDRESS: &str = "10.0.0.3";
/// Intel 82574L, QEMU's `e1000e`.
pub(super) const E1000E_IDS: (u16, u16) = (0x8086, 0x10d3);
/// Where the nested guest puts the e1000e (passed through or served), in every boot.
pub(super) const NESTED_E1000E: &str = "0000:00:04.0";
/// Its slot, as QEMU's `addr=` takes it.
pub(super) const NESTED_E1000E_SLOT: &str = "04.0";

pub fn tests() -> Vec<RigTest> {
    rig_tests![nested: vfio_pci_e1000e_binds_links_and_pings (900 s)]
}

/// What the nested guest does with its e1000e: wait for the driver, bring the link up,
/// report the carrier and speed, ping the rig kernel across QEMU's hub (replies and
/// round-trip times). With `answer_rig_pings` it then waits (about 60 s at most) until
/// it has answered three of the rig's pings, and reports how many echo requests it
/// answered.
pub(super) fn e1000e_task(answer_rig_pings: bool) -> String {
    let answer = if answer_rig_pings {
        r#"in_echos() {
  awk '/^Icmp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i } else print $c }' /proc/net/snmp
}
for i in $(seq 1 300); do [ "$(in_echos)" -ge 3 ] && break; sleep 0.2; done
# The last reply is queued when the counter moves: give it time to leave.
sleep 2
echo "@@guest echo-requests-answered $(in_echos)"
"#
    } else {
        ""
    };
    format!(
        r#"#!/bin/sh
d=/sys/bus/pci/devices/{NESTED_E1000E}
for i in $(seq 1 50); do [ -e "$d/net" ] && break; sleep 0.2; done
echo "@@guest driver $(basename "$(readlink "$d/driver")")"
ifname=$(ls "$d/net" 2>/dev/null | head -n 1)
echo "@@guest ifname $ifname"
[ -n "$ifname" ] || exit 0
ip link set dev "$ifname" up
for i in $(seq 1 100); do [ "$(cat /sys/class/net/$ifname/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
echo "@@guest carrier $(cat /sys/class/net/$ifname/carrier 2>/dev/null) speed $(cat /sys/class/net/$ifname/speed 2>/dev/null)"
ip address add {NESTED_ADDRESS}/24 dev "$ifname"
out=$(ping -c 3 -W 3 {PEER})
received=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
echo "@@guest ping-received ${{received:-0}}"
echo "@@guest ping-rtt $(echo "$out" | sed -n 's/.*min\/avg\/max = \([^ ]*\) ms.*/\1/p')"
echo "@@guest msix $(grep -c "$ifname" /proc/interrupts)"
{answer}"#
    )
}

/// QEMU 11's own kernel `vfio-pci` passthrough of the rig's e1000e (the anchor path):
/// the nested guest enumerates it with its ids, its e1000e driver binds it, the link
/// comes up, and it pings the rig kernel's e1000 across QEMU's hub.
fn vfio_pci_e1000e_binds_links_and_pings() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    let peer = bring_up_peer()?;
    rig::bind_to_vfio(rig::E1000E)?;
    // VFIO pins all nested guest RAM: lift the locked-memory limit for QEMU.
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    )
    .context("raising RLIMIT_MEMLOCK for QEMU's vfio-pci")?;
    let booted = GuestBoot::new(&kit)
        .args([
            "-device".to_string(),
            format!("vfio-pci,host={},addr={NESTED_E1000E_SLOT}", rig::E1000E),
        ])
        .task(&e1000e_task(false))
        .timeout(Duration::from_secs(800))
        .run();
    let _ = rig::sh(&format!(
        "ip address flush dev {peer} && ip link set dev {peer} down"
    ));
    let report = booted?;
    println!(
        "nested boot (small kernel, vfio-pci e1000e): QEMU start to exit {:.1} s; nested \
         init at {:.1} s, done at {:.1} s of nested uptime",
        report.elapsed.as_secs_f64(),
        report.up_at.unwrap_or(f64::NAN),
        report.done_at.unwrap_or(f64::NAN)
    );
    let nic = report
        .function(E1000E_IDS.0, E1000E_IDS.1)
        .with_context(|| {
            format!(
                "the nested guest did not enumerate the e1000e: {:?}\n{}",
                report.functions,
                report.tail()
            )
        })?;
    ensure!(nic.bdf == NESTED_E1000E, "e1000e at {}", nic.bdf);
    let bar0 = nic.bar(0).context("the nested e1000e has no BAR0")?;
    ensure!(
        bar0.size == 128 * 1024 && !bar0.is_io(),
        "nested e1000e BAR0: {bar0:?}"
    );
    let value = |key: &str| report.values(key).first().map(|v| v.to_string());
    ensure!(
        value("driver").as_deref() == Some("e1000e"),
        "the nested e1000e driver did not bind ({:?}); console:\n{}",
        value("driver"),
        report.tail()
    );
    let carrier = value("carrier").unwrap_or_default();
    ensure!(
        carrier.starts_with("1 speed 1000"),
        "nested e1000e link: `{carrier}`; console:\n{}",
        report.tail()
    );
    let received = value("ping-received").unwrap_or_default();
    ensure!(
        received == "3",
        "the nested guest's ping of the rig's e1000 got {received}/3 replies; console:\n{}",
        report.tail()
    );
    println!(
        "nested e1000e: driver e1000e, link {carrier}, ping {received}/3 (rtt min/avg/max {} ms), \
         MSI-X vectors seen: {}",
        value("ping-rtt").unwrap_or_default(),
        value("msix").unwrap_or_default()
    );
    Ok(())
}
