//! What the two disk drivers have in common: a disk read and written in whole sectors,
//! sequential reads checked against the rig's disk pattern, and a write round trip
//! that puts the original sectors back.

use std::time::{Duration, Instant};

use dma::DmaMemory;

use crate::ata::SECTOR_SIZE;
use crate::disk_pattern;
use crate::error::{DriverError, Result};
use crate::stop;

/// A disk read and written in whole 512-byte sectors.
pub trait BlockDevice {
    /// The controller's name, `0000:00:06.0`, for errors.
    fn name(&self) -> &str;
    /// Sectors on the disk.
    fn sectors(&self) -> u64;
    /// The most sectors one command moves; larger requests are split.
    fn max_sectors_per_command(&self) -> u64;
    /// Reads `out.len() / 512` sectors starting at `lba`.
    fn read_sectors(&mut self, lba: u64, out: &mut [u8]) -> Result<()>;
    /// Reads `count` sectors (at most [`max_sectors_per_command`]) at `lba` into the
    /// driver's own DMA buffer and lends it out until the next call: the zero-copy
    /// read, data where the device put it.
    ///
    /// [`max_sectors_per_command`]: BlockDevice::max_sectors_per_command
    fn read_in_place(&mut self, lba: u64, count: u64) -> Result<&DmaMemory>;
    /// Writes `data.len() / 512` sectors starting at `lba`.
    fn write_sectors(&mut self, lba: u64, data: &[u8]) -> Result<()>;
    /// Makes written sectors durable (flushes the disk's write cache).
    fn flush(&mut self) -> Result<()>;
}

/// Checks that `len` bytes are whole sectors and `count` of them at `lba` fit the disk.
pub(crate) fn check_request(device: &str, disk_sectors: u64, lba: u64, len: usize) -> Result<u64> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(DriverError::Request {
            device: device.into(),
            reason: format!(
                "a transfer of {len} bytes: transfers are whole sectors of {SECTOR_SIZE} bytes"
            ),
        });
    }
    let count = (len / SECTOR_SIZE) as u64;
    match lba.checked_add(count) {
        Some(end) if end <= disk_sectors => Ok(count),
        _ => Err(DriverError::Request {
            device: device.into(),
            reason: format!(
                "sectors {lba}..{} are past the end of the disk ({disk_sectors} sectors)",
                lba.saturating_add(count)
            ),
        }),
    }
}

/// What a sequential read measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReport {
    /// Bytes read.
    pub bytes: u64,
    /// Time spent in the driver's reads (checking the data is not counted).
    pub elapsed: Duration,
    /// Whether every sector was checked against the disk pattern.
    pub verified: bool,
}

impl ReadReport {
    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

impl std::fmt::Display for ReadReport {
    /// "1048576 bytes in 0.004 s (240.70 MB/s); every sector holds the disk pattern"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes in {:.3} s ({:.2} MB/s)",
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.mb_per_s()
        )?;
        if self.verified {
            f.write_str("; every sector holds the disk pattern")?;
        }
        Ok(())
    }
}

/// Reads `count` sectors from `first`, one command of the driver's largest size after
/// another, in place (no copy: the figure is the device's and the driver's). With
/// `verify`, every sector is then copied out and checked against the rig's disk
/// pattern ([`disk_pattern`]), naming the first sector and byte that differ.
pub fn read_sequential<D: BlockDevice + ?Sized>(
    disk: &mut D,
    first: u64,
    count: u64,
    verify: bool,
) -> Result<ReadReport> {
    let chunk = disk.max_sectors_per_command().max(1);
    let mut copy = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut lba = first;
    let end = first.saturating_add(count);
    while lba < end {
        if stop::requested() {
            return Err(DriverError::Interrupted {
                device: disk.name().into(),
            });
        }
        let n = chunk.min(end - lba);
        let started = Instant::now();
        let data = disk.read_in_place(lba, n)?;
        elapsed += started.elapsed();
        if verify {
            copy.resize(n as usize * SECTOR_SIZE, 0);
            data.copy_to(0, &mut copy)?;
            disk_pattern::verify(lba, &copy).map_err(|detail| DriverError::Verify {
                device: disk.name().into(),
                detail,
            })?;
        }
        lba += n;
    }
    Ok(ReadReport {
        bytes: count * SECTOR_SIZE as u64,
        elapsed,
        verified: verify,
    })
}

