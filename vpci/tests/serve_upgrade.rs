//! `udrv upgrade` on a real `udrv serve` process: the daemon execs another program
//! file in place (same pid), its control socket never goes away, and the new program
//! answers the upgrade on the asking connection. A program that cannot be run is
//! refused and the old one goes on. (Devices carried across are shown by vpci's
//! vfio-user handover test and the rig.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vpci::service::control::ErrorKind;
use vpci::service::{ClientError, ControlClient, Reply, Request};

const UDRV: &str = env!("CARGO_BIN_EXE_udrv");

/// Only keeps a broken daemon from hanging the test.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A `udrv serve` child, killed if a failed assertion leaves it running.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn log(dir: &Path) -> String {
    fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

fn status(control: &Path) -> Result<Reply, ClientError> {
    ControlClient::connect(control)?.request(&Request::Status)
}

#[test]
fn udrv_upgrade_execs_the_new_program_in_place_and_keeps_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let root = dir.join("root");
    fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
    fs::create_dir_all(root.join("proc")).unwrap();
    let control = dir.join("run/control.sock");
    let mut serve = Serve(
        Command::new(UDRV)
            .arg("serve")
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(dir.join("run/state.json"))
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = serve.0.id();
    let start = Instant::now();
    let before = loop {
        match status(&control) {
            Ok(Reply::Status(s)) => break s,
            _ if start.elapsed() < HANG_GUARD => sleep(Duration::from_millis(20)),
            other => panic!("udrv serve never answered: {other:?}; log:\n{}", log(dir)),
        }
    };

    // The newly installed program.
    let new: PathBuf = dir.join("udrv-next");
    fs::copy(UDRV, &new).unwrap();
    let reply = ControlClient::connect(&control)
        .unwrap()
        .request(&Request::Upgrade {
            binary: Some(new.clone()),
        })
        .unwrap_or_else(|e| panic!("upgrade: {e}; log:\n{}", log(dir)));
    let Reply::Upgraded(upgraded) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(upgraded.daemon.pid, pid, "the same process");
    assert_eq!(upgraded.daemon.upgrades, 1);
    assert_eq!(upgraded.binary, new);
    assert!(upgraded.failed.is_empty(), "{upgraded:?}");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        new,
        "the process runs the new program"
    );

    // The same daemon answers on the same socket, started when it first started.
    let Ok(Reply::Status(after)) = status(&control) else {
        panic!("no status after the upgrade; log:\n{}", log(dir))
    };
    assert_eq!(after.daemon.pid, pid);
    assert_eq!(after.daemon.started_at, before.daemon.started_at);
    assert_eq!(after.daemon.upgrades, 1);

    // A program that cannot run: refused, nothing changes.
    let refused = ControlClient::connect(&control)
        .unwrap()
        .request(&Request::Upgrade {
            binary: Some(dir.join("no-such-udrv")),
        });
    match refused {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains("no-such-udrv"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(status(&control), Ok(Reply::Status(_))));

    // It stops as before, removing its socket.
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let exit = serve.0.wait().unwrap();
    assert!(exit.success(), "{exit}; log:\n{}", log(dir));
    assert!(!control.exists());
    let log = log(dir);
    assert!(log.contains("udrv serve upgraded: taking over"), "{log}");
}
