//! Which frontend serves a device, written as `KIND:ARGUMENT[,OPTION=VALUE...]` on the
//! command line, in control requests and in the claim state file
//! (`uml:/run/udrv/nic.sock`, `uml:/run/udrv/nic.sock,poll-us=200,worker-cpu=1`,
//! `vfio-user:/run/udrv/nic.sock,direct-mmio,user=1000`), so a restarted service
//! serves each device as it was served before.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::frontend::WorkerOptions;

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
        /// How the worker serving the guest's commands waits and where it runs
        /// (options `poll-us=MICROSECONDS`, `worker-cpu=CPU`).
        worker: WorkerOptions,
    },
    /// A vfio-user client (QEMU's `vfio-user-pci`, cloud-hypervisor's
    /// `--user-device`), listening at `socket`.
    VfioUser {
        /// The vfio-user socket the frontend creates (mode 0600).
        socket: PathBuf,
        /// Hand clients the VFIO device fd for direct access to the mmap-able parts of
        /// the BARs (option `direct-mmio`). The client can then also reset the
        /// device, program its interrupts and write its config, but never reach the
        /// IOMMU.
        direct_mmio: bool,
        /// A user (uid) besides root and the service's own that may connect, and who
        /// owns the socket (option `user=UID`): a VMM that does not run as root.
        user: Option<u32>,
    },
}

/// The `vfio-user:` options.
const DIRECT_MMIO: &str = "direct-mmio";
const USER: &str = "user";

/// The `uml:` options, as written after the socket path.
const POLL_US: &str = "poll-us";
const WORKER_CPU: &str = "worker-cpu";

impl FrontendSpec {
    /// A UML frontend on `socket` with the default worker (no polling, any CPU).
    pub fn uml(socket: impl Into<PathBuf>) -> Self {
        FrontendSpec::Uml {
            socket: socket.into(),
            worker: WorkerOptions::default(),
        }
    }

    /// A vfio-user frontend on `socket`: trapped BAR access, root and the service's
    /// user only.
    pub fn vfio_user(socket: impl Into<PathBuf>) -> Self {
        FrontendSpec::VfioUser {
            socket: socket.into(),
            direct_mmio: false,
            user: None,
        }
    }

    /// The socket the frontend listens on.
    pub fn socket(&self) -> &Path {
        match self {
            FrontendSpec::Uml { socket, .. } | FrontendSpec::VfioUser { socket, .. } => socket,
        }
    }

    /// How the frontend's worker waits for commands and where it runs (the UML
    /// frontend's; a vfio-user frontend has no such options).
    pub fn worker(&self) -> WorkerOptions {
        match self {
            FrontendSpec::Uml { worker, .. } => *worker,
            FrontendSpec::VfioUser { .. } => WorkerOptions::default(),
        }
    }

    /// The same frontend with its worker options replaced (UML only; a vfio-user
    /// spec is returned as it is).
    pub fn with_worker(self, worker: WorkerOptions) -> Self {
        match self {
            FrontendSpec::Uml { socket, .. } => FrontendSpec::Uml { socket, worker },
            other => other,
        }
    }

