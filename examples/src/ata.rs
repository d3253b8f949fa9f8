//! ATA, the command set that both IDE and AHCI disks speak: command codes, status and
//! error bits, and the IDENTIFY DEVICE data that says what the disk is.

use std::fmt::Write as _;

/// Bytes per logical sector of the disks these drivers handle.
pub const SECTOR_SIZE: usize = 512;

/// ATA command codes.
pub mod command {
    /// IDENTIFY DEVICE: 512 bytes about the disk, by PIO.
    pub const IDENTIFY_DEVICE: u8 = 0xec;
    /// READ SECTORS (LBA28, PIO).
    pub const READ_SECTORS: u8 = 0x20;
    /// WRITE SECTORS (LBA28, PIO).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// READ DMA (LBA28).
    pub const READ_DMA: u8 = 0xc8;
    /// WRITE DMA (LBA28).
    pub const WRITE_DMA: u8 = 0xca;
    /// READ DMA EXT (LBA48).
    pub const READ_DMA_EXT: u8 = 0x25;
    /// WRITE DMA EXT (LBA48).
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// FLUSH CACHE (LBA28 devices).
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT (LBA48 devices).
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
}

/// Bits of the ATA status register.
pub mod status {
    /// Busy: the other bits are not valid.
    pub const BSY: u8 = 0x80;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Device fault.
    pub const DF: u8 = 0x20;
    /// Data request: the device wants PIO data moved.
    pub const DRQ: u8 = 0x08;
    /// Error: see the error register.
    pub const ERR: u8 = 0x01;
}

/// Largest sector number + 1 that a 28-bit LBA command can address.
pub const LBA28_LIMIT: u64 = 1 << 28;

/// "status 0x51 (DRDY ERR), error 0x04 (ABRT)": the registers with their bits named.
pub fn describe(status: u8, error: u8) -> String {
    let names = |value: u8, bits: &[(u8, &str)]| {
        let set: Vec<&str> = bits
            .iter()
            .filter(|(b, _)| value & b != 0)
            .map(|(_, n)| *n)
            .collect();
        set.join(" ")
    };
    let mut out = format!(
        "status {status:#04x} ({})",
        names(
            status,
            &[
                (status::BSY, "BSY"),
                (status::DRDY, "DRDY"),
                (status::DF, "DF"),
                (status::DRQ, "DRQ"),
                (status::ERR, "ERR"),
            ]
        )
    );
    if status & status::ERR != 0 {
        let _ = write!(
            out,
            ", error {error:#04x} ({})",
            names(
                error,
                &[
                    (0x80, "ICRC"),
                    (0x40, "UNC: unreadable sector"),
                    (0x10, "IDNF: no such sector"),
                    (0x04, "ABRT: command aborted"),
                    (0x01, "AMNF"),
                ]
            )
        );
    }
    out
}

/// What IDENTIFY DEVICE says about a disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Model, e.g. "QEMU HARDDISK".
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware revision.
    pub firmware: String,
    /// Addressable sectors.
    pub sectors: u64,
    /// 48-bit LBA commands are supported.
    pub lba48: bool,
    /// DMA is supported.
    pub dma: bool,
}

impl Identity {
    /// Parses the 512 bytes of IDENTIFY DEVICE (256 little-endian words).
    pub fn parse(data: &[u8; SECTOR_SIZE]) -> Result<Identity, String> {
        let word = |n: usize| u16::from_le_bytes([data[2 * n], data[2 * n + 1]]);
        if word(0) & 0x8000 != 0 {
            return Err(format!(
                "word 0 is {:#06x}: not an ATA disk (a packet device, e.g. a CD-ROM?)",
                word(0)
            ));
        }
        // Word 255 may carry a checksum (signature 0xa5): all 512 bytes sum to 0.
        if word(255) & 0xff == 0xa5 {
            let sum = data.iter().fold(0u8, |s, b| s.wrapping_add(*b));
            if sum != 0 {
                return Err(format!("checksum fails (bytes sum to {sum:#04x}, not 0)"));
            }
        }
        // ATA strings hold two characters per word, the first in the high byte.
        let text = |first: usize, last: usize| {
            let bytes: Vec<u8> = (first..=last).flat_map(|n| word(n).to_be_bytes()).collect();
            String::from_utf8_lossy(&bytes).trim().to_string()
        };
        let lba48 = word(83) & (1 << 10) != 0;
        let lba28_sectors = u64::from(word(60)) | u64::from(word(61)) << 16;
        let sectors = if lba48 {
            (100..=103)
                .rev()
                .fold(0u64, |s, n| s << 16 | u64::from(word(n)))
        } else {
            lba28_sectors
        };
        if word(49) & (1 << 9) == 0 {
            return Err("the disk does not support LBA addressing".into());
        }
        Ok(Identity {
            model: text(27, 46),
            serial: text(10, 19),
            firmware: text(23, 26),
            sectors,
            lba48,
            dma: word(49) & (1 << 8) != 0,
        })
    }

