//! `integration/rig bench uml`: a device served to User-Mode Linux by udrv's frontend
//! against the direct paths, on the same devices in the same boot.
//!
//! - NIC (the e1000e): against UML's own VFIO driver (`vfio_uml.device=BDF`), which does
//!   a pread/pwrite on the VFIO device fd per register access. MMIO read latency and
//!   ping RTT to the rig kernel's e1000 A across QEMU's hub, served twice: by a worker
//!   woken by UML's kicks (the default), and by a worker polling the command queue on a
//!   CPU of its own ([`WorkerOptions::poll`]). With two CPUs (`UDRV_RIG_SMP=2
//!   integration/rig bench uml`) every UML run, direct or served, is pinned to CPU 0,
//!   the polling worker to CPU 1, and the worker woken by kicks to CPU 0 (it preempts
//!   UML there, as on one CPU), and the polling worker's runs alternate with direct
//!   ones, [`ALTERNATIONS`] each, their medians compared (both paths drift with the
//!   host's load over a boot). With one CPU the polling worker is not measured: it
//!   would only delay the UML it waits for.
//! - Disk (ich9-ahci): a bench of its own, against UML's ubd on the same disk
//!   (uml_bench_disk.rs).
//!
//! MMIO read latency is measured inside UML (integration/guest/uml/bench.sh, the
//! `guest-probe` binary): reading the e1000e's `statistics/rx_bytes` makes the driver read
//! its statistics registers, reading `mtu` makes no device access. The difference per
//! read, divided by the MMIO reads one statistics read makes (counted by the frontend
//! over two served runs of different lengths), is one MMIO read as the guest sees it.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vpci::frontend::WorkerOptions;

use super::uml::{ensure_clean_boot, nonce, run_uml_on, UmlRun};
use super::uml_served::{bring_up_peer, Served, NO_THROTTLING, PEER};
use crate::harness::{rig_tests, RigTest};
use crate::rig;

/// Reads of each file per round inside UML (integration/guest/uml/bench.sh runs 9
/// rounds).
const READS: u32 = 300;
const ROUNDS: u32 = 9;
/// The polling worker's window: longer than the gaps between the MMIO reads of one
/// statistics read, and between statistics reads.
const POLL_WINDOW: Duration = Duration::from_millis(2);

pub fn benches() -> Vec<RigTest> {
    rig_tests![uml_bench: served_vs_direct (900 s)]
}

/// What the net task measured in one UML run.
#[derive(Debug)]
struct NetFigures {
    /// µs per read of statistics/rx_bytes, of mtu, and the per-round difference
    /// (medians over rounds).
    stats_us: f64,
    mtu_us: f64,
    diff_us: f64,
    /// Average ping RTT in ms.
    rtt_ms: f64,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// A `key=value` field of the first `guest-probe: KIND ...` line whose `select` field
/// has `value` (paths `a`, `b`: end with it; others: equal it).
fn probe_value(run: &UmlRun, kind: &str, select: (&str, &str), key: &str) -> Result<f64> {
    let (field_name, want) = select;
    let selected = |l: &&str| {
        field(l, field_name).is_some_and(|v| match field_name {
            "path" | "a" | "b" => v.ends_with(want),
            _ => v == want,
        })
    };
    run.output
        .lines()
        .filter_map(|l| l.strip_prefix("guest-probe: "))
        .filter(|l| l.starts_with(kind))
        .find(selected)
        .and_then(|l| field(l, key))
        .and_then(|v| v.parse().ok())
        .with_context(|| {
            format!(
                "no `{kind}` {key} for {field_name}={want} in UML's output:\n{}",
                run.tail()
            )
        })
}

/// `round-trip min/avg/max = a/b/c ms` → b.
fn ping_average(run: &UmlRun) -> Result<f64> {
    let line = run
        .output
        .lines()
        .find_map(|l| l.strip_prefix("uml: ping round-trip"))
        .with_context(|| format!("no ping summary in UML's output:\n{}", run.tail()))?;
    line.split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable ping summary {line:?}"))
}

fn net_figures(run: &UmlRun) -> Result<NetFigures> {
    Ok(NetFigures {
        stats_us: probe_value(run, "read-pair", ("a", "/rx_bytes"), "a_us")?,
        mtu_us: probe_value(run, "read-pair", ("a", "/rx_bytes"), "b_us")?,
        diff_us: probe_value(run, "read-pair", ("a", "/rx_bytes"), "diff_us")?,
        rtt_ms: ping_average(run)?,
    })
}

/// Where the net runs put UML and the served workers. With two CPUs: UML on CPU 0, the
/// worker woken by kicks beside it (it preempts UML there, as on one CPU), the polling
/// worker on CPU 1. With one, anywhere.
#[derive(Clone, Copy, Debug)]
struct Placement {
    uml: Option<usize>,
    polling_worker: Option<usize>,
}

impl Placement {
    fn of_this_rig() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            Placement {
                uml: Some(0),
                polling_worker: Some(1),
            }
        } else {
            Placement {
                uml: None,
                polling_worker: None,
            }
        }
    }
}

