//! User-Mode Linux in the rig: the Linux-on-Linux guest boots inside the rig guest, and
//! UML's own VFIO driver (`vfio_uml`) drives a rig device — the baseline that a device
//! served by udrv is compared against.
//!
//! The rig puts the UML kernel at [`UML_KERNEL`] and a busybox root at [`UML_ROOT`]
//! (integration/guest/uml/). UML's console is its stdin/stdout; its init prints
//! `uml: up NONCE`, runs an optional task and prints `uml: halt` before powering off.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// The UML kernel binary in the rig guest.
const UML_KERNEL: &str = "/rig/uml/linux";
/// The directory UML boots from over hostfs.
const UML_ROOT: &str = "/rig/uml/root";
/// UML's RAM: its e1000e driver and busybox need far less.
const UML_MEMORY: &str = "mem=96M";
/// A UML boot takes ~1.5 s under TCG; anything past this is a hang.
const UML_TIMEOUT: Duration = Duration::from_secs(60);
/// The MAC address the rig gives the e1000e at [`rig::E1000E`] (its EEPROM).
const E1000E_MAC: &str = "52:54:00:00:00:04";

pub fn tests() -> Vec<RigTest> {
    rig_tests![uml: boots_in_rig, vfio_uml_binds_e1000e]
}

/// What one UML run printed, how it ended and how long it took.
pub(super) struct UmlRun {
    pub(super) output: String,
    pub(super) status: ExitStatus,
    pub(super) elapsed: Duration,
}

impl UmlRun {
    /// The last lines of the console, for error messages.
    pub(super) fn tail(&self) -> String {
        tail_of(&self.output)
    }
}

pub(super) fn tail_of(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// A value this boot must echo back, so that stale or unrelated output cannot pass.
pub(super) fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

/// Boots UML with `args` added to its command line and `task` (integration/guest/uml/
/// TASK.sh) run by its init; waits for it to power off, killing its whole process
/// group after [`UML_TIMEOUT`].
pub(super) fn run_uml(nonce: &str, task: Option<&str>, args: &[&str]) -> Result<UmlRun> {
    run_uml_on(None, nonce, task, args)
}

/// [`run_uml`], with UML and every process it forks on CPU `cpu` only (when given).
pub(super) fn run_uml_on(
    cpu: Option<usize>,
    nonce: &str,
    task: Option<&str>,
    args: &[&str],
) -> Result<UmlRun> {
    RunningUml::start_on(cpu, nonce, task, args)?.finish(UML_TIMEOUT)
}

/// Where UML keeps its RAM file: a tmpfs with transparent huge pages when the rig
/// kernel has them, else /tmp.
///
/// A device served to UML DMAs into that file through the IOMMU. QEMU 7.2's AHCI maps
/// a command table's PRDT in one piece and fails the command (then aborts on an
/// assertion) when the table crosses into a page that is not contiguous with the
/// previous one in the rig guest's memory. UML allocates each port's command tables as
/// one naturally aligned 128 KiB block of its physical memory (= offset in this file),
/// so 2 MiB huge pages keep every table in contiguous memory.
fn uml_memory_dir() -> &'static str {
    const HUGE: &str = "/run/udrv-uml-mem";
    let mounted = std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(HUGE)));
    if mounted {
        return HUGE;
    }
    let _ = std::fs::create_dir_all(HUGE);
    // Free 2 MiB blocks for the huge pages.
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    match rig::sh(&format!(
        "mount -t tmpfs -o huge=always,mode=1777 tmpfs {HUGE}"
    )) {
        Ok(_) => HUGE,
        Err(e) => {
            println!("note: no huge-page tmpfs for UML's memory ({e}); using /tmp");
            "/tmp"
        }
    }
}

