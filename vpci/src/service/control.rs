//! The control protocol between `udrv` commands and `udrv serve`: one JSON object per
//! line over a Unix stream socket, a request from the client and one response per
//! request from the daemon. Both carry `"version"`; a daemon answers a request of
//! another version with an error naming both versions.
//!
//! ```text
//! -> {"version":1,"op":"attach","devices":["0000:00:04.0"],"serve":"uml:/run/udrv/nic.sock"}
//! <- {"version":1,"ok":{"reply":"attached","attached":[...],"served":{...},...}}
//! -> {"version":1,"op":"status"}
//! <- {"version":1,"error":{"kind":"bad_request","message":"..."}}
//! ```
//!
//! Lines are at most [`MAX_LINE`] bytes. A line that is not JSON, names an unknown
//! request or field, or misses one is answered with a `bad_request` error that says
//! which; the connection stays usable. A longer line is answered and the connection
//! closed (there is no way to find the next request in it).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use udriver::claim::{AttachReport, ClaimRecord, RestoreHow, Restored};
use udriver::pci::PciAddress;

use super::FrontendSpec;
use crate::frontend::FrontendStatus;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line (request or response) either side accepts, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// What a client asks the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Claim devices for vfio-pci (as `udrv attach`), and serve the one device with
    /// `serve`.
    Attach {
        /// The devices.
        devices: Vec<PciAddress>,
        /// Claim even devices the host uses.
        #[serde(default)]
        force: bool,
        /// Claim every device of each device's IOMMU group.
        #[serde(default)]
        whole_group: bool,
        /// Serve the (single) device on this frontend once claimed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serve: Option<FrontendSpec>,
    },
    /// Serve a device that is already claimed.
    Serve {
        /// The device.
        device: PciAddress,
        /// How.
        frontend: FrontendSpec,
    },
    /// Stop serving a device; it stays claimed.
    Unserve {
        /// The device.
        device: PciAddress,
    },
    /// Stop serving and give devices back to their drivers (as `udrv detach`).
    Detach {
        /// The devices (empty with `all`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        devices: Vec<PciAddress>,
        /// Every claimed device.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
        /// Also release named devices on vfio-pci that udrv did not claim.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// The served devices, their frontends and the claims.
    Status,
    /// Replace the daemon's program with `binary` (default: the file it was started
    /// from, as it is now), handing everything served over to it: sockets, clients,
    /// devices, DMA mappings and interrupt wiring stay as they are.
    Upgrade {
        /// The program to run instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
    },
}

impl Request {
    /// The request's name, as its `op` field says.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "attach",
            Request::Serve { .. } => "serve",
            Request::Unserve { .. } => "unserve",
            Request::Detach { .. } => "detach",
            Request::Status => "status",
            Request::Upgrade { .. } => "upgrade",
        }
    }

    /// One line of JSON, without the newline.
    pub fn encode(&self) -> String {
        encode_versioned(self)
    }

    /// Parses one line; the error says what is wrong with it.
    pub fn decode(line: &str) -> Result<Request, ProtocolError> {
        let value = versioned_object(line)?;
        serde_json::from_value(value).map_err(|e| ProtocolError::BadRequest(e.to_string()))
    }
}

impl std::fmt::Display for Request {
    /// One short line for logs: `attach 0000:00:04.0 serve=uml:/run/udrv/nic.sock`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |devices: &[PciAddress]| {
            devices
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Request::Attach {
                devices,
                force,
                whole_group,
                serve,
            } => {
                write!(f, "attach {}", list(devices))?;
                if let Some(spec) = serve {
                    write!(f, " serve={spec}")?;
                }
                if *force {
                    f.write_str(" force")?;
                }
                if *whole_group {
                    f.write_str(" whole_group")?;
                }
                Ok(())
            }
            Request::Serve { device, frontend } => write!(f, "serve {device} {frontend}"),
            Request::Unserve { device } => write!(f, "unserve {device}"),
            Request::Detach {
                devices,
                all,
                force,
            } => {
                if *all {
                    f.write_str("detach all")?;
                } else {
                    write!(f, "detach {}", list(devices))?;
                }
                if *force {
                    f.write_str(" force")?;
                }
                Ok(())
            }
            Request::Status => f.write_str("status"),
            Request::Upgrade { binary: None } => f.write_str("upgrade"),
            Request::Upgrade {
                binary: Some(binary),
            } => write!(f, "upgrade to {}", binary.display()),
        }
    }
}

