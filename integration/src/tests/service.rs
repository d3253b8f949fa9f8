//! `udrv serve` run as a user runs it, with the rig's e1000e: `udrv attach --serve`
//! claims and serves it, the state file and `udrv status` say so, only root may use
//! the control socket, SIGTERM gives the device back; killed with -9 and started
//! again, the service serves the device again and a UML guest's e1000e driver binds it.
//!
//! The service uses its defaults (/run/udrv/control.sock, /run/udrv/state.json), as
//! a user's would; each test starts from the e1000e on its host driver and no service.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use udriver::claim::{ClaimPhase, ClaimRecord, StateFile};

use super::uml_served::e1000e_bound_in_uml;
use crate::harness::{rig_tests, RigTest};
use crate::rig;

const CONTROL: &str = "/run/udrv/control.sock";
const STATE: &str = "/run/udrv/state.json";
const SOCKET: &str = "/run/udrv/e1000e.sock";
const SPEC: &str = "uml:/run/udrv/e1000e.sock";
/// UML's virtio-pcidev device ID, as the rig built its kernel.
const VIRTIO_PCIDEV_ID: &str = "/rig/uml/virtio-pcidev-id";
/// Where each test keeps the service's log.
const LOG_DIR: &str = "/run/udrv-service-rig";
/// A user that is not root.
const NOBODY: u32 = 65534;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        uml_service:
        attach_serve_status_sigterm (300 s),
        detach_stops_serving (300 s),
        kill9_recovers_and_serves_uml (600 s),
    ]
}

