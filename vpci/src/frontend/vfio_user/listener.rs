//! The socket and its clients: bound mode 0600 (owned by the allowed user, if one is
//! named), one client served at a time on a thread of its own, each client's peer
//! credentials checked, and each session ended (device quiesced, DMA unmapped,
//! function rebuilt) before the next client is accepted.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dma::DmaMapper;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use udriver::vfio::EventFd;

use super::protocol::{reply_header, Reply};
use super::session::{Outcome, Session, SessionEndError, SessionOptions, SessionState};
use super::status::{bump, ClientPeer, Counters, VfioUserStatus};
use super::wire::{send_reply, MessageReader, ReadError};
use crate::handover::{FdBag, FdSlot, HandoverError};
use crate::passthrough::{PassthroughDevice, PassthroughError, PassthroughFunction};
use crate::socket_file::{Peer, SocketFile, SocketFileError};

/// How a [`VfioUserServer`] listens.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The socket to create.
    pub socket: PathBuf,
    /// Besides root and this process's user, the user a VMM may run as (the socket
    /// is owned by it).
    pub allowed_uid: Option<u32>,
    /// What each session offers.
    pub session: SessionOptions,
}

/// Why a server could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Checking, binding or placing the listening socket failed.
    #[error("vfio-user socket {path}: {action}: {error}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        action: &'static str,
        /// The system's error.
        error: io::Error,
    },
    /// A live server answers on the socket path.
    #[error("vfio-user socket {0}: a server answers there already")]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is left alone.
    #[error("vfio-user socket {0}: something other than a socket is there")]
    NotASocket(PathBuf),
    /// The passthrough function failed.
    #[error("vfio-user: {0}")]
    Function(#[from] PassthroughError),
    /// A session could not hand the device on, so the function is lost.
    #[error("vfio-user: {0}")]
    Session(#[from] SessionEndError),
    /// The server thread could not be spawned, or panicked.
    #[error("vfio-user server thread: {0}")]
    Thread(String),
    /// Handing the server over to a successor, or resuming one, failed.
    #[error("vfio-user: {0}")]
    Handover(#[from] HandoverError),
}

/// A server carried to a successor process (`udrv serve`'s upgrade): the socket
/// keeps listening, and a connected client goes on where it was.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ServerState {
    /// The listening socket.
    pub listener: FdSlot,
    /// The client being served, if one is.
    pub client: Option<ClientState>,
}

/// A connected client carried to a successor.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientState {
    /// Its connection.
    pub stream: FdSlot,
    /// Who it is.
    pub peer: ClientPeer,
    /// Its session.
    pub session: SessionState,
}

/// How the server thread ended. Made once per server: the sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Ended<D: PassthroughDevice + 'static> {
    /// Stopped: the client's session ended, the function rebuilt.
    Stopped(PassthroughFunction<D>),
    /// Handed over: nothing ended; everything is in `bag`.
    HandedOver(ServerState, D),
}

/// What the server thread starts with. Made once per server.
#[allow(clippy::large_enum_variant)]
enum Start<D: PassthroughDevice + 'static> {
    /// A function, no client yet.
    Idle(PassthroughFunction<D>),
    /// A client's session a predecessor handed over, and its connection.
    Client(Session<D>, UnixStream, ClientPeer),
}

/// A passthrough function served over vfio-user on a socket.
pub struct VfioUserServer<D: PassthroughDevice + 'static> {
    socket: PathBuf,
    direct_mmio: bool,
    counters: Arc<Counters>,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<Result<Ended<D>, ServerError>>>,
}

/// Asks the server thread to end: a flag, an eventfd that wakes its accept, and the
/// connection it serves (shut down so that a blocked read returns).
struct Stop {
    requested: AtomicBool,
    /// The stop is a handover: leave the client connected and the device as it is.
    hand_over: AtomicBool,
    wake: EventFd,
    client: Mutex<Option<UnixStream>>,
    /// Where a handover puts its fds (lent by [`VfioUserServer::hand_over`]).
    bag: Mutex<FdBag>,
}

