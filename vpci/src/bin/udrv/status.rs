//! `udrv status`: what `udrv serve` serves, and every claim.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use udriver::claim::{ClaimRecord, StateFile};
use vpci::frontend::FrontendStatus;
use vpci::service::control::{DaemonInfo, DeviceFailure, ServedDevice};
use vpci::service::{ClientError, ControlClient, Reply, Request};

use crate::list::{write_stdout, HostArgs};
use crate::serve::ControlArgs;

/// Show the devices `udrv serve` serves (guest connected, access and interrupt
/// counters, the last error) and every claim in the state file.
///
/// Asks the running `udrv serve`; without one, shows the claims from the state file.
///
/// Examples:
///   udrv status
///   udrv status --json | jq '.served[] | {address, guest: .status.guest_connected}'
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct StatusArgs {
    /// Print JSON: {"daemon": null or {pid, uid, control, state, started_at,
    /// keep_claims, upgrades}, "served": [{address, frontend, status, since, recovered}],
    /// "claims": [...], "recovery_failures": [...]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

#[derive(Serialize)]
struct Status {
    daemon: Option<DaemonInfo>,
    served: Vec<ServedDevice>,
    claims: Vec<ClaimRecord>,
    recovery_failures: Vec<DeviceFailure>,
}

fn ask_daemon(control: &Path) -> Result<Option<Status>, ClientError> {
    let mut client = match ControlClient::connect(control) {
        Ok(client) => client,
        Err(ClientError::NoDaemon { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match client.request(&Request::Status)? {
        Reply::Status(s) => Ok(Some(Status {
            daemon: Some(s.daemon),
            served: s.served,
            claims: s.claims,
            recovery_failures: s.recovery_failures,
        })),
        other => Err(ClientError::Protocol(
            vpci::service::control::ProtocolError::BadResponse(format!(
                "status answered with {other:?}"
            )),
        )),
    }
}

/// Runs `udrv status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let control = args.control.path();
    let status = match ask_daemon(&control)? {
        Some(status) => status,
        None => {
            let state = args.host.state_path();
            let claims = StateFile::read(&state)
                .with_context(|| format!("reading the claims in {}", state.display()))?
                .claims;
            Status {
                daemon: None,
                served: Vec::new(),
                claims,
                recovery_failures: Vec::new(),
            }
        }
    };
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&status).context("encoding JSON")?;
        text.push('\n');
        text
    } else {
        render_text(&status, &control)
    };
    write_stdout(&text)
}

fn counters(s: &FrontendStatus) -> String {
    if let Some(v) = &s.vfio_user {
        let client = match v.client {
            Some(c) => format!("client pid {} uid {}", c.pid, c.uid),
            None => "no client".to_string(),
        };
        return format!(
            "{client}  clients {}  msgs {} (errors {})  region r{}/w{}  dma {} maps, {} KiB  irq sets {}  resets {}{}{}",
            v.clients_served,
            v.messages,
            v.error_replies,
            v.region_reads,
            v.region_writes,
            v.dma_mappings,
            v.dma_mapped_bytes / 1024,
            v.irq_sets,
            v.resets,
            if v.derived_intx_signals > 0 {
                format!("  derived intx {}", v.derived_intx_signals)
            } else {
                String::new()
            },
            if v.direct_mmio { "  direct-mmio" } else { "" }
        );
    }
    format!(
        "config {}  mmio r{}/w{}  irqs {}  dma {} KiB",
        s.config_accesses,
        s.mmio_reads,
        s.mmio_writes,
        s.interrupts,
        s.dma_mapped_bytes / 1024
    )
}

fn render_text(status: &Status, control: &Path) -> String {
    let mut out = String::new();
    match &status.daemon {
        Some(d) => {
            let up = uptime(d.started_at);
            let _ = writeln!(
                out,
                "udrv serve: pid {}, up {up}, control {}, state {}{}{}",
                d.pid,
                d.control.display(),
                d.state.display(),
                if d.keep_claims { ", --keep-claims" } else { "" },
                match d.upgrades {
                    0 => String::new(),
                    1 => ", upgraded once".to_string(),
                    n => format!(", upgraded {n} times"),
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "udrv serve: not running (nothing answers at {}); claims from the state file:",
                control.display()
            );
        }
    }
    if status.daemon.is_some() {
        if status.served.is_empty() {
            out.push_str("served: none\n");
        } else {
            out.push_str("served:\n");
        }
        for s in &status.served {
            let guest = if s.status.guest_connected {
                "guest connected"
            } else {
                "waiting for a guest"
            };
            let _ = writeln!(
                out,
                "  {}  {}  {guest} ({} served{})  {}",
                s.address,
                s.frontend,
                s.status.guests_served,
                if s.recovered {
                    ", recovered after a restart"
                } else {
                    ""
                },
                counters(&s.status)
            );
            if let Some(e) = &s.status.last_error {
                let _ = writeln!(out, "      last error: {e}");
            }
        }
    }
    if status.claims.is_empty() {
        out.push_str("claims: none\n");
    } else {
        out.push_str("claims:\n");
    }
    for c in &status.claims {
        let owner = c
            .owner_name
            .clone()
            .unwrap_or_else(|| format!("uid {}", c.owner_uid));
        let group = c
            .iommu_group
            .map_or("no group".to_string(), |g| format!("group {g}"));
        let _ = writeln!(
            out,
            "  {}  was {}  {group}  by {owner}  {}{}",
            c.address,
            c.original_driver.as_deref().unwrap_or("no driver"),
            c.phase,
            c.serve
                .as_deref()
                .map_or(String::new(), |s| format!("  serve {s}"))
        );
    }
    for f in &status.recovery_failures {
        let _ = writeln!(out, "not served after restart: {}: {}", f.address, f.error);
    }
    out
}

fn uptime(started_at: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(started_at);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}