    /// Checks that `count` sectors at `lba` lie on the disk (and, without LBA48, within
    /// 28-bit addressing).
    pub fn check_range(&self, lba: u64, count: u64) -> Result<(), String> {
        let limit = if self.lba48 {
            self.sectors
        } else {
            self.sectors.min(LBA28_LIMIT)
        };
        match lba.checked_add(count) {
            Some(end) if end <= limit => Ok(()),
            _ => Err(format!(
                "sectors {lba}..{} are past the end of the disk ({limit} sectors)",
                lba.saturating_add(count)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDENTIFY block as QEMU's ide-hd of 16384 sectors answers it (the fields used).
    fn identify_block(lba48: bool) -> [u8; SECTOR_SIZE] {
        let mut d = [0u8; SECTOR_SIZE];
        let mut put = |n: usize, v: u16| d[2 * n..2 * n + 2].copy_from_slice(&v.to_le_bytes());
        put(0, 0x0040);
        put(49, (1 << 9) | (1 << 8));
        put(60, 16384);
        put(61, 0);
        put(83, if lba48 { 1 << 10 } else { 0 });
        put(100, 0x8000);
        put(101, 0x0001);
        let mut ata_string = |first: usize, s: &str| {
            let bytes: Vec<u8> = s.bytes().chain(std::iter::repeat(b' ')).take(40).collect();
            for (i, pair) in bytes.chunks(2).enumerate() {
                let n = first + i;
                if n > 46 {
                    break;
                }
                d[2 * n] = pair[1];
                d[2 * n + 1] = pair[0];
            }
        };
        ata_string(27, "QEMU HARDDISK");
        d
    }

    #[test]
    fn parses_model_capacity_and_features() {
        let id = Identity::parse(&identify_block(false)).unwrap();
        assert_eq!(id.model, "QEMU HARDDISK");
        assert_eq!(id.sectors, 16384);
        assert!(!id.lba48 && id.dma);
        let id = Identity::parse(&identify_block(true)).unwrap();
        assert!(id.lba48);
        assert_eq!(id.sectors, 0x1_8000, "LBA48 capacity from words 100-103");
    }

    #[test]
    fn refuses_packet_devices_and_bad_checksums() {
        let mut d = identify_block(false);
        d[1] = 0x85;
        assert!(Identity::parse(&d).unwrap_err().contains("not an ATA disk"));
        let mut d = identify_block(false);
        d[510] = 0xa5;
        d[511] = 0x00;
        assert!(Identity::parse(&d).unwrap_err().contains("checksum"));
        let sum = d.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        d[511] = 0u8.wrapping_sub(sum);
        assert!(Identity::parse(&d).is_ok());
    }

    #[test]
    fn ranges_past_the_end_are_refused() {
        let id = Identity::parse(&identify_block(false)).unwrap();
        assert!(id.check_range(0, 16384).is_ok());
        assert!(id.check_range(16383, 1).is_ok());
        let e = id.check_range(16380, 8).unwrap_err();
        assert_eq!(
            e,
            "sectors 16380..16388 are past the end of the disk (16384 sectors)"
        );
        assert!(id.check_range(u64::MAX, 2).is_err());
    }

    #[test]
    fn status_and_error_bits_are_named() {
        assert_eq!(describe(0x50, 0), "status 0x50 (DRDY)");
        assert_eq!(
            describe(0x51, 0x04),
            "status 0x51 (DRDY ERR), error 0x04 (ABRT: command aborted)"
        );
    }
}