fn bind(path: &Path, owner: Option<u32>) -> Result<(SocketFile, UnixListener), ServerError> {
    match SocketFile::bind(path, owner) {
        Ok((file, listener, _)) => Ok((file, listener)),
        Err(SocketFileError::NotASocket(path)) => Err(ServerError::NotASocket(path)),
        Err(SocketFileError::InUse { path, .. }) => Err(ServerError::InUse(path)),
        Err(SocketFileError::Io {
            path,
            action,
            error,
        }) => Err(ServerError::Socket {
            path,
            action,
            error,
        }),
    }
}

/// Who may connect: root, this process's user, and the allowed one.
fn authorize(peer: &ClientPeer, allowed: Option<u32>) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid == 0 || peer.uid == me || Some(peer.uid) == allowed {
        return Ok(());
    }
    Err(format!(
        "uid {} (pid {}) may not use this device: only root, uid {me}{} may",
        peer.uid,
        peer.pid,
        allowed.map(|u| format!(" and uid {u}")).unwrap_or_default()
    ))
}

impl<D: PassthroughDevice + 'static> VfioUserServer<D> {
    /// Serve `function` on a new socket at `options.socket`, its DMA through `mapper`
    /// (the IOMMU container the device is attached to). Returns once the socket
    /// listens.
    pub fn start(
        function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let (file, listener) = bind(&options.socket, options.allowed_uid)?;
        Self::spawn(
            Start::Idle(function),
            mapper,
            options,
            file,
            listener,
            Arc::default(),
        )
    }

    /// The server a predecessor process handed over (see
    /// [`hand_over`](Self::hand_over)), over the same device and container: its
    /// socket listens on, and its client, if one was connected, is served on from
    /// where it was, its DMA mappings and interrupts untouched.
    pub fn resume(
        device: D,
        mapper: Arc<dyn DmaMapper>,
        options: ServerOptions,
        state: &ServerState,
        bag: &mut FdBag,
    ) -> Result<Self, ServerError> {
        let socket_error = |action: &'static str| {
            let path = options.socket.clone();
            move |error: io::Error| ServerError::Socket {
                path,
                action,
                error,
            }
        };
        let listener = UnixListener::from(bag.take(state.listener)?);
        let file = SocketFile::adopt(&options.socket).map_err(socket_error("adopting"))?;
        let counters = Arc::new(Counters::default());
        let start = match &state.client {
            None => Start::Idle(PassthroughFunction::new(device)?),
            Some(client) => {
                let stream = UnixStream::from(bag.take(client.stream)?);
                let session = Session::resume(
                    device,
                    mapper.clone(),
                    options.session.clone(),
                    counters.clone(),
                    &client.session,
                    bag,
                )?;
                // Shown connected from the start, as before the handover.
                counters.set_client(Some(client.peer));
                bump(&counters.clients_served);
                session.publish_dma();
                Start::Client(session, stream, client.peer)
            }
        };
        Self::spawn(start, mapper, options, file, listener, counters)
    }

    fn spawn(
        start: Start<D>,
        mapper: Arc<dyn DmaMapper>,
        options: ServerOptions,
        file: SocketFile,
        listener: UnixListener,
        counters: Arc<Counters>,
    ) -> Result<Self, ServerError> {
        let stop = Arc::new(Stop {
            requested: AtomicBool::new(false),
            hand_over: AtomicBool::new(false),
            wake: EventFd::new().map_err(|e| ServerError::Socket {
                path: options.socket.clone(),
                action: "creating its stop eventfd",
                error: e,
            })?,
            client: Mutex::new(None),
            bag: Mutex::new(FdBag::new()),
        });
        let socket = options.socket.clone();
        let direct_mmio = options.session.direct_mmio;
        let thread = {
            let counters = counters.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("udrv-vfio-user".into())
                .spawn(move || {
                    let ended = serve(start, mapper, options, &listener, &counters, &stop);
                    match ended {
                        Ok(Ended::HandedOver(mut state, device)) => {
                            // The successor listens on: the socket file stays, and the
                            // listener goes with the rest.
                            file.keep();
                            let mut bag = stop.bag.lock().unwrap_or_else(|e| e.into_inner());
                            state.listener = bag.put(listener.into());
                            Ok(Ended::HandedOver(state, device))
                        }
                        other => other,
                    }
                })
                .map_err(|e| ServerError::Thread(e.to_string()))?
        };
        Ok(VfioUserServer {
            socket,
            direct_mmio,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Counters and the client now.
    pub fn status(&self) -> VfioUserStatus {
        self.counters
            .snapshot(self.socket.clone(), self.direct_mmio)
    }

    /// Disconnect the client (its session ends as on a disconnect: device
    /// quiesced, DMA unmapped), remove the socket and give the function back.
    pub fn stop(mut self) -> Result<PassthroughFunction<D>, ServerError> {
        self.request_stop();
        match self.join()? {
            Ended::Stopped(function) => Ok(function),
            Ended::HandedOver(..) => {
                Err(ServerError::Thread("handed over when asked to stop".into()))
            }
        }
    }

    /// Give the server up to a successor process between two messages, as it is:
    /// the socket file stays, the listener, the client's connection and session
    /// and their fds go into `bag`, the device is returned untouched (not
    /// quiesced, its DMA mappings in the IOMMU, the client's interrupts wired).
    /// The successor calls [`resume`](Self::resume).
    pub fn hand_over(mut self, bag: &mut FdBag) -> Result<(ServerState, D), ServerError> {
        *self.stop.bag.lock().unwrap_or_else(|e| e.into_inner()) = std::mem::take(bag);
        self.stop.hand_over.store(true, Ordering::SeqCst);
        self.stop.requested.store(true, Ordering::SeqCst);
        let _ = self.stop.wake.signal();
        let ended = self.join();
        *bag = std::mem::take(&mut *self.stop.bag.lock().unwrap_or_else(|e| e.into_inner()));
        match ended? {
            Ended::HandedOver(state, device) => Ok((state, device)),
            Ended::Stopped(_) => Err(ServerError::Thread(
                "stopped when asked to hand over".into(),
            )),
        }
    }

    fn join(&mut self) -> Result<Ended<D>, ServerError> {
        let thread = self.thread.take().expect("joined only here");
        thread
            .join()
            .map_err(|_| ServerError::Thread("panicked".into()))?
    }

    fn request_stop(&self) {
        self.stop.requested.store(true, Ordering::SeqCst);
        let _ = self.stop.wake.signal();
        if let Some(client) = self
            .stop
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl<D: PassthroughDevice + 'static> Drop for VfioUserServer<D> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.request_stop();
            let _ = thread.join();
        }
    }
}

/// Wait for a client or a stop; `None` on stop.
fn accept(listener: &UnixListener, stop: &Stop) -> io::Result<Option<UnixStream>> {
    loop {
        if stop.requested.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if fds[1].any().unwrap_or(false) {
            return Ok(None);
        }
        if fds[0].any().unwrap_or(false) {
            let (stream, _) = listener.accept()?;
            return Ok(Some(stream));
        }
    }
}

/// Accept clients until stopped: each authorized one is handed to the serving
/// thread if it is idle; one that comes while another is served is refused (closed
/// at once, so that its VMM fails at its first message instead of waiting).
fn accept_clients(
    listener: &UnixListener,
    options: &ServerOptions,
    counters: &Counters,
    stop: &Stop,
    serving: &AtomicBool,
    clients: std::sync::mpsc::SyncSender<(UnixStream, ClientPeer)>,
) {
    loop {
        let stream = match accept(listener, stop) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                counters.error(format!("accepting a client: {e}"));
                continue;
            }
        };
        let peer = match Peer::of(&stream) {
            Ok(c) => ClientPeer {
                pid: c.pid,
                uid: c.uid,
            },
            Err(e) => {
                counters.error(format!("reading a client's credentials: {e}"));
                continue;
            }
        };
        if let Err(why) = authorize(&peer, options.allowed_uid) {
            counters.error(why);
            continue;
        }
        if serving
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            counters.error(format!(
                "pid {} (uid {}) refused: another client is being served on {}",
                peer.pid,
                peer.uid,
                options.socket.display()
            ));
            continue;
        }
        if clients.send((stream, peer)).is_err() {
            return;
        }
    }
}

