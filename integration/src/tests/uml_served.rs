//! Devices served to User-Mode Linux by udrv's UML frontend (`vpci::frontend::uml`):
//! the rig's e1000e and ich9-ahci claimed through VFIO, served on a vhost-user socket,
//! and UML's own e1000e and ahci drivers using them with `virtio_uml.device=SOCKET:ID`.
//!
//! - `uml_served_e1000e_pings`: UML's eth up, pinging the rig kernel's e1000 A across
//!   QEMU's hub, and answering the rig's pings.
//! - `uml_served_e1000e_pings_polling`: the same with a worker that polls the command
//!   queue after each batch (UML's kicks suppressed meanwhile), as `rig bench uml` runs
//!   it on a CPU of its own.
//! - `uml_served_ahci_disk`: UML reads the whole patterned disk and writes a sector the
//!   rig then finds on the disk.
//! - `uml_guest_restart`: UML killed mid-traffic; the device is quiesced (bus mastering
//!   off, memory unmapped) until the next UML, which works on the same socket.
//! - `uml_malformed_messages`: garbage on the socket, then a real UML still works.
//!
//! UML's e1000e runs with `InterruptThrottleRate=0`: QEMU 7.2's e1000e aborts if a
//! throttling timer outlives MSI-X (see [`rig::let_e1000e_throttling_expire`]).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use udrv_examples::ahci::{Ahci, Config};
use udrv_examples::block::BlockDevice;
use udrv_examples::disk_pattern;
use vpci::frontend::{FrontendStatus, UmlFrontend, WorkerOptions};
use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};

use super::drivers::kernel;
use super::uml::{ensure_clean_boot, nonce, RunningUml, UmlRun};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// UML's virtio-pcidev device ID, as the rig built it (integration/guest/uml/kernel.config).
const VIRTIO_PCIDEV_ID: &str = "/rig/uml/virtio-pcidev-id";
/// UML's /tmp, seen from the rig (UML's root is /rig/uml/root over hostfs).
const UML_TMP: &str = "/rig/uml/root/tmp";
/// The rig kernel's end of the ping: e1000 A on the hub.
pub(super) const PEER: &str = "10.0.0.1";
const UML_ADDRESS: &str = "10.0.0.2";
pub(super) const NO_THROTTLING: &str = "e1000e.InterruptThrottleRate=0";
/// A served boot, probe and task take a few seconds under TCG; past this is a hang.
const SERVED_TIMEOUT: Duration = Duration::from_secs(120);
/// The sector UML overwrites on the AHCI disk (restored afterwards).
const MARKED_SECTOR: u64 = 100;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        uml:
        served_e1000e_pings (400 s),
        served_e1000e_pings_polling (400 s),
        served_ahci_disk (400 s),
        guest_restart (400 s),
        malformed_messages (400 s),
    ]
}

/// A rig device served on a UML socket.
pub(super) struct Served {
    frontend: UmlFrontend,
    socket: PathBuf,
    /// UML's `virtio_uml.device=SOCKET:ID`.
    pub(super) arg: String,
}

impl Served {
    pub(super) fn start(bdf: &str, name: &str) -> Result<Self> {
        Self::start_with(bdf, name, WorkerOptions::default())
    }

    /// [`start`](Self::start), its worker waiting and placed as `worker` says.
    pub(super) fn start_with(bdf: &str, name: &str, worker: WorkerOptions) -> Result<Self> {
        let (container, mut devices) = rig::open_in_one_container(&[bdf])?;
        let device = devices.pop().context("no device opened")?;
        let function = PassthroughFunction::new(VfioPassthroughDevice::new(device)?)?;
        let socket = PathBuf::from(format!("/tmp/udrv-uml-{name}.sock"));
        let frontend = UmlFrontend::start_with(function, Arc::new(container), &socket, worker)?;
        let id = std::fs::read_to_string(VIRTIO_PCIDEV_ID)
            .with_context(|| format!("reading {VIRTIO_PCIDEV_ID}"))?;
        let arg = format!("virtio_uml.device={}:{}", socket.display(), id.trim());
        println!("{bdf} served on {} ({arg})", socket.display());
        Ok(Self {
            frontend,
            socket,
            arg,
        })
    }

