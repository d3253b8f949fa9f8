//! The daemon on a temp control socket over a recorded sysfs tree and a fake kernel,
//! with a launcher that starts no VFIO: requests, refusals, the state file's `serve`
//! records, recovery after a kill, and stopping (stop handle and SIGTERM).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use udriver::claim::{AttachOptions, ClaimPhase, ClaimRecord, Claimer, ModuleLoader, StateFile};
use udriver::pci::fixture::{DeviceSpec, FakeHost};
use udriver::pci::PciAddress;

use super::control::{decode_response, DetachReply, Reply, Request, StatusReply};
use super::*;
use crate::frontend::FrontendStatus;

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

struct NoModules;
impl ModuleLoader for NoModules {
    fn load(&mut self, module: &str) -> std::io::Result<()> {
        Err(std::io::Error::other(format!(
            "no module loading in tests ({module})"
        )))
    }
}

/// The rig's NICs and AHCI as a fake host; vfio-pci is loaded.
fn host() -> FakeHost {
    let host = FakeHost::new();
    host.add_driver("vfio-pci");
    host.add(
        DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000)
            .driver("e1000")
            .group(3),
    );
    host.add(
        DeviceSpec::new("0000:00:03.0", 0x8086, 0x100e, 0x020000)
            .driver("e1000")
            .group(4),
    );
    host.add(
        DeviceSpec::new("0000:00:04.0", 0x8086, 0x10d3, 0x020000)
            .driver("e1000e")
            .group(5),
    );
    host.add(
        DeviceSpec::new("0000:00:06.0", 0x8086, 0x2922, 0x010601)
            .driver("ahci")
            .group(7),
    );
    host
}

fn state_path(host: &FakeHost) -> PathBuf {
    host.path().join("run/udrv/state.json")
}

fn control_path(host: &FakeHost) -> PathBuf {
    host.path().join("run/udrv/control.sock")
}

fn sock(host: &FakeHost, name: &str) -> FrontendSpec {
    format!("uml:{}", host.path().join(name).display())
        .parse()
        .unwrap()
}

fn fake_host(host: &FakeHost) -> Host {
    Host {
        root: host.root(),
        writer: Box::new(host.kernel()),
        modules: Box::new(NoModules),
        state_path: state_path(host),
        node_timeout: Duration::from_millis(50),
    }
}

/// What the fake launcher saw, shared with the test.
#[derive(Clone, Default)]
struct Launches {
    log: Arc<Mutex<Vec<String>>>,
    fail: Arc<AtomicBool>,
    status: Arc<Mutex<FrontendStatus>>,
    /// Frontends say they cannot be handed over.
    refuse_handover: Arc<AtomicBool>,
}

impl Launches {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

struct FakeLauncher {
    state_path: PathBuf,
    launches: Launches,
}

impl FrontendLauncher for FakeLauncher {
    fn start(
        &mut self,
        device: PciAddress,
        iommu_group: u32,
        spec: &FrontendSpec,
    ) -> Result<Box<dyn RunningFrontend>, LaunchError> {
        // What the state file says at the moment the frontend starts.
        let recorded = StateFile::read(&self.state_path)
            .unwrap()
            .get(device)
            .and_then(|r| r.serve.clone());
        self.launches.log.lock().unwrap().push(format!(
            "start {device} group {iommu_group} {spec} recorded={}",
            recorded.as_deref().unwrap_or("none")
        ));
        if self.launches.fail.load(Ordering::SeqCst) {
            return Err(format!("{device}: no VFIO in this test").into());
        }
        self.launches.status.lock().unwrap().socket = spec.socket().to_path_buf();
        Ok(Box::new(FakeFrontend {
            device,
            launches: self.launches.clone(),
        }))
    }

