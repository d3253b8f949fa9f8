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
const PING_INTERVAL: Duration = Duration::from_millis(20);
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
        "rig -> nested guest, a ping every {} ms: {} sent, {} answered, {} lost; longest gap \
         between replies {:.0} ms overall, {:.0} ms across the upgrade; round trip median \
         {:.1} ms, longest {:.0} ms",
        PING_INTERVAL.as_millis(),
        observed.sent,
        observed.answered,
        observed.sent as usize - observed.answered,
        observed.longest_gap.as_secs_f64() * 1e3,
        observed.gap_across_upgrade.as_secs_f64() * 1e3,
        observed.median_rtt.as_secs_f64() * 1e3,
        observed.longest_rtt.as_secs_f64() * 1e3
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
        observed.answered == observed.sent as usize,
        "{} of {} pings lost across the upgrade",
        observed.sent as usize - observed.answered,
        observed.sent
    );
    Ok(())
}

/// What the rig saw while the guest ran.
struct Observed {
    sent: u32,
    answered: usize,
    longest_gap: Duration,
    gap_across_upgrade: Duration,
    median_rtt: Duration,
    longest_rtt: Duration,
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

/// The internet checksum of an ICMP message.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with identifier `id` and sequence number `seq`.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![8u8, 0, 0, 0];
    packet.extend(id.to_be_bytes());
    packet.extend(seq.to_be_bytes());
    packet.extend([0x55u8; 56]);
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The sequence number of an echo reply with identifier `id` in a raw IPv4 packet.
fn echo_reply_seq(packet: &[u8], id: u16) -> Option<u16> {
    let header = usize::from(packet.first()? & 0xf) * 4;
    let icmp = packet.get(header..header + 8)?;
    (icmp[0] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == id)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// Waits for the nested guest to answer, then sends it [`PINGS`] echo requests, one
/// every [`PING_INTERVAL`] from a raw socket, timing each reply; after
/// [`REPLIES_BEFORE_UPGRADE`] replies, `udrv upgrade` runs beside the pings.
fn ping_and_upgrade(done: &AtomicBool) -> Result<Observed> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{
        recv, sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    };
    use std::os::fd::{AsFd, AsRawFd};

    let deadline = Instant::now() + Duration::from_secs(600);
    while rig::sh(&format!("ping -c 1 -W 1 {NESTED_ADDRESS}")).is_err() {
        ensure!(
            !done.load(Ordering::Relaxed) && Instant::now() < deadline,
            "the nested guest never answered a ping"
        );
    }
    let target: std::net::Ipv4Addr = NESTED_ADDRESS.parse()?;
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(target, 0));
    let icmp = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK,
        SockProtocol::Icmp,
    )
    .context("opening a raw ICMP socket")?;
    let id = std::process::id() as u16;
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut replies: Vec<(u16, Instant)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let before = vfio_user_status()?;
    let upgraded = std::thread::scope(|scope| -> Result<_> {
        let mut upgrader = None;
        let mut next = Instant::now();
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            let last_sent = sent_at.len() == PINGS as usize;
            if last_sent && now > *sent_at.last().unwrap_or(&now) + Duration::from_secs(2) {
                break;
            }
            if !last_sent && now >= next {
                let seq = sent_at.len() as u16;
                sendto(
                    icmp.as_raw_fd(),
                    &echo_request(id, seq),
                    &to,
                    MsgFlags::empty(),
                )
                .context("sending an echo request")?;
                sent_at.push(now);
                next += PING_INTERVAL;
            }
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(10));
            let mut fds = [PollFd::new(icmp.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(wait.as_millis() as u16));
            while let Ok(n) = recv(icmp.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                if let Some(seq) = echo_reply_seq(&buf[..n], id) {
                    if seen.insert(seq) {
                        replies.push((seq, Instant::now()));
                    }
                }
            }
            if upgrader.is_none() && replies.len() >= REPLIES_BEFORE_UPGRADE {
                upgrader = Some(scope.spawn(|| -> Result<(String, Instant, Instant)> {
                    let started = Instant::now();
                    let reply = udrv_ok(&["upgrade", "--binary", NEXT, "--json"])?;
                    Ok((reply, started, Instant::now()))
                }));
            }
        }
        match upgrader {
            Some(handle) => handle
                .join()
                .map_err(|_| anyhow::anyhow!("udrv upgrade's thread panicked"))?
                .map(Some),
            None => Ok(None),
        }
    })?;
    let Some((upgrade, started, finished)) = upgraded else {
        bail!(
            "only {} of {PINGS} pings were answered: the upgrade never started",
            replies.len()
        );
    };
    let after = vfio_user_status()?;
    let mut longest_gap = Duration::ZERO;
    let mut gap_across_upgrade = Duration::ZERO;
    for pair in replies.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        longest_gap = longest_gap.max(gap);
        if pair[1].1 >= started && pair[0].1 <= finished {
            gap_across_upgrade = gap_across_upgrade.max(gap);
        }
    }
    let mut rtts: Vec<Duration> = replies
        .iter()
        .map(|(seq, at)| *at - sent_at[usize::from(*seq)])
        .collect();
    rtts.sort();
    Ok(Observed {
        sent: PINGS,
        answered: replies.len(),
        longest_gap,
        gap_across_upgrade,
        median_rtt: rtts.get(rtts.len() / 2).copied().unwrap_or_default(),
        longest_rtt: rtts.last().copied().unwrap_or_default(),
        upgrade,
        upgrade_took: finished - started,
        before,
        after,
    })
}
