//! What a guest's MSI/MSI-X programming means for interrupt delivery.
//!
//! The MSI and MSI-X capability models keep the guest's programming virtually and
//! report each change of a vector as an [`MsiRouting`]: vector n now has this
//! address/data, is (un)masked, is (not) enabled. Consumers act on these events:
//! a passthrough function turns them into VFIO vector setup (enable the vectors with
//! eventfds, route each eventfd to the message), a frontend keeps the message to send
//! when the vector fires. The events carry the whole new state of the vector, so a
//! consumer that misses intermediate events still converges.

use std::fmt;

/// Which message-signalled interrupt mechanism a vector belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// MSI: up to 32 vectors programmed in the capability.
    Msi,
    /// MSI-X: up to 2048 vectors programmed in a table in a BAR.
    MsiX,
}

impl fmt::Display for InterruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Msi => f.write_str("MSI"),
            Self::MsiX => f.write_str("MSI-X"),
        }
    }
}

/// The memory write a function performs to signal an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Address written (on x86, in the 0xFEExxxxx local APIC range).
    pub address: u64,
    /// Value written.
    pub data: u32,
}

/// The full state of one vector after a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiRouting {
    /// MSI or MSI-X.
    pub kind: InterruptKind,
    /// Vector number: MSI 0..32, MSI-X table entry 0..2048.
    pub vector: u16,
    /// The message as the guest programmed it (for MSI, with the vector number
    /// already merged into the low data bits).
    pub message: MsiMessage,
    /// The vector may not signal: its mask bit, or the MSI-X function mask, is set.
    /// A masked vector that fires becomes pending instead.
    pub masked: bool,
    /// The capability is enabled and the vector is among those the guest allocated.
    pub enabled: bool,
}

impl MsiRouting {
    /// Whether firing this vector sends its message now.
    pub fn deliverable(&self) -> bool {
        self.enabled && !self.masked
    }
}

impl fmt::Display for MsiRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vector {}: address {:#x} data {:#x}{}{}",
            self.kind,
            self.vector,
            self.message.address,
            self.message.data,
            if self.enabled {
                ", enabled"
            } else {
                ", disabled"
            },
            if self.masked { ", masked" } else { "" }
        )
    }
}

/// Compare `current` with the `last` reported states, record the new ones and return
/// the vectors that changed.
pub(crate) fn diff_routing(last: &mut [MsiRouting], current: &[MsiRouting]) -> Vec<MsiRouting> {
    last.iter_mut()
        .zip(current)
        .filter_map(|(old, new)| {
            (old != new).then(|| {
                *old = *new;
                *new
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(n: u16, masked: bool) -> MsiRouting {
        MsiRouting {
            kind: InterruptKind::MsiX,
            vector: n,
            message: MsiMessage {
                address: 0xfee0_0000,
                data: 0x40 + u32::from(n),
            },
            masked,
            enabled: true,
        }
    }

    #[test]
    fn diff_reports_only_changed_vectors() {
        let mut last = vec![vector(0, true), vector(1, true), vector(2, true)];
        let now = vec![vector(0, true), vector(1, false), vector(2, true)];
        assert_eq!(diff_routing(&mut last, &now), vec![vector(1, false)]);
        assert_eq!(last, now);
        assert!(diff_routing(&mut last, &now).is_empty());
    }

    #[test]
    fn deliverable_needs_enabled_and_unmasked() {
        assert!(vector(0, false).deliverable());
        assert!(!vector(0, true).deliverable());
        let disabled = MsiRouting {
            enabled: false,
            ..vector(0, false)
        };
        assert!(!disabled.deliverable());
        assert_eq!(
            vector(3, true).to_string(),
            "MSI-X vector 3: address 0xfee00000 data 0x43, enabled, masked"
        );
    }
}
