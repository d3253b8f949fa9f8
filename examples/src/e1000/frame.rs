//! The test frames the e1000 example sends and checks.
//!
//! ```text
//! dst MAC (6) | src MAC (6) | EtherType 0x88b5 (2) |
//! "udrv" (4) | run id u32 LE (4) | sequence u64 LE (8) | pattern ...
//! ```
//!
//! Pattern byte `i` (counted from the start of the pattern) is
//! `(sequence + i) as u8 ^ 0xa5`, so every frame's payload differs from its
//! neighbours' and a frame checked against the wrong sequence number fails. The run
//! id tells this run's frames from those of an earlier run that the emulated network
//! may still deliver late.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddress = MacAddress([0xff; 6]);
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddress, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("{s:?} is not a MAC address; write it as 52:54:00:00:00:03");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(MacAddress(mac))
    }
}

/// IEEE 802 "local experimental" EtherType: never a real protocol on the wire.
pub const ETHERTYPE: u16 = 0x88b5;
/// Ethernet header bytes.
pub const HEADER: usize = 14;
const MAGIC: &[u8; 4] = b"udrv";
/// Where the pattern starts.
const PATTERN_AT: usize = HEADER + 16;
/// The shortest frame software hands to the NIC (without CRC); receivers pad shorter
/// frames to this anyway.
pub const MIN_FRAME: usize = 60;

/// Where a test frame goes and which run it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// Destination MAC.
    pub dst: MacAddress,
    /// Source MAC.
    pub src: MacAddress,
    /// Tells this run's frames from earlier runs'.
    pub run: u32,
    /// Frame length without CRC, `MIN_FRAME..=1514`.
    pub len: usize,
}

/// What a received frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// One of this run's frames, intact, with its sequence number.
    Ours(u64),
    /// A test frame of an earlier run.
    Stale,
    /// Not a test frame at all.
    Foreign,
}

impl FrameSpec {
    /// Writes frame number `seq` into `out` (resized to `len`).
    pub fn build(&self, seq: u64, out: &mut Vec<u8>) {
        out.resize(self.len, 0);
        out[0..6].copy_from_slice(&self.dst.0);
        out[6..12].copy_from_slice(&self.src.0);
        out[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        out[14..18].copy_from_slice(MAGIC);
        out[18..22].copy_from_slice(&self.run.to_le_bytes());
        out[22..30].copy_from_slice(&seq.to_le_bytes());
        for (i, b) in out[PATTERN_AT..].iter_mut().enumerate() {
            *b = pattern_byte(seq, i);
        }
    }

    /// Classifies a received frame, and checks one of ours byte for byte: addresses,
    /// length and pattern. An error says where it differs.
    pub fn check(&self, frame: &[u8]) -> Result<Received, String> {
        if frame.len() < PATTERN_AT
            || frame[12..14] != ETHERTYPE.to_be_bytes()
            || &frame[14..18] != MAGIC
        {
            return Ok(Received::Foreign);
        }
        if frame[18..22] != self.run.to_le_bytes() {
            return Ok(Received::Stale);
        }
        let seq = u64::from_le_bytes(frame[22..30].try_into().expect("8 bytes"));
        if frame.len() != self.len {
            return Err(format!(
                "frame {seq}: {} bytes, sent {}",
                frame.len(),
                self.len
            ));
        }
        if frame[0..6] != self.dst.0 || frame[6..12] != self.src.0 {
            return Err(format!(
                "frame {seq}: addressed {} -> {}, sent {} -> {}",
                MacAddress(frame[6..12].try_into().expect("6 bytes")),
                MacAddress(frame[0..6].try_into().expect("6 bytes")),
                self.src,
                self.dst
            ));
        }
        if let Some((i, b)) = frame[PATTERN_AT..]
            .iter()
            .enumerate()
            .find(|(i, b)| **b != pattern_byte(seq, *i))
        {
            return Err(format!(
                "frame {seq}: byte {} is {b:#04x}, sent {:#04x}",
                PATTERN_AT + i,
                pattern_byte(seq, i)
            ));
        }
        Ok(Received::Ours(seq))
    }
}

fn pattern_byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_add(i as u64) as u8) ^ 0xa5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(len: usize) -> FrameSpec {
        FrameSpec {
            dst: "52:54:00:00:00:03".parse().unwrap(),
            src: "52:54:00:00:00:02".parse().unwrap(),
            run: 0x1234_5678,
            len,
        }
    }

    #[test]
    fn built_frames_check_as_ours_with_their_sequence() {
        let s = spec(60);
        let mut f = Vec::new();
        s.build(41, &mut f);
        assert_eq!(f.len(), 60);
        assert_eq!(s.check(&f), Ok(Received::Ours(41)));
        s.build(u64::MAX, &mut f);
        assert_eq!(s.check(&f), Ok(Received::Ours(u64::MAX)));
    }

    #[test]
    fn any_changed_byte_is_found() {
        let s = spec(1514);
        let mut f = Vec::new();
        s.build(7, &mut f);
        for at in [0, 11, PATTERN_AT, 1000, 1513] {
            let mut bad = f.clone();
            bad[at] ^= 0x10;
            assert!(s.check(&bad).is_err(), "byte {at} changed unnoticed");
        }
        assert!(s
            .check(&f[..1000])
            .unwrap_err()
            .contains("1000 bytes, sent 1514"));
    }

    #[test]
    fn other_runs_and_other_traffic_are_told_apart() {
        let s = spec(100);
        let mut f = Vec::new();
        let earlier = FrameSpec { run: 1, ..s };
        earlier.build(3, &mut f);
        assert_eq!(s.check(&f), Ok(Received::Stale));
        f[12] = 0x86;
        f[13] = 0xdd;
        assert_eq!(s.check(&f), Ok(Received::Foreign));
        assert_eq!(s.check(&[0u8; 20]), Ok(Received::Foreign));
    }

    #[test]
    fn mac_addresses_parse_and_print() {
        let m: MacAddress = "52:54:00:AB:cd:03".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:03");
        assert!("52:54:00:ab:cd".parse::<MacAddress>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddress>().is_err());
    }
}
