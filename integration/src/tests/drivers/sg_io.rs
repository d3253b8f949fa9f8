//! ATA commands through the kernel's SCSI generic ioctl (SG_IO with an ATA
//! PASS-THROUGH (16) command block): libata runs them as the protocol says, so
//! READ SECTORS with the PIO Data-In protocol makes the kernel's own driver move the
//! data by PIO. The baseline for the IDE driver's PIO reads.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Result};

/// `struct sg_io_hdr` from <scsi/sg.h>.
#[repr(C)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut u8,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut u8,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

const SG_DXFER_FROM_DEV: i32 = -3;
nix::ioctl_readwrite_bad!(sg_io, 0x2285, SgIoHdr);

/// ATA PASS-THROUGH (16).
const ATA_16: u8 = 0x85;
/// Protocol field: PIO Data-In.
const PROTOCOL_PIO_IN: u8 = 4;
/// T_DIR (from the device), BYT_BLOK (count in blocks), T_LENGTH = the sector count
/// field.
const DIR_IN_BLOCKS_IN_COUNT: u8 = 0x08 | 0x04 | 0x02;
/// ATA READ SECTORS (LBA28, PIO).
const READ_SECTORS: u8 = 0x20;

/// Reads `out.len() / 512` sectors (at most 256) at `lba` of the disk open as
/// `disk` with READ SECTORS by PIO.
pub fn read_sectors_pio(disk: &File, lba: u64, out: &mut [u8]) -> Result<()> {
    let count = out.len() / 512;
    if count == 0 || count > 256 || !out.len().is_multiple_of(512) || lba + count as u64 > 1 << 28 {
        bail!(
            "READ SECTORS of {} bytes at {lba}: 1..=256 whole sectors below 2^28",
            out.len()
        );
    }
    let cdb: [u8; 16] = [
        ATA_16,
        PROTOCOL_PIO_IN << 1,
        DIR_IN_BLOCKS_IN_COUNT,
        0,
        0,
        0,
        count as u8, // 256 is written as 0
        0,
        lba as u8,
        0,
        (lba >> 8) as u8,
        0,
        (lba >> 16) as u8,
        0x40 | ((lba >> 24) as u8 & 0x0f),
        READ_SECTORS,
        0,
    ];
    let mut sense = [0u8; 32];
    let mut hdr = SgIoHdr {
        interface_id: b'S' as i32,
        dxfer_direction: SG_DXFER_FROM_DEV,
        cmd_len: cdb.len() as u8,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: out.len() as u32,
        dxferp: out.as_mut_ptr(),
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: 10_000,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` is a valid sg_io_hdr whose pointers (data, command, sense) point
    // at live buffers of the lengths given, which outlive the call; the kernel writes
    // only within them and into `hdr`.
    unsafe { sg_io(disk.as_raw_fd(), &mut hdr) }?;
    if hdr.status != 0 || hdr.host_status != 0 || hdr.driver_status != 0 || hdr.resid != 0 {
        bail!(
            "SG_IO READ SECTORS at {lba}: status {:#x} host {:#x} driver {:#x} resid {} sense {:02x?}",
            hdr.status,
            hdr.host_status,
            hdr.driver_status,
            hdr.resid,
            &sense[..usize::from(hdr.sb_len_wr).min(sense.len())]
        );
    }
    Ok(())
}
