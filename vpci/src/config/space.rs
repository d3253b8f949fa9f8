//! `ConfigSpace`: a function's configuration space with per-bit write semantics.
//!
//! Every bit is read-only, read-write, or write-1-to-clear. Guest accesses go through
//! [`ConfigSpace::read`] and [`ConfigSpace::write`], which honour those masks; the code
//! that builds a function uses the `set_*`/`define` methods, which bypass them.
//!
//! Access policy for guest accesses (they arrive from an untrusted guest): an access
//! must be 1, 2 or 4 bytes wide, naturally aligned, and inside the space. Anything else
//! is answered the way a PCI master abort is: reads return all-ones (of the access
//! width), writes are ignored. [`ConfigSpace::check_access`] says why an access would be
//! refused, for callers that want to log it. A conventional (256-byte) space answers
//! accesses at 0x100 and above with all-ones, as Linux expects when it probes for
//! extended config space.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::bar::{rom_writable_mask, BarDefinition, BarError, BarIndex, BarLayout};
use crate::config::access_width::AccessWidth;
use crate::config::regs::{
    command, header, header_type, rom, status, CONFIG_SPACE_SIZE, EXTENDED_CONFIG_SPACE_SIZE,
};

/// Conventional (256 bytes) or PCI Express extended (4 KiB) configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSize {
    /// 256 bytes: header and capabilities, no extended capabilities.
    Conventional,
    /// 4096 bytes: extended capabilities from 0x100.
    Extended,
}

impl ConfigSize {
    /// Size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Self::Conventional => CONFIG_SPACE_SIZE,
            Self::Extended => EXTENDED_CONFIG_SPACE_SIZE,
        }
    }
}

/// How a guest write affects the bits of one register.
///
/// Bits in neither mask are read-only. A bit in both masks is treated as write-1-to-clear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterMask {
    /// Bits the guest's write value replaces.
    pub writable: u32,
    /// Bits the guest clears by writing 1 (writing 0 leaves them).
    pub write_one_to_clear: u32,
}

impl RegisterMask {
    /// No bit changes on a guest write.
    pub const READ_ONLY: RegisterMask = RegisterMask {
        writable: 0,
        write_one_to_clear: 0,
    };

    /// `mask` bits take the written value, the rest are read-only.
    pub const fn writable(mask: u32) -> Self {
        Self {
            writable: mask,
            write_one_to_clear: 0,
        }
    }

    /// `mask` bits clear when written with 1, the rest are read-only.
    pub const fn write_one_to_clear(mask: u32) -> Self {
        Self {
            writable: 0,
            write_one_to_clear: mask,
        }
    }
}

