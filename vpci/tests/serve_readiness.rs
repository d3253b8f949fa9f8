//! `udrv serve` under a service manager that waits for readiness (systemd's
//! Type=notify), played by a datagram socket in a temp dir or at an abstract address:
//! READY=1 arrives once the control socket answers, and an address udrv cannot use
//! stops it before it serves anything.

use std::fs;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vpci::service::{ControlClient, Reply, Request};

const UDRV: &str = env!("CARGO_BIN_EXE_udrv");

/// Long enough for any machine; only keeps a broken daemon from hanging the test.
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

/// `udrv serve` over an empty host tree with `NOTIFY_SOCKET=notify`.
fn serve(dir: &Path, notify: &str) -> Serve {
    let root = dir.join("root");
    fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
    fs::create_dir_all(root.join("proc")).unwrap();
    Command::new(UDRV)
        .arg("serve")
        .arg("--root")
        .arg(&root)
        .arg("--state")
        .arg(dir.join("run/state.json"))
        .arg("--control")
        .arg(control(dir))
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .map(Serve)
        .unwrap()
}

fn control(dir: &Path) -> PathBuf {
    dir.join("run/control.sock")
}

fn log(dir: &Path) -> String {
    fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

/// Waits for the one datagram udrv sends and checks that, by then, the control socket
/// takes a request; then stops the daemon with SIGTERM.
fn ready_then_answers(dir: &Path, manager: &UnixDatagram, mut serve: Serve) {
    manager.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut buf = [0u8; 4096];
    let n = manager.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification from udrv serve ({e}); its log:\n{}",
            log(dir)
        )
    });
    let message = String::from_utf8(buf[..n].to_vec()).unwrap();
    let fields: Vec<&str> = message.lines().collect();
    assert!(fields.contains(&"READY=1"), "{message:?}");
    let status = format!("STATUS=serving; control socket {}", control(dir).display());
    assert!(fields.contains(&status.as_str()), "{message:?}");

    // Ready means ready: the control socket answers the first request.
    let mut client = ControlClient::connect(&control(dir)).unwrap();
    let reply = client.request(&Request::Status).unwrap();
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");

    kill(Pid::from_raw(serve.0.id() as i32), Signal::SIGTERM).unwrap();
    let exit = serve.0.wait().unwrap();
    assert!(exit.success(), "{exit}; log:\n{}", log(dir));
    assert!(!control(dir).exists(), "the control socket goes with it");
}

#[test]
fn ready_is_sent_to_a_path_socket_once_the_control_socket_answers() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let manager = UnixDatagram::bind(&notify).unwrap();
    let serve = serve(dir.path(), notify.to_str().unwrap());
    ready_then_answers(dir.path(), &manager, serve);
}

#[test]
fn ready_is_sent_to_an_abstract_socket() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("udrv-serve-readiness-{}", std::process::id());
    let manager =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let serve = serve(dir.path(), &format!("@{name}"));
    ready_then_answers(dir.path(), &manager, serve);
}

#[test]
fn an_unusable_notify_address_stops_serve_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let exit = serve(dir.path(), "vsock:2:9999").0.wait().unwrap();
    assert!(!exit.success());
    let log = log(dir.path());
    assert!(log.contains("NOTIFY_SOCKET=vsock:2:9999"), "{log}");
    assert!(!control(dir.path()).exists());
}
