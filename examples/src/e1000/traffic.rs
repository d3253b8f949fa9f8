//! Test traffic between two NICs on one network: send numbered frames from one, take
//! them in at the other, and check every one byte for byte and in order.

use std::time::{Duration, Instant};

use super::frame::{FrameSpec, MacAddress, Received};
use super::E1000;
use crate::error::{DriverError, Result};
use crate::stop;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficConfig {
    /// Frames to send.
    pub frames: u64,
    /// Bytes per frame without CRC (60..=1514).
    pub frame_len: usize,
    /// Frames per TDT write (and per RDT write on the receiving side).
    pub batch: usize,
    /// How long the receiver may see nothing before the run fails.
    pub idle_timeout: Duration,
}

impl Default for TrafficConfig {
    fn default() -> TrafficConfig {
        TrafficConfig {
            frames: 1000,
            frame_len: 60,
            batch: 32,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// What a checked run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficReport {
    /// Frames sent.
    pub sent: u64,
    /// This run's frames received, each intact and in order.
    pub received: u64,
    /// Test frames of earlier runs that arrived late (skipped).
    pub stale: u64,
    /// Other frames that reached the receiver (skipped).
    pub foreign: u64,
    /// From the arrival of the first frame (which waits for the path to open) to the
    /// last frame checked and every frame's transmission completed.
    pub elapsed: Duration,
    /// Interrupts the sender serviced.
    pub tx_interrupts: u64,
    /// Interrupts the receiver serviced.
    pub rx_interrupts: u64,
}

/// What a transmit-only run saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmitReport {
    /// Frames sent, all of them completed by the NIC.
    pub sent: u64,
    /// From the first frame queued to the last completion.
    pub elapsed: Duration,
}

impl TransmitReport {
    /// Frames per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// A run id that differs between runs, so late frames of an earlier run are told
/// apart from this one's.
pub fn new_run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
    nanos ^ std::process::id().rotate_left(16)
}

fn check_config(nic: &E1000, config: &TrafficConfig) -> Result<()> {
    let reason = if !(super::frame::MIN_FRAME..=super::ring::MAX_FRAME).contains(&config.frame_len)
    {
        format!(
            "frames of {} bytes: use {}..={} bytes",
            config.frame_len,
            super::frame::MIN_FRAME,
            super::ring::MAX_FRAME
        )
    } else if config.batch == 0 || config.batch >= nic.tx.len() {
        format!(
            "batches of {}: use 1..{} (the transmit ring's size)",
            config.batch,
            nic.tx.len()
        )
    } else {
        return Ok(());
    };
    Err(DriverError::Request {
        device: nic.name().into(),
        reason,
    })
}

/// Sends `config.frames` frames from `tx` to `rx` and checks each one as it arrives:
/// addresses, length, sequence (in order, none missing) and every payload byte.
///
/// The first frame goes alone and must arrive before the rest are sent: it proves the
/// path, and waits out a receiver that is not taking frames yet (QEMU's e1000 holds
/// frames back for a second after RCTL is written). After that, at most one receive
/// ring's worth of frames is in flight, so the receiver never has to drop one.
pub fn send_and_check(
    tx: &mut E1000,
    rx: &mut E1000,
    config: &TrafficConfig,
) -> Result<TrafficReport> {
    check_config(tx, config)?;
    let spec = FrameSpec {
        dst: rx.mac(),
        src: tx.mac(),
        run: new_run_id(),
        len: config.frame_len,
    };
    let window = (rx.rx.len() - 1) as u64;
    let mut report = TrafficReport::default();
    let mut frames: Vec<Vec<u8>> = vec![Vec::with_capacity(config.frame_len); config.batch];
    let mut started = Instant::now();
    while report.received < config.frames {
        if stop::requested() {
            return Err(DriverError::Interrupted {
                device: tx.name().into(),
            });
        }
        let in_flight = report.sent - report.received;
        let allowed = if report.received == 0 { 1 } else { window };
        let want = (config.frames - report.sent)
            .min(allowed.saturating_sub(in_flight))
            .min(config.batch as u64) as usize;
        if want > 0 {
            let want = want.min(tx.tx_free()?);
            for (i, frame) in frames.iter_mut().take(want).enumerate() {
                spec.build(report.sent + i as u64, frame);
            }
            report.sent += tx.send(frames.iter().take(want).map(Vec::as_slice))? as u64;
        }
        let rx_name = rx.name().to_string();
        let taken = rx.receive(config.batch, |frame, status| {
            let bad = |detail: String| DriverError::Verify {
                device: rx_name.clone(),
                detail,
            };
            if !status.end_of_packet || status.errors != 0 {
                return Err(bad(format!(
                    "frame {} arrived with descriptor errors {:#04x}, end of packet {}",
                    report.received, status.errors, status.end_of_packet
                )));
            }
            match spec.check(frame).map_err(bad)? {
                Received::Ours(seq) if seq == report.received => {
                    report.received += 1;
                    if seq == 0 {
                        started = Instant::now();
                    }
                }
                Received::Ours(seq) => {
                    return Err(bad(format!(
                        "frame {seq} arrived when frame {} was due: frames lost or reordered",
                        report.received
                    )))
                }
                Received::Stale => report.stale += 1,
                Received::Foreign => report.foreign += 1,
            }
            Ok(())
        })?;
        let waiting_for_receiver =
            report.sent == config.frames || report.sent - report.received >= allowed;
        if taken == 0 && waiting_for_receiver && !rx.wait_rx(config.idle_timeout)? {
            return Err(DriverError::Timeout {
                device: rx.name().into(),
                what: format!(
                    "frame {} of {} from {} ({} sent)",
                    report.received,
                    config.frames,
                    tx.name(),
                    report.sent
                ),
                waited: config.idle_timeout,
            });
        }
    }
    tx.wait_tx_done(config.idle_timeout)?;
    report.elapsed = started.elapsed();
    report.tx_interrupts = tx.interrupts();
    report.rx_interrupts = rx.interrupts();
    Ok(report)
}

/// Sends `config.frames` test frames to `dst` as fast as the NIC takes them, and waits
/// until the NIC has sent the last one. Nothing is received or checked: this measures
/// the transmit path alone.
pub fn transmit(tx: &mut E1000, dst: MacAddress, config: &TrafficConfig) -> Result<TransmitReport> {
    check_config(tx, config)?;
    let spec = FrameSpec {
        dst,
        src: tx.mac(),
        run: new_run_id(),
        len: config.frame_len,
    };
    let mut frames: Vec<Vec<u8>> = vec![Vec::with_capacity(config.frame_len); config.batch];
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < config.frames {
        if stop::requested() {
            return Err(DriverError::Interrupted {
                device: tx.name().into(),
            });
        }
        let want = ((config.frames - sent) as usize).min(config.batch);
        let want = want.min(tx.tx_free()?);
        if want == 0 {
            tx.wait_tx_space(config.idle_timeout)?;
            continue;
        }
        for (i, frame) in frames.iter_mut().take(want).enumerate() {
            spec.build(sent + i as u64, frame);
        }
        sent += tx.send(frames.iter().take(want).map(Vec::as_slice))? as u64;
    }
    tx.wait_tx_done(config.idle_timeout)?;
    Ok(TransmitReport {
        sent,
        elapsed: started.elapsed(),
    })
}
