//! `PciFunction`: what the virtual bus needs from a function on it.
//!
//! Two kinds implement it: emulated functions (the host bridge, the test device) whose
//! whole state is a [`ConfigSpace`](crate::ConfigSpace) and some memory, and
//! passthrough functions, whose config is the real device's config (read through
//! VFIO) overlaid by virtual registers, and whose BAR accesses go to the real regions.
//!
//! The bus asks a function only for its config registers, its BAR layout and BAR
//! accesses; it reads BAR addresses and the command register through
//! [`PciFunction::config_read`], so a function that virtualises them is decoded by what
//! the guest sees.

use std::any::Any;
use std::io;

use thiserror::Error;

use crate::bar::{BarIndex, BarLayout};
use crate::config::access_width::AccessWidth;
use crate::interrupt::routing::MsiRouting;

/// Why a function could not serve a BAR access.
#[derive(Debug, Error)]
pub enum FunctionError {
    /// An access that does not fit inside the BAR.
    #[error(
        "{bar} access of {len} bytes at {offset:#x}: out of range (the BAR is {size:#x} bytes)"
    )]
    OutOfRange {
        /// The BAR.
        bar: BarIndex,
        /// Byte offset within the BAR.
        offset: u64,
        /// Bytes accessed.
        len: usize,
        /// The BAR's size in bytes.
        size: u64,
    },
    /// An access to a BAR the function does not implement.
    #[error("{bar}: not implemented by this function")]
    NoSuchBar {
        /// The BAR.
        bar: BarIndex,
    },
    /// The device behind the function failed the access (a VFIO region read/write).
    #[error("{bar} {operation} of {len} bytes at {offset:#x}: {source}")]
    Io {
        /// The BAR.
        bar: BarIndex,
        /// "read" or "write".
        operation: &'static str,
        /// Byte offset within the BAR.
        offset: u64,
        /// Bytes accessed.
        len: usize,
        /// The device's error.
        #[source]
        source: io::Error,
    },
}

/// A PCI function on a [`VirtualBus`](crate::VirtualBus).
///
/// Config accesses follow [`ConfigSpace`](crate::ConfigSpace)'s policy: refused
/// accesses read all-ones and write nothing, never panic. BAR accesses arrive
/// bounds-checked by the bus (`offset + data.len()` is within the BAR's size).
pub trait PciFunction: Send {
    /// Guest config read of `width` at `offset`.
    fn config_read(&mut self, offset: u16, width: AccessWidth) -> u32;

    /// Guest config write of `width` at `offset`.
    fn config_write(&mut self, offset: u16, width: AccessWidth, value: u32);

    /// The BARs and ROM this function implements (sizes and kinds). Fixed for the
    /// function's life.
    fn bar_layout(&self) -> &BarLayout;

    /// Guest read of `data.len()` bytes at `offset` in BAR `bar`.
    fn bar_read(
        &mut self,
        bar: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), FunctionError>;

    /// Guest write of `data` at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: BarIndex, offset: u64, data: &[u8]) -> Result<(), FunctionError>;

    /// MSI/MSI-X vector changes since the last call, in the order they happened.
    fn take_msi_routing(&mut self) -> Vec<MsiRouting> {
        Vec::new()
    }

    /// For reaching a concrete function on the bus (e.g. a test asking its test
    /// device what it saw).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Check that `layout` implements `bar` and that an access of `len` bytes at `offset`
/// lies inside it.
pub fn check_bar_access(
    layout: &BarLayout,
    bar: BarIndex,
    offset: u64,
    len: usize,
) -> Result<(), FunctionError> {
    let size = layout
        .get(bar)
        .map(|d| d.size)
        .ok_or(FunctionError::NoSuchBar { bar })?;
    check_range(bar, offset, len, size)
}

/// Check that an access of `len` bytes at `offset` lies inside a BAR of `size` bytes.
fn check_range(bar: BarIndex, offset: u64, len: usize, size: u64) -> Result<(), FunctionError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(FunctionError::OutOfRange {
            bar,
            offset,
            len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::{BarDefinition, BarKind};

    #[test]
    fn bar_bounds_are_checked_without_overflow() {
        let bar = BarIndex::new(2).unwrap();
        assert!(check_range(bar, 0xffc, 4, 0x1000).is_ok());
        let err = check_range(bar, 0xffe, 4, 0x1000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BAR2 access of 4 bytes at 0xffe: out of range (the BAR is 0x1000 bytes)"
        );
        assert!(check_range(bar, u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn only_implemented_bars_take_accesses() {
        let mut layout = BarLayout::default();
        let mem = BarKind::Memory32 {
            prefetchable: false,
        };
        let bar2 = BarIndex::new(2).unwrap();
        layout.set(bar2, BarDefinition::new(mem, 0x1000)).unwrap();
        assert!(check_bar_access(&layout, bar2, 0xffc, 4).is_ok());
        assert!(matches!(
            check_bar_access(&layout, bar2, 0xffe, 4),
            Err(FunctionError::OutOfRange { size: 0x1000, .. })
        ));
        let bar3 = BarIndex::new(3).unwrap();
        assert!(matches!(
            check_bar_access(&layout, bar3, 0, 4),
            Err(FunctionError::NoSuchBar { bar }) if bar == bar3
        ));
    }
}
