//! Which frontend serves a device, written as `KIND:ARGUMENT` on the command line, in
//! control requests and in the claim state file (`uml:/run/udrv/nic.sock`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest socket path a Unix socket address holds (`sun_path` is 108 bytes with
/// its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How a served device is offered to a guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FrontendSpec {
    /// A User-Mode Linux guest's virtio-pcidev over vhost-user, listening at `socket`
    /// (`virtio_uml.device=SOCKET:ID` on UML's command line).
    Uml {
        /// The vhost-user socket the frontend creates.
        socket: PathBuf,
    },
}

impl FrontendSpec {
    /// The socket the frontend listens on.
    pub fn socket(&self) -> &Path {
        match self {
            FrontendSpec::Uml { socket } => socket,
        }
    }

    /// The frontend kind as written before the colon.
    pub fn kind(&self) -> &'static str {
        match self {
            FrontendSpec::Uml { .. } => "uml",
        }
    }
}

/// A frontend spec that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrontendSpecError {
    /// No `KIND:` prefix.
    #[error("frontend {0:?} has no kind: write it as uml:/path/to/socket")]
    NoKind(String),
    /// A kind udrv does not know.
    #[error(
        "unknown frontend kind {kind:?} in {spec:?} (known: uml, as in uml:/run/udrv/nic.sock)"
    )]
    UnknownKind {
        /// The kind.
        kind: String,
        /// The whole spec.
        spec: String,
    },
    /// The socket path is relative: the daemon's working directory is not the caller's.
    #[error("frontend socket {0:?} is not an absolute path (the service runs in another directory); write it as uml:/run/udrv/nic.sock")]
    RelativePath(String),
    /// Too long for a Unix socket address.
    #[error("frontend socket {path:?} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}: choose a shorter path")]
    TooLong {
        /// The path.
        path: String,
        /// Its length.
        len: usize,
    },
}

impl FromStr for FrontendSpec {
    type Err = FrontendSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let Some((kind, argument)) = spec.split_once(':') else {
            return Err(FrontendSpecError::NoKind(spec.to_string()));
        };
        match kind {
            "uml" => {
                if !argument.starts_with('/') {
                    return Err(FrontendSpecError::RelativePath(argument.to_string()));
                }
                if argument.len() > MAX_SOCKET_PATH {
                    return Err(FrontendSpecError::TooLong {
                        path: argument.to_string(),
                        len: argument.len(),
                    });
                }
                Ok(FrontendSpec::Uml {
                    socket: PathBuf::from(argument),
                })
            }
            _ => Err(FrontendSpecError::UnknownKind {
                kind: kind.to_string(),
                spec: spec.to_string(),
            }),
        }
    }
}

impl fmt::Display for FrontendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.socket().display())
    }
}

impl TryFrom<String> for FrontendSpec {
    type Error = FrontendSpecError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<FrontendSpec> for String {
    fn from(spec: FrontendSpec) -> String {
        spec.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_a_uml_socket() {
        let spec: FrontendSpec = "uml:/run/udrv/nic.sock".parse().unwrap();
        assert_eq!(spec.socket(), Path::new("/run/udrv/nic.sock"));
        assert_eq!(spec.kind(), "uml");
        assert_eq!(spec.to_string(), "uml:/run/udrv/nic.sock");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, "\"uml:/run/udrv/nic.sock\"");
        assert_eq!(serde_json::from_str::<FrontendSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |s: &str| s.parse::<FrontendSpec>().unwrap_err().to_string();
        assert!(err("/run/x.sock").contains("has no kind"), "{}", err("/x"));
        let unknown = err("vfio-user:/run/x.sock");
        assert!(
            unknown.contains("unknown frontend kind \"vfio-user\""),
            "{unknown}"
        );
        assert!(unknown.contains("known: uml"), "{unknown}");
        assert!(err("uml:nic.sock").contains("not an absolute path"));
        let long = format!("uml:/{}", "a".repeat(120));
        assert!(err(&long).contains("at most 107"), "{}", err(&long));
        // Through serde too: a bad spec in a request is an error, not a panic.
        let bad = serde_json::from_str::<FrontendSpec>("\"uml:relative\"").unwrap_err();
        assert!(bad.to_string().contains("not an absolute path"), "{bad}");
    }
}
