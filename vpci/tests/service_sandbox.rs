//! The sandbox of dist/udrv.service against what udrv really does on the host: every
//! socket family and system call that `udrv list` (the host-usage checks `attach`
//! runs: mounts, swaps, interfaces and their addresses, read-only) and a `udrv serve`
//! session (start, readiness, a status request, SIGTERM) make, traced with strace, is
//! one the unit's RestrictAddressFamilies= and SystemCallFilter= allow. A call outside
//! them would fail only under systemd, where no host test runs.
//!
//! strace and systemd-analyze come with Debian's `strace` and `systemd` packages;
//! `integration/rig setup` installs both.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vpci::service::{ControlClient, Peer, Reply, Request};

const UDRV: &str = env!("CARGO_BIN_EXE_udrv");

fn unit() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/udrv.service")).unwrap()
}

/// The values of `key=` in the unit, every line of it, split at spaces.
fn setting(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    let values: Vec<String> = unit
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .flat_map(|value| value.split_whitespace().map(str::to_string))
        .collect();
    assert!(!values.is_empty(), "the unit has no {key}=");
    values
}

fn tool(name: &str, package: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: apt-get install {package} (integration/rig setup installs it)"
            )
        })
}

/// The system calls in a `SystemCallFilter=` group, groups in it expanded.
fn syscall_group(analyze: &Path, group: &str, into: &mut BTreeSet<String>) {
    let out = Command::new(analyze)
        .args(["syscall-filter", "--no-pager", group])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {group}"
    );
    for line in String::from_utf8(out.stdout).unwrap().lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            syscall_group(analyze, name, into);
        } else {
            into.insert(name.to_string());
        }
    }
}

/// What an `strace -f -o` trace shows: system call names and socket families.
#[derive(Default, Debug)]
struct Trace {
    syscalls: BTreeSet<String>,
    families: BTreeSet<String>,
}

impl Trace {
    fn read(path: &Path) -> Trace {
        let mut trace = Trace::default();
        for line in fs::read_to_string(path).unwrap().lines() {
            // "1234  name(args...) = 0", or "1234  <... name resumed>...", or signals
            // and exits ("--- SIGTERM", "+++ exited").
            let call = line
                .split_once(' ')
                .map_or(line, |(_pid, rest)| rest)
                .trim_start();
            let Some((name, args)) = call.split_once('(') else {
                continue;
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            trace.syscalls.insert(name.to_string());
            if name == "socket" || name == "socketpair" {
                let family = args.split(',').next().unwrap_or_default().trim();
                trace.families.insert(family.to_string());
            }
        }
        trace
    }

    fn add(&mut self, other: Trace) {
        self.syscalls.extend(other.syscalls);
        self.families.extend(other.families);
    }
}

fn strace(strace: &Path, output: &Path) -> Command {
    let mut command = Command::new(strace);
    command.arg("-f").arg("-qq").arg("-o").arg(output).arg(UDRV);
    command
}

/// `udrv list --json` on this host: sysfs and /proc read, nothing written.
fn trace_list(strace_bin: &Path, dir: &Path) -> Trace {
    let output = dir.join("list.trace");
    let out = strace(strace_bin, &output)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udrv list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Trace::read(&output)
}

/// `udrv serve` over an empty host tree: ready, one status request, SIGTERM.
fn trace_serve(strace_bin: &Path, dir: &Path) -> Trace {
    let root = dir.join("root");
    fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
    fs::create_dir_all(root.join("proc")).unwrap();
    let control = dir.join("run/control.sock");
    let notify = dir.join("notify");
    let manager = UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let output = dir.join("serve.trace");
    let mut traced = strace(strace_bin, &output)
        .arg("serve")
        .arg("--root")
        .arg(&root)
        .arg("--state")
        .arg(dir.join("run/state.json"))
        .arg("--control")
        .arg(&control)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    if let Err(e) = manager.recv(&mut buf) {
        let _ = traced.kill();
        panic!("udrv serve under strace sent no READY=1: {e}");
    }
    // SIGTERM goes to udrv itself: strace would detach and leave it running.
    let daemon = Peer::of(&UnixStream::connect(&control).unwrap())
        .unwrap()
        .pid;
    let reply = ControlClient::connect(&control)
        .unwrap()
        .request(&Request::Status)
        .unwrap();
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
    kill(Pid::from_raw(daemon), Signal::SIGTERM).unwrap();
    let exit = traced.wait().unwrap();
    assert!(exit.success(), "udrv serve under strace: {exit}");
    Trace::read(&output)
}

#[test]
fn the_units_sandbox_allows_what_udrv_does_on_the_host() {
    let strace_bin = tool("strace", "strace");
    let analyze = tool("systemd-analyze", "systemd");
    let unit = unit();
    let dir = tempfile::tempdir().unwrap();
    let mut trace = trace_list(&strace_bin, dir.path());
    trace.add(trace_serve(&strace_bin, dir.path()));
    assert!(
        ["openat", "bind", "accept4"]
            .iter()
            .all(|s| trace.syscalls.contains(*s)),
        "the trace saw too little to judge: {trace:?}"
    );

    let families = setting(&unit, "RestrictAddressFamilies");
    let refused: Vec<&String> = trace
        .families
        .iter()
        .filter(|f| !families.contains(f))
        .collect();
    assert!(
        refused.is_empty(),
        "udrv opens sockets of {refused:?}, which RestrictAddressFamilies={families:?} refuses"
    );

    let mut allowed = BTreeSet::new();
    for group in setting(&unit, "SystemCallFilter") {
        assert!(
            !group.starts_with('~'),
            "an allow list is expected: {group}"
        );
        if group.starts_with('@') {
            syscall_group(&analyze, &group, &mut allowed);
        } else {
            allowed.insert(group);
        }
    }
    let refused: Vec<&String> = trace
        .syscalls
        .iter()
        .filter(|s| !allowed.contains(*s))
        .collect();
    assert!(
        refused.is_empty(),
        "udrv makes system calls SystemCallFilter= refuses: {refused:?}"
    );
}
