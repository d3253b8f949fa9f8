//! The MSI-X capability and its table and pending-bit array, kept virtually.
//!
//! The capability's control register lives in the [`ConfigSpace`]; the table and PBA
//! live here and are reached through the BAR that holds them. A function forwards BAR
//! accesses that [`MsixCapability::owns`] to [`bar_read`](MsixCapability::bar_read) /
//! [`bar_write`](MsixCapability::bar_write), and after every guest write to the
//! capability or the table calls [`update`](MsixCapability::update) for the routing
//! changes.
//!
//! Table accesses may be of any width (the spec asks software for aligned dwords or
//! qwords; narrower accesses are served bytewise). Bytes of an access that fall
//! outside the table and PBA read as all-ones and are not written. The PBA is read-only
//! to the guest.

use std::ops::Range;

use crate::bar::{BarIndex, BarLayout};
use crate::config::access_width::AccessWidth;
use crate::config::regs::{cap, msix};
use crate::config::space::{ConfigSpace, ConfigSpaceError, RegisterMask};
use crate::interrupt::routing::{diff_routing, InterruptKind, MsiMessage, MsiRouting};

/// How an emulated function's MSI-X capability is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixConfig {
    /// Table entries, 1..=2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: BarIndex,
    /// Offset of the table in its BAR; a multiple of 8.
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: BarIndex,
    /// Offset of the pending-bit array in its BAR; a multiple of 8.
    pub pba_offset: u32,
}

/// Guest-writable bits of one 16-byte table entry, byte by byte: the dword-aligned
/// address, the data, and the mask bit of vector control.
const ENTRY_WRITABLE: [u8; msix::ENTRY_SIZE as usize] = [
    0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0,
];

/// An MSI-X capability: layout, table, pending bits and last reported state.
#[derive(Clone, Debug)]
pub struct MsixCapability {
    offset: u16,
    vectors: u16,
    table_bar: BarIndex,
    table_offset: u64,
    pba_bar: BarIndex,
    pba_offset: u64,
    table: Vec<u8>,
    pending: Vec<u8>,
    reported: Vec<MsiRouting>,
}

impl MsixCapability {
    /// Add an MSI-X capability to `space`, whose BARs must already hold the table and
    /// PBA.
    pub fn add(space: &mut ConfigSpace, config: MsixConfig) -> Result<Self, ConfigSpaceError> {
        if config.vectors == 0 || config.vectors > msix::MAX_VECTORS {
            return Err(ConfigSpaceError::BadVectorCount {
                kind: "MSI-X",
                count: config.vectors,
                max: msix::MAX_VECTORS,
            });
        }
        // Check before touching the capability list, so a refused config leaves no trace.
        check_placement(space.bar_layout(), &config)?;
        let offset = space.add_capability(cap::MSIX, msix::SIZE)?;
        let control = config.vectors - 1;
        space.set(offset + msix::CONTROL, AccessWidth::Word, control.into())?;
        let table = config.table_offset | u32::from(config.table_bar.get());
        let pba = config.pba_offset | u32::from(config.pba_bar.get());
        space.set(offset + msix::TABLE, AccessWidth::Dword, table)?;
        space.set(offset + msix::PBA, AccessWidth::Dword, pba)?;
        Self::attach(space, offset)
    }

