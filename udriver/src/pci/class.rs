//! `PciClass`: the 24-bit class code (base class, subclass, programming interface) and
//! the short class keywords (`net`, `storage`, ...) that filters and list headings use.

use std::fmt;
use std::str::FromStr;

/// A device's class code as sysfs `class` holds it: `0xBBSSPP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciClass(pub u32);

impl PciClass {
    /// Base class (e.g. 0x02, network).
    pub fn base(self) -> u8 {
        (self.0 >> 16) as u8
    }
    /// Subclass (e.g. 0x00, Ethernet).
    pub fn sub(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Programming interface (e.g. 0x01 for AHCI under 0x0106).
    pub fn prog_if(self) -> u8 {
        self.0 as u8
    }
    /// Base class and subclass as lspci prints them, `0x0200`.
    pub fn class_and_sub(self) -> u16 {
        (self.0 >> 8) as u16
    }
    /// The keyword of the base class (`net`, `storage`, ...), `other` if unknown.
    pub fn keyword(self) -> &'static str {
        BaseClass::of(self.base()).map_or("other", |b| b.keyword)
    }
}

impl fmt::Display for PciClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06x}", self.0 & 0xff_ffff)
    }
}

/// A base class with the keyword users type and the heading `udrv list` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseClass {
    /// The base class code.
    pub code: u8,
    /// What `--class` accepts.
    pub keyword: &'static str,
    /// The heading of the group in `udrv list`.
    pub heading: &'static str,
}

/// The base classes of the PCI Code and ID Assignment specification.
pub const BASE_CLASSES: &[BaseClass] = &[
    BaseClass {
        code: 0x00,
        keyword: "legacy",
        heading: "Unclassified devices",
    },
    BaseClass {
        code: 0x01,
        keyword: "storage",
        heading: "Storage devices",
    },
    BaseClass {
        code: 0x02,
        keyword: "net",
        heading: "Network devices",
    },
    BaseClass {
        code: 0x03,
        keyword: "display",
        heading: "Display devices",
    },
    BaseClass {
        code: 0x04,
        keyword: "multimedia",
        heading: "Multimedia devices",
    },
    BaseClass {
        code: 0x05,
        keyword: "memory",
        heading: "Memory controllers",
    },
    BaseClass {
        code: 0x06,
        keyword: "bridge",
        heading: "Bridges",
    },
    BaseClass {
        code: 0x07,
        keyword: "communication",
        heading: "Communication controllers",
    },
    BaseClass {
        code: 0x08,
        keyword: "system",
        heading: "System peripherals",
    },
    BaseClass {
        code: 0x09,
        keyword: "input",
        heading: "Input devices",
    },
    BaseClass {
        code: 0x0a,
        keyword: "docking",
        heading: "Docking stations",
    },
    BaseClass {
        code: 0x0b,
        keyword: "processor",
        heading: "Processors",
    },
    BaseClass {
        code: 0x0c,
        keyword: "serial",
        heading: "Serial bus controllers (USB, SMBus, ...)",
    },
    BaseClass {
        code: 0x0d,
        keyword: "wireless",
        heading: "Wireless controllers",
    },
    BaseClass {
        code: 0x0e,
        keyword: "intelligent",
        heading: "Intelligent controllers",
    },
    BaseClass {
        code: 0x0f,
        keyword: "satellite",
        heading: "Satellite communication controllers",
    },
    BaseClass {
        code: 0x10,
        keyword: "crypto",
        heading: "Crypto devices",
    },
    BaseClass {
        code: 0x11,
        keyword: "signal",
        heading: "Signal processing controllers",
    },
    BaseClass {
        code: 0x12,
        keyword: "accelerator",
        heading: "Processing accelerators",
    },
    BaseClass {
        code: 0x13,
        keyword: "instrumentation",
        heading: "Non-essential instrumentation",
    },
    BaseClass {
        code: 0x40,
        keyword: "coprocessor",
        heading: "Coprocessors",
    },
    BaseClass {
        code: 0xff,
        keyword: "unassigned",
        heading: "Unassigned class (virtio and vendor-specific devices)",
    },
];