    pub(super) fn status(&self) -> FrontendStatus {
        self.frontend.status()
    }

    /// Waits until no guest is connected (the frontend noticed UML's end).
    fn wait_guest_gone(&self) -> Result<FrontendStatus> {
        rig::poll_until(Duration::from_secs(10), "the guest to disconnect", || {
            let s = self.status();
            Ok((!s.guest_connected).then_some(s))
        })
    }

    pub(super) fn stop(self) -> Result<()> {
        let status = self.status();
        println!(
            "frontend: {} guest(s), {} config accesses, {} MMIO reads, {} MMIO writes, {} interrupts, {} commands found by polling; last error {:?}",
            status.guests_served,
            status.config_accesses,
            status.mmio_reads,
            status.mmio_writes,
            status.interrupts,
            status.polled_commands,
            status.last_error
        );
        drop(self.frontend.stop()?);
        ensure!(
            !self.socket.exists(),
            "{} left behind after stop",
            self.socket.display()
        );
        Ok(())
    }
}

/// The command register of `bdf` as the device holds it (sysfs config, read-only).
fn command_register(bdf: &str) -> Result<u16> {
    let path = format!("/sys/bus/pci/devices/{bdf}/config");
    let config = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    ensure!(config.len() >= 6, "{path}: {} bytes", config.len());
    Ok(u16::from_le_bytes([config[4], config[5]]))
}

/// The rig kernel's end of the ping: e1000 A up with [`PEER`]/24.
pub(super) fn bring_up_peer() -> Result<String> {
    rig::bind_to_host(rig::E1000_A, "e1000")?;
    let ifname = kernel::interface_of(rig::E1000_A)?;
    kernel::bring_up(&ifname)?;
    rig::sh(&format!(
        "ip address flush dev {ifname} && ip address add {PEER}/24 dev {ifname}"
    ))?;
    Ok(ifname)
}

fn take_down_peer(ifname: &str) {
    let _ = rig::sh(&format!(
        "ip address flush dev {ifname} && ip link set dev {ifname} down"
    ));
}

fn uml_file(name: &str) -> PathBuf {
    Path::new(UML_TMP).join(name)
}

/// Checks a served run: clean boot and power-off, the task succeeded. UML's console
/// comes back as target/rig/files/uml-TASK-NONCE.log.
/// Boots UML with `device` (a `virtio_uml.device=` argument) to run its netdev task;
/// returns the task's line for the PCI function UML's e1000e driver bound.
pub(super) fn e1000e_bound_in_uml(device: &str, timeout: Duration) -> Result<String> {
    let nonce = nonce();
    let run =
        RunningUml::start(&nonce, Some("netdev"), &[device, NO_THROTTLING])?.finish(timeout)?;
    ensure_task_ok(&run, &nonce, "netdev")?;
    let line = run
        .output
        .lines()
        .find(|l| l.starts_with("uml: netdev") && l.contains("driver=e1000e"));
    line.map(str::to_owned).with_context(|| {
        format!(
            "UML's e1000e driver did not bind the served device; console:\n{}",
            run.tail()
        )
    })
}

pub(super) fn ensure_task_ok(run: &UmlRun, nonce: &str, task: &str) -> Result<()> {
    let _ = crate::harness::send_file(&format!("uml-{task}-{nonce}.log"), run.output.as_bytes());
    // virtio_pcidev_send_cmd gave up on an answer (40 ms) and read all-ones.
    let timeouts = run.output.matches("um virt-pci delay").count();
    if timeouts > 0 {
        println!("UML timed out waiting for {timeouts} served read(s)");
    }
    ensure_clean_boot(run, nonce)?;
    ensure!(
        run.output
            .lines()
            .any(|l| l == format!("uml: task {task} exit 0")),
        "the {task} task failed in UML; console:\n{}",
        run.tail()
    );
    Ok(())
}

