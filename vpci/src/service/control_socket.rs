//! The daemon's control socket: created mode 0600 whatever the umask, a stale socket
//! of a dead daemon replaced, a live daemon's left alone; and who may talk to it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::ServiceError;

/// Where the control socket is unless `--control` or [`CONTROL_ENV`] say otherwise.
pub const DEFAULT_CONTROL_PATH: &str = "/run/udrv/control.sock";

/// The environment variable that overrides [`DEFAULT_CONTROL_PATH`].
pub const CONTROL_ENV: &str = "UDRV_CONTROL";

/// `UDRV_CONTROL` if set, else [`DEFAULT_CONTROL_PATH`].
pub fn default_control_path() -> PathBuf {
    std::env::var_os(CONTROL_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONTROL_PATH), PathBuf::from)
}

/// The process at the other end of a Unix socket, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its process.
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

impl Peer {
    /// The credentials of the process at the other end of `socket` (SO_PEERCRED).
    pub fn of(socket: &impl std::os::fd::AsFd) -> io::Result<Peer> {
        let creds = getsockopt(socket, PeerCredentials)?;
        Ok(Peer {
            pid: creds.pid(),
            uid: creds.uid(),
            gid: creds.gid(),
        })
    }
}

/// Whether `peer` may use a daemon running as `daemon_uid`: root, or the daemon's own
/// user. The error is the reply the peer gets.
pub fn authorize(peer: &Peer, daemon_uid: u32) -> Result<(), String> {
    if peer.uid == 0 || peer.uid == daemon_uid {
        return Ok(());
    }
    Err(format!(
        "uid {} (pid {}) may not control udrv serve: only root{} may; run the command as root (sudo)",
        peer.uid,
        peer.pid,
        if daemon_uid == 0 {
            String::new()
        } else {
            format!(" and uid {daemon_uid}")
        }
    ))
}

/// The control socket's file: removed when this is dropped, if the file is still the
/// socket that was bound.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    inode: u64,
}

/// What was at the control path before.
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// Nothing.
    Nothing,
    /// A socket nobody listened on: a daemon that died without cleaning up.
    StaleSocket,
}

impl ControlSocket {
    /// Binds the control socket at `path` with mode 0600 (creating its directory,
    /// mode 0755). Refuses if a daemon answers there or the path is not a socket.
    pub fn bind(path: &Path) -> Result<(ControlSocket, UnixListener, Previous), ServiceError> {
        let error = |action: &'static str, error: io::Error| ServiceError::ControlSocket {
            path: path.to_path_buf(),
            action,
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| error("creating its directory", e))?;
        }
        let previous = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Previous::Nothing,
            Err(e) => return Err(error("inspecting", e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ServiceError::NotASocket(path.to_path_buf()))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(stream) => {
                    let pid = Peer::of(&stream).map(|p| p.pid).ok();
                    return Err(ServiceError::AlreadyRunning {
                        path: path.to_path_buf(),
                        pid,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Previous::StaleSocket,
                Err(e) => return Err(error("checking for a running daemon at", e)),
            },
        };
        // Bound under a temporary name and renamed into place once it is 0600: the
        // socket is never reachable with the umask's looser mode, and a stale socket
        // is replaced in one step.
        let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
        temp_name.push(format!(".{}.new", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let _ = fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(|e| error("binding", e))?;
        let placed = fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))
            .and_then(|()| fs::rename(&temp, path));
        if let Err(e) = placed {
            let _ = fs::remove_file(&temp);
            return Err(error("placing", e));
        }
        let inode = fs::symlink_metadata(path)
            .map_err(|e| error("inspecting", e))?
            .ino();
        Ok((
            ControlSocket {
                path: path.to_path_buf(),
                inode,
            },
            listener,
            previous,
        ))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Only our own socket: never a file someone put there since.
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            pid: 77,
            uid,
            gid: uid,
        }
    }

    #[test]
    fn root_and_the_daemons_own_user_may_others_may_not() {
        assert!(authorize(&peer(0), 0).is_ok());
        assert!(authorize(&peer(0), 1000).is_ok());
        assert!(authorize(&peer(1000), 1000).is_ok());
        let refused = authorize(&peer(1001), 1000).unwrap_err();
        assert!(refused.contains("uid 1001 (pid 77)"), "{refused}");
        assert!(refused.contains("only root and uid 1000"), "{refused}");
        let refused = authorize(&peer(65534), 0).unwrap_err();
        assert!(refused.contains("uid 65534"), "{refused}");
        assert!(refused.contains("only root may"), "{refused}");
    }

    #[test]
    fn binds_0600_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/udrv/control.sock");
        let (socket, listener, previous) = ControlSocket::bind(&path).unwrap();
        assert_eq!(previous, Previous::Nothing);
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // No temporary name left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // The socket answers (our own credentials come back).
        let client = UnixStream::connect(&path).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let me = Peer::of(&server_side).unwrap();
        assert_eq!(me.pid as u32, std::process::id());
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        drop(client);
        drop(socket);
        assert!(!path.exists(), "the socket file goes with the daemon");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // A daemon that died: its socket file stays, nobody listens.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (live, _listener, previous) = ControlSocket::bind(&path).unwrap();
        assert_eq!(previous, Previous::StaleSocket);
        let err = ControlSocket::bind(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "another udrv serve (pid {}) is running",
                std::process::id()
            )),
            "{err}"
        );
        assert!(path.exists(), "the live daemon's socket stays");
        drop(live);
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        fs::write(&path, "precious").unwrap();
        let err = ControlSocket::bind(&path).unwrap_err().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn the_socket_file_of_someone_else_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (socket, _listener, _) = ControlSocket::bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, "someone else's").unwrap();
        drop(socket);
        assert_eq!(fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
