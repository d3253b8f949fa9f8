//! `udrv attach`: hand PCI devices to vfio-pci, safely.

use std::fmt::Write as _;

use anyhow::{bail, Context};
use clap::Args;
use udriver::bind::KernelSysfs;
use udriver::claim::{
    resolve_group, resolve_user, AttachOptions, AttachReport, Claimer, Modprobe, Owner,
};
use udriver::pci::PciAddress;
use vpci::service::control::AttachReply;
use vpci::service::{ControlClient, FrontendSpec, Reply, Request};

use crate::list::{write_stdout, HostArgs};
use crate::serve::ControlArgs;

/// Hand PCI devices to vfio-pci so that a user-level driver or a guest can use them.
///
/// For each device: record the claim in the state file, set driver_override to
/// vfio-pci, unbind the current driver, and ask the kernel to probe (never new_id).
/// Then check that the IOMMU group is viable and /dev/vfio/N exists. `udrv detach`
/// puts each device back on the driver it had.
///
/// Refused unless --force, each with the reason and the way out: a disk with a mounted,
/// swapped or LVM/RAID-held partition; a network interface that is up, has an address
/// or carries a route; the boot display; a device whose IOMMU group has other members
/// on host drivers (--group claims them all). Loads vfio-pci with `modprobe vfio-pci`
/// if it is not loaded. Needs root.
///
/// With --serve, the running `udrv serve` claims the device (same checks, same state
/// file) and serves it to User-Mode Linux guests on a vhost-user socket, or to
/// vfio-user clients (QEMU's vfio-user-pci, cloud-hypervisor), then this prints how to
/// start such a guest. Start `udrv serve` first. A vfio-user socket is 0600; --user
/// lets a VMM that does not run as root connect. With `,direct-mmio` the client gets
/// the VFIO device fd and maps the BARs' mmap-able parts into its guest (the MSI-X
/// table and PBA stay trapped): it can then also reset the device, program its
/// interrupts and write its config through the kernel's vfio-pci, but never reach the
/// IOMMU, which stays udrv's. With a CPU the guest
/// does not need, --poll-us and --worker-cpu make the guest's register reads several
/// times faster; on a machine where the guest needs every CPU they slow it down.
///
/// Examples:
///   udrv attach 0000:00:03.0
///   udrv attach 00:1f.2 --group           the device and the rest of its IOMMU group
///   udrv attach 00:03.0 --user alice      and let alice open /dev/vfio/N
///   udrv attach 00:04.0 --serve uml:/run/udrv/nic.sock
///                                         claim it and serve it to a UML guest:
///                                         linux ... virtio_uml.device=/run/udrv/nic.sock:1234
///   udrv attach 00:04.0 --serve uml:/run/udrv/nic.sock --poll-us 500 --worker-cpu 3
///                                         the same, served by a worker on CPU 3 that
///                                         polls for the guest's next command
///   udrv attach 00:04.0 --serve vfio-user:/run/udrv/nic.sock --user qemu
///                                         serve it to a QEMU run as user qemu
///   udrv attach 00:04.0 --serve vfio-user:/run/udrv/nic.sock,direct-mmio
///                                         the same, BARs mapped straight into the guest
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AttachArgs {
    /// The devices, as 0000:00:03.0 or 00:03.0 (see `udrv list`).
    #[arg(required = true, value_name = "BDF")]
    pub devices: Vec<PciAddress>,
    /// Claim devices even if the host is using them (they stop working for the host).
    #[arg(long)]
    pub force: bool,
    /// Also claim every other device in each device's IOMMU group.
    #[arg(long)]
    pub group: bool,
    /// Give /dev/vfio/N to this user (name or uid), so a non-root driver can open it.
    /// With --serve vfio-user:SOCKET: the user a VMM runs as, who may connect.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Give /dev/vfio/N to this group (name or gid), mode 0660.
    #[arg(long, value_name = "GROUP", conflicts_with = "serve")]
    pub group_owner: Option<String>,
    /// Have `udrv serve` claim the (one) device and serve it on this frontend:
    /// uml:SOCKET, a vhost-user socket a User-Mode Linux guest connects to, or
    /// vfio-user:SOCKET[,direct-mmio], a socket QEMU or cloud-hypervisor connects to.
    #[arg(long, value_name = "uml:SOCKET|vfio-user:SOCKET", value_parser = parse_serve)]
    pub serve: Option<FrontendSpec>,
    /// The device ID in the printed UML command line (virtio_uml.device=SOCKET:ID); it
    /// must equal the guest kernel's CONFIG_UML_PCI_OVER_VIRTIO_DEVICE_ID.
    #[arg(long, value_name = "ID", default_value_t = UML_DEVICE_ID, requires = "serve")]
    pub uml_device_id: u32,
    /// With --serve: after serving the guest's commands, the worker keeps polling for
    /// the next one until this many microseconds pass without one (the guest's kicks
    /// suppressed meanwhile), then sleeps until the guest kicks. Worth it only on a CPU
    /// the guest does not need (see --worker-cpu): on a CPU the guest needs, polling
    /// starves the guest it waits for. Default: no polling.
    #[arg(long, value_name = "MICROSECONDS", requires = "serve")]
    pub poll_us: Option<u64>,
    /// With --serve: run the worker that serves the guest's commands on this CPU only
    /// (numbered as in taskset); keep the guest off it.
    #[arg(long, value_name = "CPU", requires = "serve")]
    pub worker_cpu: Option<usize>,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs `udrv attach`.
pub fn run(args: AttachArgs) -> anyhow::Result<()> {
    if let Some(spec) = args.serve.clone() {
        let mut worker = spec.worker();
        if let Some(us) = args.poll_us {
            worker.poll = std::time::Duration::from_micros(us);
        }
        if let Some(cpu) = args.worker_cpu {
            worker.cpu = Some(cpu);
        }
        let spec = match (spec, &args.user) {
            (
                FrontendSpec::VfioUser {
                    socket,
                    direct_mmio,
                    ..
                },
                Some(user),
            ) => FrontendSpec::VfioUser {
                socket,
                direct_mmio,
                user: Some(resolve_user(user)?),
            },
            (FrontendSpec::Uml { .. }, Some(_)) => {
                bail!("--user with --serve uml: the UML socket is the service's; drop --user")
            }
            (spec, _) => spec,
        };
        if args.group_owner.is_some() {
            bail!("--group-owner does not apply with --serve: the service holds /dev/vfio/N");
        }
        return run_served(&args, spec.with_worker(worker));
    }
    let options = AttachOptions {
        force: args.force,
        whole_group: args.group,
        node_user: args.user.as_deref().map(resolve_user).transpose()?,
        node_group: args.group_owner.as_deref().map(resolve_group).transpose()?,
        owner: Owner::caller(),
    };
    let state = args.host.state_path();
    let mut writer = KernelSysfs;
    let mut modules = Modprobe;
    let report = Claimer::new(args.host.root(), &mut writer, &mut modules, state)
        .attach(&args.devices, &options)?;
    for warning in &report.warnings {
        eprintln!("udrv: warning: {warning}");
    }
    let text = if args.json {
        render_json(&report)?
    } else {
        render_text(&report)
    };
    write_stdout(&text)
}

fn render_text(report: &AttachReport) -> String {
    render_claims(&AttachReply::from(report))
}

/// What a claim did, whether made here or by the service.
fn render_claims(reply: &AttachReply) -> String {
    let mut out = String::new();
    for r in &reply.repaired {
        let _ = writeln!(
            out,
            "{}: an interrupted claim was undone: back on {}",
            r.address,
            r.driver.as_deref().unwrap_or("no driver")
        );
    }
    for device in &reply.attached {
        let from = device.previous_driver.as_deref().unwrap_or("no driver");
        if device.already {
            let _ = writeln!(out, "{}: already on vfio-pci", device.address);
        } else {
            let _ = writeln!(out, "{}: {from} -> vfio-pci", device.address);
        }
        for reason in &device.forced {
            let _ = writeln!(out, "    forced although: {reason}");
        }
    }
    for warning in &reply.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    for group in &reply.groups {
        let members: Vec<String> = group.members.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "IOMMU group {}: {} is ready (members: {})",
            group.iommu_group,
            group.node.display(),
            members.join(", ")
        );
    }
    out
}

