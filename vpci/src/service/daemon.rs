//! `udrv serve`'s event loop: one mio poll over the control socket and its clients,
//! SIGTERM/SIGINT (a signalfd) and a waker for stop requests from the embedding
//! program. Requests are carried out on the loop, one at a time; frontends run on
//! threads of their own and are looked at between events, so a guest connecting or
//! an error shows in the log within [`WATCH_INTERVAL`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::event::Event;
use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, error, info, warn};

use super::connection::{Connection, Incoming, MAX_PENDING_OUTPUT};
use super::control::{
    encode_response, DaemonInfo, ErrorKind, ErrorReply, Reply, Request, UpgradeReply,
};
use super::control_socket::{authorize, ControlSocket, Peer, Previous};
use super::host::Host;
use super::launcher::FrontendLauncher;
use super::requests::{now_seconds, Service, ShutdownReport};
use super::signals::StopSignals;
use super::upgrade::{self, Carried, Relaunch};
use super::ServiceError;
use crate::handover::FdBag;

/// How often frontends are looked at for changes worth a log line.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CLIENT: usize = 16;

/// How to run the daemon.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The control socket.
    pub control: PathBuf,
    /// Leave devices on vfio-pci (still recorded, served again by the next start)
    /// when stopping, instead of giving them back.
    pub keep_claims: bool,
    /// Stop on SIGTERM and SIGINT: they are blocked in the calling thread and read
    /// from a signalfd. Create the daemon before starting other threads, so that
    /// they inherit the blocked mask.
    pub handle_signals: bool,
    /// How to run a new program for `udrv upgrade`; `None`: upgrades are refused
    /// (a daemon embedded in another program).
    pub relaunch: Option<Relaunch>,
}

/// Asks a running daemon to stop, as SIGTERM does.
#[derive(Clone, Debug)]
pub struct StopHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Makes the daemon's loop stop after the request it is carrying out.
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "waking the event loop to stop");
        }
    }
}

/// The daemon: bound, recovered, ready to [`run`](Daemon::run).
pub struct Daemon {
    poll: Poll,
    listener: UnixListener,
    socket: ControlSocket,
    signals: Option<StopSignals>,
    stop: StopHandle,
    clients: HashMap<Token, Connection>,
    next_token: usize,
    service: Service,
    uid: u32,
    keep_claims: bool,
    relaunch: Option<Relaunch>,
}

/// The program an upgrade would run, if `item` asks for an upgrade.
fn upgrade_request(item: &Incoming) -> Option<Option<PathBuf>> {
    match item {
        Incoming::Line(line) => match Request::decode(line) {
            Ok(Request::Upgrade { binary }) => Some(binary),
            _ => None,
        },
        Incoming::Bad(_) => None,
    }
}

/// Refuses a `binary` that is not an executable file, naming it.
fn check_program(binary: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(binary) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!(
            "{} is not an executable file; name the new udrv with --binary",
            binary.display()
        )),
        Err(e) => Err(format!(
            "{}: {e}; install the new udrv there first, or name it with --binary",
            binary.display()
        )),
    }
}

fn event_loop_error(action: &'static str) -> impl FnOnce(io::Error) -> ServiceError {
    move |error| ServiceError::EventLoop { action, error }
}

impl Daemon {
    /// Binds the control socket (refusing if another daemon runs there), then serves
    /// again the devices the state file records as served and undoes interrupted
    /// claims.
    pub fn start(
        config: DaemonConfig,
        host: Host,
        launcher: Box<dyn FrontendLauncher>,
    ) -> Result<Daemon, ServiceError> {
        let signals = config.handle_signals.then(StopSignals::new).transpose()?;
        let (socket, listener, previous) = ControlSocket::bind(&config.control)?;
        if previous == Previous::StaleSocket {
            info!(control = %config.control.display(), "replaced the stale control socket of a daemon that is gone");
        }
        let uid = nix::unistd::getuid().as_raw();
        let info = DaemonInfo {
            pid: std::process::id(),
            uid,
            control: config.control.clone(),
            state: host.state_path.clone(),
            started_at: now_seconds(),
            keep_claims: config.keep_claims,
            upgrades: 0,
        };
        info!(
            pid = info.pid,
            control = %info.control.display(),
            state = %info.state.display(),
            keep_claims = config.keep_claims,
            "udrv serve started"
        );
        let mut service = Service::new(host, launcher, info);
        service.recover();
        Daemon::assemble(config, socket, listener, signals, service)
    }

