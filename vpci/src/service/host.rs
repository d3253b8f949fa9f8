//! The host the daemon claims devices on: its sysfs root, how sysfs is written and
//! modules loaded, and the claim state file. The real host in the daemon; a recorded
//! tree and a fake kernel in tests.

use std::path::PathBuf;
use std::time::Duration;

use udriver::bind::{KernelSysfs, SysfsWriter};
use udriver::claim::{Claimer, Modprobe, ModuleLoader, StateFile};
use udriver::pci::SysfsRoot;

/// Where and how devices are claimed.
pub struct Host {
    /// The sysfs/proc/dev root (`/` on a real host).
    pub root: SysfsRoot,
    /// Writes sysfs attributes.
    pub writer: Box<dyn SysfsWriter + Send>,
    /// Loads vfio-pci when needed.
    pub modules: Box<dyn ModuleLoader + Send>,
    /// The claim state file.
    pub state_path: PathBuf,
    /// How long to wait for `/dev/vfio/N` after binding.
    pub node_timeout: Duration,
}

impl Host {
    /// This machine: `/`, real sysfs writes, `modprobe`, the state file at
    /// `state_path`.
    pub fn system(state_path: Option<PathBuf>) -> Self {
        Self {
            root: SysfsRoot::system(),
            writer: Box::new(KernelSysfs),
            modules: Box::new(Modprobe),
            state_path: state_path.unwrap_or_else(StateFile::default_path),
            node_timeout: Duration::from_secs(2),
        }
    }

    /// A claimer over this host.
    pub fn claimer(&mut self) -> Claimer<'_> {
        Claimer::new(
            self.root.clone(),
            &mut *self.writer,
            &mut *self.modules,
            self.state_path.clone(),
        )
        .with_node_timeout(self.node_timeout)
    }
}