    fn resume(
        &mut self,
        device: PciAddress,
        spec: &FrontendSpec,
        state: &serde_json::Value,
        bag: &mut crate::handover::FdBag,
    ) -> Result<Box<dyn RunningFrontend>, LaunchError> {
        // The frontend's fd must have come across.
        let slot: crate::handover::FdSlot = serde_json::from_value(state["fd"].clone())?;
        bag.take(slot)?;
        self.launches
            .log
            .lock()
            .unwrap()
            .push(format!("resume {device} {spec}"));
        Ok(Box::new(FakeFrontend {
            device,
            launches: self.launches.clone(),
        }))
    }
}

struct FakeFrontend {
    device: PciAddress,
    launches: Launches,
}

impl RunningFrontend for FakeFrontend {
    fn status(&self) -> FrontendStatus {
        self.launches.status.lock().unwrap().clone()
    }

    fn stop(self: Box<Self>) -> Result<FrontendStatus, LaunchError> {
        self.launches
            .log
            .lock()
            .unwrap()
            .push(format!("stop {}", self.device));
        Ok(self.status())
    }

    fn handover_refusal(&self) -> Option<String> {
        self.launches
            .refuse_handover
            .load(Ordering::SeqCst)
            .then(|| "this fake cannot be carried".to_string())
    }

    fn hand_over(
        self: Box<Self>,
        bag: &mut crate::handover::FdBag,
    ) -> Result<serde_json::Value, LaunchError> {
        self.launches
            .log
            .lock()
            .unwrap()
            .push(format!("hand_over {}", self.device));
        let fd = udriver::vfio::EventFd::new()?;
        let slot = bag.put(std::os::fd::OwnedFd::from(fd));
        Ok(serde_json::json!({ "fd": slot }))
    }
}

struct Running {
    control: PathBuf,
    stop: Option<StopHandle>,
    thread: JoinHandle<Result<ShutdownReport, ServiceError>>,
}

impl Running {
    fn client(&self) -> ControlClient {
        ControlClient::connect(&self.control).unwrap()
    }

    fn request(&self, request: Request) -> Result<Reply, ClientError> {
        self.client().request(&request)
    }

    fn status(&self) -> StatusReply {
        match self.request(Request::Status).unwrap() {
            Reply::Status(status) => status,
            other => panic!("status answered {other:?}"),
        }
    }

    fn detach(&self, devices: &[&str]) -> DetachReply {
        let request = Request::Detach {
            devices: devices.iter().map(|d| addr(d)).collect(),
            all: false,
            force: false,
        };
        match self.request(request).unwrap() {
            Reply::Detached(reply) => reply,
            other => panic!("detach answered {other:?}"),
        }
    }

    fn stop(mut self) -> ShutdownReport {
        self.stop.take().expect("a stop handle").stop();
        self.thread.join().unwrap().unwrap()
    }
}

fn start(host: &FakeHost, launches: &Launches, keep_claims: bool) -> Running {
    start_on(host, fake_host(host), launches, keep_claims)
}

/// [`start`] over `service_host`, a view of `host` the test may have altered.
fn start_on(
    host: &FakeHost,
    service_host: Host,
    launches: &Launches,
    keep_claims: bool,
) -> Running {
    start_with(host, service_host, launches, keep_claims, None)
}

/// [`start_on`], able to run `relaunch` for `udrv upgrade`.
fn start_with(
    host: &FakeHost,
    service_host: Host,
    launches: &Launches,
    keep_claims: bool,
    relaunch: Option<Relaunch>,
) -> Running {
    let config = DaemonConfig {
        control: control_path(host),
        keep_claims,
        handle_signals: false,
        relaunch,
    };
    let launcher = FakeLauncher {
        state_path: state_path(host),
        launches: launches.clone(),
    };
    let daemon = Daemon::start(config, service_host, Box::new(launcher)).unwrap();
    let stop = daemon.stop_handle();
    let control = daemon.control_path().to_path_buf();
    Running {
        control,
        stop: Some(stop),
        thread: std::thread::spawn(move || daemon.run()),
    }
}

fn claims(host: &FakeHost) -> Vec<ClaimRecord> {
    StateFile::read(&state_path(host)).unwrap().claims
}

fn daemon_error(result: Result<Reply, ClientError>) -> ErrorReply {
    match result {
        Err(ClientError::Daemon(e)) => e,
        other => panic!("expected the daemon to refuse, got {other:?}"),
    }
}

fn attach_serve(device: &str, spec: &FrontendSpec) -> Request {
    Request::Attach {
        devices: vec![addr(device)],
        force: false,
        whole_group: false,
        serve: Some(spec.clone()),
    }
}

#[test]
fn status_of_a_fresh_daemon_names_it_and_has_nothing_served() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let status = daemon.status();
    assert_eq!(status.daemon.pid, std::process::id());
    assert_eq!(status.daemon.control, control_path(&host));
    assert_eq!(status.daemon.state, state_path(&host));
    assert!(status.served.is_empty());
    assert!(status.claims.is_empty());
    let report = daemon.stop();
    assert_eq!(report, ShutdownReport::default());
    assert!(
        !control_path(&host).exists(),
        "the control socket is removed"
    );
}

