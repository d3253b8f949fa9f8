//! `PciAddress`: a PCI function's domain:bus:device.function ("BDF").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PCI function address, displayed the way sysfs names it: `0000:00:02.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment (domain), 0..=0xffff.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a PCI address: {problem}; write it as 0000:00:02.0 (domain:bus:device.function, hex) or 00:02.0")]
pub struct AddressParseError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl PciAddress {
    /// Builds an address, checking the device (0..=31) and function (0..=7) ranges.
    pub fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self {
            domain,
            bus,
            device,
            function,
        })
    }
}

fn hex_field(text: &str, max_digits: usize) -> Option<u32> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

impl FromStr for PciAddress {
    type Err = AddressParseError;

    /// Accepts `DDDD:BB:DD.F` and the domain-less `BB:DD.F` that lspci prints.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem| AddressParseError {
            input: input.to_string(),
            problem,
        };
        let text = input.trim();
        let (rest, function) = text
            .rsplit_once('.')
            .ok_or_else(|| fail("missing '.function'"))?;
        let function = hex_field(function, 1).ok_or_else(|| fail("bad function number"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => (0, *bus, *device),
            [domain, bus, device] => (
                hex_field(domain, 4).ok_or_else(|| fail("bad domain (up to 4 hex digits)"))?,
                *bus,
                *device,
            ),
            _ => return Err(fail("expected domain:bus:device.function")),
        };
        let bus = hex_field(bus, 2).ok_or_else(|| fail("bad bus number (up to 2 hex digits)"))?;
        let device =
            hex_field(device, 2).ok_or_else(|| fail("bad device number (2 hex digits)"))?;
        if device >= 32 {
            return Err(fail("device number above 1f"));
        }
        if function >= 8 {
            return Err(fail("function number above 7"));
        }
        // Ranges were checked above, so the narrowing casts are exact.
        Ok(Self {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let full: PciAddress = "0000:00:02.0".parse().unwrap();
        assert_eq!(full, PciAddress::new(0, 0, 2, 0).unwrap());
        let short: PciAddress = "00:1f.3".parse().unwrap();
        assert_eq!(short, PciAddress::new(0, 0, 0x1f, 3).unwrap());
        let upper: PciAddress = "ABCD:FE:1F.7".parse().unwrap();
        assert_eq!(upper.to_string(), "abcd:fe:1f.7");
    }

    #[test]
    fn displays_like_sysfs() {
        let a = PciAddress::new(1, 0x3b, 0, 1).unwrap();
        assert_eq!(a.to_string(), "0001:3b:00.1");
        assert_eq!(a.to_string().parse::<PciAddress>().unwrap(), a);
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for bad in [
            "",
            "00:02",
            "0000:00:20.0",
            "00:02.8",
            "zz:02.0",
            "0:0:0:0.0",
            "00000:00:02.0",
            "00:02.",
            ".0",
            "00:002.0",
        ] {
            let err = bad.parse::<PciAddress>().unwrap_err();
            assert!(err.to_string().contains("0000:00:02.0"), "{err}");
        }
    }

    #[test]
    fn serde_round_trip_is_a_string() {
        let a: PciAddress = "0000:00:06.0".parse().unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"0000:00:06.0\"");
        assert_eq!(serde_json::from_str::<PciAddress>(&json).unwrap(), a);
        assert!(serde_json::from_str::<PciAddress>("\"nope\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_valid_address_round_trips(d: u16, b: u8, dev in 0u8..32, f in 0u8..8) {
            let a = PciAddress::new(d, b, dev, f).unwrap();
            proptest::prop_assert_eq!(a.to_string().parse::<PciAddress>().unwrap(), a);
        }

        #[test]
        fn parsing_never_panics(s in ".{0,20}") {
            let _ = s.parse::<PciAddress>();
        }
    }
}
