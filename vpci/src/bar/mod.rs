//! Base address registers: what a function declares ([`definition`]: index, kind,
//! size, register encoding), which BAR decodes which address ([`decoder`]), and the
//! root bridge's windows BARs are placed in ([`window`]).

pub mod decoder;
pub mod definition;
pub mod window;

pub use definition::{
    rom_writable_mask, validate_rom_size, AddressSpace, BarDefinition, BarError, BarIndex, BarKind,
    BarLayout, MAX_IO_BAR_SIZE, MAX_MEMORY32_BAR_SIZE, MAX_MEMORY64_BAR_SIZE, MIN_IO_BAR_SIZE,
    MIN_MEMORY_BAR_SIZE,
};
