//! The config-space model: a function's configuration space as bytes with per-bit write
//! semantics ([`space`]), the standard register layout every other module names
//! registers by ([`regs`]), capability lists ([`capability`]) and access widths
//! ([`access_width`]).

pub mod access_width;
pub mod capability;
pub mod regs;
pub mod space;