/// The daemon's answer to one request.
pub type Response = Result<Reply, ErrorReply>;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorReply>,
}

/// Encodes a response as one line of JSON, without the newline.
pub fn encode_response(response: &Response) -> String {
    let wire = WireResponse {
        version: PROTOCOL_VERSION,
        ok: response.as_ref().ok().cloned(),
        error: response.as_ref().err().cloned(),
    };
    // A response holds only strings, numbers, paths and addresses: it always encodes.
    serde_json::to_string(&wire).unwrap_or_else(|e| {
        format!(
            r#"{{"version":{PROTOCOL_VERSION},"error":{{"kind":"failed","message":"encoding the response failed: {e}"}}}}"#
        )
    })
}

/// Parses one response line.
pub fn decode_response(line: &str) -> Result<Response, ProtocolError> {
    versioned_object(line)?;
    let wire: WireResponse =
        serde_json::from_str(line).map_err(|e| ProtocolError::BadResponse(e.to_string()))?;
    match (wire.ok, wire.error) {
        (Some(reply), None) => Ok(Ok(reply)),
        (None, Some(error)) => Ok(Err(error)),
        _ => Err(ProtocolError::BadResponse(
            "a response carries exactly one of \"ok\" and \"error\"".into(),
        )),
    }
}

fn encode_versioned<T: Serialize>(message: &T) -> String {
    // The version first, so that a reader of a capture sees it at once.
    let body = serde_json::to_string(message).unwrap_or_default();
    match body.strip_prefix('{') {
        Some("}") => format!("{{\"version\":{PROTOCOL_VERSION}}}"),
        Some(rest) => format!("{{\"version\":{PROTOCOL_VERSION},{rest}"),
        None => body,
    }
}

/// Checks that `line` is a JSON object of this protocol version; returns it without
/// the version field.
fn versioned_object(line: &str) -> Result<serde_json::Value, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(ProtocolError::NotAnObject);
    };
    match object.remove("version") {
        None => Err(ProtocolError::NoVersion),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {
            Ok(object.into())
        }
        Some(other) => Err(ProtocolError::Version(other.to_string())),
    }
}

/// A line that is not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON at all.
    #[error("the line is not JSON ({0}); send one JSON object per line")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("the line is not a JSON object; send one object per line, like {{\"version\":{PROTOCOL_VERSION},\"op\":\"status\"}}")]
    NotAnObject,
    /// No version field.
    #[error("the message has no \"version\" field; every message carries the protocol version ({PROTOCOL_VERSION})")]
    NoVersion,
    /// Another version.
    #[error("protocol version {0} is not spoken here (this udrv speaks version {PROTOCOL_VERSION}); use udrv commands from the same build as the running udrv serve")]
    Version(String),
    /// A request that does not parse: unknown op, unknown or missing field, bad value.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A response that does not parse.
    #[error("bad response from udrv serve: {0}")]
    BadResponse(String),
    /// Longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes; requests are single short lines")]
    TooLong,
    /// Not UTF-8.
    #[error("the line is not UTF-8 text")]
    NotUtf8,
}

/// The answer to a request that succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// To `attach`.
    Attached(AttachReply),
    /// To `serve`.
    Served(ServedDevice),
    /// To `unserve`: the frontend's last status.
    Unserved(ServedDevice),
    /// To `detach`.
    Detached(DetachReply),
    /// To `status`.
    Status(StatusReply),
    /// To `upgrade`, from the new program.
    Upgraded(UpgradeReply),
}

/// What an upgrade carried over, as the new program found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReply {
    /// The daemon (the same process).
    pub daemon: DaemonInfo,
    /// The program now running.
    pub binary: PathBuf,
    /// Devices served on, each with the clients it had connected carried over.
    pub carried: Vec<CarriedDevice>,
    /// Devices that could not be taken over (their claims stay recorded).
    pub failed: Vec<DeviceFailure>,
}

/// One device an upgrade carried over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedDevice {
    /// The device.
    pub address: PciAddress,
    /// Its frontend.
    pub frontend: FrontendSpec,
    /// Whether a guest or client stayed connected across the upgrade.
    pub guest_connected: bool,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What failed and what to do, for a person.
    pub message: String,
}