/// Boots UML on the served e1000e with the ping task: it pings the rig, the rig pings
/// it back, it powers off. Returns UML's console.
fn ping_both_ways(served: &Served) -> Result<UmlRun> {
    let release = uml_file("udrv-release");
    let _ = std::fs::remove_file(&release);
    let nonce = nonce();
    let started = Instant::now();
    let mut uml = RunningUml::start(&nonce, Some("served_ping"), &[&served.arg, NO_THROTTLING])?;
    let ping = uml.wait_for_line("uml: ping ", SERVED_TIMEOUT)?;
    ensure!(
        ping == "uml: ping ok",
        "UML could not ping the rig ({ping}); console:\n{}",
        super::uml::tail_of(&uml.output())
    );
    println!(
        "UML pinged {PEER} {:.1} s after it started",
        started.elapsed().as_secs_f64()
    );
    uml.wait_for_line("uml: waiting", Duration::from_secs(10))?;
    let back = rig::sh(&format!("ping -c 3 -W 3 {UML_ADDRESS}"));
    std::fs::write(&release, b"")?;
    let run = uml.finish(SERVED_TIMEOUT)?;
    let back = back.with_context(|| format!("the rig could not ping UML at {UML_ADDRESS}"))?;
    ensure_task_ok(&run, &nonce, "served_ping")?;
    for line in run
        .output
        .lines()
        .filter(|l| l.starts_with("uml: ping") || l.starts_with("uml: eth"))
    {
        println!("uml| {line}");
    }
    if let Some(rtt) = back
        .lines()
        .find(|l| l.contains("round-trip") || l.contains("rtt"))
    {
        println!("rig -> UML: {rtt}");
    }
    println!("UML boot to power-off {:.2} s", run.elapsed.as_secs_f64());
    Ok(run)
}

/// UML's e1000e driver binds the served e1000e; eth comes up and pings the rig
/// kernel's e1000 A across the hub, and the rig pings UML back.
fn served_e1000e_pings() -> Result<()> {
    let peer = bring_up_peer()?;
    let result = (|| {
        let served = Served::start(rig::E1000E, "e1000e")?;
        ping_both_ways(&served)?;
        let status = served.wait_guest_gone()?;
        ensure!(
            status.interrupts > 0,
            "no interrupt was delivered: {status:?}"
        );
        ensure!(
            status.mmio_reads > 0 && status.config_accesses > 0,
            "{status:?}"
        );
        ensure!(
            status.dma_mapped_bytes == 0,
            "UML's memory still mapped after it left: {status:?}"
        );
        served.stop()
    })();
    take_down_peer(&peer);
    result
}

/// The poll window of `uml_served_e1000e_pings_polling`. On the rig's one CPU, UML (which
/// sends the commands) runs only when the scheduler preempts the polling worker, so
/// commands are found by polling only in windows a preemption cut; a window shorter
/// than a scheduler slice (0.75 ms) keeps the worker from starving UML's busy-waits.
const CI_POLL_WINDOW: Duration = Duration::from_micros(200);

