//! `uml-probe`: timings taken inside a User-Mode Linux guest for `integration/rig bench
//! uml`. UML's busybox has no sub-second clock, so the rig copies this static binary
//! into UML's root (/bin/uml-probe). Each command prints one `uml-probe:` line of
//! `key=value` fields that the bench on the rig side parses.
//!
//! ```text
//! uml-probe read-file PATH COUNT   open+read+close PATH COUNT times: µs per read
//! uml-probe read-disk DEV BYTES [BLOCK]
//!                                  O_DIRECT sequential reads of DEV (default 64 KiB blocks): MB/s
//! ```
//!
//! Reading an e1000e's `statistics/rx_bytes` makes the driver read its ~60 statistics
//! registers (MMIO reads through the served or direct path); reading its `mtu` makes
//! none. The difference per read, divided by the MMIO reads per statistics read, is one
//! MMIO read's latency as the guest sees it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::Instant;

/// O_DIRECT wants buffers, offsets and lengths aligned to the logical block size; a
/// page covers every disk the rig has.
const ALIGN: usize = 4096;
/// The default read size.
const BLOCK: usize = 64 * 1024;

const USAGE: &str = "usage: uml-probe read-file PATH COUNT | read-disk DEV BYTES [BLOCK]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["read-file", path, count] => count
            .parse()
            .map_err(|_| format!("COUNT {count:?} is not a number"))
            .and_then(|count| read_file(path, count)),
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
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(line) => {
            println!("uml-probe: {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uml-probe: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn number(text: &str, what: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a number"))
}

fn read_file(path: &str, count: u32) -> Result<String, String> {
    if count == 0 {
        return Err("COUNT must be at least 1".into());
    }
    let mut buf = [0u8; 256];
    let mut last = 0;
    let started = Instant::now();
    for _ in 0..count {
        let mut file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
        last = file.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(count);
    let value = String::from_utf8_lossy(&buf[..last]).trim().to_string();
    Ok(format!(
        "read-file path={path} count={count} us_per_read={us:.3} value={value}"
    ))
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
    Ok(format!(
        "read-disk dev={dev} block={block} bytes={done} seconds={secs:.6} mb_per_s={:.3}",
        done as f64 / secs / 1e6
    ))
}
