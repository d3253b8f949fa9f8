//! Loading vfio-pci when it is not there yet. This runs `modprobe`: the one place udrv
//! starts another program, because resolving module dependencies and options is
//! modprobe's job (finit_module(2) would need all of that redone).

use std::io;
use std::process::Command;

/// Loads kernel modules. [`Modprobe`] is the real one; tests use their own.
pub trait ModuleLoader {
    /// Loads `module` (and what it depends on).
    fn load(&mut self, module: &str) -> io::Result<()>;
}

/// Runs `modprobe <module>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Modprobe;

impl ModuleLoader for Modprobe {
    fn load(&mut self, module: &str) -> io::Result<()> {
        let output = Command::new("modprobe").arg(module).output()?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(io::Error::other(format!(
            "modprobe {module} exited with {}: {}",
            output.status,
            stderr.trim()
        )))
    }
}
