//! The in-memory structures an AHCI port works from (AHCI 1.3.1 section 4): the command
//! list of 32-byte command headers, the command table with its command FIS and PRDT,
//! and the host-to-device register FIS that carries an ATA command.

/// Bytes of the command list (32 headers of 32 bytes); 1 KiB aligned.
pub const COMMAND_LIST_SIZE: usize = 1024;
/// Bytes of the received-FIS area; 256-byte aligned.
pub const RECEIVED_FIS_SIZE: usize = 256;
/// Offset of the PRDT in a command table (after the command FIS and ATAPI command).
pub const PRDT_OFFSET: usize = 0x80;
/// Bytes per PRDT entry.
pub const PRD_ENTRY_SIZE: usize = 16;
/// Most bytes one PRDT entry describes (a 22-bit count of bytes minus one).
pub const MAX_PRD_BYTES: usize = 4 << 20;

/// FIS type of a host-to-device register FIS.
const FIS_H2D: u8 = 0x27;
/// Byte 1 of an H2D FIS: this FIS carries a command (not a device control update).
const FIS_COMMAND: u8 = 0x80;
/// FIS type of a device-to-host register FIS (the end of a non-queued command).
pub const FIS_D2H: u8 = 0x34;
/// Dwords in an H2D register FIS.
pub const H2D_DWORDS: u8 = 5;
/// DEVICE register: LBA addressing.
pub const DEVICE_LBA: u8 = 0x40;

/// One command header of the command list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandHeader {
    /// Length of the command FIS in dwords.
    pub fis_dwords: u8,
    /// Host to device data (a write).
    pub write: bool,
    /// Entries in the command table's PRDT.
    pub prdt_entries: u16,
    /// Bus address of the command table (128-byte aligned).
    pub table: u64,
}

impl CommandHeader {
    /// The 32 bytes the HBA reads. PRDBC (bytes transferred) starts at 0; the HBA
    /// updates it.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        let flags = u32::from(self.fis_dwords & 0x1f)
            | if self.write { 1 << 6 } else { 0 }
            | u32::from(self.prdt_entries) << 16;
        b[0..4].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.table.to_le_bytes());
        b
    }
}

/// A host-to-device register FIS for ATA command `command` on `count` sectors at
/// `lba` (48-bit fields; a count of 65536 is written as 0).
pub fn h2d_fis(command: u8, lba: u64, count: u32, device: u8) -> [u8; 20] {
    let l = lba.to_le_bytes();
    let c = (count as u16).to_le_bytes();
    [
        FIS_H2D,
        FIS_COMMAND,
        command,
        0,
        l[0],
        l[1],
        l[2],
        device,
        l[3],
        l[4],
        l[5],
        0,
        c[0],
        c[1],
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// PRDT entries for `len` bytes at bus address `iova`, at most 4 MiB each, the last
/// one asking for an interrupt on completion.
pub fn prdt(iova: u64, len: usize) -> Result<Vec<[u8; PRD_ENTRY_SIZE]>, String> {
    if len == 0 || !len.is_multiple_of(2) || !iova.is_multiple_of(2) {
        return Err(format!(
            "{len} bytes at {iova:#x}: PRD regions must be even-sized and word aligned"
        ));
    }
    let pieces = len.div_ceil(MAX_PRD_BYTES);
    Ok((0..pieces)
        .map(|i| {
            let at = iova + (i * MAX_PRD_BYTES) as u64;
            let bytes = (len - i * MAX_PRD_BYTES).min(MAX_PRD_BYTES);
            let mut e = [0u8; PRD_ENTRY_SIZE];
            e[0..8].copy_from_slice(&at.to_le_bytes());
            let last = i + 1 == pieces;
            let dbc = (bytes as u32 - 1) | if last { 1 << 31 } else { 0 };
            e[12..16].copy_from_slice(&dbc.to_le_bytes());
            e
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_packs_flags_count_and_table() {
        let h = CommandHeader {
            fis_dwords: H2D_DWORDS,
            write: true,
            prdt_entries: 3,
            table: 0x1_2345_6780,
        };
        let b = h.to_bytes();
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 0x0003_0045);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 0, "PRDBC");
        assert_eq!(
            u64::from_le_bytes(b[8..16].try_into().unwrap()),
            0x1_2345_6780
        );
    }

    #[test]
    fn h2d_fis_spreads_lba_and_count() {
        let f = h2d_fis(0x25, 0x0000_1122_3344_5566, 65536, DEVICE_LBA);
        assert_eq!(&f[0..4], &[0x27, 0x80, 0x25, 0]);
        assert_eq!(&f[4..8], &[0x66, 0x55, 0x44, 0x40]);
        assert_eq!(&f[8..11], &[0x33, 0x22, 0x11]);
        assert_eq!(&f[12..14], &[0, 0], "65536 sectors is a count of 0");
        assert_eq!(h2d_fis(0x25, 0, 2048, DEVICE_LBA)[12..14], [0x00, 0x08]);
    }

    #[test]
    fn prdt_splits_at_4_mib_and_flags_the_last() {
        let e = prdt(0x20_0000, 9 << 20).unwrap();
        assert_eq!(e.len(), 3);
        let dba = |e: &[u8; 16]| u64::from_le_bytes(e[0..8].try_into().unwrap());
        let dbc = |e: &[u8; 16]| u32::from_le_bytes(e[12..16].try_into().unwrap());
        assert_eq!(dba(&e[1]), 0x20_0000 + (4 << 20));
        assert_eq!(dbc(&e[0]), (4 << 20) - 1);
        assert_eq!(dbc(&e[2]), (1 << 31) | ((1 << 20) - 1));
        assert!(prdt(0x1000, 0).is_err());
        assert!(prdt(0x1000, 513).is_err());
        assert_eq!(prdt(0x1000, 512).unwrap().len(), 1);
    }
}
