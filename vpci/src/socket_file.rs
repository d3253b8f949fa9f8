//! A private UNIX socket file, as the control socket and every vfio-user socket are:
//! bound mode 0600 whatever the umask (and optionally given to another user), a stale
//! socket of a dead server replaced, a live server's left alone, and removed when
//! dropped if the file is still the socket that was bound. Also who is at the other end.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

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

/// What was at the socket's path before it was bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// Nothing.
    Nothing,
    /// A socket nobody listened on: a server that died without cleaning up.
    StaleSocket,
}

/// Why a socket file could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketFileError {
    /// The path holds something other than a socket; it is left alone.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// A server answers at the path.
    #[error("a server ({}) answers at {}", pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")), path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
        /// The server's process, when the kernel says.
        pid: Option<i32>,
    },
    /// A file operation failed.
    #[error("{} {}: {error}", action, path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why.
        error: io::Error,
    },
}

/// A bound socket's file: removed when this is dropped, if the file is still the
/// socket that was bound (never a file someone put there since).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl SocketFile {
    /// Binds a listening socket at `path`, mode 0600 and owned by `owner` when given.
    /// Refuses if a server answers there or the path is not a socket; replaces a stale
    /// socket.
    pub fn bind(
        path: &Path,
        owner: Option<u32>,
    ) -> Result<(SocketFile, UnixListener, Previous), SocketFileError> {
        let error = |action, error| SocketFileError::Io {
            path: path.to_path_buf(),
            action,
            error,
        };
        let previous = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Previous::Nothing,
            Err(e) => return Err(error("inspecting", e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketFileError::NotASocket(path.to_path_buf()))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(stream) => {
                    return Err(SocketFileError::InUse {
                        path: path.to_path_buf(),
                        pid: Peer::of(&stream).map(|p| p.pid).ok(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Previous::StaleSocket,
                Err(e) => return Err(error("checking for a server at", e)),
            },
        };
        // Bound under a temporary name, made 0600 (and given to its user), then renamed
        // into place: never reachable with the umask's looser mode, and a stale socket
        // is replaced in one step.
        let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
        temp_name.push(format!(".{}.new", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let _ = fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(|e| error("binding", e))?;
        let placed = fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))
            .and_then(|()| match owner {
                Some(uid) => std::os::unix::fs::chown(&temp, Some(uid), None),
                None => Ok(()),
            })
            .and_then(|()| fs::rename(&temp, path));
        if let Err(e) = placed {
            let _ = fs::remove_file(&temp);
            return Err(error("placing", e));
        }
        let inode = fs::symlink_metadata(path)
            .map_err(|e| error("inspecting", e))?
            .ino();
        let file = SocketFile {
            path: path.to_path_buf(),
            inode,
        };
        Ok((file, listener, previous))
    }

    /// The socket file a predecessor process bound at `path` and handed over with
    /// its listener: removed when this is dropped, as if bound here.
    pub fn adopt(path: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::other(format!(
                "{} is not a socket any more",
                path.display()
            )));
        }
        Ok(SocketFile {
            path: path.to_path_buf(),
            inode: meta.ino(),
        })
    }

    /// Leaves the socket file in place, for a successor that carries on listening.
    pub fn keep(mut self) {
        // Nothing is at an empty path: the drop removes nothing.
        self.path = PathBuf::new();
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (file, listener, previous) = SocketFile::bind(&path, None).unwrap();
        assert_eq!(previous, Previous::Nothing);
        assert_eq!(
            fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        match SocketFile::bind(&path, None) {
            Err(SocketFileError::InUse { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id() as i32))
            }
            other => panic!("bound over a live socket: {other:?}"),
        }
        // Closed but left behind, as by a server that died.
        drop(listener);
        std::mem::forget(file);
        let (file, _listener, previous) = SocketFile::bind(&path, None).unwrap();
        assert_eq!(previous, Previous::StaleSocket);
        drop(file);
        assert!(!path.exists(), "the socket is removed on drop");
        fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            SocketFile::bind(&path, None),
            Err(SocketFileError::NotASocket(_))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");
    }
}