/// A UML that is running: its console is collected as it comes, so a test can wait
/// for a line, act, and let UML go on (or kill it).
pub(super) struct RunningUml {
    child: std::process::Child,
    pgid: i32,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl RunningUml {
    /// Boots UML as [`run_uml`] does, without waiting for it.
    pub(super) fn start(nonce: &str, task: Option<&str>, args: &[&str]) -> Result<Self> {
        Self::start_on(None, nonce, task, args)
    }

    /// [`start`](Self::start), pinned to CPU `cpu` when given. UML is a kernel process
    /// and a ptraced process per guest process, switching between them at every guest
    /// system call: on a machine with several CPUs they keep those switches on one CPU
    /// only when pinned (the pinning is inherited by everything UML forks).
    pub(super) fn start_on(
        cpu: Option<usize>,
        nonce: &str,
        task: Option<&str>,
        args: &[&str],
    ) -> Result<Self> {
        let mut cmdline = vec![
            UML_MEMORY.to_string(),
            "rootfstype=hostfs".into(),
            format!("hostfs={UML_ROOT}"),
            "rw".into(),
            "init=/init".into(),
            "con=null".into(),
            "con0=fd:0,fd:1".into(),
            format!("udrv_uml_nonce={nonce}"),
        ];
        if let Some(task) = task {
            cmdline.push(format!("udrv_uml_task={task}"));
        }
        cmdline.extend(args.iter().map(|a| a.to_string()));
        let started = Instant::now();
        // Its own process group: UML forks helper and user-space processes that must
        // die with it.
        let mut command = match cpu {
            // busybox's taskset sets the affinity and execs UML in the same process.
            Some(cpu) => {
                let mut c = Command::new("/bin/busybox");
                c.args(["taskset", "-c", &cpu.to_string(), UML_KERNEL]);
                c
            }
            None => Command::new(UML_KERNEL),
        };
        let mut child = command
            .args(&cmdline)
            .env("TMPDIR", uml_memory_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {UML_KERNEL}"))?;
        let pgid = child.id() as i32;
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().context("UML stdout")?),
            Box::new(child.stderr.take().context("UML stderr")?),
        ];
        for mut stream in streams {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                    output
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            }));
        }
        Ok(Self {
            child,
            pgid,
            output,
            readers,
            started,
        })
    }

    /// The console so far.
    pub(super) fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a console line starting with `prefix`; returns it.
    pub(super) fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if let Some(line) = output.lines().find(|l| l.starts_with(prefix)) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline || self.child.try_wait()?.is_some() {
                bail!(
                    "UML printed no `{prefix}...` line; its console ended with:\n{}",
                    tail_of(&output)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL for UML and every process it forked.
    pub(super) fn kill(&self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// Waits up to `timeout` for UML to exit (then kills what is left of it) and
    /// returns its whole console. An error if it had to be killed.
    pub(super) fn finish(mut self, timeout: Duration) -> Result<UmlRun> {
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for UML")? {
                break Some(status);
            }
            if self.started.elapsed() > timeout {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        // Whatever happened, nothing of this UML may outlive the run (helpers included).
        self.kill();
        drop(self.child.stdin.take());
        let status = match status {
            Some(status) => status,
            None => self.child.wait().context("reaping UML")?,
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let output = self.output();
        if elapsed > timeout {
            bail!(
                "UML did not power off within {}s (killed); its console ended with:\n{}",
                timeout.as_secs(),
                tail_of(&output)
            );
        }
        Ok(UmlRun {
            output,
            status,
            elapsed,
        })
    }
}

impl Drop for RunningUml {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.try_wait();
    }
}

/// Checks that `run` booted to our init (it echoed `nonce`) and powered off cleanly.
pub(super) fn ensure_clean_boot(run: &UmlRun, nonce: &str) -> Result<()> {
    ensure!(
        run.output.lines().any(|l| l == format!("uml: up {nonce}")),
        "UML never reached its init (no `uml: up {nonce}`); console:\n{}",
        run.tail()
    );
    ensure!(
        run.output.lines().any(|l| l == "uml: halt"),
        "UML's init did not finish (no `uml: halt`); console:\n{}",
        run.tail()
    );
    ensure!(
        run.status.success(),
        "UML exited with {} after halting; console:\n{}",
        run.status,
        run.tail()
    );
    Ok(())
}

/// UML boots from the rig's busybox root to its init, which answers and powers off.
fn boots_in_rig() -> Result<()> {
    let nonce = nonce();
    let run = run_uml(&nonce, None, &[])?;
    ensure_clean_boot(&run, &nonce)?;
    if let Some(version) = run.output.lines().find(|l| l.starts_with("Linux version")) {
        println!("{version}");
    }
    println!(
        "UML booted to init and powered off in {:.2} s",
        run.elapsed.as_secs_f64()
    );
    Ok(())
}

/// One `uml: netdev NAME key=value...` line from the netdev task.
struct NetDev {
    name: String,
    fields: Vec<(String, String)>,
}

impl NetDev {
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.strip_prefix("uml: netdev ")?.split_whitespace();
        let name = words.next()?.to_string();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self { name, fields })
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// With the rig's e1000e on vfio-pci, UML's vfio_uml driver takes it and UML's own
/// e1000e driver registers eth0 with the device's IDs and its EEPROM MAC address: the
/// Linux-on-Linux guest drives the real device.
fn vfio_uml_binds_e1000e() -> Result<()> {
    let group = rig::bind_to_vfio(rig::E1000E)?;
    println!("{} on vfio-pci, group {group}", rig::E1000E);
    let nonce = nonce();
    let device = format!("vfio_uml.device={}", rig::E1000E);
    let run = run_uml(&nonce, Some("netdev"), &[&device])?;
    ensure_clean_boot(&run, &nonce)?;
    ensure!(
        run.output.lines().any(|l| l == "uml: task netdev exit 0"),
        "the netdev task failed in UML; console:\n{}",
        run.tail()
    );
    let netdevs: Vec<NetDev> = run.output.lines().filter_map(NetDev::parse).collect();
    let Some(eth) = netdevs.iter().find(|n| n.get("driver") == "e1000e") else {
        bail!(
            "no interface on UML's e1000e driver (UML saw {:?}); console:\n{}",
            netdevs.iter().map(|n| &n.name).collect::<Vec<_>>(),
            run.tail()
        );
    };
    ensure!(
        (eth.get("vendor"), eth.get("device")) == ("0x8086", "0x10d3"),
        "{} in UML is {}:{}, want the rig's 82574 (0x8086:0x10d3)",
        eth.name,
        eth.get("vendor"),
        eth.get("device")
    );
    ensure!(
        eth.get("mac") == E1000E_MAC,
        "{} in UML has MAC {}, want {E1000E_MAC} (read from the device's EEPROM)",
        eth.name,
        eth.get("mac")
    );
    for line in run
        .output
        .lines()
        .filter(|l| l.contains("vfio") || l.contains("e1000e"))
    {
        println!("uml| {line}");
    }
    println!(
        "UML: {} on {} ({} at {}), boot to power-off {:.2} s",
        eth.name,
        eth.get("driver"),
        rig::E1000E,
        eth.get("pci"),
        run.elapsed.as_secs_f64()
    );
    ensure!(
        rig::driver_of(rig::E1000E).as_deref() == Some("vfio-pci"),
        "{} left vfio-pci while UML used it",
        rig::E1000E
    );
    Ok(())
}