#[test]
fn attach_serve_claims_records_the_frontend_before_starting_it_and_status_shows_it() {
    let host = host();
    let launches = Launches::default();
    let daemon = start(&host, &launches, false);
    let spec = sock(&host, "e1000e.sock");
    let Reply::Attached(reply) = daemon.request(attach_serve("00:04.0", &spec)).unwrap() else {
        panic!("not an attach reply");
    };
    assert_eq!(reply.attached.len(), 1);
    assert_eq!(reply.attached[0].previous_driver.as_deref(), Some("e1000e"));
    assert_eq!(reply.groups[0].iommu_group, 5);
    let served = reply.served.expect("served");
    assert_eq!(served.frontend, spec);
    assert_eq!(served.status.socket, spec.socket());
    assert!(!served.recovered);
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("vfio-pci"));
    // The spec was in the state file when the frontend started.
    assert_eq!(
        launches.log(),
        [format!("start 0000:00:04.0 group 5 {spec} recorded={spec}")]
    );
    let recorded = claims(&host);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].serve, Some(spec.to_string()));
    assert_eq!(recorded[0].phase, ClaimPhase::Attached);
    assert_eq!(recorded[0].owner_uid, nix::unistd::getuid().as_raw());

    launches.status.lock().unwrap().guest_connected = true;
    launches.status.lock().unwrap().mmio_reads = 7;
    let status = daemon.status();
    assert_eq!(status.served.len(), 1);
    assert_eq!(status.served[0].address, addr("0000:00:04.0"));
    assert!(status.served[0].status.guest_connected);
    assert_eq!(status.served[0].status.mmio_reads, 7);
    assert_eq!(status.claims, recorded);

    // Stopping gives the device back: it was claimed by this daemon.
    let report = daemon.stop();
    assert_eq!(report.stopped.len(), 1);
    assert_eq!(report.restored.len(), 1);
    assert_eq!(report.restored[0].driver.as_deref(), Some("e1000e"));
    assert!(report.failed.is_empty());
    assert_eq!(launches.log().last().unwrap(), "stop 0000:00:04.0");
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("e1000e"));
    assert!(claims(&host).is_empty());
}

#[test]
fn a_nic_in_use_is_refused_with_the_reason_and_nothing_is_claimed_or_started() {
    let host = host();
    host.add_interface("0000:00:02.0", "eth0", true);
    let launches = Launches::default();
    let daemon = start(&host, &launches, false);
    let error = daemon_error(daemon.request(attach_serve("00:02.0", &sock(&host, "a.sock"))));
    assert_eq!(error.kind, ErrorKind::Refused);
    assert!(
        error
            .message
            .contains("0000:00:02.0: network interface eth0 is up"),
        "{}",
        error.message
    );
    assert!(error.message.contains("--force"), "{}", error.message);
    assert!(launches.log().is_empty());
    assert!(claims(&host).is_empty());
    assert_eq!(host.driver_of("0000:00:02.0").as_deref(), Some("e1000"));
    daemon.stop();
}

