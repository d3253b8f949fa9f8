//! `udrv detach`: give claimed devices back to their original drivers.

use std::fmt::Write as _;

use anyhow::{anyhow, Context};
use clap::Args;
use udriver::bind::KernelSysfs;
use udriver::claim::{Claimer, DetachReport, DetachTarget, Modprobe, RestoreHow};
use udriver::pci::PciAddress;
use vpci::service::control::DetachReply;
use vpci::service::{ClientError, ControlClient, Reply, Request};

use crate::list::{write_stdout, HostArgs};
use crate::serve::ControlArgs;

/// Give devices back to the drivers they had before `udrv attach`.
///
/// For each device recorded in the state file: restore driver_override, unbind it from
/// vfio-pci and bind the original driver (through its bind file, else drivers_probe),
/// then drop the record. A claim interrupted half-way (udrv killed) is completed
/// backwards the same way; after a reboot a device already back on its driver only
/// loses its record. A device on vfio-pci that udrv did not claim is left alone unless
/// --force. Needs root.
///
/// When `udrv serve` runs (on the same state file), it does the detaching: it first
/// stops the frontend of each device it serves (the guest loses the device), then gives
/// the device back.
///
/// Examples:
///   udrv detach 0000:00:03.0
///   udrv detach --all
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DetachArgs {
    /// The devices, as 0000:00:03.0 or 00:03.0.
    #[arg(
        value_name = "BDF",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub devices: Vec<PciAddress>,
    /// Every device in the state file.
    #[arg(long)]
    pub all: bool,
    /// Also release devices on vfio-pci that udrv did not claim (to whatever driver the
    /// kernel picks).
    #[arg(long)]
    pub force: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs `udrv detach`.
pub fn run(args: DetachArgs) -> anyhow::Result<()> {
    if let Some(reply) = ask_daemon(&args)? {
        return print_daemon_reply(&reply, &args);
    }
    let target = if args.all {
        DetachTarget::All
    } else {
        DetachTarget::Devices(args.devices.clone())
    };
    let state = args.host.state_path();
    let mut writer = KernelSysfs;
    let mut modules = Modprobe;
    let report = Claimer::new(args.host.root(), &mut writer, &mut modules, state)
        .detach(&target, args.force)?;
    let text = if args.json {
        render_json(&report)?
    } else {
        render_text(&report, args.all)
    };
    write_stdout(&text)?;
    if report.failed.is_empty() {
        return Ok(());
    }
    let failures: Vec<String> = report.failed.iter().map(|(_, e)| e.to_string()).collect();
    Err(anyhow!(failures.join("\n")))
}

fn how(how: &RestoreHow) -> &'static str {
    match how {
        RestoreHow::Rebound => "given back",
        RestoreHow::AlreadyThere => "already back (record dropped)",
        RestoreHow::DeviceGone => "no longer present (record dropped)",
        RestoreHow::Released => "released (not claimed by udrv)",
    }
}

fn render_text(report: &DetachReport, all: bool) -> String {
    let mut out = String::new();
    for r in report.repaired.iter().chain(&report.restored) {
        let _ = writeln!(
            out,
            "{}: {}: now on {}",
            r.address,
            how(&r.how),
            r.driver.as_deref().unwrap_or("no driver")
        );
    }
    for (address, driver) in &report.not_claimed {
        let _ = writeln!(
            out,
            "{address}: not claimed by udrv (on {}): nothing to do",
            driver.as_deref().unwrap_or("no driver")
        );
    }
    if all && report.restored.is_empty() && report.repaired.is_empty() && report.failed.is_empty() {
        out.push_str("no devices are claimed\n");
    }
    out
}

fn render_json(report: &DetachReport) -> anyhow::Result<String> {
    let restored = |list: &[udriver::claim::Restored]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|r| serde_json::json!({ "address": r.address, "driver": r.driver, "how": how(&r.how) }))
            .collect()
    };
    let value = serde_json::json!({
        "restored": restored(&report.restored),
        "repaired": restored(&report.repaired),
        "not_claimed": report.not_claimed.iter().map(|(a, d)| serde_json::json!({ "address": a, "driver": d })).collect::<Vec<_>>(),
        "failed": report.failed.iter().map(|(a, e)| serde_json::json!({ "address": a, "error": e.to_string() })).collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&value).context("encoding JSON")?;
    text.push('\n');
    Ok(text)
}

/// Has the running `udrv serve` detach, if one runs on this state file. `None`: nobody
/// answers at the control socket, or the service uses another state file (its claims
/// are not these), so the claims are undone here.
fn ask_daemon(args: &DetachArgs) -> anyhow::Result<Option<DetachReply>> {
    let control = args.control.path();
    let mut client = match ControlClient::connect(&control) {
        Ok(client) => client,
        Err(ClientError::NoDaemon { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if args.host.root.is_some() {
        return Ok(None);
    }
    if let Reply::Status(status) = client.request(&Request::Status)? {
        let ours = std::path::absolute(args.host.state_path()).context("resolving --state")?;
        if status.daemon.state != ours {
            return Ok(None);
        }
    }
    match client.request(&Request::Detach {
        devices: args.devices.clone(),
        all: args.all,
        force: args.force,
    })? {
        Reply::Detached(reply) => Ok(Some(reply)),
        other => Err(anyhow!("udrv serve answered a detach with {other:?}")),
    }
}

fn print_daemon_reply(reply: &DetachReply, args: &DetachArgs) -> anyhow::Result<()> {
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(reply).context("encoding JSON")?;
        text.push('\n');
        text
    } else {
        let mut out = String::new();
        for s in &reply.stopped {
            let _ = writeln!(
                out,
                "{}: stopped serving {} ({} guests served)",
                s.address, s.frontend, s.status.guests_served
            );
        }
        for r in reply.repaired.iter().chain(&reply.restored) {
            let _ = writeln!(
                out,
                "{}: given back by udrv serve: now on {}",
                r.address,
                r.driver.as_deref().unwrap_or("no driver")
            );
        }
        for n in &reply.not_claimed {
            let _ = writeln!(
                out,
                "{}: not claimed by udrv (on {}): nothing to do",
                n.address,
                n.driver.as_deref().unwrap_or("no driver")
            );
        }
        if args.all && reply.restored.is_empty() && reply.failed.is_empty() {
            out.push_str("no devices are claimed\n");
        }
        out
    };
    write_stdout(&text)?;
    if reply.failed.is_empty() {
        return Ok(());
    }
    let failures: Vec<String> = reply.failed.iter().map(|f| f.error.clone()).collect();
    Err(anyhow!(failures.join("\n")))
}
