//! The MSI capability, kept virtually in a [`ConfigSpace`].
//!
//! The capability's registers live in the config space with their guest write masks;
//! [`MsiCapability`] knows the layout, reports routing changes after guest writes
//! ([`MsiCapability::update`]), and implements the device side: signalling a vector,
//! which sets its pending bit instead while it is masked.

use crate::config::access_width::AccessWidth;
use crate::config::regs::{cap, msi};
use crate::config::space::{ConfigSpace, ConfigSpaceError, RegisterMask};
use crate::interrupt::routing::{diff_routing, InterruptKind, MsiMessage, MsiRouting};

/// How an emulated function's MSI capability is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiConfig {
    /// Vectors the function can use: a power of two, 1..=32.
    pub vectors: u8,
    /// Whether the message address may be above 4 GiB.
    pub is_64bit: bool,
    /// Whether each vector has a mask and a pending bit.
    pub per_vector_mask: bool,
}

/// The layout and last reported state of an MSI capability.
#[derive(Clone, Debug)]
pub struct MsiCapability {
    offset: u16,
    is_64bit: bool,
    per_vector_mask: bool,
    capable_vectors: u8,
    reported: Vec<MsiRouting>,
}

impl MsiCapability {
    /// Add an MSI capability to `space` and define its guest write masks.
    pub fn add(space: &mut ConfigSpace, config: MsiConfig) -> Result<Self, ConfigSpaceError> {
        if !config.vectors.is_power_of_two() || config.vectors > msi::MAX_VECTORS {
            return Err(ConfigSpaceError::BadVectorCount {
                kind: "MSI",
                count: config.vectors.into(),
                max: msi::MAX_VECTORS.into(),
            });
        }
        let len = msi::size(config.is_64bit, config.per_vector_mask);
        let offset = space.add_capability(cap::MSI, len)?;
        let mmc = config.vectors.trailing_zeros() as u16;
        let mut control = mmc << msi::CONTROL_MMC_SHIFT;
        if config.is_64bit {
            control |= msi::CONTROL_64BIT;
        }
        if config.per_vector_mask {
            control |= msi::CONTROL_PER_VECTOR_MASK;
        }
        space.set(offset + msi::CONTROL, AccessWidth::Word, control.into())?;
        Self::attach(space, offset)
    }

    /// Take over an MSI capability already in `space` (e.g. a real device's, read
    /// through VFIO): learn its layout from the control register and make the
    /// guest-programmable registers writable so their state is kept virtually.
    pub fn attach(space: &mut ConfigSpace, offset: u16) -> Result<Self, ConfigSpaceError> {
        if space.u8_at(offset + cap::ID) != cap::MSI {
            return Err(ConfigSpaceError::NoSuchCapability {
                offset,
                list: "MSI",
            });
        }
        let control = space.u16_at(offset + msi::CONTROL);
        let is_64bit = control & msi::CONTROL_64BIT != 0;
        let per_vector_mask = control & msi::CONTROL_PER_VECTOR_MASK != 0;
        let mmc = (control & msi::CONTROL_MMC_MASK) >> msi::CONTROL_MMC_SHIFT;
        // Encodings above 5 (32 vectors) are reserved.
        let capable_vectors = 1u8 << mmc.min(5);
        let mut this = Self {
            offset,
            is_64bit,
            per_vector_mask,
            capable_vectors,
            reported: Vec::new(),
        };
        this.define_masks(space)?;
        this.reported = this.current(space);
        Ok(this)
    }