#[test]
fn one_frontend_serves_one_device() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let error = daemon_error(daemon.request(Request::Attach {
        devices: vec![addr("00:02.0"), addr("00:03.0")],
        force: false,
        whole_group: false,
        serve: Some(sock(&host, "a.sock")),
    }));
    assert_eq!(error.kind, ErrorKind::BadRequest);
    assert!(
        error.message.contains("2 devices were named"),
        "{}",
        error.message
    );
    assert!(claims(&host).is_empty());
    daemon.stop();
}

#[test]
fn a_frontend_that_fails_to_start_gives_the_device_back() {
    let host = host();
    let launches = Launches::default();
    launches.fail.store(true, Ordering::SeqCst);
    let daemon = start(&host, &launches, false);
    let error = daemon_error(daemon.request(attach_serve("00:04.0", &sock(&host, "n.sock"))));
    assert_eq!(error.kind, ErrorKind::Failed);
    assert!(
        error.message.contains("no VFIO in this test"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("it was given back to e1000e"),
        "{}",
        error.message
    );
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("e1000e"));
    assert!(claims(&host).is_empty());
    assert!(daemon.status().served.is_empty());
    daemon.stop();
}

#[test]
fn serve_needs_a_claim_and_refuses_taken_sockets_and_served_devices() {
    let host = host();
    let launches = Launches::default();
    let daemon = start(&host, &launches, false);
    let a = sock(&host, "a.sock");
    let error = daemon_error(daemon.request(Request::Serve {
        device: addr("00:03.0"),
        frontend: a.clone(),
    }));
    assert_eq!(error.kind, ErrorKind::NotClaimed);
    assert!(
        error.message.contains("udrv attach 0000:00:03.0 --serve"),
        "{}",
        error.message
    );
    // Claimed without serving, then served.
    daemon
        .request(Request::Attach {
            devices: vec![addr("00:03.0"), addr("00:02.0")],
            force: false,
            whole_group: false,
            serve: None,
        })
        .unwrap();
    assert!(launches.log().is_empty());
    assert!(claims(&host).iter().all(|c| c.serve.is_none()));
    let Reply::Served(served) = daemon
        .request(Request::Serve {
            device: addr("00:03.0"),
            frontend: a.clone(),
        })
        .unwrap()
    else {
        panic!("not a serve reply")
    };
    assert_eq!(served.address, addr("0000:00:03.0"));
    // Another device on the same socket, the same device twice, the control socket.
    let taken = daemon_error(daemon.request(Request::Serve {
        device: addr("00:02.0"),
        frontend: a.clone(),
    }));
    assert_eq!(taken.kind, ErrorKind::Conflict);
    assert!(
        taken.message.contains("frontend socket of 0000:00:03.0"),
        "{}",
        taken.message
    );
    let twice = daemon_error(daemon.request(Request::Serve {
        device: addr("00:03.0"),
        frontend: sock(&host, "b.sock"),
    }));
    assert!(
        twice.message.contains("already served by"),
        "{}",
        twice.message
    );
    let control: FrontendSpec = format!("uml:{}", control_path(&host).display())
        .parse()
        .unwrap();
    let clash = daemon_error(daemon.request(Request::Serve {
        device: addr("00:02.0"),
        frontend: control,
    }));
    assert!(
        clash.message.contains("control socket"),
        "{}",
        clash.message
    );
    assert_eq!(launches.log().len(), 1);
    daemon.stop();
}

