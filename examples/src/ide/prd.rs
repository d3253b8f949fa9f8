//! The physical region descriptor (PRD) table a bus-master IDE engine walks: 8-byte
//! entries of (32-bit address, byte count, end-of-table flag). A region may not cross a
//! 64 KiB boundary and holds at most 64 KiB (a count of 0 means 64 KiB).

/// Bytes per PRD entry.
pub const ENTRY_SIZE: usize = 8;
/// End of table, in the entry's top flag bit.
const EOT: u16 = 0x8000;
const BOUNDARY: u64 = 0x1_0000;

/// One PRD entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrdEntry {
    /// Bus address of the region.
    pub address: u32,
    /// Bytes in the region, 2..=65536.
    pub len: u32,
    /// Last entry of the table.
    pub end: bool,
}

impl PrdEntry {
    /// The 8 bytes the engine reads.
    pub fn to_bytes(self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..4].copy_from_slice(&self.address.to_le_bytes());
        // 65536 is written as 0.
        b[4..6].copy_from_slice(&(self.len as u16).to_le_bytes());
        b[6..8].copy_from_slice(&(if self.end { EOT } else { 0 }).to_le_bytes());
        b
    }
}

/// The entries that describe `len` bytes at bus address `iova`: split at every 64 KiB
/// boundary. Errors if the range is empty, odd-sized or not below 4 GiB.
pub fn entries(iova: u64, len: usize) -> Result<Vec<PrdEntry>, String> {
    let end = iova
        .checked_add(len as u64)
        .filter(|e| *e <= 1 << 32)
        .ok_or_else(|| {
            format!(
                "{len} bytes at {iova:#x} reach past 4 GiB: bus-master IDE has 32-bit addresses"
            )
        })?;
    if len == 0 || !len.is_multiple_of(2) || !iova.is_multiple_of(2) {
        return Err(format!(
            "{len} bytes at {iova:#x}: regions must be even-sized and aligned"
        ));
    }
    let mut out = Vec::new();
    let mut at = iova;
    while at < end {
        let next = ((at / BOUNDARY) + 1) * BOUNDARY;
        let stop = next.min(end);
        out.push(PrdEntry {
            address: at as u32,
            len: (stop - at) as u32,
            end: stop == end,
        });
        at = stop;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_64_kib_boundaries_and_marks_the_last() {
        let e = entries(0x10_f000, 0x2_0000).unwrap();
        assert_eq!(
            e,
            vec![
                PrdEntry {
                    address: 0x10_f000,
                    len: 0x1000,
                    end: false
                },
                PrdEntry {
                    address: 0x11_0000,
                    len: 0x1_0000,
                    end: false
                },
                PrdEntry {
                    address: 0x12_0000,
                    len: 0xf000,
                    end: true
                },
            ]
        );
        assert_eq!(e.iter().map(|p| p.len).sum::<u32>(), 0x2_0000);
    }

    #[test]
    fn a_full_64_kib_region_is_written_as_count_zero() {
        let e = entries(0x20_0000, 0x1_0000).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_bytes(),
            [0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x80]
        );
        let small = PrdEntry {
            address: 0x1234_5678,
            len: 512,
            end: false,
        };
        assert_eq!(
            small.to_bytes(),
            [0x78, 0x56, 0x34, 0x12, 0x00, 0x02, 0x00, 0x00]
        );
    }

    #[test]
    fn refuses_what_the_engine_cannot_do() {
        assert!(entries(0xffff_f000, 0x2000).unwrap_err().contains("4 GiB"));
        assert!(entries(0x1000, 0).is_err());
        assert!(entries(0x1000, 511).is_err());
        assert!(entries(0x1001, 512).is_err());
        assert!(entries(0xffff_fe00, 0x200).is_ok());
    }
}
