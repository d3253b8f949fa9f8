//! `MessageInterrupts`: a function's MSI and MSI-X capabilities as one unit, with the
//! MSI-X table and PBA they trap in its BARs.
//!
//! Every function that keeps MSI/MSI-X virtually (an emulated one or a passthrough one)
//! does the same around the two capability models: after a guest write to either
//! capability, or to the MSI-X table through its BAR, it collects the vectors' routing
//! changes (for [`PciFunction::take_msi_routing`](crate::PciFunction::take_msi_routing))
//! and the messages of pending vectors the write unmasked; a fired vector sends its
//! message, or becomes pending while masked. This type is that code, once. The
//! capabilities' registers stay in the function's [`ConfigSpace`], which each call
//! is given.

use std::ops::Range;

use super::msi::MsiCapability;
use super::msix::MsixCapability;
use super::routing::{InterruptKind, MsiMessage, MsiRouting};
use crate::bar::BarIndex;
use crate::config::access_width::AccessWidth;
use crate::config::space::ConfigSpace;

/// A function's MSI and MSI-X state: either capability may be absent.
#[derive(Debug, Default)]
pub struct MessageInterrupts {
    msi: Option<MsiCapability>,
    msix: Option<MsixCapability>,
    routing: Vec<MsiRouting>,
    unmasked: Vec<MsiMessage>,
}

impl MessageInterrupts {
    /// The state of a function with these capabilities (already added to or attached
    /// in its config space).
    pub fn new(msi: Option<MsiCapability>, msix: Option<MsixCapability>) -> Self {
        Self {
            msi,
            msix,
            routing: Vec::new(),
            unmasked: Vec::new(),
        }
    }

    /// The MSI capability, if the function has one.
    pub fn msi(&self) -> Option<&MsiCapability> {
        self.msi.as_ref()
    }

    /// The MSI-X capability, if the function has one.
    pub fn msix(&self) -> Option<&MsixCapability> {
        self.msix.as_ref()
    }

    /// A guest config write of `width` at `offset` has gone into `space`: if it touched
    /// the MSI or MSI-X capability, collect the routing changes and the messages of
    /// pending vectors it unmasked. True if it touched either.
    pub fn config_written(
        &mut self,
        space: &mut ConfigSpace,
        offset: u16,
        width: AccessWidth,
    ) -> bool {
        let mut touched = false;
        if let Some(msi) = self.msi.as_mut().filter(|m| m.overlaps(offset, width)) {
            self.routing.extend(msi.update(space));
            self.unmasked.extend(msi.deliver_pending(space));
            touched = true;
        }
        if let Some(msix) = self.msix.as_mut().filter(|m| m.overlaps(offset, width)) {
            self.routing.extend(msix.update(space));
            self.unmasked.extend(msix.deliver_pending(space));
            touched = true;
        }
        touched
    }

    /// Serve a BAR read that falls on the MSI-X table or PBA. False (and `data`
    /// untouched) if it does not: the function serves it.
    pub fn bar_read(&self, bar: BarIndex, offset: u64, data: &mut [u8]) -> bool {
        self.msix
            .as_ref()
            .is_some_and(|m| m.bar_read(bar, offset, data))
    }

    /// Serve a BAR write that falls on the MSI-X table or PBA, collecting what it
    /// changed as [`config_written`](Self::config_written) does. False if it does not
    /// fall there: the function serves it.
    pub fn bar_write(
        &mut self,
        space: &ConfigSpace,
        bar: BarIndex,
        offset: u64,
        data: &[u8],
    ) -> bool {
        let Some(msix) = self.msix.as_mut() else {
            return false;
        };
        if !msix.bar_write(bar, offset, data) {
            return false;
        }
        self.routing.extend(msix.update(space));
        self.unmasked.extend(msix.deliver_pending(space));
        true
    }

    /// The ranges of `bar` the MSI-X table and PBA occupy, which must stay trapped.
    pub fn trapped_ranges(&self, bar: BarIndex) -> Vec<Range<u64>> {
        self.msix
            .iter()
            .flat_map(|m| [m.table_range(), m.pba_range()])
            .filter(|(b, _)| *b == bar)
            .map(|(_, r)| r)
            .collect()
    }

    /// The mechanism the guest has enabled (MSI-X before MSI) and how many vectors it
    /// asks for; `None` while neither is enabled.
    pub fn enabled(&self, space: &ConfigSpace) -> Option<(InterruptKind, u16)> {
        if let Some(msix) = self.msix.as_ref().filter(|m| m.enabled(space)) {
            Some((InterruptKind::MsiX, msix.vectors()))
        } else {
            let msi = self.msi.as_ref().filter(|m| m.enabled(space))?;
            Some((InterruptKind::Msi, msi.enabled_vectors(space).into()))
        }
    }

    /// Every vector's current state for `kind`, as the guest programmed it; empty if
    /// the function lacks that capability.
    pub fn current(&self, space: &ConfigSpace, kind: InterruptKind) -> Vec<MsiRouting> {
        match kind {
            InterruptKind::Msi => self.msi.as_ref().map(|m| m.current(space)),
            InterruptKind::MsiX => self.msix.as_ref().map(|m| m.current(space)),
        }
        .unwrap_or_default()
    }