#[test]
fn unserve_stops_the_frontend_and_keeps_the_claim() {
    let host = host();
    let launches = Launches::default();
    let daemon = start(&host, &launches, false);
    let spec = sock(&host, "n.sock");
    daemon.request(attach_serve("00:04.0", &spec)).unwrap();
    launches.status.lock().unwrap().interrupts = 3;
    let Reply::Unserved(last) = daemon
        .request(Request::Unserve {
            device: addr("00:04.0"),
        })
        .unwrap()
    else {
        panic!("not an unserve reply")
    };
    assert_eq!(last.status.interrupts, 3);
    assert_eq!(launches.log().last().unwrap(), "stop 0000:00:04.0");
    let recorded = claims(&host);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].serve, None);
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("vfio-pci"));
    let again = daemon_error(daemon.request(Request::Unserve {
        device: addr("00:04.0"),
    }));
    assert_eq!(again.kind, ErrorKind::Conflict);
    assert!(again.message.contains("not served"), "{}", again.message);
    daemon.stop();
}

#[test]
fn detach_of_a_served_device_stops_its_frontend_and_gives_it_back() {
    let host = host();
    let launches = Launches::default();
    let daemon = start(&host, &launches, false);
    daemon
        .request(attach_serve("00:04.0", &sock(&host, "n.sock")))
        .unwrap();
    let reply = daemon.detach(&["00:04.0", "00:02.0"]);
    assert_eq!(reply.stopped.len(), 1);
    assert_eq!(reply.restored.len(), 1);
    assert_eq!(reply.restored[0].driver.as_deref(), Some("e1000e"));
    assert_eq!(reply.not_claimed.len(), 1);
    assert_eq!(reply.not_claimed[0].driver.as_deref(), Some("e1000"));
    assert!(reply.failed.is_empty());
    assert_eq!(launches.log().last().unwrap(), "stop 0000:00:04.0");
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("e1000e"));
    assert!(claims(&host).is_empty());
    assert!(daemon.status().served.is_empty());
    let report = daemon.stop();
    assert!(report.restored.is_empty(), "nothing left to give back");
}

#[test]
fn a_served_device_that_cannot_go_back_stays_claimed_but_unserved() {
    let host = host();
    let launches = Launches::default();
    let mut service_host = fake_host(&host);
    // e1000e's probe fails: the device cannot be given back.
    service_host.writer = Box::new(host.kernel().failing_probe("e1000e"));
    let daemon = start_on(&host, service_host, &launches, false);
    daemon
        .request(attach_serve("00:04.0", &sock(&host, "n.sock")))
        .unwrap();
    let reply = daemon.detach(&["00:04.0"]);
    assert_eq!(reply.stopped.len(), 1);
    assert_eq!(reply.failed.len(), 1);
    assert!(
        reply.failed[0]
            .error
            .contains("could not put it back on e1000e"),
        "{}",
        reply.failed[0].error
    );
    let recorded = claims(&host);
    assert_eq!(recorded.len(), 1, "the claim stays recorded for a retry");
    assert_eq!(recorded[0].serve, None, "but it is no longer served");
    assert!(daemon.status().served.is_empty());
    let report = daemon.stop();
    assert_eq!(report.failed.len(), 1, "{report:?}");
}

fn read_line(reader: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

#[test]
fn malformed_lines_are_answered_and_the_connection_stays_usable() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let stream = UnixStream::connect(&daemon.control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer
        .write_all(b"not json\n{\"version\":1,\"op\":\"reboot\"}\n\n{\"version\":7,\"op\":\"status\"}\n\xff\n")
        .unwrap();
    let expect = [
        "the line is not JSON",
        "unknown variant `reboot`",
        "protocol version 7 is not spoken here",
        "not UTF-8",
    ];
    for fragment in expect {
        let line = read_line(&mut reader);
        let error = decode_response(line.trim_end()).unwrap().unwrap_err();
        assert_eq!(error.kind, ErrorKind::BadRequest);
        assert!(
            error.message.contains(fragment),
            "{fragment}: {}",
            error.message
        );
    }
    // Still answering on the same connection.
    writer
        .write_all(format!("{}\n", Request::Status.encode()).as_bytes())
        .unwrap();
    let line = read_line(&mut reader);
    assert!(matches!(
        decode_response(line.trim_end()).unwrap(),
        Ok(Reply::Status(_))
    ));
    daemon.stop();
}

#[test]
fn an_oversize_line_is_answered_then_the_connection_closed() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let stream = UnixStream::connect(&daemon.control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    // No newline at all: the daemon must not wait for one.
    let junk = vec![b'{'; control::MAX_LINE + 4096];
    let _ = writer.write_all(&junk);
    let line = read_line(&mut reader);
    let error = decode_response(line.trim_end()).unwrap().unwrap_err();
    assert!(
        error.message.contains("longer than 65536 bytes"),
        "{}",
        error.message
    );
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing after the error: the connection is closed"
    );
    // The daemon itself is fine.
    assert!(daemon.status().served.is_empty());
    daemon.stop();
}