    /// Take over an MSI-X capability already in `space` (e.g. a real device's):
    /// learn the table and PBA placement, check them against the space's BARs, make
    /// the enable and function-mask bits guest-writable, and start with every vector
    /// masked, as after reset.
    pub fn attach(space: &mut ConfigSpace, offset: u16) -> Result<Self, ConfigSpaceError> {
        if space.u8_at(offset + cap::ID) != cap::MSIX {
            return Err(ConfigSpaceError::NoSuchCapability {
                offset,
                list: "MSI-X",
            });
        }
        let control = space.u16_at(offset + msix::CONTROL);
        let table = space.u32_at(offset + msix::TABLE);
        let pba = space.u32_at(offset + msix::PBA);
        let bar = |register: u32, structure| {
            BarIndex::new((register & msix::BIR_MASK) as u8).ok_or(
                ConfigSpaceError::BadMsixPlacement {
                    structure,
                    bar: BarIndex::ROM,
                    offset: u64::from(register & msix::OFFSET_MASK),
                    len: 0,
                    reason: "BAR indicator above 5 is reserved",
                },
            )
        };
        let config = MsixConfig {
            vectors: (control & msix::CONTROL_TABLE_SIZE_MASK) + 1,
            table_bar: bar(table, "table")?,
            table_offset: table & msix::OFFSET_MASK,
            pba_bar: bar(pba, "PBA")?,
            pba_offset: pba & msix::OFFSET_MASK,
        };
        check_placement(space.bar_layout(), &config)?;
        space.set_mask(
            offset + msix::CONTROL,
            AccessWidth::Word,
            RegisterMask::writable((msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK).into()),
        )?;
        space.set_mask(
            offset + msix::TABLE,
            AccessWidth::Dword,
            RegisterMask::READ_ONLY,
        )?;
        space.set_mask(
            offset + msix::PBA,
            AccessWidth::Dword,
            RegisterMask::READ_ONLY,
        )?;
        let vectors = config.vectors;
        let mut table = vec![0u8; usize::from(vectors) * msix::ENTRY_SIZE as usize];
        for entry in table.chunks_mut(msix::ENTRY_SIZE as usize) {
            entry[msix::ENTRY_VECTOR_CONTROL as usize] = msix::VECTOR_CONTROL_MASKED as u8;
        }
        let mut this = Self {
            offset,
            vectors,
            table_bar: config.table_bar,
            table_offset: config.table_offset.into(),
            pba_bar: config.pba_bar,
            pba_offset: config.pba_offset.into(),
            table,
            pending: vec![0u8; pba_len(vectors) as usize],
            reported: Vec::new(),
        };
        this.reported = this.current(space);
        Ok(this)
    }

    /// Offset of the capability in config space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Number of table entries.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Whether a config access touches this capability.
    pub fn overlaps(&self, offset: u16, width: AccessWidth) -> bool {
        let end = u32::from(offset) + width.bytes() as u32;
        end > u32::from(self.offset) && u32::from(offset) < u32::from(self.offset + msix::SIZE)
    }

    /// The BAR and byte range holding the table (to trap it, and map the rest).
    pub fn table_range(&self) -> (BarIndex, Range<u64>) {
        let len = self.table.len() as u64;
        (self.table_bar, self.table_offset..self.table_offset + len)
    }

    /// The BAR and byte range holding the pending-bit array.
    pub fn pba_range(&self) -> (BarIndex, Range<u64>) {
        let len = self.pending.len() as u64;
        (self.pba_bar, self.pba_offset..self.pba_offset + len)
    }

    /// Whether a BAR access of `len` bytes at `offset` touches the table or PBA.
    pub fn owns(&self, bar: BarIndex, offset: u64, len: usize) -> bool {
        let end = offset.saturating_add(len as u64);
        [self.table_range(), self.pba_range()]
            .iter()
            .any(|(b, r)| *b == bar && end > r.start && offset < r.end)
    }

