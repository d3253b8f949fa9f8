//! The claim state file: every device udrv takes from its driver is recorded here
//! before the first sysfs write, so that `udrv detach` (or the next attach) can put it
//! back exactly, even after udrv was killed half-way. Written atomically (temp file,
//! fsync, rename, fsync of the directory) under an exclusive lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::pci::PciAddress;

/// Where the state lives unless `UDRV_STATE` (or `--state`) says otherwise. /run is
/// cleared at boot, which is when every claim ends anyway.
pub const DEFAULT_STATE_PATH: &str = "/run/udrv/state.json";

/// The environment variable that overrides [`DEFAULT_STATE_PATH`].
pub const STATE_ENV: &str = "UDRV_STATE";

const VERSION: u32 = 1;

/// How far a claim got. Each phase is saved before the step that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimPhase {
    /// Recorded; nothing written to sysfs yet.
    Recorded,
    /// `driver_override` says vfio-pci.
    OverrideSet,
    /// Unbound from the original driver; not yet on vfio-pci.
    Unbound,
    /// On vfio-pci: the claim is complete.
    Attached,
    /// Being given back to the original driver.
    Detaching,
}

impl std::fmt::Display for ClaimPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClaimPhase::Recorded => "recorded, not yet started",
            ClaimPhase::OverrideSet => "interrupted after setting driver_override",
            ClaimPhase::Unbound => "interrupted after unbinding",
            ClaimPhase::Attached => "attached",
            ClaimPhase::Detaching => "interrupted while detaching",
        })
    }
}

impl ClaimPhase {
    /// Whether the claim finished (anything else was interrupted).
    pub fn is_complete(self) -> bool {
        self == ClaimPhase::Attached
    }
}

/// One claimed device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The device.
    pub address: PciAddress,
    /// Its driver before the claim (`None`: it had none).
    pub original_driver: Option<String>,
    /// Its `driver_override` before the claim.
    pub original_override: Option<String>,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Who claimed it (the user behind sudo, when there is one).
    pub owner_uid: u32,
    /// That user's name.
    pub owner_name: Option<String>,
    /// The udrv process that made the claim.
    pub pid: u32,
    /// When (seconds since the Unix epoch).
    pub claimed_at: u64,
    /// How far it got.
    pub phase: ClaimPhase,
    /// The frontend `udrv serve` serves the device on (e.g. `uml:/run/udrv/nic.sock`),
    /// recorded before the frontend starts, so that a restarted service serves it
    /// again. Files written before this field existed parse as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<String>,
}

/// The whole state: every claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimState {
    /// Format version.
    pub version: u32,
    /// The claims, by address.
    pub claims: Vec<ClaimRecord>,
}

impl ClaimState {
    /// The record for `address`.
    pub fn get(&self, address: PciAddress) -> Option<&ClaimRecord> {
        self.claims.iter().find(|c| c.address == address)
    }

    /// Inserts or replaces the record for its address.
    pub fn put(&mut self, record: ClaimRecord) {
        match self.claims.iter_mut().find(|c| c.address == record.address) {
            Some(slot) => *slot = record,
            None => {
                self.claims.push(record);
                self.claims.sort_by_key(|c| c.address);
            }
        }
    }

    /// Sets the phase of the record for `address`.
    pub fn set_phase(&mut self, address: PciAddress, phase: ClaimPhase) {
        if let Some(record) = self.claims.iter_mut().find(|c| c.address == address) {
            record.phase = phase;
        }
    }

    /// Drops the record for `address`.
    pub fn remove(&mut self, address: PciAddress) {
        self.claims.retain(|c| c.address != address);
    }
}

/// A state-file failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or locking failed.
    #[error("state file {}: {action} failed: {source}{hint}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why it failed.
        source: io::Error,
        /// What to do (starts with "; ").
        hint: &'static str,
    },
    /// The file is not a state file.
    #[error("state file {} is unreadable ({source}); it records which devices udrv took from their drivers: repair it, or move it aside and detach those devices by hand", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> StateError {
    let hint = match source.kind() {
        io::ErrorKind::PermissionDenied => {
            "; run as root, or point UDRV_STATE (--state) at a writable file"
        }
        _ => "",
    };
    StateError::Io {
        path: path.to_path_buf(),
        action,
        source,
        hint,
    }
}

