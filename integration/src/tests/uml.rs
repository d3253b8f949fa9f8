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
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::harness::RigTest;
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
    vec![
        RigTest::new("uml_boots_in_rig", boots_in_rig),
        RigTest::new("uml_vfio_uml_binds_e1000e", vfio_uml_binds_e1000e),
    ]
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

fn tail_of(output: &str) -> String {
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
    // Its own process group: UML forks helper and user-space processes that must die
    // with it on a timeout.
    let mut child = Command::new(UML_KERNEL)
        .args(&cmdline)
        .env("TMPDIR", "/tmp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {UML_KERNEL}"))?;
    let pgid = child.id() as i32;
    let mut stdout = child.stdout.take().context("UML stdout")?;
    let mut stderr = child.stderr.take().context("UML stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for UML")? {
            break Some(status);
        }
        if started.elapsed() > UML_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    // Whatever happened, nothing of this UML may outlive the run (helpers included).
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    drop(child.stdin.take());
    let status = match status {
        Some(status) => status,
        None => child.wait().context("reaping UML")?,
    };
    let mut output = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let err = err_reader.join().unwrap_or_default();
    if !err.is_empty() {
        output.push_str(&String::from_utf8_lossy(&err));
    }
    let output = output.replace('\r', "");
    if elapsed > UML_TIMEOUT {
        bail!(
            "UML did not power off within {}s (killed); its console ended with:\n{}",
            UML_TIMEOUT.as_secs(),
            tail_of(&output)
        );
    }
    Ok(UmlRun {
        output,
        status,
        elapsed,
    })
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