/// Why an access or a layout change was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigSpaceError {
    /// An access not aligned to its own width.
    #[error("config {width} access at {offset:#x}: not naturally aligned")]
    Unaligned {
        /// Config-space byte offset of the access.
        offset: u16,
        /// Width of the access.
        width: AccessWidth,
    },
    /// An access or register that does not fit in the space.
    #[error("config access at {offset:#x} (+{len}): outside the {size:#x}-byte config space")]
    OutOfRange {
        /// Config-space byte offset of the access.
        offset: u16,
        /// Bytes accessed.
        len: usize,
        /// Size of this config space in bytes.
        size: usize,
    },
    /// A config image to load is neither 256 nor 4096 bytes.
    #[error("config image is {len} bytes; expected 256 (conventional) or 4096 (extended)")]
    BadImageSize {
        /// Bytes in the image.
        len: usize,
    },
    /// A BAR definition was refused.
    #[error(transparent)]
    Bar(#[from] BarError),
    /// No free space is left for a capability of this length.
    #[error(
        "capability of {len} bytes: no free, dword-aligned room between {start:#x} and {end:#x}"
    )]
    NoRoom {
        /// Capability length in bytes.
        len: u16,
        /// Start of the area searched (0x40 or 0x100).
        start: u16,
        /// End of the area searched (exclusive).
        end: u16,
    },
    /// A capability placed at a fixed offset would overlap one already there.
    #[error(
        "capability at {offset:#x} (+{len}): overlaps config already in use; pick a free offset"
    )]
    Overlap {
        /// Requested offset.
        offset: u16,
        /// Capability length in bytes.
        len: u16,
    },
    /// A capability offset that is unaligned or outside its list's area.
    #[error(
        "capability offset {offset:#x}: must be dword aligned and within {start:#x}..{end:#x}"
    )]
    BadCapabilityOffset {
        /// The offset given.
        offset: u16,
        /// Start of the list's area.
        start: u16,
        /// End of the list's area (exclusive).
        end: u16,
    },
    /// A capability too short for its own header.
    #[error("capability length {len}: must hold at least its {min}-byte header")]
    BadCapabilityLength {
        /// The length given, in bytes.
        len: u16,
        /// Header size of that kind of capability.
        min: u16,
    },
    /// An extended capability on a conventional (256-byte) space.
    #[error("extended capabilities need 4 KiB config space; create it with ConfigSize::Extended")]
    NotExtended,
    /// An MSI or MSI-X vector count the capability cannot encode.
    #[error("{kind} with {count} vectors: must be a power of two from 1 to {max}")]
    BadVectorCount {
        /// "MSI" or "MSI-X".
        kind: &'static str,
        /// The count asked for.
        count: u16,
        /// Most vectors that kind allows.
        max: u16,
    },
    /// An MSI-X table or PBA that does not fit its BAR.
    #[error("MSI-X {structure} at {bar} offset {offset:#x} (+{len:#x}): {reason}")]
    BadMsixPlacement {
        /// "table" or "PBA".
        structure: &'static str,
        /// The BAR holding it.
        bar: crate::bar::BarIndex,
        /// Byte offset in the BAR.
        offset: u64,
        /// Size in bytes.
        len: u64,
        /// What is wrong with the placement.
        reason: &'static str,
    },
    /// No capability starts at this offset in that list.
    #[error("no capability at {offset:#x} in the {list} list")]
    NoSuchCapability {
        /// The offset given.
        offset: u16,
        /// The list searched, or the capability (MSI, MSI-X) expected there.
        list: &'static str,
    },
    /// A capability list (from a loaded image) that loops, points outside its area or
    /// is misaligned.
    #[error("the {list} list is malformed at {offset:#x}: {reason}")]
    MalformedList {
        /// Standard or extended list.
        list: &'static str,
        /// Offset of the offending entry.
        offset: u16,
        /// What is wrong there.
        reason: &'static str,
    },
}

/// The identity registers of a type 0 (endpoint) header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Type0Header {
    /// PCI-SIG assigned vendor ID.
    pub vendor_id: u16,
    /// Vendor-assigned device ID.
    pub device_id: u16,
    /// Vendor-assigned revision.
    pub revision_id: u8,
    /// Base class, subclass and programming interface, as 0xBBSSPP.
    pub class_code: u32,
    /// Vendor ID of the board or subsystem.
    pub subsystem_vendor_id: u16,
    /// Subsystem-vendor-assigned ID.
    pub subsystem_id: u16,
    /// 0 for none, 1..=4 for INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Set the multi-function bit of the header type.
    pub multi_function: bool,
}

/// Command bits a guest may change on an emulated type 0 function.
pub const COMMAND_WRITABLE: u16 = command::IO_SPACE
    | command::MEMORY_SPACE
    | command::BUS_MASTER
    | command::PARITY_ERROR_RESPONSE
    | command::SERR_ENABLE
    | command::INTX_DISABLE;

/// A function's configuration space: bytes, per-bit write masks, and the layout
/// (BARs, capability extents) the function was built with.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    pub(crate) bytes: Vec<u8>,
    pub(crate) writable: Vec<u8>,
    pub(crate) write_one_to_clear: Vec<u8>,
    /// Dwords in use by the header or by a capability, for capability placement.
    pub(crate) used_dwords: Vec<bool>,
    /// Offset -> length of capabilities added through this API (standard and extended).
    pub(crate) capability_extents: BTreeMap<u16, u16>,
    pub(crate) bars: BarLayout,
}

impl ConfigSpace {
    /// An all-zero, all-read-only space whose header dwords are reserved.
    pub fn new(size: ConfigSize) -> Self {
        let len = size.bytes();
        let mut used_dwords = vec![false; len / 4];
        used_dwords[..usize::from(header::END) / 4].fill(true);
        Self {
            bytes: vec![0; len],
            writable: vec![0; len],
            write_one_to_clear: vec![0; len],
            used_dwords,
            capability_extents: BTreeMap::new(),
            bars: BarLayout::new(),
        }
    }