/// UML's e1000e on a served e1000e whose worker polls the command queue: UML sends
/// commands without kicking while the worker polls, interrupts still arrive (the pings
/// need them), and the worker stops polling when UML goes.
fn served_e1000e_pings_polling() -> Result<()> {
    let peer = bring_up_peer()?;
    let result = (|| {
        let worker = WorkerOptions {
            poll: CI_POLL_WINDOW,
            cpu: None,
        };
        let served = Served::start_with(rig::E1000E, "e1000e-poll", worker)?;
        // UML 7.2 can lose a read to an interrupt that arrives while it waits for the
        // read (its interrupt handler's own read takes the answer), more often with a
        // polling worker: ensure_task_ok reports such reads, they are not failures here.
        ping_both_ways(&served)?;
        let status = served.wait_guest_gone()?;
        ensure!(
            status.polled_commands > 0,
            "no command was found by polling (UML kicked for every one): {status:?}"
        );
        ensure!(
            status.interrupts > 0,
            "no interrupt was delivered: {status:?}"
        );
        ensure!(
            !status.polling && status.dma_mapped_bytes == 0,
            "the worker still polls, or UML's memory is still mapped, after UML left: {status:?}"
        );
        ensure!(status.last_error.is_none(), "{status:?}");
        let commands = status.config_accesses + status.mmio_reads + status.mmio_writes;
        println!(
            "{} of {commands} commands found by polling ({} µs window)",
            status.polled_commands,
            CI_POLL_WINDOW.as_micros()
        );
        served.stop()
    })();
    take_down_peer(&peer);
    result
}

/// A sector unlike the pattern, naming this run.
fn marker(nonce: &str) -> [u8; 512] {
    let mut sector = [0u8; 512];
    let text = format!("udrv uml write {nonce} ");
    for (i, b) in sector.iter_mut().enumerate() {
        *b = text.as_bytes()[i % text.len()];
    }
    sector
}

/// UML's ahci driver finds the served ich9-ahci's disk; the whole disk read in UML
/// holds the rig's sector pattern; a sector UML writes is on the disk afterwards.
fn served_ahci_disk() -> Result<()> {
    let nonce = nonce();
    let image = uml_file("udrv-disk.img");
    let marker_file = uml_file("udrv-marker");
    let _ = std::fs::remove_file(&image);
    let want = marker(&nonce);
    std::fs::write(&marker_file, want)?;
    let result = (|| {
        let served = Served::start(rig::ICH9_AHCI, "ahci")?;
        let run = RunningUml::start(&nonce, Some("served_disk"), &[&served.arg])?
            .finish(SERVED_TIMEOUT)?;
        ensure_task_ok(&run, &nonce, "served_disk")?;
        for line in run
            .output
            .lines()
            .filter(|l| l.starts_with("uml: disk") || l.contains("ahci") || l.contains("ata1"))
        {
            println!("uml| {line}");
        }
        let data = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
        ensure!(
            data.len() as u64 == rig::AHCI_DISK_SECTORS * 512,
            "UML read {} bytes of the {}-byte disk",
            data.len(),
            rig::AHCI_DISK_SECTORS * 512
        );
        disk_pattern::verify(0, &data)
            .map_err(|e| anyhow::anyhow!("the disk as UML read it: {e}"))?;
        println!(
            "UML read all {} sectors and each holds the rig's pattern",
            rig::AHCI_DISK_SECTORS
        );
        served.wait_guest_gone()?;
        served.stop()
    })();
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&marker_file);
    result?;

    // The rig reads the sector with the examples' AHCI driver, then restores it.
    let mut ahci = Ahci::open(rig::ICH9_AHCI.parse()?, &Config::default())?;
    let mut got = [0u8; 512];
    ahci.read_sectors(MARKED_SECTOR, &mut got)?;
    ahci.write_sectors(MARKED_SECTOR, &disk_pattern::sector(MARKED_SECTOR))?;
    ahci.flush()?;
    ensure!(
        got == want,
        "sector {MARKED_SECTOR} after UML wrote it: {:02x?}..., want {:02x?}...",
        &got[..24],
        &want[..24]
    );
    println!("sector {MARKED_SECTOR} as UML wrote it is on the disk (restored to the pattern)");
    Ok(())
}