/// Attempts at one net run. With the worker on another CPU than UML, UML 7.2 sometimes
/// stalls for tens of seconds when the e1000e's link comes up after `ip link set up`
/// (busy, with no device access; its e1000e watchdog never runs), and the link stays
/// down: such a run is repeated, and says so.
const NET_ATTEMPTS: u32 = 3;

/// A net run whose e1000e link came up, and the MMIO reads `served` served during it.
fn net_run(
    cpu: Option<usize>,
    reads: u32,
    arg: &str,
    served: Option<&Served>,
) -> Result<(UmlRun, u64)> {
    let mmio_reads = || served.map_or(0, |s| s.status().mmio_reads);
    let mut failure = None;
    for attempt in 1..=NET_ATTEMPTS {
        let before = mmio_reads();
        let why = match bench_run_on(cpu, "net", reads, &[arg]) {
            Ok(run)
                if run
                    .output
                    .lines()
                    .any(|l| l.starts_with("uml: ") && l.ends_with(" carrier 1")) =>
            {
                return Ok((run, mmio_reads() - before));
            }
            Ok(run) => anyhow::anyhow!(
                "the e1000e's link did not come up in UML; console:\n{}",
                run.tail()
            ),
            Err(e) => e,
        };
        println!(
            "note: net run attempt {attempt} of {NET_ATTEMPTS} failed ({}); repeating it",
            why.to_string().lines().next().unwrap_or_default()
        );
        failure = Some(why);
    }
    Err(failure
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context(format!("{NET_ATTEMPTS} net runs in UML failed")))
}

/// Runs of the polling worker, each followed by a direct run, with two CPUs.
const ALTERNATIONS: usize = 3;

/// One net run served by a worker polling as `polling` says, UML on `uml`.
fn polled_run(polling: WorkerOptions, uml: Option<usize>) -> Result<NetFigures> {
    let nic = Served::start_with(rig::E1000E, "bench-e1000e-poll", polling)?;
    let polled = net_figures(&net_run(uml, READS, &nic.arg, Some(&nic))?.0)?;
    let status = nic.status();
    nic.stop()?;
    let commands = status.config_accesses + status.mmio_reads + status.mmio_writes;
    println!(
        "served (udrv UML frontend, worker polling {} µs): {polled:?}; {} of {commands} \
         commands found by polling, {:.2} commands per batch",
        polling.poll.as_micros(),
        status.polled_commands,
        commands as f64 / status.command_batches.max(1) as f64,
    );
    Ok(polled)
}

/// The median of `v` (the upper middle of an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each figure's median over `runs`.
fn median_figures(runs: &[NetFigures]) -> NetFigures {
    let of = |f: fn(&NetFigures) -> f64| median(runs.iter().map(f).collect());
    NetFigures {
        stats_us: of(|f| f.stats_us),
        mtu_us: of(|f| f.mtu_us),
        diff_us: of(|f| f.diff_us),
        rtt_ms: of(|f| f.rtt_ms),
    }
}

/// Boots UML, pinned to CPU `cpu` when given, with the bench task and `args`; checks
/// it booted and the task succeeded.
fn bench_run_on(cpu: Option<usize>, bench: &str, reads: u32, args: &[&str]) -> Result<UmlRun> {
    let nonce = nonce();
    let bench_arg = format!("udrv_uml_bench={bench}");
    let count_arg = format!("udrv_uml_count={reads}");
    let mut all = vec![bench_arg.as_str(), count_arg.as_str(), NO_THROTTLING];
    all.extend_from_slice(args);
    let run = run_uml_on(cpu, &nonce, Some("bench"), &all)?;
    ensure_clean_boot(&run, &nonce)?;
    ensure!(
        run.output.lines().any(|l| l == "uml: task bench exit 0"),
        "the bench task failed in UML; console:\n{}",
        run.tail()
    );
    Ok(run)
}