    /// The daemon a previous program of this process handed over through the
    /// inherited socket `fd` (`udrv upgrade`): the same control socket, the same
    /// devices served, their clients still connected. Answers the `udrv upgrade`
    /// that asked, then recovers as [`start`](Self::start) does what was not
    /// carried.
    pub fn resume(
        config: DaemonConfig,
        host: Host,
        launcher: Box<dyn FrontendLauncher>,
        fd: RawFd,
    ) -> Result<Daemon, ServiceError> {
        let signals = config.handle_signals.then(StopSignals::new).transpose()?;
        let (carried, mut bag) = upgrade::receive_from_predecessor(fd)?;
        let listener = upgrade::take_listener(&carried, &mut bag)?;
        let socket = ControlSocket::adopt(&config.control)?;
        let mut info = carried.info.clone();
        info.pid = std::process::id();
        info.upgrades += 1;
        info!(
            pid = info.pid,
            control = %info.control.display(),
            upgrades = info.upgrades,
            devices = carried.devices.len(),
            "udrv serve upgraded: taking over"
        );
        let mut service = Service::new(host, launcher, info.clone());
        service.claimed_here = carried.claimed_here.iter().copied().collect();
        let Carried {
            devices,
            requester,
            control_listener,
            info: previous,
            claimed_here,
        } = carried;
        let (carried_devices, failed) = service.take_over(devices, &mut bag);
        let binary = config
            .relaunch
            .as_ref()
            .map(|r| r.binary.clone())
            .unwrap_or_default();
        upgrade::answer_requester(
            &Carried {
                info: previous,
                control_listener,
                requester,
                claimed_here,
                devices: Vec::new(),
            },
            &mut bag,
            Reply::Upgraded(UpgradeReply {
                daemon: info,
                binary,
                carried: carried_devices,
                failed,
            }),
        );
        service.recover();
        Daemon::assemble(config, socket, listener, signals, service)
    }