    /// Serve a guest read of the table or PBA; returns false (and leaves `data`) if
    /// the access touches neither.
    pub fn bar_read(&self, bar: BarIndex, offset: u64, data: &mut [u8]) -> bool {
        if !self.owns(bar, offset, data.len()) {
            return false;
        }
        let (_, table) = self.table_range();
        let (_, pba) = self.pba_range();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = if bar == self.table_bar && table.contains(&at) {
                self.table[(at - table.start) as usize]
            } else if bar == self.pba_bar && pba.contains(&at) {
                self.pending[(at - pba.start) as usize]
            } else {
                0xff
            };
        }
        true
    }

    /// Serve a guest write to the table (the PBA is read-only); returns false if the
    /// access touches neither table nor PBA.
    pub fn bar_write(&mut self, bar: BarIndex, offset: u64, data: &[u8]) -> bool {
        if !self.owns(bar, offset, data.len()) {
            return false;
        }
        let (_, table) = self.table_range();
        if bar != self.table_bar {
            return true;
        }
        for (i, byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            if table.contains(&at) {
                let index = (at - table.start) as usize;
                let writable = ENTRY_WRITABLE[index % msix::ENTRY_SIZE as usize];
                let old = self.table[index];
                self.table[index] = (old & !writable) | (byte & writable);
            }
        }
        true
    }

    fn control(&self, space: &ConfigSpace) -> u16 {
        space.u16_at(self.offset + msix::CONTROL)
    }

    /// Whether the guest set the MSI-X enable bit.
    pub fn enabled(&self, space: &ConfigSpace) -> bool {
        self.control(space) & msix::CONTROL_ENABLE != 0
    }

    /// Whether the guest set the function mask (all vectors masked).
    pub fn function_masked(&self, space: &ConfigSpace) -> bool {
        self.control(space) & msix::CONTROL_FUNCTION_MASK != 0
    }

    fn entry_u32(&self, vector: u16, field: u64) -> u32 {
        let at = usize::from(vector) * msix::ENTRY_SIZE as usize + field as usize;
        u32::from_le_bytes([
            self.table[at],
            self.table[at + 1],
            self.table[at + 2],
            self.table[at + 3],
        ])
    }

    /// The state of table entry `vector` (None past the table).
    pub fn vector_state(&self, space: &ConfigSpace, vector: u16) -> Option<MsiRouting> {
        if vector >= self.vectors {
            return None;
        }
        let low = self.entry_u32(vector, msix::ENTRY_ADDRESS_LO);
        let high = self.entry_u32(vector, msix::ENTRY_ADDRESS_HI);
        let control = self.entry_u32(vector, msix::ENTRY_VECTOR_CONTROL);
        Some(MsiRouting {
            kind: InterruptKind::MsiX,
            vector,
            message: MsiMessage {
                address: u64::from(low) | (u64::from(high) << 32),
                data: self.entry_u32(vector, msix::ENTRY_DATA),
            },
            masked: control & msix::VECTOR_CONTROL_MASKED != 0 || self.function_masked(space),
            enabled: self.enabled(space),
        })
    }

    /// The state of every table entry as programmed now.
    pub fn current(&self, space: &ConfigSpace) -> Vec<MsiRouting> {
        (0..self.vectors)
            .filter_map(|v| self.vector_state(space, v))
            .collect()
    }

    /// Vectors whose state changed since the last call (or since attach). Call after
    /// every guest write to the capability or the table.
    pub fn update(&mut self, space: &ConfigSpace) -> Vec<MsiRouting> {
        let current = self.current(space);
        diff_routing(&mut self.reported, &current)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let byte = usize::from(vector / 8);
        let bit = 1u8 << (vector % 8);
        if on {
            self.pending[byte] |= bit;
        } else {
            self.pending[byte] &= !bit;
        }
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        vector < self.vectors && self.pending[usize::from(vector / 8)] & (1 << (vector % 8)) != 0
    }

    /// Device side: fire `vector`. Returns the message to send now, or `None` if
    /// MSI-X is disabled (nothing happens) or the vector is masked (it becomes pending).
    pub fn signal(&mut self, space: &ConfigSpace, vector: u16) -> Option<MsiMessage> {
        let state = self.vector_state(space, vector)?;
        if !state.enabled {
            return None;
        }
        if state.masked {
            self.set_pending(vector, true);
            return None;
        }
        Some(state.message)
    }

    /// Device side, after a guest write: send the messages of pending vectors that
    /// are now deliverable, clearing their pending bits.
    pub fn deliver_pending(&mut self, space: &ConfigSpace) -> Vec<MsiMessage> {
        let mut sent = Vec::new();
        for vector in 0..self.vectors {
            if !self.is_pending(vector) {
                continue;
            }
            if let Some(state) = self.vector_state(space, vector).filter(|s| s.deliverable()) {
                self.set_pending(vector, false);
                sent.push(state.message);
            }
        }
        sent
    }
}

/// PBA bytes for `vectors`: one bit per vector, in whole qwords.
fn pba_len(vectors: u16) -> u64 {
    u64::from(vectors).div_ceil(64) * 8
}