/// The class of a failed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request does not parse.
    BadRequest,
    /// The peer may not use the daemon.
    PermissionDenied,
    /// A device the host uses (pass `force`), or another safety refusal.
    Refused,
    /// The request conflicts with what is served (already served, socket taken, not
    /// served).
    Conflict,
    /// The device is not claimed.
    NotClaimed,
    /// Carrying it out failed.
    Failed,
}

/// One device `attach` moved to vfio-pci.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedDevice {
    /// The device.
    pub address: PciAddress,
    /// Its driver before.
    pub previous_driver: Option<String>,
    /// It was on vfio-pci already.
    pub already: bool,
    /// Why the host was using it, overridden by `force`.
    pub forced: Vec<String>,
}

/// An IOMMU group ready for VFIO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReady {
    /// The group number.
    pub iommu_group: u32,
    /// `/dev/vfio/N`.
    pub node: PathBuf,
    /// Its devices.
    pub members: Vec<PciAddress>,
}

/// How a device went back to its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreKind {
    /// Unbound from vfio-pci and bound to its driver.
    Rebound,
    /// It was on its driver already; the record was dropped.
    AlreadyThere,
    /// It is gone; the record was dropped.
    DeviceGone,
    /// udrv had not claimed it; released to the kernel's choice.
    Released,
}

impl From<&RestoreHow> for RestoreKind {
    fn from(how: &RestoreHow) -> Self {
        match how {
            RestoreHow::Rebound => RestoreKind::Rebound,
            RestoreHow::AlreadyThere => RestoreKind::AlreadyThere,
            RestoreHow::DeviceGone => RestoreKind::DeviceGone,
            RestoreHow::Released => RestoreKind::Released,
        }
    }
}

/// A device given back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredDevice {
    /// The device.
    pub address: PciAddress,
    /// Its driver now.
    pub driver: Option<String>,
    /// How.
    pub how: RestoreKind,
}

/// A device an operation failed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFailure {
    /// The device.
    pub address: PciAddress,
    /// Why, and what to do.
    pub error: String,
}

/// A device the daemon serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedDevice {
    /// The device.
    pub address: PciAddress,
    /// The frontend serving it.
    pub frontend: FrontendSpec,
    /// Its frontend's state.
    pub status: FrontendStatus,
    /// When serving started (seconds since the Unix epoch).
    pub since: u64,
    /// Served again after a restart of the service, from the state file.
    pub recovered: bool,
}

/// The answer to `attach`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    /// Devices now on vfio-pci.
    pub attached: Vec<AttachedDevice>,
    /// Their IOMMU groups.
    pub groups: Vec<GroupReady>,
    /// Interrupted claims of other devices that were undone first.
    pub repaired: Vec<RestoredDevice>,
    /// Things to know (memlock limit, a group left not viable by `force`).
    pub warnings: Vec<String>,
    /// The device now served, with `serve`.
    pub served: Option<ServedDevice>,
}

impl RestoredDevice {
    /// The wire form of the claimer's reports.
    pub fn list(restored: &[Restored]) -> Vec<RestoredDevice> {
        restored
            .iter()
            .map(|r| RestoredDevice {
                address: r.address,
                driver: r.driver.clone(),
                how: (&r.how).into(),
            })
            .collect()
    }
}

impl From<&AttachReport> for AttachReply {
    /// What a claim did, as the service answers it (nothing served yet).
    fn from(report: &AttachReport) -> Self {
        AttachReply {
            attached: report
                .attached
                .iter()
                .map(|a| AttachedDevice {
                    address: a.address,
                    previous_driver: a.previous_driver.clone(),
                    already: a.already,
                    forced: a.forced.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            groups: report
                .groups
                .iter()
                .map(|g| GroupReady {
                    iommu_group: g.group,
                    node: g.node.clone(),
                    members: g.members.clone(),
                })
                .collect(),
            repaired: RestoredDevice::list(&report.repaired),
            warnings: report.warnings.clone(),
            served: None,
        }
    }
}

/// A device udrv had not claimed, named in `detach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotClaimed {
    /// The device.
    pub address: PciAddress,
    /// Its driver.
    pub driver: Option<String>,
}

/// The answer to `detach`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachReply {
    /// Frontends stopped first, with their last status.
    pub stopped: Vec<ServedDevice>,
    /// Devices given back.
    pub restored: Vec<RestoredDevice>,
    /// Interrupted claims of other devices undone too.
    pub repaired: Vec<RestoredDevice>,
    /// Named devices udrv had not claimed.
    pub not_claimed: Vec<NotClaimed>,
    /// Devices that could not be given back (their claims stay recorded).
    pub failed: Vec<DeviceFailure>,
}

