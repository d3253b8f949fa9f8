//! `udrv serve`: the service that serves claimed devices to guests.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgAction, Args, ValueEnum};
use tracing_subscriber::EnvFilter;
use udriver::bind::KernelSysfs;
use udriver::claim::Modprobe;
use vpci::service::{
    default_control_path, Daemon, DaemonConfig, Host, NotifySocket, Relaunch, UmlLauncher,
};

use crate::list::HostArgs;

/// Where `udrv serve` listens (shared by serve, attach --serve, status and detach).
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// The service's control socket [default: $UDRV_CONTROL, else /run/udrv/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

impl ControlArgs {
    /// The control socket path.
    pub fn path(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(default_control_path)
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (for journald/log shippers).
    Json,
}

/// Run the service that serves claimed devices to guests (User-Mode Linux over
/// vhost-user) and answers `udrv attach --serve`, `udrv status` and `udrv detach`.
///
/// It runs in the foreground until SIGTERM or SIGINT (Ctrl-C), logging to stderr. It
/// listens on a control socket (mode 0600; only root and its own user may use it) and
/// records every served device in the claim state file before serving it: started
/// again after a crash or `kill -9`, it serves those devices again and undoes claims
/// that were interrupted half-way. On SIGTERM it stops every frontend and gives every
/// device it served or claimed back to its driver (--keep-claims: leaves them on
/// vfio-pci, still recorded, to be served again by the next start). Needs root.
///
/// Run it in the background with `&`, or as the systemd service udrv.service
/// (`udrv install-service` installs it; it waits for the control socket through
/// $NOTIFY_SOCKET, Type=notify).
///
/// Examples:
///   udrv serve &                                    then:
///   udrv attach 0000:00:04.0 --serve uml:/run/udrv/nic.sock
///   udrv status
///   RUST_LOG=debug udrv serve --control /tmp/udrv.sock --state /tmp/udrv-state.json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// When stopping, leave the devices on vfio-pci (recorded, served again by the next
    /// udrv serve) instead of giving them back to their drivers.
    #[arg(long)]
    pub keep_claims: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More log detail (-v debug, -vv trace); RUST_LOG, when set, decides instead.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    pub host: HostArgs,
    /// Set by `udrv upgrade` when it runs the new program: the inherited socket
    /// that carries the previous program's devices, sockets and clients.
    #[arg(long, value_name = "FD", hide = true)]
    pub resume_fd: Option<i32>,
}

fn init_logging(format: LogFormat, verbose: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs `udrv serve` until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, args.verbose);
    let host = Host {
        root: args.host.root(),
        writer: Box::new(KernelSysfs),
        modules: Box::new(Modprobe),
        // Absolute, so that status shows paths that work from any directory.
        state_path: std::path::absolute(args.host.state_path())
            .context("resolving the state file path")?,
        node_timeout: Duration::from_secs(2),
    };
    let config = DaemonConfig {
        control: std::path::absolute(args.control.path())
            .context("resolving the control socket path")?,
        keep_claims: args.keep_claims,
        // Before any thread exists (frontends start threads), so every thread blocks
        // SIGTERM/SIGINT and the loop's signalfd receives them.
        handle_signals: true,
        // What `udrv upgrade` runs: this file (replaced by a newer udrv by then).
        relaunch: Some(Relaunch::this_process().context("finding udrv's own program file")?),
    };
    // Read before starting, so that a bad address stops us before any device is served.
    let manager = NotifySocket::from_env().context("starting udrv serve")?;
    let launcher = Box::new(UmlLauncher::new());
    let daemon = match args.resume_fd {
        Some(fd) => Daemon::resume(config, host, launcher, fd)
            .context("taking over from the previous udrv serve (udrv upgrade)")?,
        None => Daemon::start(config, host, launcher).context("starting udrv serve")?,
    };
    if let Some(manager) = manager {
        // The control socket listens from Daemon::start on: a client that connects now
        // waits in its backlog until `run` accepts it, a moment later.
        let status = format!(
            "serving; control socket {}",
            daemon.control_path().display()
        );
        if let Err(e) = manager.ready(&status) {
            // The manager gives up waiting and stops us; this says why.
            tracing::warn!(error = %e, "telling systemd that udrv serve is ready");
        }
    }
    let report = daemon.run().context("udrv serve")?;
    if report.failed.is_empty() {
        return Ok(());
    }
    let failures: Vec<String> = report
        .failed
        .iter()
        .map(|f| format!("{}: {}", f.address, f.error))
        .collect();
    bail!(
        "stopped, but not every device went back (their claims stay recorded; `udrv detach --all` retries):\n{}",
        failures.join("\n")
    )
}