#[test]
fn a_client_that_never_reads_its_answers_is_disconnected() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let mut hog = UnixStream::connect(&daemon.control).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let line = format!("{}\n", Request::Status.encode());
    let mut refused = false;
    // Each answer is some hundred bytes: far more than the daemon keeps for a client.
    for _ in 0..100_000 {
        if hog.write_all(line.as_bytes()).is_err() {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the daemon kept taking requests whose answers nobody reads"
    );
    // Everyone else is still served.
    assert!(daemon.status().served.is_empty());
    daemon.stop();
}

#[test]
fn stopping_gives_back_what_the_daemon_claimed_and_leaves_other_claims() {
    let host = host();
    let launches = Launches::default();
    // Claimed by `udrv attach` before the daemon ran: not the daemon's to give back.
    let mut kernel = host.kernel();
    let mut modules = NoModules;
    Claimer::new(host.root(), &mut kernel, &mut modules, state_path(&host))
        .with_node_timeout(Duration::from_millis(50))
        .attach(&[addr("00:06.0")], &AttachOptions::default())
        .unwrap();
    let daemon = start(&host, &launches, false);
    daemon
        .request(attach_serve("00:04.0", &sock(&host, "n.sock")))
        .unwrap();
    daemon
        .request(Request::Attach {
            devices: vec![addr("00:03.0")],
            force: false,
            whole_group: false,
            serve: None,
        })
        .unwrap();
    let report = daemon.stop();
    let back: Vec<String> = report
        .restored
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(back, ["0000:00:03.0", "0000:00:04.0"]);
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("e1000e"));
    assert_eq!(host.driver_of("0000:00:06.0").as_deref(), Some("vfio-pci"));
    let left = claims(&host);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].address, addr("0000:00:06.0"));
}

#[test]
fn kept_claims_are_served_again_by_the_next_daemon() {
    let host = host();
    let launches = Launches::default();
    // Served with a polling worker on CPU 1: the next daemon serves it the same way.
    let spec = sock(&host, "n.sock").with_worker(crate::frontend::WorkerOptions {
        poll: Duration::from_micros(200),
        cpu: Some(1),
    });
    let daemon = start(&host, &launches, true);
    daemon.request(attach_serve("00:04.0", &spec)).unwrap();
    let report = daemon.stop();
    assert_eq!(report.kept, [addr("0000:00:04.0")]);
    assert!(report.restored.is_empty());
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("vfio-pci"));
    assert_eq!(claims(&host)[0].serve, Some(spec.to_string()));

    let daemon = start(&host, &launches, false);
    let status = daemon.status();
    assert_eq!(status.served.len(), 1);
    assert!(status.served[0].recovered);
    assert_eq!(status.served[0].frontend, spec);
    assert_eq!(launches.log().len(), 3, "{:?}", launches.log());
    assert!(
        launches.log()[2].contains("n.sock,poll-us=200,worker-cpu=1 recorded="),
        "{:?}",
        launches.log()
    );
    daemon.stop();
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("e1000e"));
}