fn serve<D: PassthroughDevice + 'static>(
    start: Start<D>,
    mapper: Arc<dyn DmaMapper>,
    options: ServerOptions,
    listener: &UnixListener,
    counters: &Arc<Counters>,
    stop: &Stop,
) -> Result<Ended<D>, ServerError> {
    let serving = AtomicBool::new(matches!(start, Start::Client(..)));
    let (handoff, clients) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let acceptor =
            scope.spawn(|| accept_clients(listener, &options, counters, stop, &serving, handoff));
        let served = serve_clients(start, &mapper, &options, counters, stop, &serving, &clients);
        // The acceptor ends on the stop request; make sure it was made (the serving
        // side can also end on a device error).
        stop.requested.store(true, Ordering::SeqCst);
        let _ = stop.wake.signal();
        drop(clients);
        let _ = acceptor.join();
        served
    })
}

/// Hand the function (and the client, if one is served) over.
fn hand_over<D: PassthroughDevice + 'static>(
    function: Option<PassthroughFunction<D>>,
    client: Option<(Session<D>, UnixStream, ClientPeer)>,
    stop: &Stop,
) -> Result<Ended<D>, ServerError> {
    let mut bag = stop.bag.lock().unwrap_or_else(|e| e.into_inner());
    // The listener's slot is filled in once the serving threads are done with it.
    let placeholder = FdSlot(u32::MAX);
    match (function, client) {
        (_, Some((session, stream, peer))) => {
            let (session, device) = session.hand_over(&mut bag)?;
            let stream = bag.put(stream.into());
            Ok(Ended::HandedOver(
                ServerState {
                    listener: placeholder,
                    client: Some(ClientState {
                        stream,
                        peer,
                        session,
                    }),
                },
                device,
            ))
        }
        (Some(function), None) => Ok(Ended::HandedOver(
            ServerState {
                listener: placeholder,
                client: None,
            },
            function.into_device(),
        )),
        (None, None) => Err(ServerError::Thread("nothing to hand over".into())),
    }
}

