//! `udrv upgrade`: the running `udrv serve` replaces its program, guests served on.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use vpci::service::control::UpgradeReply;
use vpci::service::{ControlClient, Reply, Request};

use crate::list::write_stdout;
use crate::serve::ControlArgs;

/// Make the running `udrv serve` run a newly installed udrv, without a guest noticing.
///
/// `udrv serve` execs the new program in its own process (same pid, so systemd sees
/// no restart) and hands it, across the exec, everything a served guest depends on:
/// the control and frontend sockets, each connected client's connection, the VFIO
/// container, group and device (so the IOMMU mappings, the device's state and its
/// interrupt wiring stay as they are), each client's DMA table and protocol state.
/// A client waits for its next answer while the new program starts, then carries on.
///
/// Devices served over vfio-user are carried; while a UML frontend is served the
/// upgrade is refused and nothing changes (unserve it first). If the new program
/// cannot be run, the old one goes on and the error says why.
///
/// Examples:
///   cargo install --locked --path vpci --root /usr/local && udrv upgrade
///   udrv upgrade --binary /opt/udrv-next/bin/udrv
///   udrv upgrade --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct UpgradeArgs {
    /// The program to run [default: the file `udrv serve` was started from, as it
    /// is now].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Print the new program's answer as JSON: {daemon, binary, carried: [{address,
    /// frontend, guest_connected}], failed: [{address, error}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs `udrv upgrade`.
pub fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    let binary = args
        .binary
        .map(std::path::absolute)
        .transpose()
        .context("resolving --binary")?;
    let control = args.control.path();
    let mut client = ControlClient::connect(&control)?;
    let reply = match client.request(&Request::Upgrade { binary })? {
        Reply::Upgraded(reply) => reply,
        other => return Err(anyhow!("udrv serve answered the upgrade with {other:?}")),
    };
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&reply).context("encoding JSON")?;
        text.push('\n');
        text
    } else {
        render_text(&reply)
    };
    write_stdout(&text)?;
    if reply.failed.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "{} device(s) could not be taken over; their claims stay recorded (see udrv status)",
        reply.failed.len()
    ))
}

fn render_text(reply: &UpgradeReply) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "udrv serve (pid {}) now runs {} (upgrade {})",
        reply.daemon.pid,
        reply.binary.display(),
        reply.daemon.upgrades
    );
    for d in &reply.carried {
        let _ = writeln!(
            out,
            "{}: served on by {}{}",
            d.address,
            d.frontend,
            if d.guest_connected {
                ", its client still connected"
            } else {
                ""
            }
        );
    }
    for f in &reply.failed {
        let _ = writeln!(out, "{}: not taken over: {}", f.address, f.error);
    }
    if reply.carried.is_empty() && reply.failed.is_empty() {
        out.push_str("no devices were served\n");
    }
    out
}