#[test]
fn vfio_user_specs_are_recorded_and_served_again_by_the_next_daemon() {
    let host = host();
    let launches = Launches::default();
    let spec: FrontendSpec = format!(
        "vfio-user:{},direct-mmio,user=1000",
        host.path().join("v.sock").display()
    )
    .parse()
    .unwrap();
    let daemon = start(&host, &launches, true);
    daemon.request(attach_serve("00:04.0", &spec)).unwrap();
    daemon.stop();
    assert_eq!(claims(&host)[0].serve, Some(spec.to_string()));
    let daemon = start(&host, &launches, false);
    let status = daemon.status();
    assert_eq!(status.served.len(), 1);
    assert!(status.served[0].recovered);
    assert_eq!(status.served[0].frontend, spec);
    daemon.stop();
}

/// What a `kill -9` leaves: a served device on vfio-pci with its record, an attach
/// killed between unbind and probe, and a record of a device someone moved back.
#[test]
fn a_restart_after_a_kill_serves_again_repairs_and_reports_what_it_cannot() {
    let host = host();
    let mut kernel = host.kernel();
    let mut modules = NoModules;
    Claimer::new(host.root(), &mut kernel, &mut modules, state_path(&host))
        .with_node_timeout(Duration::from_millis(50))
        .attach(
            &[addr("00:04.0"), addr("00:02.0")],
            &AttachOptions::default(),
        )
        .unwrap();
    let served = sock(&host, "e1000e.sock");
    {
        let (file, mut state) = StateFile::open(&state_path(&host)).unwrap();
        for record in &mut state.claims {
            if record.address == addr("00:04.0") {
                record.serve = Some(served.to_string());
            } else {
                record.serve = Some(sock(&host, "gone.sock").to_string());
            }
        }
        // 00:03.0: killed after unbinding e1000, before vfio-pci probed it.
        state.put(ClaimRecord {
            address: addr("00:03.0"),
            original_driver: Some("e1000".into()),
            original_override: None,
            iommu_group: Some(4),
            owner_uid: 0,
            owner_name: None,
            pid: 1,
            claimed_at: 0,
            phase: ClaimPhase::Unbound,
            serve: None,
        });
        file.save(&state).unwrap();
    }
    host.set_driver(addr("00:03.0"), None);
    // 00:02.0 was put back on e1000 by hand; its record still says served.
    host.set_driver(addr("00:02.0"), Some("e1000"));

    let launches = Launches::default();
    let daemon = start(&host, &launches, false);
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    let status = daemon.status();
    assert_eq!(status.served.len(), 1);
    assert_eq!(status.served[0].address, addr("0000:00:04.0"));
    assert!(status.served[0].recovered);
    assert_eq!(
        launches.log(),
        [format!(
            "start 0000:00:04.0 group 5 {served} recorded={served}"
        )]
    );
    assert_eq!(status.recovery_failures.len(), 1);
    assert_eq!(status.recovery_failures[0].address, addr("0000:00:02.0"));
    assert!(
        status.recovery_failures[0].error.contains("now on e1000"),
        "{}",
        status.recovery_failures[0].error
    );
    assert!(status.claims.iter().all(|c| c.address != addr("00:03.0")));
    // Unserving the failed one drops its frontend record.
    daemon
        .request(Request::Unserve {
            device: addr("00:02.0"),
        })
        .unwrap();
    assert!(daemon.status().recovery_failures.is_empty());
    let record = claims(&host)
        .into_iter()
        .find(|c| c.address == addr("00:02.0"))
        .unwrap();
    assert_eq!(record.serve, None);
    daemon.stop();
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let config = DaemonConfig {
        control: control_path(&host),
        keep_claims: false,
        handle_signals: false,
        relaunch: None,
    };
    let launcher = FakeLauncher {
        state_path: state_path(&host),
        launches: Launches::default(),
    };
    let error = Daemon::start(config, fake_host(&host), Box::new(launcher))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains(&format!(
            "another udrv serve (pid {}) is running",
            std::process::id()
        )),
        "{error}"
    );
    assert!(
        daemon.status().served.is_empty(),
        "the first one still answers"
    );
    daemon.stop();
}

