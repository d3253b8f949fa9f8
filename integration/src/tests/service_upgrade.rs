//! `udrv upgrade` with a real device and a real client: `udrv serve` serves the rig's
//! e1000e over vfio-user to a nested QEMU 11 guest, the rig pings the guest several
//! times a second, and meanwhile `udrv serve` execs a fresh copy of the binary in its
//! own process. Measured: the longest gap between answered pings, the pings lost, and
//! that the VFIO container was never closed: the successor inherited the client's
//! DMA mappings (it never mapped anything again), the guest's DMA kept working, and
//! the rig's IOMMU logged no fault.
//!
//! UML guests cannot be carried this way (see `vpci::service` upgrade module); this
//! test is the upgrade's rig proof for the vfio-user frontend. One nested boot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use udrv_qemu_guest::{GuestBoot, QemuKit};

use super::nested::{NESTED_ADDRESS, NESTED_E1000E, NESTED_E1000E_SLOT};
use super::service::{service_answers, udrv_ok, Service};
use super::uml_served::{bring_up_peer, NO_THROTTLING};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// The socket udrv serves the e1000e on.
const SOCKET: &str = "/run/udrv/upgrade-e1000e.sock";
/// The "newly installed" udrv: a copy of the rig's.
const NEXT: &str = "/run/udrv/udrv-next";
/// Pings the rig sends, and how often.
const PINGS: u32 = 400;
const PING_INTERVAL: &str = "0.02";
/// Replies after which the upgrade starts.
const REPLIES_BEFORE_UPGRADE: usize = 60;

pub fn tests() -> Vec<RigTest> {
    rig_tests![service_upgrade: vfio_user_e1000e_guest_pings_through_an_upgrade (900 s)]
}