    fn assemble(
        config: DaemonConfig,
        socket: ControlSocket,
        listener: std::os::unix::net::UnixListener,
        signals: Option<StopSignals>,
        service: Service,
    ) -> Result<Daemon, ServiceError> {
        listener
            .set_nonblocking(true)
            .map_err(event_loop_error("making the control socket non-blocking"))?;
        let mut listener = UnixListener::from_std(listener);
        let poll = Poll::new().map_err(event_loop_error("creating the poll"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(event_loop_error("registering the control socket"))?;
        if let Some(signals) = &signals {
            poll.registry()
                .register(
                    &mut SourceFd(&signals.as_raw_fd()),
                    SIGNALS,
                    Interest::READABLE,
                )
                .map_err(event_loop_error("registering the signalfd"))?;
        }
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(event_loop_error("creating the waker"))?;
        Ok(Daemon {
            poll,
            listener,
            socket,
            signals,
            stop: StopHandle {
                requested: Arc::new(AtomicBool::new(false)),
                waker: Arc::new(waker),
            },
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            service,
            uid: nix::unistd::getuid().as_raw(),
            keep_claims: config.keep_claims,
            relaunch: config.relaunch,
        })
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The control socket's path.
    pub fn control_path(&self) -> &Path {
        self.socket.path()
    }

    /// Runs until SIGTERM/SIGINT or a [`StopHandle`]; then stops every frontend, gives
    /// the devices back (unless `keep_claims`) and removes the control socket.
    pub fn run(mut self) -> Result<ShutdownReport, ServiceError> {
        let mut events = Events::with_capacity(64);
        loop {
            match self.poll.poll(&mut events, Some(WATCH_INTERVAL)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(event_loop_error("waiting for events")(e)),
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => {
                        if let Some(signals) = &self.signals {
                            for signal in signals.take() {
                                info!(signal = %signal, "stopping");
                                self.stop.requested.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    WAKER => {}
                    token => self.client_event(token, event),
                }
            }
            self.service.watch();
            if self.stop.requested.load(Ordering::SeqCst) {
                break;
            }
        }
        // Clients waiting for an answer get EOF rather than a half-carried-out request.
        for (_, mut client) in self.clients.drain() {
            let _ = self.poll.registry().deregister(&mut client.stream);
        }
        let report = self.service.shutdown(self.keep_claims);
        info!(
            stopped = report.stopped.len(),
            restored = report.restored.len(),
            kept = report.kept.len(),
            failed = report.failed.len(),
            "udrv serve stopped"
        );
        // Dropping the socket guard removes the control socket.
        drop(self.socket);
        Ok(report)
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "accepting a control connection");
                    return;
                }
            };
            let peer = match Peer::of(&stream) {
                Ok(peer) => peer,
                Err(e) => {
                    warn!(error = %e, "reading a control client's credentials; disconnected");
                    continue;
                }
            };
            if let Err(message) = authorize(&peer, self.uid) {
                warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "control connection refused: not root or the daemon's user"
                );
                let mut client = Connection::new(stream, peer);
                client.queue(&encode_response(&Err(ErrorReply {
                    kind: ErrorKind::PermissionDenied,
                    message,
                })));
                // One short line into a fresh socket's buffer: it fits, or the peer
                // has gone; either way the connection ends here.
                let _ = client.flush();
                continue;
            }
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                warn!(error = %e, "registering a control connection");
                continue;
            }
            debug!(uid = peer.uid, pid = peer.pid, "control client connected");
            self.clients.insert(token, Connection::new(stream, peer));
        }
    }

    fn client_event(&mut self, token: Token, event: &Event) {
        let Some(mut client) = self.clients.remove(&token) else {
            return;
        };
        let mut broken = false;
        if event.is_readable() || event.is_read_closed() {
            loop {
                let (incoming, more) = match client.receive() {
                    Ok(received) => received,
                    Err(e) => {
                        debug!(error = %e, "reading from a control client");
                        broken = true;
                        break;
                    }
                };
                for item in incoming {
                    let line = match upgrade_request(&item) {
                        Some(binary) => self.upgrade(&client, binary),
                        None => self.answer(&client.peer, item),
                    };
                    client.queue(&line);
                }
                // Answers the client does not take pile up: no more requests are
                // read from it once they pass the limit (it is cut off below).
                if !more || client.flush().is_err() || client.pending() > MAX_PENDING_OUTPUT {
                    break;
                }
            }
        }
        if !broken {
            match client.flush() {
                Ok(_) if client.pending() > MAX_PENDING_OUTPUT => warn!(
                    uid = client.peer.uid,
                    pid = client.peer.pid,
                    pending = client.pending(),
                    "control client disconnected: it does not read its answers"
                ),
                Ok(pending) => {
                    let interest = if pending {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if !client.finished()
                        && self
                            .poll
                            .registry()
                            .reregister(&mut client.stream, token, interest)
                            .is_ok()
                    {
                        self.clients.insert(token, client);
                        return;
                    }
                }
                Err(e) => debug!(error = %e, "writing to a control client"),
            }
        }
        let _ = self.poll.registry().deregister(&mut client.stream);
    }

    /// `udrv upgrade` from `client`: hand everything over and exec the new program.
    /// Returns only if that could not be done (the response line says why), with
    /// everything served as before.
    fn upgrade(&mut self, client: &Connection, binary: Option<PathBuf>) -> String {
        let peer = &client.peer;
        let refuse = |kind, message: String| {
            warn!(uid = peer.uid, pid = peer.pid, error = %message, "upgrade refused");
            encode_response(&Err(ErrorReply { kind, message }))
        };
        let Some(relaunch) = self.relaunch.clone() else {
            return refuse(
                ErrorKind::Refused,
                "this daemon runs inside another program, not as `udrv serve`: it cannot replace its program".into(),
            );
        };
        let binary = binary.unwrap_or_else(|| relaunch.binary.clone());
        if let Err(why) = check_program(&binary) {
            return refuse(ErrorKind::BadRequest, why);
        }
        let refusals = self.service.handover_refusals();
        if !refusals.is_empty() {
            return refuse(
                ErrorKind::Conflict,
                format!("not upgraded, nothing changed:\n{}", refusals.join("\n")),
            );
        }
        info!(uid = peer.uid, pid = peer.pid, binary = %binary.display(), "upgrade asked for");
        let mut bag = FdBag::new();
        let (devices, lost) = self.service.hand_over_all(&mut bag);
        let fds = self
            .listener
            .as_fd()
            .try_clone_to_owned()
            .and_then(|listener| Ok((listener, client.stream.as_fd().try_clone_to_owned()?)));
        let failure = match fds {
            Ok((listener, requester)) => {
                let carried = Carried {
                    info: self.service.info.clone(),
                    control_listener: bag.put(listener),
                    requester: Some(bag.put(requester)),
                    claimed_here: self.service.claimed_here.iter().copied().collect(),
                    devices,
                };
                let why = upgrade::exec_successor(&relaunch, &binary, &carried, &bag);
                // Still here: the new program did not start. Take everything back.
                let (_, failed) = self.service.take_over(carried.devices, &mut bag);
                format!(
                    "{why}; udrv serve goes on with its running program{}",
                    if failed.is_empty() && lost.is_empty() {
                        ", everything served as before".to_string()
                    } else {
                        let list: Vec<String> = lost
                            .iter()
                            .chain(&failed)
                            .map(|f| format!("{}: {}", f.address, f.error))
                            .collect();
                        format!("; these devices are no longer served: {}", list.join("; "))
                    }
                )
            }
            Err(e) => {
                let (_, _) = self.service.take_over(devices, &mut bag);
                format!("duplicating the control sockets for the new program: {e}")
            }
        };
        error!(error = %failure, "upgrade failed");
        encode_response(&Err(ErrorReply {
            kind: ErrorKind::Failed,
            message: failure,
        }))
    }

    /// Carries out one line from `peer`; returns the response line.
    fn answer(&mut self, peer: &Peer, item: Incoming) -> String {
        let request = match item {
            Incoming::Line(line) => Request::decode(&line),
            Incoming::Bad(e) => Err(e),
        };
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                warn!(uid = peer.uid, pid = peer.pid, error = %e, "bad request");
                return encode_response(&Err(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                }));
            }
        };
        let op = request.op();
        let summary = request.to_string();
        let response = self.service.handle(request, peer).map_err(|e| ErrorReply {
            kind: e.kind(),
            message: e.to_string(),
        });
        match &response {
            Ok(_) => info!(op, uid = peer.uid, pid = peer.pid, request = %summary, "request done"),
            Err(e) => {
                warn!(op, uid = peer.uid, pid = peer.pid, request = %summary, error = %e.message, "request failed")
            }
        }
        encode_response(&response)
    }
}