fn check_placement(layout: &BarLayout, config: &MsixConfig) -> Result<(), ConfigSpaceError> {
    let table_len = u64::from(config.vectors) * msix::ENTRY_SIZE;
    let pba_len = pba_len(config.vectors);
    let structures = [
        (
            "table",
            config.table_bar,
            u64::from(config.table_offset),
            table_len,
        ),
        ("PBA", config.pba_bar, u64::from(config.pba_offset), pba_len),
    ];
    for (structure, bar, offset, len) in structures {
        let refuse = |reason| ConfigSpaceError::BadMsixPlacement {
            structure,
            bar,
            offset,
            len,
            reason,
        };
        if offset & u64::from(msix::BIR_MASK) != 0 {
            return Err(refuse("offset must be a multiple of 8"));
        }
        let definition = layout
            .get(bar)
            .ok_or_else(|| refuse("the BAR is not implemented"))?;
        if definition.kind.is_io() {
            return Err(refuse("the BAR must be a memory BAR"));
        }
        if offset + len > definition.size {
            return Err(refuse("does not fit in the BAR"));
        }
    }
    let table = u64::from(config.table_offset)..u64::from(config.table_offset) + table_len;
    let pba = u64::from(config.pba_offset)..u64::from(config.pba_offset) + pba_len;
    if config.table_bar == config.pba_bar && table.start < pba.end && pba.start < table.end {
        return Err(ConfigSpaceError::BadMsixPlacement {
            structure: "PBA",
            bar: config.pba_bar,
            offset: pba.start,
            len: pba_len,
            reason: "overlaps the table",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::{BarDefinition, BarKind};
    use crate::config::space::ConfigSize;

    fn bar(i: u8) -> BarIndex {
        BarIndex::new(i).unwrap()
    }

    fn space() -> ConfigSpace {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        let mem = BarKind::Memory32 {
            prefetchable: false,
        };
        space
            .set_bar(bar(0), BarDefinition::new(BarKind::Io, 0x20))
            .unwrap();
        space
            .set_bar(bar(1), BarDefinition::new(mem, 0x4000))
            .unwrap();
        space
    }

    const CONFIG: MsixConfig = MsixConfig {
        vectors: 5,
        table_bar: BarIndex::ROM, // replaced in tests
        table_offset: 0x2000,
        pba_bar: BarIndex::ROM,
        pba_offset: 0x3000,
    };

    fn config() -> MsixConfig {
        MsixConfig {
            table_bar: bar(1),
            pba_bar: bar(1),
            ..CONFIG
        }
    }

    fn write_entry(msix: &mut MsixCapability, vector: u16, address: u64, data: u32, masked: bool) {
        let base = 0x2000 + u64::from(vector) * 16;
        assert!(msix.bar_write(bar(1), base, &address.to_le_bytes()));
        assert!(msix.bar_write(bar(1), base + 8, &data.to_le_bytes()));
        assert!(msix.bar_write(bar(1), base + 12, &u32::from(masked).to_le_bytes()));
    }

    #[test]
    fn capability_registers_describe_the_placement() {
        let mut space = space();
        let msix = MsixCapability::add(&mut space, config()).unwrap();
        let o = msix.offset();
        assert_eq!(space.u16_at(o + msix::CONTROL), 4);
        assert_eq!(space.u32_at(o + msix::TABLE), 0x2001);
        assert_eq!(space.u32_at(o + msix::PBA), 0x3001);
        assert_eq!(msix.table_range(), (bar(1), 0x2000..0x2050));
        assert_eq!(msix.pba_range(), (bar(1), 0x3000..0x3008));
        space.write(o + msix::CONTROL, AccessWidth::Word, 0xffff);
        assert_eq!(
            space.u16_at(o + msix::CONTROL),
            0xc004,
            "table size stays, enable and mask are writable"
        );
        space.write(o + msix::TABLE, AccessWidth::Dword, 0);
        assert_eq!(space.u32_at(o + msix::TABLE), 0x2001);
    }

    #[test]
    fn placement_is_checked() {
        let mut space = space();
        let cases = [
            MsixConfig {
                table_bar: bar(0),
                ..config()
            },
            MsixConfig {
                table_bar: bar(2),
                ..config()
            },
            MsixConfig {
                table_offset: 0x3ff0,
                ..config()
            },
            MsixConfig {
                pba_offset: 0x2040,
                ..config()
            },
            MsixConfig {
                table_offset: 0x2004,
                ..config()
            },
            MsixConfig {
                vectors: 0,
                ..config()
            },
        ];
        for bad in cases {
            assert!(MsixCapability::add(&mut space, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            space.capabilities().unwrap(),
            vec![],
            "refusals leave no trace"
        );
    }

    #[test]
    fn table_starts_masked_and_routes_after_enable() {
        let mut space = space();
        let mut msix = MsixCapability::add(&mut space, config()).unwrap();
        let mut entry = [0u8; 16];
        assert!(msix.bar_read(bar(1), 0x2010, &mut entry));
        assert_eq!(entry[12], 1);
        write_entry(&mut msix, 1, 0xfee0_2000, 0x51, false);
        write_entry(&mut msix, 3, 0xfee0_3003, 0x53, true);
        assert!(msix.update(&space).iter().all(|r| !r.enabled));
        let o = msix.offset();
        space.write(
            o + msix::CONTROL,
            AccessWidth::Word,
            msix::CONTROL_ENABLE.into(),
        );
        let changes = msix.update(&space);
        assert_eq!(changes.len(), 5, "every vector becomes enabled");
        assert_eq!(
            changes[1],
            MsiRouting {
                kind: InterruptKind::MsiX,
                vector: 1,
                message: MsiMessage {
                    address: 0xfee0_2000,
                    data: 0x51
                },
                masked: false,
                enabled: true,
            }
        );
        assert_eq!(
            changes[3].message.address, 0xfee0_3000,
            "address bits 1:0 are read-only"
        );
        assert!(changes[3].masked);
        // The function mask masks every vector.
        space.write(
            o + msix::CONTROL,
            AccessWidth::Word,
            (msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK).into(),
        );
        let masked: Vec<u16> = msix.update(&space).iter().map(|r| r.vector).collect();
        assert_eq!(masked, vec![1]);
    }

    #[test]
    fn masked_vectors_pend_and_deliver_on_unmask() {
        let mut space = space();
        let mut msix = MsixCapability::add(&mut space, config()).unwrap();
        let o = msix.offset();
        write_entry(&mut msix, 4, 0xfee0_0000, 0x44, true);
        assert_eq!(msix.signal(&space, 4), None, "disabled");
        assert!(!msix.is_pending(4));
        space.write(
            o + msix::CONTROL,
            AccessWidth::Word,
            msix::CONTROL_ENABLE.into(),
        );
        assert_eq!(msix.signal(&space, 4), None);
        assert!(msix.is_pending(4));
        let mut pba = [0u8; 8];
        assert!(msix.bar_read(bar(1), 0x3000, &mut pba));
        assert_eq!(u64::from_le_bytes(pba), 1 << 4);
        assert!(
            msix.bar_write(bar(1), 0x3000, &[0; 8]),
            "PBA writes are absorbed"
        );
        assert!(msix.is_pending(4));
        assert!(msix.deliver_pending(&space).is_empty());
        msix.bar_write(bar(1), 0x2000 + 4 * 16 + 12, &[0, 0, 0, 0]);
        assert_eq!(
            msix.deliver_pending(&space),
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x44
            }]
        );
        assert!(!msix.is_pending(4));
        assert_eq!(msix.signal(&space, 4).map(|m| m.data), Some(0x44));
        assert_eq!(msix.signal(&space, 5), None);
    }

    #[test]
    fn accesses_outside_table_and_pba_are_not_owned() {
        let mut space = space();
        let mut msix = MsixCapability::add(&mut space, config()).unwrap();
        let mut data = [0u8; 4];
        assert!(!msix.bar_read(bar(1), 0x1000, &mut data));
        assert!(!msix.bar_read(bar(0), 0x2000, &mut data));
        assert!(!msix.bar_write(bar(1), 0x2050, &data));
        // Straddling the table end: the bytes past it read as all-ones.
        let mut straddle = [0u8; 8];
        assert!(msix.bar_read(bar(1), 0x204c, &mut straddle));
        assert_eq!(&straddle[4..], &[0xff; 4]);
        assert!(msix.owns(bar(1), 0x3004, 4));
        assert!(!msix.owns(bar(1), 0x3008, 4));
    }
}