    /// Fire a vector. Returns the message to send, or `None` if that mechanism is not
    /// implemented or not enabled, or the vector is masked (then it becomes pending
    /// and is sent by a later unmask, see [`take_unmasked`](Self::take_unmasked)).
    pub fn signal(
        &mut self,
        space: &mut ConfigSpace,
        kind: InterruptKind,
        vector: u16,
    ) -> Option<MsiMessage> {
        match kind {
            InterruptKind::Msi => {
                let vector = u8::try_from(vector).ok()?;
                self.msi.as_mut()?.signal(space, vector)
            }
            InterruptKind::MsiX => self.msix.as_mut()?.signal(space, vector),
        }
    }

    /// Routing changes since the last call, oldest first.
    pub fn take_routing(&mut self) -> Vec<MsiRouting> {
        std::mem::take(&mut self.routing)
    }

    /// Messages of pending vectors the guest unmasked since the last call, oldest
    /// first.
    pub fn take_unmasked(&mut self) -> Vec<MsiMessage> {
        std::mem::take(&mut self.unmasked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::{BarDefinition, BarKind};
    use crate::config::regs::{msi, msix};
    use crate::config::space::ConfigSize;
    use crate::interrupt::msi::MsiConfig;
    use crate::interrupt::msix::MsixConfig;
    use AccessWidth::{Dword, Word};

    fn bar(i: u8) -> BarIndex {
        BarIndex::new(i).unwrap()
    }

    /// MSI (2 vectors, 64-bit, maskable) and MSI-X (4 vectors, table at 0x1000 and
    /// PBA at 0x1800 of BAR1).
    fn both() -> (ConfigSpace, MessageInterrupts) {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        let mem = BarKind::Memory32 {
            prefetchable: false,
        };
        space
            .set_bar(bar(1), BarDefinition::new(mem, 0x2000))
            .unwrap();
        let msi = MsiCapability::add(
            &mut space,
            MsiConfig {
                vectors: 2,
                is_64bit: true,
                per_vector_mask: true,
            },
        )
        .unwrap();
        let msix = MsixCapability::add(
            &mut space,
            MsixConfig {
                vectors: 4,
                table_bar: bar(1),
                table_offset: 0x1000,
                pba_bar: bar(1),
                pba_offset: 0x1800,
            },
        )
        .unwrap();
        (space, MessageInterrupts::new(Some(msi), Some(msix)))
    }

    #[test]
    fn only_the_table_and_pba_are_trapped() {
        let (space, mut interrupts) = both();
        assert_eq!(
            interrupts.trapped_ranges(bar(1)),
            vec![0x1000..0x1040, 0x1800..0x1808]
        );
        assert!(interrupts.trapped_ranges(bar(0)).is_empty());
        let mut data = [0u8; 4];
        assert!(!interrupts.bar_read(bar(1), 0xffc, &mut data));
        assert!(!interrupts.bar_write(&space, bar(1), 0x1040, &data));
        assert!(interrupts.bar_read(bar(1), 0x1000, &mut data));
        assert!(interrupts.bar_write(&space, bar(1), 0x1000, &0xfee0_0000u32.to_le_bytes()));
        assert!(!interrupts.bar_write(&space, bar(2), 0x1000, &data));
        assert!(MessageInterrupts::default()
            .trapped_ranges(bar(1))
            .is_empty());
    }

    #[test]
    fn guest_writes_become_routing_and_unmasked_messages() {
        let (mut space, mut interrupts) = both();
        let o = interrupts.msi().unwrap().offset();
        assert!(!interrupts.config_written(&mut space, 0x04, Word));
        assert!(interrupts.take_routing().is_empty());

        // MSI: vector 0 at 0xfee01000 / 0x41, masked, then enabled.
        space.write(o + msi::ADDRESS_LO, Dword, 0xfee0_1000);
        space.write(o + msi::DATA_64, Word, 0x41);
        space.write(o + msi::MASK_64, Dword, 1);
        space.write(o + msi::CONTROL, Word, msi::CONTROL_ENABLE.into());
        assert!(interrupts.config_written(&mut space, o + msi::CONTROL, Word));
        assert_eq!(
            interrupts.enabled(&space),
            Some((InterruptKind::Msi, 1)),
            "one vector enabled while MME is 0"
        );
        let routing = interrupts.take_routing();
        assert!(routing
            .iter()
            .any(|r| r.kind == InterruptKind::Msi && r.vector == 0));
        assert!(interrupts.take_routing().is_empty(), "taken once");

        // A masked vector fires: pending; the unmask delivers it.
        assert_eq!(interrupts.signal(&mut space, InterruptKind::Msi, 0), None);
        assert_eq!(
            interrupts.signal(&mut space, InterruptKind::Msi, 0x100),
            None
        );
        space.write(o + msi::MASK_64, Dword, 0);
        assert!(interrupts.config_written(&mut space, o + msi::MASK_64, Dword));
        let message = MsiMessage {
            address: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(interrupts.take_unmasked(), vec![message]);
        assert_eq!(
            interrupts.signal(&mut space, InterruptKind::Msi, 0),
            Some(message)
        );

        // MSI-X enabled wins over MSI.
        let x = interrupts.msix().unwrap().offset();
        space.write(x + msix::CONTROL, Word, msix::CONTROL_ENABLE.into());
        assert!(interrupts.config_written(&mut space, x + msix::CONTROL, Word));
        assert_eq!(interrupts.enabled(&space), Some((InterruptKind::MsiX, 4)));
        assert_eq!(interrupts.current(&space, InterruptKind::MsiX).len(), 4);
        assert!(MessageInterrupts::default()
            .current(&space, InterruptKind::Msi)
            .is_empty());
    }
}