    /// A type 0 header with the usual guest-writable registers: command decode and
    /// error enables, status error bits (write-1-to-clear), cache line size, latency
    /// timer and interrupt line.
    pub fn new_type0(size: ConfigSize, ids: &Type0Header) -> Self {
        let mut space = Self::new(size);
        let fill = |space: &mut Self, offset, width, value, mask| {
            space
                .define(offset, width, value, mask)
                .expect("type 0 header registers lie inside every config space");
        };
        use AccessWidth::{Byte, Word};
        fill(
            &mut space,
            header::VENDOR_ID,
            Word,
            ids.vendor_id.into(),
            RegisterMask::READ_ONLY,
        );
        fill(
            &mut space,
            header::DEVICE_ID,
            Word,
            ids.device_id.into(),
            RegisterMask::READ_ONLY,
        );
        fill(
            &mut space,
            header::COMMAND,
            Word,
            0,
            RegisterMask::writable(COMMAND_WRITABLE.into()),
        );
        fill(
            &mut space,
            header::STATUS,
            Word,
            0,
            RegisterMask::write_one_to_clear(status::ERROR_BITS.into()),
        );
        fill(
            &mut space,
            header::REVISION_ID,
            Byte,
            ids.revision_id.into(),
            RegisterMask::READ_ONLY,
        );
        for (i, offset) in [
            header::CLASS_PROG_IF,
            header::CLASS_SUBCLASS,
            header::CLASS_BASE,
        ]
        .into_iter()
        .enumerate()
        {
            let byte = (ids.class_code >> (8 * i)) & 0xff;
            fill(&mut space, offset, Byte, byte, RegisterMask::READ_ONLY);
        }
        fill(
            &mut space,
            header::CACHE_LINE_SIZE,
            Byte,
            0,
            RegisterMask::writable(0xff),
        );
        fill(
            &mut space,
            header::LATENCY_TIMER,
            Byte,
            0,
            RegisterMask::writable(0xff),
        );
        let header_type = header_type::NORMAL
            | if ids.multi_function {
                header_type::MULTI_FUNCTION
            } else {
                0
            };
        fill(
            &mut space,
            header::HEADER_TYPE,
            Byte,
            header_type.into(),
            RegisterMask::READ_ONLY,
        );
        fill(
            &mut space,
            header::SUBSYSTEM_VENDOR_ID,
            Word,
            ids.subsystem_vendor_id.into(),
            RegisterMask::READ_ONLY,
        );
        fill(
            &mut space,
            header::SUBSYSTEM_ID,
            Word,
            ids.subsystem_id.into(),
            RegisterMask::READ_ONLY,
        );
        fill(
            &mut space,
            header::INTERRUPT_LINE,
            Byte,
            0,
            RegisterMask::writable(0xff),
        );
        fill(
            &mut space,
            header::INTERRUPT_PIN,
            Byte,
            ids.interrupt_pin.into(),
            RegisterMask::READ_ONLY,
        );
        space
    }

    /// A read-only copy of a config image (e.g. a real device's config, read through
    /// VFIO); the caller then opens up the bits it virtualises.
    pub fn from_bytes(image: &[u8]) -> Result<Self, ConfigSpaceError> {
        let size = match image.len() {
            CONFIG_SPACE_SIZE => ConfigSize::Conventional,
            EXTENDED_CONFIG_SPACE_SIZE => ConfigSize::Extended,
            len => return Err(ConfigSpaceError::BadImageSize { len }),
        };
        let mut space = Self::new(size);
        space.bytes.copy_from_slice(image);
        Ok(space)
    }

    /// Size in bytes (256 or 4096).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a config space has at least its 256-byte header area.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The space is 4 KiB and can hold extended capabilities.
    pub fn is_extended(&self) -> bool {
        self.len() == EXTENDED_CONFIG_SPACE_SIZE
    }

    /// Whether a guest access of `width` at `offset` is served, and why not.
    pub fn check_access(&self, offset: u16, width: AccessWidth) -> Result<(), ConfigSpaceError> {
        if !width.is_aligned(offset.into()) {
            return Err(ConfigSpaceError::Unaligned { offset, width });
        }
        self.check_range(offset, width.bytes())
    }

    fn check_range(&self, offset: u16, len: usize) -> Result<(), ConfigSpaceError> {
        if usize::from(offset) + len > self.len() {
            return Err(ConfigSpaceError::OutOfRange {
                offset,
                len,
                size: self.len(),
            });
        }
        Ok(())
    }

    /// Guest read: little-endian value of `width` at `offset`, or all-ones (of `width`)
    /// for an access [`check_access`](Self::check_access) refuses. No side effects.
    pub fn read(&self, offset: u16, width: AccessWidth) -> u32 {
        if self.check_access(offset, width).is_err() {
            return width.mask();
        }
        let start = usize::from(offset);
        self.bytes[start..start + width.bytes()]
            .iter()
            .rev()
            .fold(0, |acc, b| (acc << 8) | u32::from(*b))
    }