fn serve_clients<D: PassthroughDevice + 'static>(
    start: Start<D>,
    mapper: &Arc<dyn DmaMapper>,
    options: &ServerOptions,
    counters: &Arc<Counters>,
    stop: &Stop,
    serving: &AtomicBool,
    clients: &std::sync::mpsc::Receiver<(UnixStream, ClientPeer)>,
) -> Result<Ended<D>, ServerError> {
    let mut function = match start {
        Start::Idle(function) => function,
        Start::Client(session, stream, peer) => {
            let clone = stream.try_clone().map_err(|e| {
                ServerError::Thread(format!("duplicating the client's socket: {e}"))
            })?;
            *stop.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
            tracing::info!(pid = peer.pid, uid = peer.uid, socket = %options.socket.display(), "vfio-user client carried over from the previous udrv");
            let (session, why) = converse(session, &stream, counters, stop);
            if why == Ending::HandOver {
                return hand_over(None, Some((session, stream, peer)), stop);
            }
            end_session(session, peer, stream, counters, stop, serving)?
        }
    };
    // The acceptor ends (and drops its sender) when stopped.
    loop {
        let Ok((stream, peer)) = clients.recv() else {
            break;
        };
        let Ok(clone) = stream.try_clone() else {
            counters.error("duplicating a client's socket".into());
            serving.store(false, Ordering::SeqCst);
            continue;
        };
        *stop.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
        if stop.requested.load(Ordering::SeqCst) {
            break;
        }
        counters.set_client(Some(peer));
        bump(&counters.clients_served);
        tracing::info!(pid = peer.pid, uid = peer.uid, socket = %options.socket.display(), "vfio-user client connected");
        let session = Session::with_counters(
            function,
            mapper.clone(),
            options.session.clone(),
            counters.clone(),
        )?;
        let (session, why) = converse(session, &stream, counters, stop);
        if why == Ending::HandOver {
            return hand_over(None, Some((session, stream, peer)), stop);
        }
        function = end_session(session, peer, stream, counters, stop, serving)?;
    }
    if stop.hand_over.load(Ordering::SeqCst) {
        return hand_over(Some(function), None, stop);
    }
    Ok(Ended::Stopped(function))
}

