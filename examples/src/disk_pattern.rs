//! The known contents of the rig's test disks.
//!
//! One definition for both sides: the rig writes its disk images with it
//! (`rig-tests mkdisk`) and the drivers check what they read against it
//! (`--verify-pattern`).
//!
//! Every 512-byte sector holds 32 records of 16 bytes: the magic `udrv`, the sector
//! number, the record index and the bit-inverted sector number (all u32 little-endian).
//! A sector read back from any offset names itself, so a test can tell a wrong sector
//! from a wrong byte, and the inverted copy catches stuck bits.

/// Bytes in one sector of the rig's disks.
pub const SECTOR_SIZE: usize = 512;
const RECORD: usize = 16;
const MAGIC: &[u8; 4] = b"udrv";

/// Fills `buf` (one sector) with the pattern of sector `lba`.
pub fn fill_sector(lba: u64, buf: &mut [u8; SECTOR_SIZE]) {
    let n = lba as u32;
    for (i, rec) in buf.chunks_exact_mut(RECORD).enumerate() {
        rec[0..4].copy_from_slice(MAGIC);
        rec[4..8].copy_from_slice(&n.to_le_bytes());
        rec[8..12].copy_from_slice(&(i as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&(!n).to_le_bytes());
    }
}

/// The pattern of sector `lba`.
pub fn sector(lba: u64) -> [u8; SECTOR_SIZE] {
    let mut buf = [0u8; SECTOR_SIZE];
    fill_sector(lba, &mut buf);
    buf
}

/// Checks that `data` holds consecutive sectors starting at `first_lba`, and says where
/// it first differs.
pub fn verify(first_lba: u64, data: &[u8]) -> Result<(), String> {
    if !data.len().is_multiple_of(SECTOR_SIZE) {
        return Err(format!(
            "{} bytes is not a whole number of sectors",
            data.len()
        ));
    }
    for (i, got) in data.chunks_exact(SECTOR_SIZE).enumerate() {
        let lba = first_lba + i as u64;
        let want = sector(lba);
        if let Some(at) = got.iter().zip(want.iter()).position(|(g, w)| g != w) {
            let end = (at + 16).min(SECTOR_SIZE);
            return Err(format!(
                "sector {lba} differs at byte {at}: got {:02x?}, want {:02x?}",
                &got[at..end],
                &want[at..end]
            ));
        }
    }
    Ok(())
}

/// Writes a disk image of `sectors` patterned sectors to `path`.
pub fn write_image(path: &std::path::Path, sectors: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for lba in 0..sectors {
        out.write_all(&sector(lba))?;
    }
    out.into_inner()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_name_themselves_and_differ() {
        let s7 = sector(7);
        assert_eq!(&s7[0..4], b"udrv");
        assert_eq!(u32::from_le_bytes(s7[4..8].try_into().unwrap()), 7);
        assert_ne!(sector(7), sector(8));
        assert!(verify(7, &s7).is_ok());
        let err = verify(8, &s7).unwrap_err();
        assert!(err.contains("sector 8 differs at byte 4"), "{err}");
    }

    #[test]
    fn verify_rejects_a_flipped_bit_and_partial_sectors() {
        let mut two = [sector(3), sector(4)].concat();
        assert!(verify(3, &two).is_ok());
        two[600] ^= 1;
        assert!(verify(3, &two)
            .unwrap_err()
            .starts_with("sector 4 differs at byte 88"));
        assert!(verify(3, &two[..100]).is_err());
    }
}