    /// Guest write: applies the per-bit masks; ignored if
    /// [`check_access`](Self::check_access) refuses the access.
    pub fn write(&mut self, offset: u16, width: AccessWidth, value: u32) {
        if self.check_access(offset, width).is_err() {
            return;
        }
        for i in 0..width.bytes() {
            let at = usize::from(offset) + i;
            let v = (value >> (8 * i)) as u8;
            let w1c = self.write_one_to_clear[at];
            let rw = self.writable[at] & !w1c;
            let old = self.bytes[at];
            self.bytes[at] = ((old & !rw) | (v & rw)) & !(v & w1c);
        }
    }

    /// Byte at `offset` (all-ones when out of range).
    pub fn u8_at(&self, offset: u16) -> u8 {
        self.read(offset, AccessWidth::Byte) as u8
    }

    /// Word at `offset` (all-ones when out of range or unaligned).
    pub fn u16_at(&self, offset: u16) -> u16 {
        self.read(offset, AccessWidth::Word) as u16
    }

    /// Dword at `offset` (all-ones when out of range or unaligned).
    pub fn u32_at(&self, offset: u16) -> u32 {
        self.read(offset, AccessWidth::Dword)
    }

    /// Set a register's value, bypassing the masks (device-side update).
    pub fn set(
        &mut self,
        offset: u16,
        width: AccessWidth,
        value: u32,
    ) -> Result<(), ConfigSpaceError> {
        self.check_access(offset, width)?;
        let start = usize::from(offset);
        for (i, b) in self.bytes[start..start + width.bytes()]
            .iter_mut()
            .enumerate()
        {
            *b = (value >> (8 * i)) as u8;
        }
        Ok(())
    }

    /// Set how guest writes affect a register's bits.
    pub fn set_mask(
        &mut self,
        offset: u16,
        width: AccessWidth,
        mask: RegisterMask,
    ) -> Result<(), ConfigSpaceError> {
        self.check_access(offset, width)?;
        let start = usize::from(offset);
        for i in 0..width.bytes() {
            self.writable[start + i] = (mask.writable >> (8 * i)) as u8;
            self.write_one_to_clear[start + i] = (mask.write_one_to_clear >> (8 * i)) as u8;
        }
        Ok(())
    }

    /// The write masks of a register.
    pub fn mask(&self, offset: u16, width: AccessWidth) -> RegisterMask {
        if self.check_access(offset, width).is_err() {
            return RegisterMask::READ_ONLY;
        }
        let start = usize::from(offset);
        let gather = |bytes: &[u8]| {
            bytes[start..start + width.bytes()]
                .iter()
                .rev()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
        };
        RegisterMask {
            writable: gather(&self.writable),
            write_one_to_clear: gather(&self.write_one_to_clear),
        }
    }

    /// Set a register's value and write masks together.
    pub fn define(
        &mut self,
        offset: u16,
        width: AccessWidth,
        value: u32,
        mask: RegisterMask,
    ) -> Result<(), ConfigSpaceError> {
        self.set(offset, width, value)?;
        self.set_mask(offset, width, mask)
    }

    /// Make `len` bytes from `offset` zero and read-only.
    pub(crate) fn clear_range(&mut self, offset: u16, len: u16) {
        let start = usize::from(offset).min(self.len());
        let end = (usize::from(offset) + usize::from(len)).min(self.len());
        self.bytes[start..end].fill(0);
        self.writable[start..end].fill(0);
        self.write_one_to_clear[start..end].fill(0);
    }

    /// Set or clear bits of the status register (device-side).
    pub fn set_status_bits(&mut self, bits: u16, on: bool) {
        let old = self.u16_at(header::STATUS);
        let new = if on { old | bits } else { old & !bits };
        // The status register lies inside every config space.
        let _ = self.set(header::STATUS, AccessWidth::Word, new.into());
    }

    /// The command register as the guest reads it.
    pub fn command(&self) -> u16 {
        self.u16_at(header::COMMAND)
    }

    /// The status register as the guest reads it.
    pub fn status(&self) -> u16 {
        self.u16_at(header::STATUS)
    }

    /// The header type byte (layout and multi-function bit).
    pub fn header_type(&self) -> u8 {
        self.u8_at(header::HEADER_TYPE)
    }

    /// The BARs and ROM this space implements.
    pub fn bar_layout(&self) -> &BarLayout {
        &self.bars
    }