fn render_json(report: &AttachReport) -> anyhow::Result<String> {
    let value = serde_json::json!({
        "attached": report.attached.iter().map(|a| serde_json::json!({
            "address": a.address,
            "previous_driver": a.previous_driver,
            "already": a.already,
            "forced": a.forced.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "groups": report.groups.iter().map(|g| serde_json::json!({
            "iommu_group": g.group,
            "node": g.node,
            "members": g.members,
        })).collect::<Vec<_>>(),
        "repaired": report.repaired.iter().map(|r| serde_json::json!({
            "address": r.address,
            "driver": r.driver,
        })).collect::<Vec<_>>(),
        "warnings": report.warnings,
    });
    let mut text = serde_json::to_string_pretty(&value)?;
    text.push('\n');
    Ok(text)
}

/// The device ID the rig's UML kernel is built with (CONFIG_UML_PCI_OVER_VIRTIO_DEVICE_ID).
pub const UML_DEVICE_ID: u32 = 1234;

/// Parses `--serve`, making a relative socket path absolute (the service runs in
/// another directory).
fn parse_serve(text: &str) -> Result<FrontendSpec, String> {
    let text = match text.split_once(':') {
        Some((kind, path)) if !path.is_empty() && !path.starts_with('/') => {
            let cwd = std::env::current_dir().map_err(|e| format!("resolving {path}: {e}"))?;
            format!("{kind}:{}", cwd.join(path).display())
        }
        _ => text.to_string(),
    };
    text.parse()
        .map_err(|e: vpci::service::FrontendSpecError| e.to_string())
}

/// `--serve`: the running `udrv serve` claims and serves the device.
fn run_served(args: &AttachArgs, spec: FrontendSpec) -> anyhow::Result<()> {
    let control = args.control.path();
    let mut client = ControlClient::connect(&control)?;
    if let Some(state) = &args.host.state {
        // Claims must land in the state file the service reads at its next start.
        let state = std::path::absolute(state).context("resolving --state")?;
        if let Reply::Status(status) = client.request(&Request::Status)? {
            if status.daemon.state != state {
                bail!(
                    "udrv serve at {} records claims in {}, not {}; drop --state or start udrv serve with --state {}",
                    control.display(),
                    status.daemon.state.display(),
                    state.display(),
                    state.display()
                );
            }
        }
    }
    let reply = client.request(&Request::Attach {
        devices: args.devices.clone(),
        force: args.force,
        whole_group: args.group,
        serve: Some(spec.clone()),
    })?;
    let Reply::Attached(reply) = reply else {
        bail!("udrv serve answered an attach with {reply:?}");
    };
    for warning in &reply.warnings {
        eprintln!("udrv: warning: {warning}");
    }
    if let FrontendSpec::VfioUser { .. } = spec {
        let commands = vfio_user_commands(&spec);
        let text = if args.json {
            let mut value = serde_json::to_value(&reply).context("encoding JSON")?;
            value["client_commands"] = serde_json::json!({
                "qemu": commands.qemu,
                "cloud_hypervisor": commands.cloud_hypervisor,
            });
            let mut text = serde_json::to_string_pretty(&value).context("encoding JSON")?;
            text.push('\n');
            text
        } else {
            render_vfio_user_text(&reply, &spec, &commands)
        };
        return write_stdout(&text);
    }
    let guest = uml_command(&spec, args.uml_device_id);
    let text = if args.json {
        let mut value = serde_json::to_value(&reply).context("encoding JSON")?;
        value["guest_command"] = guest.into();
        let mut text = serde_json::to_string_pretty(&value).context("encoding JSON")?;
        text.push('\n');
        text
    } else {
        render_served_text(&reply, &spec, &guest, args.uml_device_id)
    };
    write_stdout(&text)
}

/// How to start a VMM on a vfio-user socket.
struct VfioUserCommands {
    qemu: String,
    cloud_hypervisor: String,
}

fn vfio_user_commands(spec: &FrontendSpec) -> VfioUserCommands {
    let socket = spec.socket().display();
    let device = serde_json::json!({
        "driver": "vfio-user-pci",
        "socket": {"type": "unix", "path": spec.socket()},
    });
    VfioUserCommands {
        // Guest RAM must be a shared fd (memfd) or the DMA_MAPs come without fds and
        // the device cannot reach guest memory.
        qemu: format!(
            "qemu-system-x86_64 -machine q35,memory-backend=mem \\\n    -object memory-backend-memfd,id=mem,size=1G,share=on \\\n    -device '{device}' ..."
        ),
        cloud_hypervisor: format!(
            "cloud-hypervisor --memory size=1G,shared=on --user-device socket={socket} ..."
        ),
    }
}

fn render_vfio_user_text(
    reply: &AttachReply,
    spec: &FrontendSpec,
    commands: &VfioUserCommands,
) -> String {
    let mut out = render_claims(reply);
    if let (
        Some(served),
        FrontendSpec::VfioUser {
            direct_mmio, user, ..
        },
    ) = (&reply.served, spec)
    {
        let _ = writeln!(
            out,
            "{}: served by udrv serve to vfio-user clients at {} ({}; {})",
            served.address,
            spec.socket().display(),
            if *direct_mmio {
                "direct MMIO: the client gets the VFIO device fd"
            } else {
                "BAR accesses trapped"
            },
            match user {
                Some(uid) => format!("root and uid {uid} may connect"),
                None => "root may connect".to_string(),
            }
        );
    }
    let _ = writeln!(
        out,
        "Start QEMU (>= 10.1) with shared guest memory:\n  {}\nor cloud-hypervisor:\n  {}\n(`udrv status` shows when it connects)",
        commands.qemu, commands.cloud_hypervisor
    );
    out
}

/// How to start a UML guest on `spec`'s socket.
fn uml_command(spec: &FrontendSpec, device_id: u32) -> String {
    format!(
        "linux mem=256M ubd0=ROOTFS.img virtio_uml.device={}:{device_id}",
        spec.socket().display()
    )
}

fn render_served_text(
    reply: &AttachReply,
    spec: &FrontendSpec,
    guest: &str,
    device_id: u32,
) -> String {
    let mut out = render_claims(reply);
    if let Some(served) = &reply.served {
        let _ = writeln!(
            out,
            "{}: served by udrv serve to User-Mode Linux guests at {}",
            served.address,
            spec.socket().display()
        );
        let worker = spec.worker();
        if !worker.poll.is_zero() || worker.cpu.is_some() {
            let cpu = worker.cpu.map_or("any CPU".into(), |c| format!("CPU {c}"));
            let _ = writeln!(
                out,
                "    its worker runs on {cpu} and polls for {} µs after each command",
                worker.poll.as_micros()
            );
        }
    }
    let _ = writeln!(
        out,
        "Start a guest whose kernel has CONFIG_UML_PCI_OVER_VIRTIO=y and \
         CONFIG_UML_PCI_OVER_VIRTIO_DEVICE_ID={device_id} (else pass --uml-device-id):\n  {guest}\n\
         (ROOTFS.img: the guest's root filesystem; `udrv status` shows when it connects)"
    );
    out
}