    /// The frontend kind as written before the colon.
    pub fn kind(&self) -> &'static str {
        match self {
            FrontendSpec::Uml { .. } => "uml",
            FrontendSpec::VfioUser { .. } => "vfio-user",
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
        "unknown frontend kind {kind:?} in {spec:?} (known: uml, as in uml:/run/udrv/nic.sock; vfio-user, as in vfio-user:/run/udrv/nic.sock)"
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
    /// An option after the socket path that is unknown or has a bad value.
    #[error("frontend option {option:?} in {spec:?}: {why} (options: {POLL_US}=MICROSECONDS, {WORKER_CPU}=CPU, as in uml:/run/udrv/nic.sock,{POLL_US}=200,{WORKER_CPU}=1)")]
    BadOption {
        /// The option as written.
        option: String,
        /// The whole spec.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `vfio-user:` option that is unknown or has a bad value.
    #[error("vfio-user option {option:?} in {spec:?}: {why} (options: {DIRECT_MMIO}, {USER}=UID, as in vfio-user:/run/udrv/nic.sock,{DIRECT_MMIO},{USER}=1000)")]
    BadVfioUserOption {
        /// The option as written.
        option: String,
        /// The whole spec.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Splits `,direct-mmio` and `,user=UID` off the end of a vfio-user socket argument
/// (trailing segments without a `/`; the rest is the path, which may hold commas).
fn vfio_user_options<'a>(
    argument: &'a str,
    spec: &str,
) -> Result<(&'a str, bool, Option<u32>), FrontendSpecError> {
    let mut path = argument;
    let mut options = Vec::new();
    while let Some((head, option)) = path.rsplit_once(',') {
        if option.contains('/') || !(option == DIRECT_MMIO || option.contains('=')) {
            break;
        }
        options.push(option);
        path = head;
    }
    let (mut direct_mmio, mut user) = (false, None);
    for option in options.into_iter().rev() {
        let bad = |why| FrontendSpecError::BadVfioUserOption {
            option: option.to_string(),
            spec: spec.to_string(),
            why,
        };
        match option.split_once('=') {
            None => direct_mmio = true,
            Some((USER, uid)) => {
                user = Some(uid.parse().map_err(|_| bad("the user is a numeric uid"))?)
            }
            Some(_) => return Err(bad("unknown option")),
        }
    }
    Ok((path, direct_mmio, user))
}

fn check_socket_path(path: &str) -> Result<(), FrontendSpecError> {
    if !path.starts_with('/') {
        return Err(FrontendSpecError::RelativePath(path.to_string()));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(FrontendSpecError::TooLong {
            path: path.to_string(),
            len: path.len(),
        });
    }
    Ok(())
}

/// Splits `,KEY=VALUE` options off the end of a UML socket argument: trailing
/// comma-separated segments with an `=` and no `/` in them are options, the rest is the
/// path (which may hold commas).
fn uml_options<'a>(
    argument: &'a str,
    spec: &str,
) -> Result<(&'a str, WorkerOptions), FrontendSpecError> {
    let mut worker = WorkerOptions::default();
    let mut path = argument;
    let mut options = Vec::new();
    while let Some((head, option)) = path.rsplit_once(',') {
        if !option.contains('=') || option.contains('/') {
            break;
        }
        options.push(option);
        path = head;
    }
    for option in options.into_iter().rev() {
        let bad = |why| FrontendSpecError::BadOption {
            option: option.to_string(),
            spec: spec.to_string(),
            why,
        };
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            POLL_US => {
                let us: u64 = value
                    .parse()
                    .map_err(|_| bad("the poll window is a number of microseconds"))?;
                worker.poll = Duration::from_micros(us);
            }
            WORKER_CPU => {
                let cpu = value
                    .parse()
                    .map_err(|_| bad("the worker's CPU is a CPU number, as in taskset"))?;
                worker.cpu = Some(cpu);
            }
            _ => return Err(bad("unknown option")),
        }
    }
    Ok((path, worker))
}

impl FromStr for FrontendSpec {
    type Err = FrontendSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let Some((kind, argument)) = spec.split_once(':') else {
            return Err(FrontendSpecError::NoKind(spec.to_string()));
        };
        match kind {
            "uml" => {
                let (path, worker) = uml_options(argument, spec)?;
                check_socket_path(path)?;
                Ok(FrontendSpec::Uml {
                    socket: PathBuf::from(path),
                    worker,
                })
            }
            "vfio-user" => {
                let (path, direct_mmio, user) = vfio_user_options(argument, spec)?;
                check_socket_path(path)?;
                Ok(FrontendSpec::VfioUser {
                    socket: PathBuf::from(path),
                    direct_mmio,
                    user,
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
        write!(f, "{}:{}", self.kind(), self.socket().display())?;
        if let FrontendSpec::VfioUser {
            direct_mmio, user, ..
        } = self
        {
            if *direct_mmio {
                write!(f, ",{DIRECT_MMIO}")?;
            }
            if let Some(uid) = user {
                write!(f, ",{USER}={uid}")?;
            }
            return Ok(());
        }
        let worker = self.worker();
        if !worker.poll.is_zero() {
            write!(f, ",{POLL_US}={}", worker.poll.as_micros())?;
        }
        if let Some(cpu) = worker.cpu {
            write!(f, ",{WORKER_CPU}={cpu}")?;
        }
        Ok(())
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
        assert_eq!(spec.worker(), WorkerOptions::default());
        assert_eq!(spec, FrontendSpec::uml("/run/udrv/nic.sock"));
    }

    #[test]
    fn worker_options_survive_the_text_form() {
        let spec: FrontendSpec = "uml:/run/udrv/nic.sock,poll-us=200,worker-cpu=1"
            .parse()
            .unwrap();
        assert_eq!(spec.socket(), Path::new("/run/udrv/nic.sock"));
        assert_eq!(
            spec.worker(),
            WorkerOptions {
                poll: Duration::from_micros(200),
                cpu: Some(1),
            }
        );
        let text = spec.to_string();
        assert_eq!(text, "uml:/run/udrv/nic.sock,poll-us=200,worker-cpu=1");
        assert_eq!(text.parse::<FrontendSpec>().unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<FrontendSpec>(&json).unwrap(), spec);
        // Options replaced; commas that start no option are part of the path.
        let spec: FrontendSpec = "uml:/run/nic,1.sock".parse().unwrap();
        assert_eq!(spec, FrontendSpec::uml("/run/nic,1.sock"));
        let spec = FrontendSpec::uml("/run/a,b=c/nic.sock").with_worker(WorkerOptions {
            poll: Duration::from_micros(50),
            cpu: None,
        });
        assert_eq!(spec.to_string(), "uml:/run/a,b=c/nic.sock,poll-us=50");
        assert_eq!(spec.to_string().parse::<FrontendSpec>().unwrap(), spec);
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |s: &str| s.parse::<FrontendSpec>().unwrap_err().to_string();
        assert!(err("/run/x.sock").contains("has no kind"), "{}", err("/x"));
        let unknown = err("vhost:/run/x.sock");
        assert!(
            unknown.contains("unknown frontend kind \"vhost\""),
            "{unknown}"
        );
        assert!(unknown.contains("known: uml"), "{unknown}");
        assert!(unknown.contains("vfio-user"), "{unknown}");
        assert!(err("uml:nic.sock").contains("not an absolute path"));
        let long = format!("uml:/{}", "a".repeat(120));
        assert!(err(&long).contains("at most 107"), "{}", err(&long));
        let typo = err("uml:/run/nic.sock,pol-us=5");
        assert!(
            typo.contains("\"pol-us=5\"") && typo.contains("unknown option"),
            "{typo}"
        );
        assert!(err("uml:/run/nic.sock,poll-us=fast").contains("microseconds"));
        assert!(err("uml:/run/nic.sock,worker-cpu=-1").contains("CPU number"));
        assert!(err("uml:/run/nic.sock,poll-us=").contains("microseconds"));
        // Through serde too: a bad spec in a request is an error, not a panic.
        let bad = serde_json::from_str::<FrontendSpec>("\"uml:relative\"").unwrap_err();
        assert!(bad.to_string().contains("not an absolute path"), "{bad}");
    }

    #[test]
    fn vfio_user_specs_parse_print_and_refuse() {
        let spec: FrontendSpec = "vfio-user:/run/udrv/nic.sock".parse().unwrap();
        assert_eq!(spec, FrontendSpec::vfio_user("/run/udrv/nic.sock"));
        assert_eq!(spec.kind(), "vfio-user");
        assert_eq!(spec.to_string(), "vfio-user:/run/udrv/nic.sock");
        let spec: FrontendSpec = "vfio-user:/run/a,b/nic.sock,direct-mmio,user=1000"
            .parse()
            .unwrap();
        assert_eq!(
            spec,
            FrontendSpec::VfioUser {
                socket: "/run/a,b/nic.sock".into(),
                direct_mmio: true,
                user: Some(1000),
            }
        );
        let text = spec.to_string();
        assert_eq!(text, "vfio-user:/run/a,b/nic.sock,direct-mmio,user=1000");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<FrontendSpec>(&json).unwrap(), spec);
        assert_eq!(spec.clone().with_worker(WorkerOptions::default()), spec);
        let err = |s: &str| s.parse::<FrontendSpec>().unwrap_err().to_string();
        assert!(err("vfio-user:nic.sock").contains("not an absolute path"));
        let typo = err("vfio-user:/run/nic.sock,usr=5");
        assert!(
            typo.contains("unknown option") && typo.contains("direct-mmio"),
            "{typo}"
        );
        assert!(err("vfio-user:/run/nic.sock,user=alice").contains("numeric uid"));
    }
}
