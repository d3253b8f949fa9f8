//! The QEMU rig's guest side: the runner that executes rig tests inside the guest, the
//! facts about the guest's devices, the test disks' pattern, and the tests themselves.
//! `integration/rig` (the host side) builds this for musl and boots it.

pub use udrv_examples::disk_pattern;
pub mod harness;
pub mod rig;
pub mod tests;
