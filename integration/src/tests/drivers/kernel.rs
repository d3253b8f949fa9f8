//! The kernel's own drivers on the same devices, the baselines of the benchmarks: an
//! e1000 interface sending through a packet socket, block devices read with O_DIRECT,
//! and ATA PIO reads through SG_IO.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use udrv_examples::disk_pattern;
use udrv_examples::e1000::frame::FrameSpec;

use super::packet_socket::PacketSocket;
use super::sg_io;
use crate::rig;

/// The network interface the kernel made for `bdf`.
pub fn interface_of(bdf: &str) -> Result<String> {
    rig::wait_for(|| {
        let dir = format!("/sys/bus/pci/devices/{bdf}/net");
        let name = std::fs::read_dir(&dir)
            .with_context(|| format!("{dir}: {bdf} has no network interface"))?
            .next()
            .with_context(|| format!("{dir} is empty"))??
            .file_name();
        Ok(name.to_string_lossy().into_owned())
    })
}

/// Brings `ifname` up without IPv6 (whose own packets would count as sent) and waits
/// for the carrier.
pub fn bring_up(ifname: &str) -> Result<()> {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
    rig::sh(&format!("ip link set dev {ifname} up"))?;
    rig::wait_for(|| {
        let carrier = std::fs::read_to_string(format!("/sys/class/net/{ifname}/carrier"))?;
        ensure!(carrier.trim() == "1", "{ifname}: no carrier");
        Ok(())
    })
}

/// Frames the interface has sent, as the driver counts completions.
fn tx_packets(ifname: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{ifname}/statistics/tx_packets");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()?)
}

/// Sends `frames` test frames built by `spec` through a packet socket on `ifname`, and
/// waits until the driver has completed all of them. Returns the time from the first
/// send to the last completion.
pub fn transmit(ifname: &str, spec: &FrameSpec, frames: u64) -> Result<Duration> {
    let socket = PacketSocket::open(ifname)?;
    let before = tx_packets(ifname)?;
    let mut frame = Vec::new();
    let started = Instant::now();
    for seq in 0..frames {
        spec.build(seq, &mut frame);
        while !socket.send(&frame)? {
            std::thread::yield_now();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while tx_packets(ifname)? < before + frames {
        ensure!(
            Instant::now() < deadline,
            "{ifname}: only {} of {frames} frames completed",
            tx_packets(ifname)? - before
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(started.elapsed())
}

/// The block device of the disk of `sectors` sectors behind `bdf`, once it appears.
pub fn block_device_of(bdf: &str, sectors: u64) -> Result<PathBuf> {
    let name = rig::wait_for(|| rig::block_device(bdf, sectors))?;
    Ok(PathBuf::from(format!("/dev/{name}")))
}

/// A buffer aligned for O_DIRECT, inside a larger Vec.
struct Aligned {
    storage: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let storage = vec![0u8; len + 4096];
        let at = storage.as_ptr().align_offset(4096);
        Aligned { storage, at, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.storage[self.at..self.at + self.len]
    }
}

/// Reads the first `sectors` sectors of `dev` with O_DIRECT in `chunk`-byte reads,
/// `passes` times; the first pass is checked against the disk pattern. Returns bytes
/// read and the time spent reading.
pub fn read_direct(
    dev: &PathBuf,
    sectors: u64,
    chunk: usize,
    passes: u32,
) -> Result<(u64, Duration)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("opening {} with O_DIRECT", dev.display()))?;
    let mut buf = Aligned::new(chunk);
    let total = sectors * 512;
    let mut elapsed = Duration::ZERO;
    for pass in 0..passes {
        let mut at = 0u64;
        while at < total {
            let n = chunk.min((total - at) as usize);
            let data = &mut buf.bytes()[..n];
            let started = Instant::now();
            file.read_exact_at(data, at)
                .with_context(|| format!("reading {} at {at}", dev.display()))?;
            elapsed += started.elapsed();
            if pass == 0 {
                disk_pattern::verify(at / 512, data).map_err(anyhow::Error::msg)?;
            }
            at += n as u64;
        }
    }
    Ok((total * u64::from(passes), elapsed))
}

/// Reads `sectors` sectors from the start of `dev` by PIO through SG_IO, `per_command`
/// sectors per READ SECTORS, checking the pattern. Returns bytes read and the time.
pub fn read_pio(dev: &PathBuf, sectors: u64, per_command: usize) -> Result<(u64, Duration)> {
    let file = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut buf = vec![0u8; per_command * 512];
    let mut elapsed = Duration::ZERO;
    let mut lba = 0u64;
    while lba < sectors {
        let n = per_command.min((sectors - lba) as usize);
        let data = &mut buf[..n * 512];
        let started = Instant::now();
        sg_io::read_sectors_pio(&file, lba, data)?;
        elapsed += started.elapsed();
        disk_pattern::verify(lba, data).map_err(anyhow::Error::msg)?;
        lba += n as u64;
    }
    Ok((sectors * 512, elapsed))
}
