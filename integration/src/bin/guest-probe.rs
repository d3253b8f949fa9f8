//! `guest-probe`: timings taken inside a guest for the rig's benches: a User-Mode Linux
//! guest (`integration/rig bench uml`; the rig copies it into UML's root as
//! /bin/guest-probe) and the nested QEMU guest (`integration/rig bench vfio_user`; the
//! bench puts it into that guest's initramfs). Their busybox has no sub-second clock,
//! hence this static binary. Each command prints one `guest-probe:` line of
//! `key=value` fields that the bench on the rig side parses.
//!
//! ```text
//! guest-probe read-pair A B COUNT ROUNDS
//!                                  COUNT reads of file A, then of B, ROUNDS times: µs per
//!                                  read of each and of A minus B (medians over rounds)
//! guest-probe read-disk DEV BYTES [BLOCK]
//!                                  O_DIRECT sequential reads of DEV (default 64 KiB blocks): MB/s,
//!                                  and the requests UML's block layer sent the disk and
//!                                  their total time from issue to completion
//! guest-probe mmio-read ADDRESS COUNT ROUNDS
//!                                  COUNT 32-bit reads of the device register at physical
//!                                  ADDRESS (through /dev/mem), ROUNDS times: µs per read
//!                                  (median and lowest over rounds) and the value read
//! ```
//!
//! Reading an e1000e's `statistics/rx_bytes` makes the driver read its statistics
//! registers (MMIO reads through the served or direct path); reading its `mtu` makes
//! none. The difference per read, divided by the MMIO reads per statistics read, is one
//! MMIO read's latency as the guest sees it. Each file is opened once and re-read at
//! offset 0 (sysfs shows the attribute afresh), and the two alternate round by round,
//! so UML's syscall cost and any drift cancel out of the difference.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::Instant;

/// O_DIRECT wants buffers, offsets and lengths aligned to the logical block size; a
/// page covers every disk the rig has.
const ALIGN: usize = 4096;
/// The default read size.
const BLOCK: usize = 64 * 1024;

const USAGE: &str = "usage: guest-probe read-pair A B COUNT ROUNDS | read-disk DEV BYTES [BLOCK] \
                     | mmio-read ADDRESS COUNT ROUNDS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["read-pair", a, b, count, rounds] => number(count, "COUNT")
            .and_then(|count| read_pair(a, b, count, number(rounds, "ROUNDS")?)),
        ["read-disk", dev, bytes] => number(bytes, "BYTES").and_then(|b| read_disk(dev, b, BLOCK)),
        ["read-disk", dev, bytes, block] => number(bytes, "BYTES").and_then(|b| {
            let block = number(block, "BLOCK")? as usize;
            if block == 0 || !block.is_multiple_of(ALIGN) {
                return Err(format!(
                    "BLOCK {block} must be a positive multiple of {ALIGN}"
                ));
            }
            read_disk(dev, b, block)
        }),
        ["mmio-read", address, count, rounds] => number(address, "ADDRESS")
            .and_then(|a| mmio_read(a, number(count, "COUNT")?, number(rounds, "ROUNDS")?)),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(line) => {
            println!("guest-probe: {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guest-probe: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A decimal number, or a hexadecimal one after `0x`.
fn number(text: &str, what: &str) -> Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("{what} {text:?} is not a number"))
}