    /// Implement BAR `index`: its flag bits become read-only, its address bits above
    /// the size writable, so that writing all-ones reads back the size mask. A 64-bit
    /// BAR also claims register `index + 1` for the upper half.
    pub fn set_bar(
        &mut self,
        index: BarIndex,
        definition: BarDefinition,
    ) -> Result<(), ConfigSpaceError> {
        self.bars.set(index, definition)?;
        let offset = index.config_offset();
        let low = RegisterMask::writable(definition.low_writable_mask());
        self.define(offset, AccessWidth::Dword, definition.kind.flags(), low)?;
        if definition.kind.is_64bit() {
            let high = RegisterMask::writable(definition.high_writable_mask());
            self.define(offset + 4, AccessWidth::Dword, 0, high)?;
        }
        Ok(())
    }

    /// Implement an expansion ROM of `size` bytes (disabled, address 0).
    pub fn set_rom(&mut self, size: u64) -> Result<(), ConfigSpaceError> {
        self.bars.set_rom(size)?;
        let mask = RegisterMask::writable(rom_writable_mask(size));
        self.define(header::ROM_ADDRESS, AccessWidth::Dword, 0, mask)
    }

    /// The address currently programmed in BAR `index` (or the ROM), if implemented.
    /// During sizing this is the size mask, which no window contains.
    pub fn bar_address(&self, index: BarIndex) -> Option<u64> {
        let definition = self.bars.get(index)?;
        let offset = index.config_offset();
        if index.is_rom() {
            return Some(u64::from(self.u32_at(offset) & rom::ADDRESS_MASK));
        }
        let low = self.u32_at(offset);
        let high = if definition.kind.is_64bit() {
            self.u32_at(offset + 4)
        } else {
            0
        };
        Some(definition.address_from_registers(low, high))
    }