/// The client went away (or is sent away): its session ends, the device is
/// quiesced and its DMA unmapped, and the function is built again for the next.
fn end_session<D: PassthroughDevice + 'static>(
    session: Session<D>,
    peer: ClientPeer,
    stream: UnixStream,
    counters: &Counters,
    stop: &Stop,
    serving: &AtomicBool,
) -> Result<PassthroughFunction<D>, ServerError> {
    drop(stream);
    *stop.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
    // The status shows the client gone only once its session is over: the
    // device quiesced and its DMA unmapped; then the next client may come.
    let ended = session.end();
    serving.store(false, Ordering::SeqCst);
    counters.set_client(None);
    let function = ended?;
    tracing::info!(
        pid = peer.pid,
        "vfio-user client gone; device quiesced, DMA unmapped"
    );
    Ok(function)
}

/// Why a conversation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The client went, or was disconnected.
    Closed,
    /// A handover was asked for; the client stays connected.
    HandOver,
}

/// How long a read of the client's socket blocks before a handover or stop is
/// looked for.
const QUIET_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// What waiting for the client's next message found.
enum Wait {
    /// The client sent something (or closed).
    Readable,
    /// The timeout passed.
    Timeout,
    /// A handover was asked for.
    HandOver,
    /// A stop was asked for.
    Stop,
}