/// Writes `count` sectors at `lba` with data that differs from what is there in every
/// byte, reads them back and compares, then writes the original sectors back and
/// checks those too. The original is restored even when the comparison fails.
pub fn write_round_trip<D: BlockDevice + ?Sized>(disk: &mut D, lba: u64, count: u64) -> Result<()> {
    let len = count as usize * SECTOR_SIZE;
    let mut original = vec![0u8; len];
    disk.read_sectors(lba, &mut original)?;
    let written: Vec<u8> = original.iter().map(|b| !b).collect();
    let trial = (|| {
        disk.write_sectors(lba, &written)?;
        disk.flush()?;
        let mut back = vec![0u8; len];
        disk.read_sectors(lba, &mut back)?;
        compare(disk.name(), lba, &written, &back, "written")
    })();
    disk.write_sectors(lba, &original)?;
    disk.flush()?;
    let mut back = vec![0u8; len];
    disk.read_sectors(lba, &mut back)?;
    trial?;
    compare(disk.name(), lba, &original, &back, "restored")
}

fn compare(device: &str, lba: u64, want: &[u8], got: &[u8], what: &str) -> Result<()> {
    match want.iter().zip(got).position(|(w, g)| w != g) {
        None => Ok(()),
        Some(at) => Err(DriverError::Verify {
            device: device.into(),
            detail: format!(
                "sector {} read back after being {what} differs at byte {}: got {:#04x}, wrote {:#04x}",
                lba + (at / SECTOR_SIZE) as u64,
                at % SECTOR_SIZE,
                got[at],
                want[at]
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dma::PagePreference;

    /// A disk in memory holding the pattern, that can be told to corrupt reads or to
    /// lose writes.
    struct MemoryDisk {
        data: Vec<u8>,
        flip_byte_on_read: Option<usize>,
        drop_writes: bool,
        buffer: DmaMemory,
    }

    impl MemoryDisk {
        fn new(sectors: u64) -> MemoryDisk {
            let data = (0..sectors).flat_map(disk_pattern::sector).collect();
            MemoryDisk {
                data,
                flip_byte_on_read: None,
                drop_writes: false,
                buffer: DmaMemory::allocate_with(8 * SECTOR_SIZE, PagePreference::SmallOnly)
                    .unwrap(),
            }
        }
    }

    impl BlockDevice for MemoryDisk {
        fn name(&self) -> &str {
            "mem"
        }
        fn sectors(&self) -> u64 {
            (self.data.len() / SECTOR_SIZE) as u64
        }
        fn max_sectors_per_command(&self) -> u64 {
            8
        }
        fn read_sectors(&mut self, lba: u64, out: &mut [u8]) -> Result<()> {
            check_request("mem", self.sectors(), lba, out.len())?;
            let at = lba as usize * SECTOR_SIZE;
            out.copy_from_slice(&self.data[at..at + out.len()]);
            if let Some(i) = self.flip_byte_on_read {
                if (at..at + out.len()).contains(&i) {
                    out[i - at] ^= 1;
                }
            }
            Ok(())
        }
        fn read_in_place(&mut self, lba: u64, count: u64) -> Result<&DmaMemory> {
            let mut out = vec![0u8; count as usize * SECTOR_SIZE];
            self.read_sectors(lba, &mut out)?;
            self.buffer.copy_from(0, &out)?;
            Ok(&self.buffer)
        }
        fn write_sectors(&mut self, lba: u64, data: &[u8]) -> Result<()> {
            check_request("mem", self.sectors(), lba, data.len())?;
            if !self.drop_writes {
                let at = lba as usize * SECTOR_SIZE;
                self.data[at..at + data.len()].copy_from_slice(data);
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sequential_reads_verify_the_pattern_and_name_the_bad_sector() {
        let mut disk = MemoryDisk::new(64);
        let r = read_sequential(&mut disk, 3, 50, true).unwrap();
        assert_eq!(r.bytes, 50 * 512);
        disk.flip_byte_on_read = Some(40 * 512 + 7);
        let e = read_sequential(&mut disk, 0, 64, true).unwrap_err();
        assert!(e.to_string().contains("sector 40 differs at byte 7"), "{e}");
        // Without verification the same reads pass.
        assert!(read_sequential(&mut disk, 0, 64, false).is_ok());
    }

    #[test]
    fn round_trip_restores_the_original() {
        let mut disk = MemoryDisk::new(32);
        let before = disk.data.clone();
        write_round_trip(&mut disk, 10, 4).unwrap();
        assert_eq!(disk.data, before);
    }

    #[test]
    fn round_trip_notices_lost_writes() {
        let mut disk = MemoryDisk::new(32);
        disk.drop_writes = true;
        let e = write_round_trip(&mut disk, 10, 4).unwrap_err();
        assert!(
            e.to_string()
                .contains("sector 10 read back after being written differs at byte 0"),
            "{e}"
        );
    }

    #[test]
    fn requests_are_whole_sectors_on_the_disk() {
        assert_eq!(check_request("d", 100, 96, 4 * 512).unwrap(), 4);
        assert!(check_request("d", 100, 97, 4 * 512).is_err());
        assert!(check_request("d", 100, 0, 100).is_err());
        assert!(check_request("d", 100, 0, 0).is_err());
        assert!(check_request("d", 100, u64::MAX, 512).is_err());
    }
}