    /// Whether the ROM BAR's enable bit is set.
    pub fn rom_enabled(&self) -> bool {
        self.bars.rom_size().is_some() && self.u32_at(header::ROM_ADDRESS) & rom::ENABLE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::BarKind;
    use AccessWidth::{Byte, Dword, Word};

    fn ids() -> Type0Header {
        Type0Header {
            vendor_id: 0x1af4,
            device_id: 0x1000,
            revision_id: 2,
            class_code: 0x02_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 1,
            interrupt_pin: 1,
            multi_function: false,
        }
    }

    #[test]
    fn type0_header_reads_back_ids() {
        let space = ConfigSpace::new_type0(ConfigSize::Conventional, &ids());
        assert_eq!(space.read(0, Dword), 0x1000_1af4);
        assert_eq!(space.read(header::REVISION_ID, Dword), 0x0200_0002);
        assert_eq!(space.read(header::CLASS_BASE, Byte), 0x02);
        assert_eq!(space.read(header::INTERRUPT_PIN, Byte), 1);
        assert_eq!(space.read(header::SUBSYSTEM_ID, Word), 1);
    }

    #[test]
    fn read_only_bits_ignore_writes() {
        let mut space = ConfigSpace::new_type0(ConfigSize::Conventional, &ids());
        space.write(header::VENDOR_ID, Dword, 0xdead_beef);
        assert_eq!(space.read(0, Dword), 0x1000_1af4);
        space.write(header::COMMAND, Word, 0xffff);
        assert_eq!(space.command(), COMMAND_WRITABLE);
    }

    #[test]
    fn write_one_to_clear_clears_only_ones() {
        let mut space = ConfigSpace::new_type0(ConfigSize::Conventional, &ids());
        space.set_status_bits(
            status::RECEIVED_MASTER_ABORT | status::SIGNALED_TARGET_ABORT,
            true,
        );
        space.set_status_bits(status::CAPABILITY_LIST, true);
        space.write(header::STATUS, Word, 0);
        assert_eq!(
            space.status(),
            status::RECEIVED_MASTER_ABORT | status::SIGNALED_TARGET_ABORT | status::CAPABILITY_LIST
        );
        space.write(header::STATUS, Word, status::RECEIVED_MASTER_ABORT.into());
        assert_eq!(
            space.status(),
            status::SIGNALED_TARGET_ABORT | status::CAPABILITY_LIST
        );
        // A dword write to COMMAND carries STATUS in its upper half.
        space.write(
            header::COMMAND,
            Dword,
            0xffff_0000 | u32::from(command::MEMORY_SPACE),
        );
        assert_eq!(space.status(), status::CAPABILITY_LIST);
        assert_eq!(space.command(), command::MEMORY_SPACE);
    }

    #[test]
    fn refused_accesses_read_all_ones_and_write_nothing() {
        let mut space = ConfigSpace::new_type0(ConfigSize::Conventional, &ids());
        assert_eq!(space.read(0x01, Word), 0xffff);
        assert_eq!(space.read(0x02, Dword), 0xffff_ffff);
        assert_eq!(space.read(0x100, Dword), 0xffff_ffff);
        assert_eq!(space.read(0xfff, Byte), 0xff);
        assert_eq!(space.read(0xffff, Byte), 0xff);
        space.write(header::CACHE_LINE_SIZE - 1, Word, 0xffff);
        assert_eq!(space.read(header::CACHE_LINE_SIZE, Byte), 0);
        assert!(matches!(
            space.check_access(0xfe, Dword),
            Err(ConfigSpaceError::Unaligned { .. })
        ));
        assert!(matches!(space.check_access(0xfc, Dword), Ok(())));
        let extended = ConfigSpace::new(ConfigSize::Extended);
        assert_eq!(extended.read(0xffc, Dword), 0);
        assert_eq!(extended.read(0x1000, Byte), 0xff);
    }

    #[test]
    fn bar_sizing_returns_the_size_mask() {
        let mut space = ConfigSpace::new_type0(ConfigSize::Conventional, &ids());
        let b0 = BarIndex::new(0).unwrap();
        let b1 = BarIndex::new(1).unwrap();
        let b3 = BarIndex::new(3).unwrap();
        space
            .set_bar(b0, BarDefinition::new(BarKind::Io, 0x20))
            .unwrap();
        space
            .set_bar(
                b1,
                BarDefinition::new(BarKind::Memory64 { prefetchable: true }, 1 << 33),
            )
            .unwrap();
        space
            .set_bar(
                b3,
                BarDefinition::new(
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                    0x1000,
                ),
            )
            .unwrap();
        for offset in [
            header::bar(0),
            header::bar(1),
            header::bar(2),
            header::bar(3),
        ] {
            space.write(offset, Dword, 0xffff_ffff);
        }
        assert_eq!(space.read(header::bar(0), Dword), 0xffff_ffe1);
        assert_eq!(space.read(header::bar(1), Dword), 0x0000_000c);
        assert_eq!(space.read(header::bar(2), Dword), 0xffff_fffe);
        assert_eq!(space.read(header::bar(3), Dword), 0xffff_f000);
        // Unimplemented BARs read zero after sizing.
        space.write(header::bar(4), Dword, 0xffff_ffff);
        assert_eq!(space.read(header::bar(4), Dword), 0);

        space.write(header::bar(1), Dword, 0);
        space.write(header::bar(2), Dword, 0x2);
        assert_eq!(space.bar_address(b1), Some(0x2_0000_0000));
        space.write(header::bar(0), Dword, 0xc000);
        assert_eq!(space.bar_address(b0), Some(0xc000));
        assert_eq!(space.read(header::bar(0), Dword), 0xc001);
        // A byte write changes only its byte.
        space.write(header::bar(3) + 3, Byte, 0xfe);
        assert_eq!(space.bar_address(b3), Some(0xfe00_0000 | 0x00ff_f000));
        assert_eq!(space.bar_address(BarIndex::new(5).unwrap()), None);
    }

    #[test]
    fn rom_sizing_keeps_the_enable_bit_writable() {
        let mut space = ConfigSpace::new_type0(ConfigSize::Conventional, &ids());
        space.set_rom(0x1_0000).unwrap();
        space.write(header::ROM_ADDRESS, Dword, !rom::ENABLE);
        assert_eq!(space.read(header::ROM_ADDRESS, Dword), 0xffff_0000);
        space.write(header::ROM_ADDRESS, Dword, 0xfeb0_0001);
        assert_eq!(space.bar_address(BarIndex::ROM), Some(0xfeb0_0000));
        assert!(space.rom_enabled());
        assert!(matches!(
            space.set_rom(0x1000),
            Err(ConfigSpaceError::Bar(_))
        ));
    }

    #[test]
    fn images_load_read_only() {
        let mut image = vec![0u8; 256];
        image[0] = 0x86;
        image[1] = 0x80;
        let mut space = ConfigSpace::from_bytes(&image).unwrap();
        space.write(0, Word, 0);
        assert_eq!(space.u16_at(0), 0x8086);
        assert!(ConfigSpace::from_bytes(&image[..100]).is_err());
    }
}