impl BaseClass {
    /// The entry for a base class code.
    pub fn of(code: u8) -> Option<&'static BaseClass> {
        BASE_CLASSES.iter().find(|b| b.code == code)
    }
}

/// Which devices `--class` selects: a keyword or a hex code of 2, 4 or 6 digits
/// (base class, base+subclass, or the whole class code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassFilter {
    /// `net`, `02`: one base class.
    Base(u8),
    /// `0106`: base class and subclass.
    BaseSub(u16),
    /// `010601`: the full class code.
    Full(u32),
}

/// An unknown `--class` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown class {0:?}: use a keyword ({keywords}) or a hex class code such as 02, 0200 or 010601", keywords = keyword_list())]
pub struct ClassFilterError(pub String);

fn keyword_list() -> String {
    BASE_CLASSES
        .iter()
        .map(|b| b.keyword)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClassFilter {
    /// Whether `class` is selected.
    pub fn matches(self, class: PciClass) -> bool {
        match self {
            ClassFilter::Base(base) => class.base() == base,
            ClassFilter::BaseSub(bs) => class.class_and_sub() == bs,
            ClassFilter::Full(full) => class.0 & 0xff_ffff == full,
        }
    }
}

impl FromStr for ClassFilter {
    type Err = ClassFilterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim().to_ascii_lowercase();
        let aliases = [
            ("network", "net"),
            ("disk", "storage"),
            ("gpu", "display"),
            ("vga", "display"),
        ];
        let keyword = aliases
            .iter()
            .find(|(alias, _)| *alias == text)
            .map_or(text.as_str(), |(_, keyword)| keyword);
        if let Some(base) = BASE_CLASSES.iter().find(|b| b.keyword == keyword) {
            return Ok(ClassFilter::Base(base.code));
        }
        let hex = text.strip_prefix("0x").unwrap_or(&text);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClassFilterError(input.to_string()));
        }
        let value = u32::from_str_radix(hex, 16).map_err(|_| ClassFilterError(input.to_string()));
        match hex.len() {
            2 => Ok(ClassFilter::Base(value? as u8)),
            4 => Ok(ClassFilter::BaseSub(value? as u16)),
            6 => Ok(ClassFilter::Full(value?)),
            _ => Err(ClassFilterError(input.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_class_code() {
        let ahci = PciClass(0x010601);
        assert_eq!((ahci.base(), ahci.sub(), ahci.prog_if()), (1, 6, 1));
        assert_eq!(ahci.class_and_sub(), 0x0106);
        assert_eq!(ahci.keyword(), "storage");
        assert_eq!(ahci.to_string(), "010601");
        assert_eq!(PciClass(0xee0000).keyword(), "other");
    }

    #[test]
    fn filters_by_keyword_or_code() {
        let e1000 = PciClass(0x020000);
        let ahci = PciClass(0x010601);
        let net: ClassFilter = "net".parse().unwrap();
        assert!(net.matches(e1000) && !net.matches(ahci));
        assert!("Network".parse::<ClassFilter>().unwrap().matches(e1000));
        assert!("0106".parse::<ClassFilter>().unwrap().matches(ahci));
        assert!(!"0101".parse::<ClassFilter>().unwrap().matches(ahci));
        assert!("010601".parse::<ClassFilter>().unwrap().matches(ahci));
        assert!("0x01".parse::<ClassFilter>().unwrap().matches(ahci));
        let err = "nett".parse::<ClassFilter>().unwrap_err().to_string();
        assert!(
            err.contains("net, display") || err.contains("storage, net"),
            "{err}"
        );
        assert!("123".parse::<ClassFilter>().is_err());
        assert!("zz".parse::<ClassFilter>().is_err());
    }
}