    fn define_masks(&self, space: &mut ConfigSpace) -> Result<(), ConfigSpaceError> {
        let o = self.offset;
        let control_writable = msi::CONTROL_ENABLE | msi::CONTROL_MME_MASK;
        space.set_mask(
            o + msi::CONTROL,
            AccessWidth::Word,
            RegisterMask::writable(control_writable.into()),
        )?;
        space.set_mask(
            o + msi::ADDRESS_LO,
            AccessWidth::Dword,
            RegisterMask::writable(msi::ADDRESS_LO_MASK),
        )?;
        if self.is_64bit {
            space.set_mask(
                o + msi::ADDRESS_HI,
                AccessWidth::Dword,
                RegisterMask::writable(u32::MAX),
            )?;
        }
        space.set_mask(
            self.data_offset(),
            AccessWidth::Word,
            RegisterMask::writable(0xffff),
        )?;
        if self.per_vector_mask {
            space.set_mask(
                self.mask_offset(),
                AccessWidth::Dword,
                RegisterMask::writable(self.vector_bits()),
            )?;
            space.set_mask(
                self.pending_offset(),
                AccessWidth::Dword,
                RegisterMask::READ_ONLY,
            )?;
        }
        Ok(())
    }

    /// Offset of the capability in config space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Length of the capability in bytes.
    pub fn len(&self) -> u16 {
        msi::size(self.is_64bit, self.per_vector_mask)
    }

    /// Always false: the capability has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether an access of `width` at `offset` touches this capability.
    pub fn overlaps(&self, offset: u16, width: AccessWidth) -> bool {
        let end = u32::from(offset) + width.bytes() as u32;
        end > u32::from(self.offset) && u32::from(offset) < u32::from(self.offset + self.len())
    }

    /// Vectors the function supports.
    pub fn capable_vectors(&self) -> u8 {
        self.capable_vectors
    }

    fn data_offset(&self) -> u16 {
        self.offset
            + if self.is_64bit {
                msi::DATA_64
            } else {
                msi::DATA_32
            }
    }

    fn mask_offset(&self) -> u16 {
        self.offset
            + if self.is_64bit {
                msi::MASK_64
            } else {
                msi::MASK_32
            }
    }

    fn pending_offset(&self) -> u16 {
        self.offset
            + if self.is_64bit {
                msi::PENDING_64
            } else {
                msi::PENDING_32
            }
    }

    fn vector_bits(&self) -> u32 {
        if self.capable_vectors == 32 {
            u32::MAX
        } else {
            (1u32 << self.capable_vectors) - 1
        }
    }

    fn control(&self, space: &ConfigSpace) -> u16 {
        space.u16_at(self.offset + msi::CONTROL)
    }

    /// Whether the guest set the MSI enable bit.
    pub fn enabled(&self, space: &ConfigSpace) -> bool {
        self.control(space) & msi::CONTROL_ENABLE != 0
    }

    /// Vectors the guest allocated (Multiple Message Enable), capped at what the
    /// function supports; 0 while MSI is disabled.
    pub fn enabled_vectors(&self, space: &ConfigSpace) -> u8 {
        if self.enabled(space) {
            self.allocated_vectors(space)
        } else {
            0
        }
    }

    fn allocated_vectors(&self, space: &ConfigSpace) -> u8 {
        let mme = (self.control(space) & msi::CONTROL_MME_MASK) >> msi::CONTROL_MME_SHIFT;
        (1u8 << mme.min(5)).min(self.capable_vectors)
    }

    /// The state of every vector the function supports, as programmed now.
    pub fn current(&self, space: &ConfigSpace) -> Vec<MsiRouting> {
        (0..self.capable_vectors)
            .map(|n| self.vector_state(space, n))
            .collect()
    }

    fn vector_state(&self, space: &ConfigSpace, vector: u8) -> MsiRouting {
        let low = space.u32_at(self.offset + msi::ADDRESS_LO);
        let high = if self.is_64bit {
            space.u32_at(self.offset + msi::ADDRESS_HI)
        } else {
            0
        };
        let allocated = self.allocated_vectors(space);
        let base_data = u32::from(space.u16_at(self.data_offset()));
        // The function substitutes the vector number into the low data bits.
        let data = (base_data & !(u32::from(allocated) - 1)) | u32::from(vector);
        let masked = self.per_vector_mask && space.u32_at(self.mask_offset()) & (1 << vector) != 0;
        MsiRouting {
            kind: InterruptKind::Msi,
            vector: vector.into(),
            message: MsiMessage {
                address: u64::from(low) | (u64::from(high) << 32),
                data,
            },
            masked,
            enabled: self.enabled(space) && vector < allocated,
        }
    }