/// The daemon itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Its process.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
    /// Its control socket.
    pub control: PathBuf,
    /// The claim state file.
    pub state: PathBuf,
    /// When it started (seconds since the Unix epoch).
    pub started_at: u64,
    /// Whether it keeps devices on vfio-pci when it stops.
    pub keep_claims: bool,
    /// Times it replaced its program since it started (`udrv upgrade`).
    #[serde(default)]
    pub upgrades: u32,
}

/// The answer to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon.
    pub daemon: DaemonInfo,
    /// Devices served now.
    pub served: Vec<ServedDevice>,
    /// Every claim in the state file.
    pub claims: Vec<ClaimRecord>,
    /// Devices recorded as served that could not be served again after a restart.
    pub recovery_failures: Vec<DeviceFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn spec() -> FrontendSpec {
        "uml:/run/udrv/nic.sock".parse().unwrap()
    }

    fn served() -> ServedDevice {
        ServedDevice {
            address: addr("0000:00:04.0"),
            frontend: spec(),
            status: FrontendStatus {
                socket: "/run/udrv/nic.sock".into(),
                guest_connected: true,
                guests_served: 2,
                config_accesses: 300,
                mmio_reads: 40,
                mmio_writes: 50,
                interrupts: 6,
                dma_mapped_bytes: 96 << 20,
                last_error: Some("guest vanished".into()),
                command_batches: 330,
                polled_commands: 12,
                polling: true,
                ..FrontendStatus::default()
            },
            since: 1_700_000_000,
            recovered: true,
        }
    }

    #[test]
    fn every_request_round_trips() {
        let requests = [
            Request::Attach {
                devices: vec![addr("0000:00:04.0"), addr("0000:00:06.0")],
                force: true,
                whole_group: false,
                serve: Some(spec()),
            },
            Request::Attach {
                devices: vec![addr("0000:00:02.0")],
                force: false,
                whole_group: true,
                serve: None,
            },
            Request::Serve {
                device: addr("0000:00:04.0"),
                frontend: spec(),
            },
            Request::Unserve {
                device: addr("0000:00:04.0"),
            },
            Request::Detach {
                devices: vec![addr("0000:00:04.0")],
                all: false,
                force: true,
            },
            Request::Detach {
                devices: vec![],
                all: true,
                force: false,
            },
            Request::Status,
        ];
        for request in requests {
            let line = request.encode();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with(r#"{"version":1,""#), "{line}");
            assert_eq!(Request::decode(&line).unwrap(), request, "{line}");
        }
    }

    #[test]
    fn requests_display_as_one_short_log_line() {
        let attach = Request::Attach {
            devices: vec![addr("0000:00:04.0"), addr("0000:00:06.0")],
            force: true,
            whole_group: false,
            serve: Some(spec()),
        };
        assert_eq!(
            attach.to_string(),
            "attach 0000:00:04.0,0000:00:06.0 serve=uml:/run/udrv/nic.sock force"
        );
        let detach = Request::Detach {
            devices: vec![],
            all: true,
            force: false,
        };
        assert_eq!(detach.to_string(), "detach all");
    }

    #[test]
    fn a_minimal_request_takes_defaults() {
        let request =
            Request::decode(r#"{"version":1,"op":"attach","devices":["00:04.0"]}"#).unwrap();
        assert_eq!(
            request,
            Request::Attach {
                devices: vec![addr("0000:00:04.0")],
                force: false,
                whole_group: false,
                serve: None
            }
        );
    }

    #[test]
    fn every_reply_round_trips() {
        let replies: Vec<Response> = vec![
            Ok(Reply::Attached(AttachReply {
                attached: vec![AttachedDevice {
                    address: addr("0000:00:04.0"),
                    previous_driver: Some("e1000e".into()),
                    already: false,
                    forced: vec!["eth0 is up".into()],
                }],
                groups: vec![GroupReady {
                    iommu_group: 5,
                    node: "/dev/vfio/5".into(),
                    members: vec![addr("0000:00:04.0")],
                }],
                repaired: vec![RestoredDevice {
                    address: addr("0000:00:03.0"),
                    driver: Some("e1000".into()),
                    how: RestoreKind::Rebound,
                }],
                warnings: vec!["memlock".into()],
                served: Some(served()),
            })),
            Ok(Reply::Served(served())),
            Ok(Reply::Unserved(served())),
            Ok(Reply::Detached(DetachReply {
                stopped: vec![served()],
                restored: vec![RestoredDevice {
                    address: addr("0000:00:04.0"),
                    driver: None,
                    how: RestoreKind::DeviceGone,
                }],
                repaired: vec![],
                not_claimed: vec![NotClaimed {
                    address: addr("0000:00:02.0"),
                    driver: Some("e1000".into()),
                }],
                failed: vec![DeviceFailure {
                    address: addr("0000:00:06.0"),
                    error: "ahci did not bind".into(),
                }],
            })),
            Ok(Reply::Status(StatusReply {
                daemon: DaemonInfo {
                    pid: 42,
                    uid: 0,
                    control: "/run/udrv/control.sock".into(),
                    state: "/run/udrv/state.json".into(),
                    started_at: 1,
                    keep_claims: false,
                    upgrades: 2,
                },
                served: vec![served()],
                claims: vec![],
                recovery_failures: vec![],
            })),
            Err(ErrorReply {
                kind: ErrorKind::Refused,
                message: "0000:00:02.0: eth0 is up\npass --force".into(),
            }),
        ];
        for response in replies {
            let line = encode_response(&response);
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(decode_response(&line).unwrap(), response, "{line}");
        }
    }

    #[test]
    fn malformed_requests_are_errors_that_name_the_problem() {
        let err = |line: &str| Request::decode(line).unwrap_err().to_string();
        assert!(err("hello").contains("not JSON"), "{}", err("hello"));
        assert!(err("[1,2]").contains("not a JSON object"));
        assert!(err(r#"{"op":"status"}"#).contains("no \"version\" field"));
        let v2 = err(r#"{"version":2,"op":"status"}"#);
        assert!(v2.contains("version 2") && v2.contains("version 1"), "{v2}");
        assert!(err(r#"{"version":"1","op":"status"}"#).contains("version \"1\""));
        let unknown = err(r#"{"version":1,"op":"frobnicate"}"#);
        assert!(
            unknown.contains("unknown variant `frobnicate`"),
            "{unknown}"
        );
        assert!(unknown.contains("attach"), "{unknown}");
        let no_op = err(r#"{"version":1}"#);
        assert!(no_op.contains("missing field `op`"), "{no_op}");
        let missing = err(r#"{"version":1,"op":"serve","device":"00:04.0"}"#);
        assert!(missing.contains("missing field `frontend`"), "{missing}");
        let extra = err(r#"{"version":1,"op":"unserve","device":"00:04.0","devce":1}"#);
        assert!(extra.contains("unknown field `devce`"), "{extra}");
        let address = err(r#"{"version":1,"op":"unserve","device":"00:4.0.0"}"#);
        assert!(address.starts_with("bad request:"), "{address}");
        let spec = err(r#"{"version":1,"op":"serve","device":"00:04.0","frontend":"tcp:1"}"#);
        assert!(spec.contains("unknown frontend kind \"tcp\""), "{spec}");
    }

    #[test]
    fn a_served_device_status_keeps_the_fields_earlier_builds_wrote_and_read() {
        // What `udrv status --json` printed for a served device before the frontend's
        // status and the control protocol's were one type.
        let earlier = r#"{"socket":"/run/udrv/nic.sock","guest_connected":true,
            "guests_served":2,"config_accesses":300,"mmio_reads":40,"mmio_writes":50,
            "interrupts":6,"dma_mapped_bytes":100663296,"last_error":"guest vanished"}"#;
        let status: FrontendStatus = serde_json::from_str(earlier).unwrap();
        assert_eq!(
            status,
            FrontendStatus {
                command_batches: 0,
                polled_commands: 0,
                polling: false,
                ..served().status
            }
        );
        let now = serde_json::to_value(served().status).unwrap();
        let earlier: serde_json::Value = serde_json::from_str(earlier).unwrap();
        for (field, value) in earlier.as_object().unwrap() {
            assert_eq!(&now[field], value, "{field}");
        }
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(decode_response("{").is_err());
        assert!(decode_response(r#"{"version":1}"#)
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        assert!(decode_response(r#"{"version":1,"ok":{"reply":"nope"}}"#).is_err());
        assert!(matches!(
            decode_response(r#"{"version":9,"ok":{}}"#),
            Err(ProtocolError::Version(_))
        ));
    }
}
