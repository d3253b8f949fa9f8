//! The client side of the control socket, for `udrv attach --serve`, `udrv status`
//! and `udrv detach`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control::{decode_response, ErrorReply, ProtocolError, Reply, Request, MAX_LINE};
use super::control_socket::DEFAULT_CONTROL_PATH;

/// How long a request may take: an attach waits for drivers to let go of devices and
/// for `/dev/vfio/N`, which can take seconds on a busy host.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens at the control path.
    #[error("no udrv serve answers at {} ({error}); start it first, as root: `{}` (or run it as a systemd service)", path.display(), start_command(path))]
    NoDaemon {
        /// The control socket.
        path: PathBuf,
        /// What connecting said.
        error: io::Error,
    },
    /// The socket is there but not for this user.
    #[error("cannot connect to udrv serve at {}: {error}; its control socket is for root only: run the command as root (sudo)", path.display())]
    Denied {
        /// The control socket.
        path: PathBuf,
        /// What connecting said.
        error: io::Error,
    },
    /// Sending or receiving failed.
    #[error("udrv serve at {}: {action} failed: {error}", path.display())]
    Io {
        /// The control socket.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why.
        error: io::Error,
    },
    /// The daemon closed the connection without an answer.
    #[error("udrv serve at {} closed the connection without answering (it is stopping, or see its log)", path.display())]
    Closed {
        /// The control socket.
        path: PathBuf,
    },
    /// The answer does not parse.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The daemon refused or failed the request; its message says why.
    #[error(transparent)]
    Daemon(#[from] ErrorReply),
}

fn start_command(path: &Path) -> String {
    if path == Path::new(DEFAULT_CONTROL_PATH) {
        "udrv serve &".to_string()
    } else {
        format!("udrv serve --control {} &", path.display())
    }
}

/// A connection to `udrv serve`.
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the daemon at `path`.
    pub fn connect(path: &Path) -> Result<ControlClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NoDaemon {
                path: path.to_path_buf(),
                error,
            },
            io::ErrorKind::PermissionDenied => ClientError::Denied {
                path: path.to_path_buf(),
                error,
            },
            _ => ClientError::Io {
                path: path.to_path_buf(),
                action: "connecting",
                error,
            },
        })?;
        let io_error = |action| {
            let path = path.to_path_buf();
            move |error| ClientError::Io {
                path,
                action,
                error,
            }
        };
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(io_error("setting a timeout"))?;
        Ok(ControlClient {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and waits for the answer.
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let mut line = request.encode();
        line.push('\n');
        let sent = self.reader.get_mut().write_all(line.as_bytes());
        let mut answer = String::new();
        // A daemon that refuses a peer answers at once and hangs up, possibly before
        // the request is sent: its answer is still there to read.
        let read = self
            .reader
            .by_ref()
            .take(MAX_LINE as u64 + 2)
            .read_line(&mut answer);
        let read = match (sent, read) {
            (_, Ok(n)) if n > 0 => n,
            (Err(error), _) => {
                return Err(ClientError::Io {
                    path: self.path.clone(),
                    action: "sending the request",
                    error,
                })
            }
            (Ok(()), Err(error)) => {
                return Err(ClientError::Io {
                    path: self.path.clone(),
                    action: "reading the answer",
                    error,
                })
            }
            (Ok(()), Ok(n)) => n,
        };
        if read == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        if !answer.ends_with('\n') {
            return Err(if answer.len() > MAX_LINE {
                ProtocolError::TooLong.into()
            } else {
                ClientError::Closed {
                    path: self.path.clone(),
                }
            });
        }
        Ok(decode_response(answer.trim_end())??)
    }
}