    /// Vectors whose state changed since the last call (or since attach). Call after
    /// every guest write that [`overlaps`](Self::overlaps) the capability.
    pub fn update(&mut self, space: &ConfigSpace) -> Vec<MsiRouting> {
        let current = self.current(space);
        diff_routing(&mut self.reported, &current)
    }

    /// Device side: fire `vector`. Returns the message to send now, or `None` if the
    /// vector is not enabled (nothing happens) or masked (its pending bit is set).
    pub fn signal(&mut self, space: &mut ConfigSpace, vector: u8) -> Option<MsiMessage> {
        if vector >= self.capable_vectors {
            return None;
        }
        let state = self.vector_state(space, vector);
        if !state.enabled {
            return None;
        }
        if state.masked {
            let pending = space.u32_at(self.pending_offset()) | (1 << vector);
            let _ = space.set(self.pending_offset(), AccessWidth::Dword, pending);
            return None;
        }
        Some(state.message)
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, space: &ConfigSpace, vector: u8) -> bool {
        self.per_vector_mask
            && vector < self.capable_vectors
            && space.u32_at(self.pending_offset()) & (1 << vector) != 0
    }

    /// Device side, after a guest write: send the messages of pending vectors that
    /// are now deliverable, clearing their pending bits.
    pub fn deliver_pending(&mut self, space: &mut ConfigSpace) -> Vec<MsiMessage> {
        if !self.per_vector_mask {
            return Vec::new();
        }
        let mut pending = space.u32_at(self.pending_offset());
        let mut sent = Vec::new();
        for vector in 0..self.capable_vectors {
            if pending & (1 << vector) == 0 {
                continue;
            }
            let state = self.vector_state(space, vector);
            if state.deliverable() {
                pending &= !(1 << vector);
                sent.push(state.message);
            }
        }
        let _ = space.set(self.pending_offset(), AccessWidth::Dword, pending);
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::space::ConfigSize;
    use AccessWidth::{Dword, Word};

    fn space_with(config: MsiConfig) -> (ConfigSpace, MsiCapability) {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        let msi = MsiCapability::add(&mut space, config).unwrap();
        (space, msi)
    }

    const FULL: MsiConfig = MsiConfig {
        vectors: 4,
        is_64bit: true,
        per_vector_mask: true,
    };

    #[test]
    fn control_register_describes_the_layout() {
        let (space, msi) = space_with(FULL);
        let control = space.u16_at(msi.offset() + msi::CONTROL);
        assert_eq!(control & msi::CONTROL_MMC_MASK, 2 << msi::CONTROL_MMC_SHIFT);
        assert_ne!(control & msi::CONTROL_64BIT, 0);
        assert_ne!(control & msi::CONTROL_PER_VECTOR_MASK, 0);
        assert_eq!(msi.len(), 0x18);
        assert_eq!(space.find_capability(cap::MSI), Some(msi.offset()));
    }

    #[test]
    fn guest_programming_becomes_routing_events() {
        let (mut space, mut msi) = space_with(FULL);
        let o = msi.offset();
        space.write(o + msi::ADDRESS_LO, Dword, 0xfee0_1003);
        space.write(o + msi::ADDRESS_HI, Dword, 0x1);
        space.write(o + msi::DATA_64, Word, 0x4041);
        assert!(
            msi.update(&space).iter().all(|r| !r.enabled),
            "programming before enable changes messages only"
        );
        // Enable with 2 of the 4 vectors (MME = 1), vector 1 masked.
        space.write(o + msi::MASK_64, Dword, 0b10);
        let enable = msi::CONTROL_ENABLE | (1 << msi::CONTROL_MME_SHIFT);
        space.write(o + msi::CONTROL, Word, enable.into());
        let changes = msi.update(&space);
        // Vector 2 is not allocated; only its data changes (the low bit now carries
        // the vector number).
        let vectors: Vec<u16> = changes.iter().map(|r| r.vector).collect();
        assert_eq!(vectors, vec![0, 1, 2]);
        assert!(!changes[2].enabled);
        assert_eq!(
            changes[0],
            MsiRouting {
                kind: InterruptKind::Msi,
                vector: 0,
                message: MsiMessage {
                    address: 0x1_fee0_1000,
                    data: 0x4040
                },
                masked: false,
                enabled: true,
            }
        );
        assert_eq!(changes[1].vector, 1);
        assert_eq!(changes[1].message.data, 0x4041);
        assert!(changes[1].masked && changes[1].enabled);
        assert_eq!(msi.enabled_vectors(&space), 2);
        assert!(msi.update(&space).is_empty());
    }

    #[test]
    fn read_only_fields_stay() {
        let (mut space, msi) = space_with(FULL);
        let o = msi.offset();
        space.write(o + msi::CONTROL, Word, 0xffff);
        let control = space.u16_at(o + msi::CONTROL);
        assert_eq!(control & msi::CONTROL_MMC_MASK, 2 << msi::CONTROL_MMC_SHIFT);
        space.write(o + msi::MASK_64, Dword, u32::MAX);
        assert_eq!(space.u32_at(o + msi::MASK_64), 0xf);
        space.write(o + msi::PENDING_64, Dword, u32::MAX);
        assert_eq!(space.u32_at(o + msi::PENDING_64), 0);
    }

    #[test]
    fn masked_vectors_pend_and_deliver_on_unmask() {
        let (mut space, mut msi) = space_with(FULL);
        let o = msi.offset();
        space.write(o + msi::ADDRESS_LO, Dword, 0xfee0_0000);
        space.write(o + msi::DATA_64, Word, 0x30);
        let enable = msi::CONTROL_ENABLE | (2 << msi::CONTROL_MME_SHIFT);
        space.write(o + msi::CONTROL, Word, enable.into());
        space.write(o + msi::MASK_64, Dword, 0b100);
        assert_eq!(
            msi.signal(&mut space, 1),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x31
            })
        );
        assert_eq!(msi.signal(&mut space, 2), None);
        assert!(msi.is_pending(&space, 2));
        assert!(msi.deliver_pending(&mut space).is_empty());
        space.write(o + msi::MASK_64, Dword, 0);
        assert_eq!(
            msi.deliver_pending(&mut space),
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x32
            }]
        );
        assert!(!msi.is_pending(&space, 2));
        assert_eq!(msi.signal(&mut space, 9), None);
    }

    #[test]
    fn disabled_msi_signals_nothing() {
        let (mut space, mut msi) = space_with(MsiConfig {
            vectors: 1,
            is_64bit: false,
            per_vector_mask: false,
        });
        assert_eq!(msi.len(), 0x0a);
        assert_eq!(msi.signal(&mut space, 0), None);
        let o = msi.offset();
        space.write(o + msi::ADDRESS_LO, Dword, 0xfee0_0000);
        space.write(o + msi::DATA_32, Word, 0x55);
        // MME above what the function supports is capped at one vector.
        let enable = msi::CONTROL_ENABLE | (3 << msi::CONTROL_MME_SHIFT);
        space.write(o + msi::CONTROL, Word, enable.into());
        assert_eq!(msi.enabled_vectors(&space), 1);
        assert_eq!(msi.signal(&mut space, 0).map(|m| m.data), Some(0x55));
    }

    #[test]
    fn attach_refuses_other_capabilities() {
        let mut space = ConfigSpace::new(ConfigSize::Conventional);
        let pm = space.add_capability(cap::POWER_MANAGEMENT, 8).unwrap();
        assert!(MsiCapability::attach(&mut space, pm).is_err());
        assert!(MsiCapability::add(
            &mut space,
            MsiConfig {
                vectors: 3,
                is_64bit: false,
                per_vector_mask: false
            }
        )
        .is_err());
    }
}