/// UML killed (SIGKILL to its process group) while pinging without pause: the device
/// is quiesced until the next UML (bus mastering off, UML's memory unmapped), and a
/// new UML on the same socket pings again.
fn guest_restart() -> Result<()> {
    let peer = bring_up_peer()?;
    let result = (|| {
        let served = Served::start(rig::E1000E, "restart")?;
        let nonce = nonce();
        let flood = "udrv_uml_flood=1";
        let mut uml = RunningUml::start(
            &nonce,
            Some("served_ping"),
            &[&served.arg, NO_THROTTLING, flood],
        )?;
        uml.wait_for_line("uml: flooding", SERVED_TIMEOUT)?;
        let before = served.status().interrupts;
        rig::poll_until(Duration::from_secs(10), "traffic", || {
            Ok((served.status().interrupts > before + 10).then_some(()))
        })?;
        let bus_master = command_register(rig::E1000E)? & 0x4 != 0;
        ensure!(bus_master, "the e1000e was not bus-mastering under UML");
        uml.kill();
        let killed = Instant::now();
        drop(uml);
        let status = served.wait_guest_gone()?;
        println!(
            "UML killed mid-traffic ({} interrupts so far); the frontend saw it go in {:.0} ms",
            status.interrupts,
            killed.elapsed().as_secs_f64() * 1e3
        );
        let command = command_register(rig::E1000E)?;
        ensure!(
            command & 0x4 == 0,
            "bus mastering still on with no guest (command {command:#06x})"
        );
        ensure!(
            status.dma_mapped_bytes == 0,
            "UML's memory still mapped with no guest: {status:?}"
        );
        println!("no guest: command register {command:#06x} (bus master off), nothing mapped");

        ping_both_ways(&served)?;
        ensure!(served.status().guests_served == 2, "{:?}", served.status());
        served.wait_guest_gone()?;
        served.stop()
    })();
    take_down_peer(&peer);
    result
}

/// Malformed vhost-user traffic on the socket (garbage, truncated and oversized
/// messages, a memory table the back-end must refuse) disconnects those clients; a
/// real UML then boots and its e1000e driver registers the device.
fn malformed_messages() -> Result<()> {
    let served = Served::start(rig::E1000E, "malformed")?;
    let header = |request: u32, flags: u32, size: u32| {
        [
            request.to_le_bytes(),
            flags.to_le_bytes(),
            size.to_le_bytes(),
        ]
        .concat()
    };
    let mut set_mem_table = header(5, 1, 40);
    // One region with no fd attached.
    set_mem_table.extend_from_slice(&1u32.to_le_bytes());
    set_mem_table.extend_from_slice(&0u32.to_le_bytes());
    set_mem_table.extend_from_slice(&[0u8; 32]);
    let clients: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..256u32).map(|i| (i * 7 + 3) as u8).collect(),
        ),
        ("a header claiming 4 GiB of payload", header(5, 1, u32::MAX)),
        ("an unknown request", header(0xdead, 1, 0)),
        ("a wrong protocol version", header(1, 0x5, 0)),
        ("SET_MEM_TABLE without its fd", set_mem_table),
        ("a truncated header", vec![1, 0, 0]),
    ];
    for (what, bytes) in &clients {
        let mut stream = UnixStream::connect(&served.socket)
            .with_context(|| format!("connecting to send {what}"))?;
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        served.wait_guest_gone()?;
        drop(stream);
        println!("sent {what}: disconnected");
    }
    rig::poll_until(Duration::from_secs(10), "the raw clients", || {
        let s = served.status();
        Ok((s.guests_served == clients.len() as u64 && !s.guest_connected).then_some(()))
    })?;
    ensure!(
        served.status().dma_mapped_bytes == 0,
        "{:?}",
        served.status()
    );
    println!("last error: {:?}", served.status().last_error);

    let line = e1000e_bound_in_uml(&served.arg, SERVED_TIMEOUT)?;
    println!("uml| {line}");
    served.wait_guest_gone()?;
    served.stop()
}