fn udrv_as(uid: Option<u32>, args: &[&str]) -> Result<Output> {
    let mut command = Command::new(rig::installed_binary("udrv")?);
    command.args(args).stdin(Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let out = command
        .output()
        .with_context(|| format!("running udrv {}", args.join(" ")))?;
    print!(
        "$ udrv {}{}\n{}",
        args.join(" "),
        uid.map_or(String::new(), |u| format!("   (as uid {u})")),
        String::from_utf8_lossy(&out.stdout)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

pub(super) fn udrv_ok(args: &[&str]) -> Result<String> {
    let out = udrv_as(None, args)?;
    ensure!(
        out.status.success(),
        "udrv {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_json() -> Result<serde_json::Value> {
    serde_json::from_str(&udrv_ok(&["status", "--json"])?).context("udrv status --json")
}

fn claims() -> Result<Vec<ClaimRecord>> {
    Ok(StateFile::read(Path::new(STATE))?.claims)
}

fn is_socket(path: &str) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// A running `udrv serve`, its stderr in a log file; SIGKILLed if a test ends early.
pub(super) struct Service {
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `udrv serve` with its defaults and waits until it answers.
    pub(super) fn start(name: &str) -> Result<Service> {
        fs::create_dir_all(LOG_DIR)?;
        let log = PathBuf::from(format!("{LOG_DIR}/{name}.log"));
        let child = Command::new(rig::installed_binary("udrv")?)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting udrv serve")?;
        println!(
            "$ udrv serve &   (pid {}, log {})",
            child.id(),
            log.display()
        );
        let service = Service {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !service_answers()? {
            if Instant::now() > deadline {
                bail!(
                    "udrv serve did not answer within 30 s; its log:\n{}",
                    service.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(service)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(super) fn ensure_logged(&self, what: &str) -> Result<()> {
        ensure!(
            self.log().contains(what),
            "udrv serve's log has no `{what}`:\n{}",
            self.log()
        );
        Ok(())
    }

    /// Sends `signal` and waits for the service to exit.
    pub(super) fn signal(&mut self, signal: Signal) -> Result<ExitStatus> {
        let mut child = self.child.take().context("udrv serve is not running")?;
        kill(Pid::from_raw(child.id() as i32), signal)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                println!("udrv serve exited ({status}) after {signal}; its log:");
                for line in self.log().lines() {
                    println!("  | {line}");
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "udrv serve did not exit within 60 s of {signal}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a `udrv serve` answers at the control socket (without one, `udrv status`
/// shows the state file's claims and `"daemon": null`).
pub(super) fn service_answers() -> Result<bool> {
    let out = Command::new(rig::installed_binary("udrv")?)
        .args(["status", "--json"])
        .output()?;
    if !out.status.success() {
        return Ok(false);
    }
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("udrv status --json")?;
    Ok(!status["daemon"].is_null())
}

/// The e1000e on its host driver, no service running, no claims in the default state.
fn fresh() -> Result<()> {
    ensure!(
        !service_answers()?,
        "a udrv serve is already running at {CONTROL}"
    );
    rig::bind_to_host(rig::E1000E, "e1000e")?;
    rig::let_e1000e_throttling_expire();
    let _ = fs::remove_file(STATE);
    Ok(())
}

/// `udrv attach E1000E --serve uml:SOCKET` and the checks every test makes after it.
fn attach_and_serve() -> Result<()> {
    let out = udrv_ok(&["attach", rig::E1000E, "--serve", SPEC])?;
    ensure!(
        out.contains(&format!("{}: e1000e -> vfio-pci", rig::E1000E)),
        "attach did not report the move from e1000e:\n{out}"
    );
    ensure!(
        out.contains(&format!("virtio_uml.device={SOCKET}:1234")),
        "attach did not print the UML command line:\n{out}"
    );
    ensure!(
        rig::driver_of(rig::E1000E).as_deref() == Some("vfio-pci"),
        "{} is on {:?} after attach --serve",
        rig::E1000E,
        rig::driver_of(rig::E1000E)
    );
    ensure!(
        is_socket(SOCKET),
        "the frontend socket {SOCKET} is not there"
    );
    Ok(())
}

fn ensure_recorded_as_served() -> Result<()> {
    let recorded = claims()?;
    let record = recorded
        .iter()
        .find(|c| c.address.to_string() == rig::E1000E)
        .with_context(|| format!("{STATE} has no claim of {}: {recorded:?}", rig::E1000E))?;
    ensure!(
        record.serve.as_deref() == Some(SPEC)
            && record.phase == ClaimPhase::Attached
            && record.original_driver.as_deref() == Some("e1000e"),
        "the claim does not record the served device: {record:?}"
    );
    Ok(())
}

fn served_entry(status: &serde_json::Value) -> Result<serde_json::Value> {
    let served = status["served"]
        .as_array()
        .context("status has no served list")?;
    served
        .iter()
        .find(|s| s["address"] == rig::E1000E)
        .cloned()
        .with_context(|| {
            format!(
                "udrv status does not show {} served: {status:#}",
                rig::E1000E
            )
        })
}

fn ensure_given_back() -> Result<()> {
    ensure!(
        rig::driver_of(rig::E1000E).as_deref() == Some("e1000e"),
        "{} is on {:?}, not back on e1000e",
        rig::E1000E,
        rig::driver_of(rig::E1000E)
    );
    let recorded = claims()?;
    ensure!(recorded.is_empty(), "claims left in {STATE}: {recorded:?}");
    ensure!(
        !is_socket(SOCKET),
        "the frontend socket {SOCKET} is left over"
    );
    Ok(())
}

/// Claim and serve through the service; the state file, status, socket permissions
/// and other users; SIGTERM gives the device back and ends with status 0.
fn attach_serve_status_sigterm() -> Result<()> {
    fresh()?;
    let mut service = Service::start("attach")?;
    attach_and_serve()?;
    ensure_recorded_as_served()?;

    let status = status_json()?;
    ensure!(
        status["daemon"]["pid"] == service.pid(),
        "status names pid {} (the service is {})",
        status["daemon"]["pid"],
        service.pid()
    );
    let served = served_entry(&status)?;
    ensure!(
        served["frontend"] == SPEC
            && served["status"]["socket"] == SOCKET
            && served["status"]["guest_connected"] == false,
        "unexpected served entry: {served:#}"
    );
    ensure!(
        status["claims"][0]["serve"] == SPEC,
        "status claims lack the serve spec: {status:#}"
    );
    println!("{}", udrv_ok(&["status"])?);

    let meta = fs::symlink_metadata(CONTROL)?;
    ensure!(
        meta.file_type().is_socket()
            && meta.permissions().mode() & 0o777 == 0o600
            && meta.uid() == 0,
        "{CONTROL} is mode {:o}, uid {}: want a root-owned 0600 socket",
        meta.permissions().mode() & 0o7777,
        meta.uid()
    );
    // Another user: stopped by the socket's mode...
    let out = udrv_as(Some(NOBODY), &["status"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("for root only"),
        "uid {NOBODY} was not refused by the socket's mode: {stderr}"
    );
    // ...and, with the mode loosened by hand, by the service's credential check.
    fs::set_permissions(CONTROL, fs::Permissions::from_mode(0o666))?;
    let out = udrv_as(Some(NOBODY), &["status"]);
    fs::set_permissions(CONTROL, fs::Permissions::from_mode(0o600))?;
    let out = out?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains(&format!("uid {NOBODY}"))
            && stderr.contains("may not control udrv serve"),
        "uid {NOBODY} was not refused by the credential check: {stderr}"
    );
    service.ensure_logged("control connection refused")?;

    let exit = service.signal(Signal::SIGTERM)?;
    ensure!(
        exit.code() == Some(0),
        "udrv serve exited with {exit} after SIGTERM"
    );
    ensure_given_back()?;
    ensure!(!Path::new(CONTROL).exists(), "{CONTROL} is left over");
    service.ensure_logged("frontend started")?;
    service.ensure_logged("frontend stopped")?;
    service.ensure_logged("device given back")?;
    Ok(())
}

/// `udrv detach` of a served device goes through the service: the frontend stops,
/// the device goes back, the service keeps running.
fn detach_stops_serving() -> Result<()> {
    fresh()?;
    let mut service = Service::start("detach")?;
    attach_and_serve()?;
    let out = udrv_ok(&["detach", rig::E1000E])?;
    ensure!(
        out.contains(&format!("{}: stopped serving {SPEC}", rig::E1000E))
            && out.contains(&format!(
                "{}: given back by udrv serve: now on e1000e",
                rig::E1000E
            )),
        "detach did not go through the service:\n{out}"
    );
    ensure_given_back()?;
    let status = status_json()?;
    ensure!(
        status["served"].as_array().is_some_and(Vec::is_empty),
        "still served after detach: {status:#}"
    );
    let exit = service.signal(Signal::SIGTERM)?;
    ensure!(exit.code() == Some(0), "udrv serve exited with {exit}");
    ensure_given_back()
}

/// Killed with -9 while serving: the device stays on vfio-pci with its claim; a new
/// `udrv serve` serves it again, and a UML guest's e1000e driver binds the device.
fn kill9_recovers_and_serves_uml() -> Result<()> {
    fresh()?;
    let mut first = Service::start("before-kill")?;
    attach_and_serve()?;
    first.signal(Signal::SIGKILL)?;
    ensure!(
        rig::driver_of(rig::E1000E).as_deref() == Some("vfio-pci"),
        "{} left vfio-pci when the service was killed",
        rig::E1000E
    );
    ensure_recorded_as_served()?;
    ensure!(
        is_socket(CONTROL),
        "a killed service leaves its control socket behind"
    );

    let mut service = Service::start("after-kill")?;
    service.ensure_logged("replaced the stale control socket")?;
    service.ensure_logged("recovered: serving again after a restart")?;
    let served = served_entry(&status_json()?)?;
    ensure!(
        served["recovered"] == true && served["frontend"] == SPEC,
        "not served again after the restart: {served:#}"
    );
    ensure!(
        is_socket(SOCKET),
        "the frontend socket {SOCKET} is not served again"
    );

    let id = fs::read_to_string(VIRTIO_PCIDEV_ID)
        .with_context(|| format!("reading {VIRTIO_PCIDEV_ID}"))?;
    let device = format!("virtio_uml.device={SOCKET}:{}", id.trim());
    let line = e1000e_bound_in_uml(&device, Duration::from_secs(180))?;
    ensure!(
        line.contains("vendor=0x8086") && line.contains("device=0x10d3"),
        "UML's e1000e device is not the rig's 82574: {line}"
    );
    println!("uml| {line}");
    let served = rig::poll_until(Duration::from_secs(10), "the guest to be gone", || {
        let served = served_entry(&status_json()?)?;
        Ok((served["status"]["guest_connected"] == false).then_some(served))
    })?;
    ensure!(
        served["status"]["guests_served"].as_u64() >= Some(1)
            && served["status"]["config_accesses"].as_u64() > Some(0),
        "the frontend counted no guest: {served:#}"
    );
    println!(
        "frontend after the guest: {}",
        serde_json::to_string(&served["status"])?
    );
    service.ensure_logged("guest connected")?;

    let exit = service.signal(Signal::SIGTERM)?;
    ensure!(exit.code() == Some(0), "udrv serve exited with {exit}");
    ensure_given_back()
}
