//! Telling a service manager how the service is doing: systemd's notification protocol
//! (`sd_notify`, what `Type=notify` waits for). The manager puts the address of a Unix
//! datagram socket in `$NOTIFY_SOCKET`, a path or, starting with `@`, an abstract name;
//! the service sends it newline-separated `KEY=VALUE` lines such as `READY=1` and
//! `STATUS=...`. The manager learns the sender's pid from the socket's credentials, so
//! nothing more is needed and libsystemd is not linked.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// The environment variable that carries the manager's socket address.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Why the manager could not be told.
#[derive(Debug, thiserror::Error)]
pub enum NotifySocketError {
    /// The address is neither a path nor an abstract name.
    #[error("{NOTIFY_SOCKET_ENV}={}: not a Unix socket address udrv can use (a path starting with / or an abstract name starting with @)", .0.to_string_lossy())]
    Address(OsString),
    /// The socket could not be made or addressed.
    #[error("{NOTIFY_SOCKET_ENV}={}: {error}", address.to_string_lossy())]
    Socket {
        /// The address.
        address: OsString,
        /// Why.
        error: io::Error,
    },
    /// The message did not go out.
    #[error("telling the service manager at {} {message:?} failed: {error}", address.to_string_lossy())]
    Send {
        /// The address.
        address: OsString,
        /// What was sent.
        message: String,
        /// Why.
        error: io::Error,
    },
}

/// The service manager's notification socket.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    target: SocketAddr,
    address: OsString,
}

impl NotifySocket {
    /// The socket `$NOTIFY_SOCKET` names; `None` when the variable is unset or empty
    /// (not started by a manager that waits for readiness).
    pub fn from_env() -> Result<Option<NotifySocket>, NotifySocketError> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            Some(address) if !address.is_empty() => NotifySocket::connect(&address).map(Some),
            _ => Ok(None),
        }
    }

    /// A socket that sends to `address`: a path (`/run/systemd/notify`) or an abstract
    /// name (`@name`, the `@` standing for the leading NUL byte).
    pub fn connect(address: &OsStr) -> Result<NotifySocket, NotifySocketError> {
        let socket_error = |error| NotifySocketError::Socket {
            address: address.to_os_string(),
            error,
        };
        let bytes = address.as_bytes();
        let target = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(Path::new(address)),
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            _ => return Err(NotifySocketError::Address(address.to_os_string())),
        }
        .map_err(socket_error)?;
        let socket = UnixDatagram::unbound().map_err(socket_error)?;
        Ok(NotifySocket {
            socket,
            target,
            address: address.to_os_string(),
        })
    }

    /// Sends `message`: `KEY=VALUE` lines, one datagram.
    pub fn send(&self, message: &str) -> Result<(), NotifySocketError> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.target)
            .map(drop)
            .map_err(|error| NotifySocketError::Send {
                address: self.address.clone(),
                message: message.to_string(),
                error,
            })
    }

    /// The service is ready (it answers requests now); `status` is the one line
    /// `systemctl status` shows.
    pub fn ready(&self, status: &str) -> Result<(), NotifySocketError> {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)))
    }
}

/// A line break would end the `STATUS=` field and start a bogus one.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_reaches_a_path_socket_as_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notify = NotifySocket::connect(path.as_os_str()).unwrap();
        notify.ready("serving 2 devices\nand more").unwrap();
        assert_eq!(
            receive(&manager),
            "READY=1\nSTATUS=serving 2 devices and more\n"
        );
        notify.send("STATUS=still here\n").unwrap();
        assert_eq!(receive(&manager), "STATUS=still here\n");
    }

    #[test]
    fn an_at_address_is_an_abstract_socket() {
        let name = format!("udrv-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notify = NotifySocket::connect(OsStr::new(&format!("@{name}"))).unwrap();
        notify.ready("ok").unwrap();
        assert_eq!(receive(&manager), "READY=1\nSTATUS=ok\n");
    }

    #[test]
    fn other_addresses_are_refused_and_a_missing_manager_is_an_error() {
        let err = NotifySocket::connect(OsStr::new("vsock:2:1234")).unwrap_err();
        assert!(
            err.to_string().contains("NOTIFY_SOCKET=vsock:2:1234"),
            "{err}"
        );
        assert!(NotifySocket::connect(OsStr::new("relative/notify")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let gone = NotifySocket::connect(dir.path().join("nobody").as_os_str()).unwrap();
        let err = gone.ready("ok").unwrap_err().to_string();
        assert!(err.contains("READY=1"), "{err}");
    }
}
