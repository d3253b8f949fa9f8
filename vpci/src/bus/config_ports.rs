//! Legacy configuration mechanism #1: the address latch at 0xCF8 and the data window at
//! 0xCFC-0xCFF.
//!
//! Only dword accesses at 0xCF8 reach the latch; narrower ones are not claimed (0xCF9
//! is the PC reset control register, which belongs to someone else). Data-port accesses
//! of 1, 2 or 4 bytes select `register = (latch & 0xfc) + (port - 0xcfc)`; an access that
//! would run past 0xCFF is answered like a refused config access (reads all-ones,
//! writes ignored), as is any data access while the latch's enable bit is clear.

use crate::bus::devfn::DevFn;
use crate::config::access_width::AccessWidth;

/// The CONFIG_ADDRESS port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The first CONFIG_DATA port (0xCFC-0xCFF).
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// The ports 0xCF8-0xCFF.
pub const CONFIG_PORTS_LEN: u16 = 8;

const ENABLE: u32 = 1 << 31;
/// Bits the latch keeps: enable, bus, device, function, dword register.
const LATCH_MASK: u32 = ENABLE | 0x00ff_fffc;

/// The config register a data-port access reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigTarget {
    /// Bus number from the latch.
    pub bus: u8,
    /// Device and function from the latch.
    pub devfn: DevFn,
    /// Config-space byte offset: the latch's dword plus the data port's byte lane.
    pub register: u16,
    /// Width of the data-port access.
    pub width: AccessWidth,
}

/// What a port access means to the config mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAccess {
    /// A dword access to the CONFIG_ADDRESS latch.
    Address,
    /// A data-port access reaching this register.
    Data(ConfigTarget),
    /// A data-port access that reaches nothing: latch disabled, or bad width/alignment.
    Refused,
    /// Not a config-mechanism access (other port, or narrow access at 0xCF8-0xCFB).
    NotClaimed,
}

/// The CONFIG_ADDRESS latch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigPorts {
    latch: u32,
}

impl ConfigPorts {
    /// The latch cleared (disabled), as after reset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Classify an access of `len` bytes at `port`.
    pub fn classify(&self, port: u16, len: usize) -> PortAccess {
        if port == CONFIG_ADDRESS_PORT && len == 4 {
            return PortAccess::Address;
        }
        if !(CONFIG_DATA_PORT..CONFIG_DATA_PORT + 4).contains(&port) {
            return PortAccess::NotClaimed;
        }
        let lane = port - CONFIG_DATA_PORT;
        let Some(width) = AccessWidth::from_len(len) else {
            return PortAccess::Refused;
        };
        if !width.is_aligned(lane.into()) || self.latch & ENABLE == 0 {
            return PortAccess::Refused;
        }
        PortAccess::Data(ConfigTarget {
            bus: (self.latch >> 16) as u8,
            devfn: DevFn::from_raw((self.latch >> 8) as u8),
            register: (self.latch & 0xfc) as u16 + lane,
            width,
        })
    }

    /// The latch as a dword read of 0xCF8 returns it.
    pub fn address(&self) -> u32 {
        self.latch
    }

    /// A dword write to 0xCF8; reserved bits read back as zero.
    pub fn set_address(&mut self, value: u32) {
        self.latch = value & LATCH_MASK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(bus: u8, device: u8, function: u8, register: u8) -> u32 {
        ENABLE
            | u32::from(bus) << 16
            | u32::from(device) << 11
            | u32::from(function) << 8
            | u32::from(register)
    }

    #[test]
    fn data_lanes_select_bytes_of_the_dword() {
        let mut ports = ConfigPorts::new();
        ports.set_address(select(0, 3, 1, 0x0c));
        let target = |port, len| match ports.classify(port, len) {
            PortAccess::Data(t) => Some((t.register, t.width)),
            _ => None,
        };
        assert_eq!(target(0xcfc, 4), Some((0x0c, AccessWidth::Dword)));
        assert_eq!(target(0xcfe, 2), Some((0x0e, AccessWidth::Word)));
        assert_eq!(target(0xcff, 1), Some((0x0f, AccessWidth::Byte)));
        assert_eq!(ports.classify(0xcfd, 2), PortAccess::Refused);
        assert_eq!(ports.classify(0xcfe, 4), PortAccess::Refused);
        assert_eq!(ports.classify(0xcfc, 3), PortAccess::Refused);
        let PortAccess::Data(t) = ports.classify(0xcfc, 4) else {
            panic!("enabled latch must reach a register");
        };
        assert_eq!(t.devfn, DevFn::new(3, 1).unwrap());
    }

    #[test]
    fn latch_keeps_only_defined_bits() {
        let mut ports = ConfigPorts::new();
        ports.set_address(0xffff_ffff);
        assert_eq!(ports.address(), 0x80ff_fffc);
        ports.set_address(ENABLE);
        assert_eq!(
            ports.address(),
            ENABLE,
            "Linux's type 1 probe reads this back"
        );
        ports.set_address(select(0, 1, 0, 0) & !ENABLE);
        assert_eq!(ports.classify(0xcfc, 4), PortAccess::Refused);
    }

    #[test]
    fn only_dword_latch_accesses_are_claimed() {
        let ports = ConfigPorts::new();
        assert_eq!(ports.classify(0xcf8, 4), PortAccess::Address);
        assert_eq!(ports.classify(0xcf9, 1), PortAccess::NotClaimed);
        assert_eq!(ports.classify(0xcf8, 2), PortAccess::NotClaimed);
        assert_eq!(ports.classify(0x80, 1), PortAccess::NotClaimed);
    }
}