/// The nested guest: bring the served e1000e up with its address, then answer the
/// rig's pings until it has answered them all (or four minutes pass).
fn guest_task() -> String {
    format!(
        r#"#!/bin/sh
d=/sys/bus/pci/devices/{NESTED_E1000E}
for i in $(seq 1 50); do [ -e "$d/net" ] && break; sleep 0.2; done
echo "@@guest driver $(basename "$(readlink "$d/driver")")"
ifname=$(ls "$d/net" 2>/dev/null | head -n 1)
[ -n "$ifname" ] || exit 0
ip link set dev "$ifname" up
for i in $(seq 1 100); do [ "$(cat /sys/class/net/$ifname/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
ip address add {NESTED_ADDRESS}/24 dev "$ifname"
in_echos() {{
  awk '/^Icmp:/ {{ if (!c) {{ for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i }} else print $c }}' /proc/net/snmp
}}
for i in $(seq 1 1200); do [ "$(in_echos)" -ge {PINGS} ] && break; sleep 0.2; done
sleep 2
echo "@@guest echo-requests-answered $(in_echos)"
"#
    )
}

/// One answered ping: its sequence number and when the reply came (seconds).
fn replies(output: &str) -> Vec<(u32, f64)> {
    output
        .lines()
        .filter_map(|line| {
            // [1796653483.123456] 64 bytes from 10.0.0.3: icmp_seq=12 ttl=64 time=1.2 ms
            let at = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = line
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((seq, at))
        })
        .collect()
}

/// Fault lines of the rig's IOMMU in the kernel log.
fn dmar_faults() -> Result<usize> {
    let log = rig::sh("dmesg")?;
    Ok(log
        .lines()
        .filter(|l| l.contains("DMAR") && l.to_ascii_lowercase().contains("fault"))
        .count())
}

fn vfio_user_status() -> Result<serde_json::Value> {
    let status: serde_json::Value =
        serde_json::from_str(&udrv_ok(&["status", "--json"])?).context("udrv status --json")?;
    let served = status["served"]
        .as_array()
        .and_then(|s| s.iter().find(|d| d["address"] == rig::E1000E))
        .context("udrv status does not show the e1000e served")?;
    Ok(served["status"]["vfio_user"].clone())
}

/// `udrv serve` serves the e1000e over vfio-user to a nested guest the rig pings 50
/// times a second; `udrv upgrade` replaces the program mid-way. No ping may be lost;
/// the successor serves the same client with the same DMA mappings, mapping nothing
/// again, with no IOMMU fault; the service keeps its pid.
fn vfio_user_e1000e_guest_pings_through_an_upgrade() -> Result<()> {
    let kit = QemuKit::in_rig()?;
    ensure!(!service_answers()?, "a udrv serve is already running");
    rig::bind_to_host(rig::E1000E, "e1000e")?;
    let peer = bring_up_peer()?;
    let result = pings_through_an_upgrade(&kit);
    let _ = rig::sh(&format!(
        "ip address flush dev {peer} && ip link set dev {peer} down"
    ));
    result
}

fn pings_through_an_upgrade(kit: &QemuKit) -> Result<()> {
    let mut service = Service::start("upgrade")?;
    udrv_ok(&[
        "attach",
        rig::E1000E,
        "--serve",
        &format!("vfio-user:{SOCKET}"),
    ])?;
    fs::copy(rig::installed_binary("udrv")?, NEXT).context("copying udrv")?;
    fs::set_permissions(NEXT, fs::Permissions::from_mode(0o755))?;
    let faults_before = dmar_faults()?;
    let boot = GuestBoot::new(kit)
        .kernel_args([NO_THROTTLING])
        .vfio_user_device_at(Path::new(SOCKET), NESTED_E1000E_SLOT)
        .task(&guest_task())
        .timeout(Duration::from_secs(800));
    let done = AtomicBool::new(false);
    let (report, observed) = std::thread::scope(|scope| {
        let rig_side = scope.spawn(|| ping_and_upgrade(&done));
        let report = boot.run();
        done.store(true, Ordering::Relaxed);
        (report, rig_side.join())
    });
    let report = report?;
    let observed = match observed {
        Ok(observed) => observed?,
        Err(_) => bail!("the rig's side panicked"),
    };
    let faults = dmar_faults()? - faults_before;
    udrv_ok(&["detach", rig::E1000E])?;
    let stopped = service.signal(Signal::SIGTERM)?;

    let pid = service_pid(&observed.upgrade)?;
    println!(
        "udrv upgrade: {:.0} ms for the command; udrv serve pid {pid} before and after",
        observed.upgrade_took.as_secs_f64() * 1e3
    );
    println!(
        "rig -> nested guest pings every {PING_INTERVAL} s: {} sent, {} answered, {} lost; \
         longest gap between replies {:.0} ms overall, {:.0} ms across the upgrade, \
         median {:.1} ms",
        observed.sent,
        observed.replies.len(),
        observed.sent as usize - observed.replies.len(),
        observed.longest_gap * 1e3,
        observed.gap_across_upgrade * 1e3,
        observed.median_gap * 1e3
    );
    println!(
        "DMA mappings: {} ({} KiB) before, {} ({} KiB) after, {} DMA_MAPs by the \
         successor; IOMMU faults logged: {faults}",
        observed.before["dma_mappings"],
        observed.before["dma_mapped_bytes"].as_u64().unwrap_or(0) / 1024,
        observed.after["dma_mappings"],
        observed.after["dma_mapped_bytes"].as_u64().unwrap_or(0) / 1024,
        observed.after["dma_maps"]
    );
    ensure!(
        report.values("driver").first() == Some(&"e1000e"),
        "the nested e1000e driver did not bind the served device; console:\n{}",
        report.tail()
    );
    ensure!(stopped.success(), "udrv serve exited with {stopped}");
    let reply: serde_json::Value = serde_json::from_str(&observed.upgrade)?;
    ensure!(
        reply["daemon"]["upgrades"] == 1
            && reply["carried"][0]["address"] == rig::E1000E
            && reply["carried"][0]["guest_connected"] == true,
        "the upgrade did not carry the connected client: {reply}"
    );
    ensure!(
        observed.after["client"].is_object(),
        "no client after the upgrade: {}",
        observed.after
    );
    ensure!(
        observed.after["dma_mappings"] == observed.before["dma_mappings"]
            && observed.after["dma_mapped_bytes"] == observed.before["dma_mapped_bytes"]
            && observed.after["dma_maps"] == 0,
        "the successor's DMA mappings differ from its predecessor's: before {}, after {}",
        observed.before,
        observed.after
    );
    ensure!(faults == 0, "the rig's IOMMU logged {faults} fault(s)");
    ensure!(
        observed.replies.len() == observed.sent as usize,
        "{} of {} pings lost across the upgrade",
        observed.sent as usize - observed.replies.len(),
        observed.sent
    );
    Ok(())
}

/// What the rig saw while the guest ran.
struct Observed {
    sent: u32,
    replies: Vec<(u32, f64)>,
    longest_gap: f64,
    gap_across_upgrade: f64,
    median_gap: f64,
    upgrade: String,
    upgrade_took: Duration,
    before: serde_json::Value,
    after: serde_json::Value,
}

fn service_pid(upgrade: &str) -> Result<u64> {
    let reply: serde_json::Value = serde_json::from_str(upgrade)?;
    reply["daemon"]["pid"]
        .as_u64()
        .context("the upgrade reply names no pid")
}

/// Waits for the nested guest to answer, pings it [`PINGS`] times, and upgrades
/// udrv once [`REPLIES_BEFORE_UPGRADE`] replies came.
fn ping_and_upgrade(done: &AtomicBool) -> Result<Observed> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while rig::sh(&format!("ping -c 1 -W 1 {NESTED_ADDRESS}")).is_err() {
        ensure!(
            !done.load(Ordering::Relaxed) && Instant::now() < deadline,
            "the nested guest never answered a ping"
        );
    }
    let mut pinger = std::process::Command::new("ping")
        .args(["-D", "-i", PING_INTERVAL, "-W", "2", "-c"])
        .arg(PINGS.to_string())
        .arg(NESTED_ADDRESS)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting ping")?;
    let stdout = pinger.stdout.take().context("ping's output")?;
    let collector = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            lines.push(line);
        }
        lines
    });
    // Upgrade once the traffic is well under way.
    let counted = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(
        REPLIES_BEFORE_UPGRADE as f64 * 0.02,
    ));
    let before = vfio_user_status()?;
    let started = Instant::now();
    let upgraded_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let upgrade = udrv_ok(&["upgrade", "--binary", NEXT, "--json"])?;
    let upgrade_took = started.elapsed();
    let after = vfio_user_status()?;
    let exited = pinger.wait()?;
    let lines = collector
        .join()
        .map_err(|_| anyhow::anyhow!("ping reader"))?;
    let output = lines.join("\n");
    println!(
        "ping ran {:.1} s ({exited}); its summary: {}",
        counted.elapsed().as_secs_f64(),
        lines
            .iter()
            .rev()
            .take(2)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let replies = replies(&output);
    let mut gaps: Vec<(f64, f64)> = replies
        .windows(2)
        .map(|w| (w[1].1 - w[0].1, w[0].1))
        .collect();
    let longest_gap = gaps.iter().map(|g| g.0).fold(0.0, f64::max);
    let gap_across_upgrade = gaps
        .iter()
        .filter(|(gap, from)| {
            from + gap >= upgraded_at && *from <= upgraded_at + upgrade_took.as_secs_f64()
        })
        .map(|g| g.0)
        .fold(0.0, f64::max);
    gaps.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median_gap = gaps.get(gaps.len() / 2).map_or(0.0, |g| g.0);
    Ok(Observed {
        sent: PINGS,
        replies,
        longest_gap,
        gap_across_upgrade,
        median_gap,
        upgrade,
        upgrade_took,
        before,
        after,
    })
}