fn served_vs_direct() -> Result<()> {
    let peer = bring_up_peer()?;
    println!("rig side: {peer} ({}) holds {PEER}/24", rig::E1000_A);
    let place = Placement::of_this_rig();
    match (place.uml, place.polling_worker) {
        (Some(uml), Some(worker)) => println!(
            "{} CPUs: every UML on CPU {uml} (vfio_uml's, and the served ones beside the \
             worker woken by kicks), the polling worker alone on CPU {worker}",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        _ => println!(
            "one CPU: UML and the served worker share it; the polling worker is not \
             measured (it needs a CPU of its own: UDRV_RIG_SMP=2; sharing UML's, it \
             only delays UML, and UML 7.2 stalls at link-up)"
        ),
    }

    // Direct: UML's vfio_uml on the e1000e.
    rig::bind_to_vfio(rig::E1000E)?;
    let direct_arg = format!("vfio_uml.device={}", rig::E1000E);
    let direct_run = || -> Result<NetFigures> {
        let direct = net_figures(&net_run(place.uml, READS, &direct_arg, None)?.0)?;
        println!("direct (vfio_uml): {direct:?}");
        Ok(direct)
    };
    let mut directs = vec![direct_run()?];

    // Served, the worker woken by UML's kicks (the default): the same task over udrv's
    // frontend, twice with different read counts to count the MMIO reads one
    // statistics read makes.
    let woken = WorkerOptions {
        poll: Duration::ZERO,
        cpu: place.uml,
    };
    let nic = Served::start_with(rig::E1000E, "bench-e1000e", woken)?;
    let (_, short_reads) = net_run(place.uml, READS / 4, &nic.arg, Some(&nic))?;
    let (long, long_reads) = net_run(place.uml, READS, &nic.arg, Some(&nic))?;
    nic.stop()?;
    let extra = long_reads.saturating_sub(short_reads);
    let reads_per_stat = extra as f64 / f64::from((READS - READS / 4) * ROUNDS);
    ensure!(
        reads_per_stat >= 1.0,
        "statistics reads made {reads_per_stat:.2} MMIO reads each (short run \
         {short_reads}, long run {long_reads}): the latency figure would be meaningless",
    );
    let served = net_figures(&long)?;
    println!("served (udrv UML frontend, worker woken by kicks): {served:?}");
    println!("MMIO reads per statistics read: {reads_per_stat:.1}");

    // Served, the worker polling the command queue for POLL_WINDOW after each command,
    // on a CPU of its own; in runs alternating with direct ones, since both paths
    // drift with the host's load over a boot.
    let polled = match place.polling_worker {
        Some(cpu) => {
            let polling = WorkerOptions {
                poll: POLL_WINDOW,
                cpu: Some(cpu),
            };
            let mut polleds = Vec::new();
            for run in 0..ALTERNATIONS {
                if run > 0 {
                    directs.push(direct_run()?);
                }
                polleds.push(polled_run(polling, place.uml)?);
            }
            Some(median_figures(&polleds))
        }
        None => None,
    };
    let direct = median_figures(&directs);
    let mmio = |f: &NetFigures| f.diff_us / reads_per_stat;
    let (mmio_direct, mmio_served) = (mmio(&direct), mmio(&served));
    let mmio_polled = polled.as_ref().map(mmio);
    ensure!(
        mmio_direct > 0.0 && mmio_served > 0.0 && mmio_polled.is_none_or(|m| m > 0.0),
        "statistics reads were not slower than mtu reads (direct {direct:?}, served \
         {served:?}, polling {polled:?}): no MMIO cost to measure"
    );

    let mut paths = vec![("direct", &direct), ("served, woken", &served)];
    paths.extend(polled.as_ref().map(|p| ("served, polling", p)));
    for (path, f) in paths {
        println!(
            "{path}: statistics read {:.1} µs, mtu read {:.1} µs (medians of {ROUNDS} rounds of {READS})",
            f.stats_us, f.mtu_us
        );
    }
    println!("ratios, served / direct:");
    let mut workers = Vec::new();
    workers.extend(
        mmio_polled
            .zip(polled.as_ref())
            .map(|(m, p)| ("polling worker", m, p)),
    );
    workers.push(("worker woken by kicks", mmio_served, &served));
    for (how, mmio_served, served) in workers {
        println!(
            "  MMIO read latency  {mmio_served:>8.2} µs / {mmio_direct:>8.2} µs = {:.2} (goal <= 2.0; {how})",
            mmio_served / mmio_direct
        );
        println!(
            "  ping RTT           {:>8.3} ms / {:>8.3} ms = {:.2} (goal <= 1.5; {how})",
            served.rtt_ms,
            direct.rtt_ms,
            served.rtt_ms / direct.rtt_ms
        );
    }
    Ok(())
}