/// The state file, held under an exclusive lock for as long as this value lives, so
/// that two udrv processes never interleave claims.
pub struct StateFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl StateFile {
    /// `UDRV_STATE` if set, else [`DEFAULT_STATE_PATH`].
    pub fn default_path() -> PathBuf {
        std::env::var_os(STATE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_PATH))
    }

    /// Locks the state file (creating its directory) and reads it; a missing file is
    /// an empty state. Blocks while another udrv holds the lock.
    pub fn open(path: &Path) -> Result<(Self, ClaimState), StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, "creating the directory", e))?;
        }
        let lock_path = lock_path(path);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, "opening the lock", e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_error(&lock_path, "locking", io::Error::from(errno)))?;
        let state = Self::read(path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                _lock: lock,
            },
            state,
        ))
    }

    /// Reads the state without locking (for display); a missing file is empty.
    pub fn read(path: &Path) -> Result<ClaimState, StateError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ClaimState {
                version: VERSION,
                claims: Vec::new(),
            }),
            Err(e) => Err(io_error(path, "reading", e)),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents atomically: a crash leaves the old or the new
    /// state, never a torn one.
    pub fn save(&self, state: &ClaimState) -> Result<(), StateError> {
        let mut state = state.clone();
        state.version = VERSION;
        let mut text = serde_json::to_string_pretty(&state).map_err(|e| {
            io_error(
                &self.path,
                "encoding",
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        text.push('\n');
        let temp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o644)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temp);
            io_error(&self.path, "writing", e)
        })
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(address: &str, phase: ClaimPhase) -> ClaimRecord {
        ClaimRecord {
            address: address.parse().unwrap(),
            original_driver: Some("e1000".into()),
            original_override: None,
            iommu_group: Some(3),
            owner_uid: 1000,
            owner_name: Some("alice".into()),
            pid: 42,
            claimed_at: 1_700_000_000,
            phase,
            serve: None,
        }
    }

    #[test]
    fn round_trips_atomically_and_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/udrv/state.json");
        let (file, mut state) = StateFile::open(&path).unwrap();
        assert!(state.claims.is_empty());
        state.put(record("0000:00:03.0", ClaimPhase::Recorded));
        state.put(record("0000:00:02.0", ClaimPhase::Attached));
        file.save(&state).unwrap();
        let read = StateFile::read(&path).unwrap();
        assert_eq!(read.claims.len(), 2);
        assert_eq!(read.claims[0].address.to_string(), "0000:00:02.0");
        assert_eq!(read.version, 1);
        // No temp files left behind.
        let names: Vec<String> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n == "state.json" || n == "state.json.lock"),
            "{names:?}"
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"phase\": \"attached\""), "{text}");
        assert!(text.contains("\"original_driver\": \"e1000\""), "{text}");
    }

    #[test]
    fn put_replaces_and_remove_drops() {
        let mut state = ClaimState::default();
        state.put(record("0000:00:02.0", ClaimPhase::Recorded));
        state.set_phase("0000:00:02.0".parse().unwrap(), ClaimPhase::Unbound);
        assert_eq!(state.claims[0].phase, ClaimPhase::Unbound);
        state.put(record("0000:00:02.0", ClaimPhase::Attached));
        assert_eq!(state.claims.len(), 1);
        state.remove("0000:00:02.0".parse().unwrap());
        assert!(state.claims.is_empty());
    }

    #[test]
    fn serve_field_is_optional_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // A file written before the field existed.
        fs::write(
            &path,
            r#"{"version":1,"claims":[{"address":"0000:00:04.0","original_driver":"e1000e",
            "original_override":null,"iommu_group":5,"owner_uid":0,"owner_name":null,
            "pid":7,"claimed_at":1,"phase":"attached"}]}"#,
        )
        .unwrap();
        let (file, mut state) = StateFile::open(&path).unwrap();
        assert_eq!(state.claims[0].serve, None);
        let text = serde_json::to_string(&state).unwrap();
        assert!(!text.contains("serve"), "{text}");
        state.claims[0].serve = Some("uml:/run/udrv/nic.sock".into());
        file.save(&state).unwrap();
        let read = StateFile::read(&path).unwrap();
        assert_eq!(
            read.claims[0].serve.as_deref(),
            Some("uml:/run/udrv/nic.sock")
        );
    }

    #[test]
    fn corrupt_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{ not json").unwrap();
        let err = StateFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("state.json is unreadable"), "{err}");
        assert!(err.contains("detach those devices by hand"), "{err}");
        assert!(StateFile::open(&path).is_err());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (_held, _) = StateFile::open(&path).unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(lock_path(&path))
            .unwrap();
        let second = Flock::lock(file, FlockArg::LockExclusiveNonblock);
        assert!(
            second.is_err(),
            "a second lock must not be granted while the first is held"
        );
    }
}