#[test]
fn sigterm_stops_the_daemon_and_gives_devices_back() {
    use std::os::unix::thread::JoinHandleExt;

    let host = host();
    let launches = Launches::default();
    let config = DaemonConfig {
        control: control_path(&host),
        keep_claims: false,
        handle_signals: true,
        relaunch: None,
    };
    let launcher = FakeLauncher {
        state_path: state_path(&host),
        launches: launches.clone(),
    };
    let service_host = fake_host(&host);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // SIGTERM is blocked in the daemon's thread only, and sent to that thread only:
    // the test process and its other threads are untouched.
    let thread = std::thread::spawn(move || {
        let daemon = Daemon::start(config, service_host, Box::new(launcher));
        let daemon = match daemon {
            Ok(d) => {
                ready_tx.send(true).unwrap();
                d
            }
            Err(e) => {
                ready_tx.send(false).unwrap();
                return Err(e);
            }
        };
        daemon.run()
    });
    assert!(ready_rx.recv().unwrap(), "the daemon started");
    let running = Running {
        control: control_path(&host),
        stop: None,
        thread,
    };
    running
        .request(attach_serve("00:04.0", &sock(&host, "n.sock")))
        .unwrap();
    nix::sys::pthread::pthread_kill(
        running.thread.as_pthread_t(),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let report = running.thread.join().unwrap().unwrap();
    assert_eq!(report.stopped.len(), 1);
    assert_eq!(report.restored.len(), 1);
    assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("e1000e"));
    assert!(claims(&host).is_empty());
    assert!(!control_path(&host).exists());
    assert!(!Path::new(&control_path(&host)).exists());
}

#[test]
fn an_upgrade_whose_program_cannot_run_leaves_everything_served() {
    let host = host();
    let launches = Launches::default();
    // An executable the kernel refuses to run while it is open for writing
    // (ETXTBSY). Were it ever run, it would fail the test run loudly.
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("udrv-next");
    let mut busy = std::fs::File::create(&program).unwrap();
    busy.write_all(b"#!/bin/sh\nexit 97\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let relaunch = Relaunch {
        binary: program.clone(),
        args: vec!["serve".into()],
    };
    let daemon = start_with(&host, fake_host(&host), &launches, false, Some(relaunch));
    let spec = sock(&host, "nic.sock");
    daemon.request(attach_serve("0000:00:04.0", &spec)).unwrap();

    let e = daemon_error(daemon.request(Request::Upgrade { binary: None }));
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(e.message.contains("udrv-next"), "{}", e.message);
    assert!(
        e.message.contains("everything served as before"),
        "{}",
        e.message
    );
    let status = daemon.status();
    assert_eq!(status.served.len(), 1);
    assert_eq!(status.served[0].frontend, spec);
    let log = launches.log();
    assert!(
        log.contains(&"hand_over 0000:00:04.0".to_string())
            && log.contains(&format!("resume 0000:00:04.0 {spec}")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("stop")), "{log:?}");

    // A frontend that cannot be carried: refused before anything is touched.
    launches.refuse_handover.store(true, Ordering::SeqCst);
    let e = daemon_error(daemon.request(Request::Upgrade { binary: None }));
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("cannot be carried"), "{}", e.message);
    assert_eq!(launches.log().len(), log.len(), "nothing was handed over");
    drop(busy);
    daemon.stop();
}

#[test]
fn an_embedded_daemon_refuses_to_upgrade() {
    let host = host();
    let daemon = start(&host, &Launches::default(), false);
    let e = daemon_error(daemon.request(Request::Upgrade { binary: None }));
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(daemon.status().served.is_empty());
    daemon.stop();
}
