//! The daemon's control socket: created mode 0600 whatever the umask, a stale socket
//! of a dead daemon replaced, a live daemon's left alone; and who may talk to it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::ServiceError;
pub use crate::socket_file::{Peer, Previous};
use crate::socket_file::{SocketFile, SocketFileError};

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
pub struct ControlSocket(SocketFile);

impl ControlSocket {
    /// Binds the control socket at `path` with mode 0600 (creating its directory,
    /// mode 0755). Refuses if a daemon answers there or the path is not a socket.
    pub fn bind(path: &Path) -> Result<(ControlSocket, UnixListener, Previous), ServiceError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|error| ServiceError::ControlSocket {
                    path: path.to_path_buf(),
                    action: "creating its directory",
                    error,
                })?;
        }
        let (file, listener, previous) = SocketFile::bind(path, None).map_err(|e| match e {
            SocketFileError::NotASocket(path) => ServiceError::NotASocket(path),
            SocketFileError::InUse { path, pid } => ServiceError::AlreadyRunning { path, pid },
            SocketFileError::Io {
                path,
                action,
                error,
            } => ServiceError::ControlSocket {
                path,
                action,
                error,
            },
        })?;
        Ok((ControlSocket(file), listener, previous))
    }

    /// The control socket a previous program of this daemon bound at `path` and
    /// handed over with its listener (`udrv upgrade`).
    pub fn adopt(path: &Path) -> Result<ControlSocket, ServiceError> {
        SocketFile::adopt(path)
            .map(ControlSocket)
            .map_err(|error| ServiceError::ControlSocket {
                path: path.to_path_buf(),
                action: "taking over",
                error,
            })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;

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