/// µs per read of `file` over `count` reads at offset 0.
fn time_reads(file: &File, path: &str, count: u64) -> Result<f64, String> {
    let mut buf = [0u8; 256];
    let started = Instant::now();
    for _ in 0..count {
        file.read_at(&mut buf, 0)
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / count as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn read_pair(a: &str, b: &str, count: u64, rounds: u64) -> Result<String, String> {
    if count == 0 || rounds == 0 {
        return Err("COUNT and ROUNDS must be at least 1".into());
    }
    let open = |p: &str| File::open(p).map_err(|e| format!("{p}: {e}"));
    let (fa, fb) = (open(a)?, open(b)?);
    let (mut ta, mut tb, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so a drift within a round favours neither.
        let (x, y) = if round % 2 == 0 {
            let x = time_reads(&fa, a, count)?;
            (x, time_reads(&fb, b, count)?)
        } else {
            let y = time_reads(&fb, b, count)?;
            (time_reads(&fa, a, count)?, y)
        };
        ta.push(x);
        tb.push(y);
        diff.push(x - y);
    }
    Ok(format!(
        "read-pair a={a} b={b} count={count} rounds={rounds} a_us={:.3} b_us={:.3} diff_us={:.3}",
        median(ta),
        median(tb),
        median(diff)
    ))
}

/// Reads completed and milliseconds spent on them (issue to completion, summed over
/// requests) by the disk `dev`, from /sys/block/NAME/stat.
fn disk_reads(dev: &str) -> Result<(u64, u64), String> {
    let name = dev.rsplit('/').next().unwrap_or(dev);
    let path = format!("/sys/block/{name}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| {
            f.parse()
                .map_err(|_| format!("{path}: {f:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    match fields[..] {
        [reads, _merged, _sectors, ms, ..] => Ok((reads, ms)),
        _ => Err(format!("{path}: {} fields, want at least 4", fields.len())),
    }
}

fn read_disk(dev: &str, bytes: u64, block: usize) -> Result<String, String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    // An aligned window inside a plain allocation: no allocator tricks needed.
    let mut storage = vec![0u8; block + ALIGN];
    let skip = storage.as_ptr().align_offset(ALIGN);
    let buf = &mut storage[skip..skip + block];
    let mut done: u64 = 0;
    let (reads_before, ms_before) = disk_reads(dev)?;
    let started = Instant::now();
    while done < bytes {
        let n = file
            .read(buf)
            .map_err(|e| format!("{dev} at byte {done}: {e}"))?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    let (reads_after, ms_after) = disk_reads(dev)?;
    Ok(format!(
        "read-disk dev={dev} block={block} bytes={done} seconds={secs:.6} mb_per_s={:.3} \
         requests={} request_ms={}",
        done as f64 / secs / 1e6,
        reads_after.saturating_sub(reads_before),
        ms_after.saturating_sub(ms_before)
    ))
}

/// The page of physical memory around a device register, mapped from /dev/mem.
struct DevMemPage {
    base: *mut libc::c_void,
    len: usize,
}

impl DevMemPage {
    /// Maps the page holding `address` (shared, read-only: every read reaches the
    /// device).
    fn map(address: u64) -> Result<Self, String> {
        let file = File::open("/dev/mem").map_err(|e| format!("/dev/mem: {e}"))?;
        let len = 4096usize;
        let offset = address & !(len as u64 - 1);
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| format!("address {address:#x} out of range"))?;
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), so nothing of
        // this process is replaced; the result is checked before use and unmapped in
        // Drop. Its contents are only ever read with read_volatile.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "mmap of /dev/mem at {offset:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self { base, len })
    }

    /// One 32-bit read of the register at `address` (in this page, 4-byte aligned).
    fn read_u32(&self, address: u64) -> u32 {
        let at = (address as usize) & (self.len - 1) & !3;
        // SAFETY: `at` is 4-byte aligned and at most len - 4 bytes into the live,
        // page-aligned mapping; a volatile read of device memory has no Rust aliasing.
        unsafe { self.base.cast::<u8>().add(at).cast::<u32>().read_volatile() }
    }
}

impl Drop for DevMemPage {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are the mapping made in `map`, unmapped once here.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn mmio_read(address: u64, count: u64, rounds: u64) -> Result<String, String> {
    if count == 0 || rounds == 0 {
        return Err("COUNT and ROUNDS must be at least 1".into());
    }
    if !address.is_multiple_of(4) {
        return Err(format!("ADDRESS {address:#x} is not 4-byte aligned"));
    }
    let page = DevMemPage::map(address)?;
    let mut value = 0;
    let mut per_read = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..count {
            value = page.read_u32(address);
        }
        per_read.push(started.elapsed().as_secs_f64() * 1e6 / count as f64);
    }
    let lowest = per_read.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(format!(
        "mmio-read address={address:#x} count={count} rounds={rounds} value={value:#010x} \
         us={:.3} lowest_us={lowest:.3}",
        median(per_read)
    ))
}