/// Wait until `stream` has something to read, `timeout` passes (`None`: never) or
/// a handover is asked for. A stop that is not a handover shuts the stream down,
/// which makes it readable.
fn wait_for_message(
    stream: &UnixStream,
    stop: &Stop,
    timeout: Option<std::time::Duration>,
) -> io::Result<Wait> {
    let timeout = match timeout {
        Some(t) => PollTimeout::from(u16::try_from(t.as_millis()).unwrap_or(u16::MAX)),
        None => PollTimeout::NONE,
    };
    let mut fds = [
        PollFd::new(stream.as_fd(), PollFlags::POLLIN),
        PollFd::new(stop.wake.as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, timeout) {
        Ok(0) => return Ok(Wait::Timeout),
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(Wait::Timeout),
        Err(e) => return Err(e.into()),
    }
    if stop.hand_over.load(Ordering::SeqCst) {
        return Ok(Wait::HandOver);
    }
    if fds[0].any().unwrap_or(false) {
        return Ok(Wait::Readable);
    }
    // Woken for a plain stop (before the stream could be shut down).
    Ok(Wait::Stop)
}

/// Serve one client until it goes away, must be disconnected, or a handover is
/// asked for (only ever between two messages, with nothing half read).
fn converse<D: PassthroughDevice + 'static>(
    mut session: Session<D>,
    stream: &UnixStream,
    counters: &Counters,
    stop: &Stop,
) -> (Session<D>, Ending) {
    let mut reader = MessageReader::new();
    // Reads block at most this long, so that a handover or stop asked for while the
    // client is quiet is seen; a busy client costs no extra system call per message.
    if let Err(e) = stream.set_read_timeout(Some(QUIET_CHECK)) {
        counters.error(format!("setting the client socket's read timeout: {e}"));
        return (session, Ending::Closed);
    }
    loop {
        if let Some(interval) = session.poll_interval().filter(|_| !reader.has_buffered()) {
            // A device that needs looking at (a derived INTx with a command in
            // flight) is polled between messages.
            match wait_for_message(stream, stop, Some(interval)) {
                Ok(Wait::Readable) => {}
                Ok(Wait::Timeout) => {
                    session.poll_device();
                    continue;
                }
                Ok(Wait::HandOver) => return (session, Ending::HandOver),
                Ok(Wait::Stop) => return (session, Ending::Closed),
                Err(e) => {
                    counters.error(format!("waiting for the client: {e}"));
                    return (session, Ending::Closed);
                }
            }
        }
        let (incoming, payload) = match reader.next(stream) {
            Ok(m) => m,
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Quiet (or in the middle of a message, which is finished first).
                if !reader.has_buffered() {
                    if stop.hand_over.load(Ordering::SeqCst) {
                        return (session, Ending::HandOver);
                    }
                    if stop.requested.load(Ordering::SeqCst) {
                        return (session, Ending::Closed);
                    }
                }
                continue;
            }
            Err(ReadError::Closed) => return (session, Ending::Closed),
            Err(ReadError::BadHeader(header, refusal)) => {
                bump(&counters.disconnects_for_errors);
                counters.error(format!("{refusal}; disconnecting"));
                let _ = send_reply(
                    stream,
                    &reply_header(&header, 0, Some(refusal.errno)),
                    &Reply::empty(),
                );
                return (session, Ending::Closed);
            }
            Err(ReadError::Io(e)) => {
                counters.error(format!("reading from the client: {e}"));
                return (session, Ending::Closed);
            }
        };
        let outcome = match incoming.fd_refusal {
            // The fds were cut off: whatever the command, it cannot be carried out.
            Some(refusal) => {
                bump(&counters.messages);
                bump(&counters.error_replies);
                counters.error(refusal.to_string());
                if incoming.header.no_reply() {
                    Outcome::Nothing
                } else {
                    Outcome::Reply(
                        reply_header(&incoming.header, 0, Some(refusal.errno)),
                        Reply::empty(),
                    )
                }
            }
            None => session.handle(&incoming.header, payload, incoming.fds),
        };
        let (reply, last) = match outcome {
            Outcome::Reply(h, r) => (Some((h, r)), false),
            Outcome::Nothing => (None, false),
            Outcome::Disconnect(r) => (r, true),
        };
        if let Some((header, reply)) = reply {
            if let Err(e) = send_reply(stream, &header, &reply) {
                counters.error(format!("replying to the client: {e}"));
                return (session, Ending::Closed);
            }
        }
        if last {
            return (session, Ending::Closed);
        }
        // A client that never pauses for QUIET_CHECK is handed over between two of
        // its messages: one atomic load per message.
        if !reader.has_buffered() && stop.hand_over.load(Ordering::Relaxed) {
            return (session, Ending::HandOver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn vfio_user_peers_other_than_root_us_and_the_allowed_user_are_refused() {
        let me = nix::unistd::geteuid().as_raw();
        let peer = |uid| ClientPeer { pid: 42, uid };
        assert!(authorize(&peer(0), None).is_ok());
        assert!(authorize(&peer(me), None).is_ok());
        assert!(authorize(&peer(4242), Some(4242)).is_ok());
        let refused = authorize(&peer(4243), Some(4242)).unwrap_err();
        assert!(refused.contains("uid 4243 (pid 42)"), "{refused}");
        assert!(refused.contains("uid 4242"), "{refused}");
    }

    #[test]
    fn vfio_user_socket_is_0600_owned_as_asked_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let me = nix::unistd::geteuid().as_raw();
        let (file, _listener) = bind(&path, Some(me)).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), me);
        // A live server there: refused; a regular file: refused.
        assert!(matches!(bind(&path, None), Err(ServerError::InUse(_))));
        drop(file);
        assert!(!path.exists());
        fs::write(&path, b"x").unwrap();
        assert!(matches!(bind(&path, None), Err(ServerError::NotASocket(_))));
    }
}
