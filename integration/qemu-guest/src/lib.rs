//! QEMU 11 guests for udrv's tests: Debian sid's QEMU (the `vfio-user-pci` client) from the sysroot that
//! `integration/rig setup` makes, booting the small x86_64 kernel built from
//! integration/guest/qemu-guest/kernel.config with a busybox initramfs whose init
//! (integration/guest/qemu-guest/init) reports what the guest kernel found.
//!
//! The same code boots a guest on the host (vfio-user tests against a udrv server) and a
//! nested guest inside the rig ([`QemuKit::in_rig`]). The guest reports on its serial
//! console in lines starting with `@@guest`:
//!
//! ```text
//! @@guest up UPTIME
//! @@guest pci BDF VENDOR DEVICE CLASS          one per PCI function
//! @@guest bar BDF INDEX START END FLAGS        BARs 0-5 from sysfs `resource`
//! @@guest poke BDF BAR OFFSET WROTE READ       a BAR write through /dev/mem, read back
//! @@guest KEY ...                              anything a task script prints
//! @@guest done UPTIME
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub mod initramfs;

use initramfs::Initramfs;

/// The guest init's source, built into the binary so that it also exists in the rig.
const GUEST_INIT: &str = include_str!("../../guest/qemu-guest/init");
/// Where the rig puts QEMU's sysroot subset, the wrapper and the guest kernel.
const RIG_QEMU_DIR: &str = "/rig/qemu";

/// What it takes to boot a QEMU 11 guest: the wrapper, the sysroot it runs, the guest
/// kernel and a static busybox for the guest's initramfs.
#[derive(Clone, Debug)]
pub struct QemuKit {
    /// `integration/qemu11` (or its copy in the rig).
    pub qemu11: PathBuf,
    /// The sid sysroot (or the rig's subset of it) that the wrapper runs QEMU from.
    pub sysroot: PathBuf,
    /// The small guest kernel (bzImage).
    pub kernel: PathBuf,
    /// A statically linked busybox: the guest's whole userland.
    pub busybox: PathBuf,
}

/// Why no kit is available: names the missing piece and how to get it.
#[derive(Debug)]
pub struct KitMissing(pub String);

impl std::fmt::Display for KitMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl QemuKit {
    /// The kit `integration/rig setup` leaves in `$UDRV_RIG_CACHE` (default
    /// /var/cache/udrv-rig) on the host, or what is missing from it.
    pub fn on_host() -> std::result::Result<Self, KitMissing> {
        let cache = PathBuf::from(
            std::env::var_os("UDRV_RIG_CACHE").unwrap_or_else(|| "/var/cache/udrv-rig".into()),
        );
        let sysroot = cache.join("qemu-sid");
        if !sysroot.join(".complete").exists() {
            return Err(KitMissing(format!(
                "no QEMU 11 sysroot at {} (integration/rig setup makes it)",
                sysroot.display()
            )));
        }
        let current = cache.join("qemu-guest/current");
        let key = std::fs::read_to_string(&current).map_err(|_| {
            KitMissing(format!(
                "no QEMU guest kernel: {} is missing (integration/rig setup builds it)",
                current.display()
            ))
        })?;
        let kernel = cache.join("qemu-guest").join(key.trim()).join("bzImage");
        if !kernel.exists() {
            return Err(KitMissing(format!(
                "the QEMU guest kernel {} is missing (integration/rig setup builds it)",
                kernel.display()
            )));
        }
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.exists() {
            return Err(KitMissing(
                "no /bin/busybox (Debian package busybox-static; integration/rig setup installs it)"
                    .into(),
            ));
        }
        Ok(Self {
            qemu11: Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu11"),
            sysroot,
            kernel,
            busybox,
        })
    }

    /// The kit on the host for a test: `None` (the test should skip, saying why) when it
    /// is missing outside CI; an error when it is missing under `CI=true`, where
    /// `integration/rig check` has run setup and a missing kit is a broken setup.
    pub fn for_host_test() -> Result<Option<Self>> {
        match Self::on_host() {
            Ok(kit) => Ok(Some(kit)),
            Err(missing) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                bail!("{missing}; under CI=true the QEMU 11 tests must run, not skip")
            }
            Err(missing) => {
                eprintln!("skipped: {missing}");
                Ok(None)
            }
        }
    }

    /// The kit the rig puts into its initramfs for nested guests (/rig/qemu), when the
    /// tests that boot one are selected.
    pub fn in_rig() -> Result<Self> {
        let dir = Path::new(RIG_QEMU_DIR);
        let kit = Self {
            qemu11: dir.join("qemu11"),
            sysroot: dir.join("sysroot"),
            kernel: dir.join("bzImage"),
            busybox: PathBuf::from("/bin/busybox"),
        };
        for path in [&kit.qemu11, &kit.kernel, &kit.busybox] {
            ensure!(
                path.exists(),
                "{} is missing: the rig adds QEMU 11 and the guest kernel only when a test \
                 that boots a nested guest is selected",
                path.display()
            );
        }
        Ok(kit)
    }
}

/// One BAR write the guest makes through /dev/mem and reads back: `value` at `offset`
/// of BAR `bar` of the first function with these ids.
#[derive(Clone, Copy, Debug)]
pub struct Poke {
    /// PCI vendor id of the function to poke.
    pub vendor: u16,
    /// PCI device id of the function to poke.
    pub device: u16,
    /// The BAR written.
    pub bar: u8,
    /// Byte offset in the BAR.
    pub offset: u64,
    /// The 32-bit value written.
    pub value: u32,
}

/// A boot of the small guest: QEMU arguments beyond the machine, files for the guest.
pub struct GuestBoot<'a> {
    kit: &'a QemuKit,
    memory_mib: u32,
    machine: String,
    args: Vec<String>,
    cmdline: Vec<String>,
    pokes: Vec<Poke>,
    task: Option<String>,
    files: Vec<(String, u32, Vec<u8>)>,
    timeout: Duration,
}

impl<'a> GuestBoot<'a> {
    /// A q35 TCG guest with 256 MiB and nothing but QEMU's built-in devices.
    pub fn new(kit: &'a QemuKit) -> Self {
        Self {
            kit,
            memory_mib: 256,
            machine: "q35".into(),
            args: Vec::new(),
            cmdline: Vec::new(),
            pokes: Vec::new(),
            task: None,
            files: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Extra QEMU arguments (devices, netdevs).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An option appended to `-machine q35` (`kernel-irqchip=split`, ...).
    pub fn machine_option(mut self, option: &str) -> Self {
        self.machine.push(',');
        self.machine.push_str(option);
        self
    }

    /// Extra words on the guest kernel's command line.
    pub fn kernel_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, words: I) -> Self {
        self.cmdline.extend(words.into_iter().map(Into::into));
        self
    }

    /// A vfio-user device served on the UNIX socket `socket`, with guest RAM in a shared
    /// memfd so that the server gets DMA_MAPs with fds (QEMU's requirement). The server
    /// must listen before the boot starts. A guest may get several; set
    /// [`memory_mib`](Self::memory_mib) before the first.
    pub fn vfio_user_device(self, socket: &Path) -> Self {
        self.vfio_user_device_with(socket, None)
    }

    /// [`vfio_user_device`](Self::vfio_user_device) at a fixed slot of the guest's bus
    /// (`addr`, as `04.0`), so that a test finds it where another boot put the same
    /// device.
    pub fn vfio_user_device_at(self, socket: &Path, addr: &str) -> Self {
        self.vfio_user_device_with(socket, Some(addr))
    }

    fn vfio_user_device_with(mut self, socket: &Path, addr: Option<&str>) -> Self {
        let mut device = serde_json::json!({
            "driver": "vfio-user-pci",
            "socket": { "type": "unix", "path": socket.to_string_lossy() },
        });
        if let Some(addr) = addr {
            device["addr"] = addr.into();
        }
        // One shared RAM backend, however many devices the guest gets.
        if !self.machine.contains(",memory-backend=") {
            self.machine.push_str(",memory-backend=guest-ram");
            self.args.extend([
                "-object".to_string(),
                format!(
                    "memory-backend-memfd,id=guest-ram,size={}M,share=on",
                    self.memory_mib
                ),
            ]);
        }
        self.args
            .extend(["-device".to_string(), device.to_string()]);
        self
    }

    /// A BAR write (and read back) for the guest's init to make.
    pub fn poke(mut self, poke: Poke) -> Self {
        self.pokes.push(poke);
        self
    }

    /// A shell script (busybox sh) the guest runs after the PCI report and pokes; its
    /// `@@guest` lines come back in [`GuestReport::lines`].
    pub fn task(mut self, script: &str) -> Self {
        self.task = Some(script.to_string());
        self
    }

    /// A file for the guest's initramfs, at `path` (no leading `/`).
    pub fn file(mut self, path: &str, mode: u32, data: Vec<u8>) -> Self {
        self.files.push((path.to_string(), mode, data));
        self
    }

    /// How long the whole boot may take before QEMU is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The guest's initramfs: busybox, the init, the pokes, the task and the files.
    pub fn initramfs(&self) -> Result<Vec<u8>> {
        let mut archive = Initramfs::new();
        archive.dir("bin");
        archive.copy("bin/busybox", 0o755, &self.kit.busybox)?;
        archive.file("init", 0o755, GUEST_INIT.as_bytes());
        if !self.pokes.is_empty() {
            let lines: String = self
                .pokes
                .iter()
                .map(|p| {
                    format!(
                        "0x{:04x} 0x{:04x} {} 0x{:x} 0x{:08x}\n",
                        p.vendor, p.device, p.bar, p.offset, p.value
                    )
                })
                .collect();
            archive.file("pokes", 0o644, lines.as_bytes());
        }
        if let Some(task) = &self.task {
            archive.file("task.sh", 0o755, task.as_bytes());
        }
        for (path, mode, data) in &self.files {
            archive.file(path, *mode, data);
        }
        Ok(archive.finish())
    }

    /// Boots the guest, waits for it to power off (killing QEMU after the timeout) and
    /// parses its report. Fails when QEMU fails or the guest never reports `done`.
    ///
    /// A guest kernel that crashes before its init runs is booted once more, saying so
    /// with its oops on stderr: in the rig, a nested TCG-in-TCG boot of the small
    /// kernel once died in an interrupt ten seconds in (1 of 3 full rig runs; the
    /// same test passed alone and after the same predecessor), before any device
    /// driver or udrv was involved.
    pub fn run(self) -> Result<GuestReport> {
        let (mut report, mut timed_out) = self.boot()?;
        if !timed_out
            && !report.done
            && report.up_at.is_none()
            && report.console.contains("Kernel panic")
        {
            eprintln!(
                "the guest kernel crashed before its init ran; booting once more. Its console:\n{}",
                report.tail()
            );
            (report, timed_out) = self.boot()?;
        }
        if timed_out {
            bail!(
                "the guest did not power off within {:?}; console tail:\n{}",
                self.timeout,
                report.tail()
            );
        }
        ensure!(
            report.status.success(),
            "QEMU exited with {}: {}\nconsole tail:\n{}",
            report.status,
            report.qemu_stderr.trim(),
            report.tail()
        );
        ensure!(
            report.done,
            "the guest powered off without reporting `@@guest done`; console tail:\n{}",
            report.tail()
        );
        Ok(report)
    }

    /// Boots the guest once and returns its report however QEMU ended (killed, failed,
    /// timed out): for tests that kill QEMU or its device's server on purpose and then
    /// read what the guest and QEMU said.
    pub fn run_to_exit(self) -> Result<GuestReport> {
        Ok(self.boot()?.0)
    }

    /// One boot: its report, and whether QEMU was killed at the timeout.
    fn boot(&self) -> Result<(GuestReport, bool)> {
        let dir = tempdir()?;
        let initrd = dir.join("initramfs.cpio");
        std::fs::write(&initrd, self.initramfs()?)
            .with_context(|| format!("writing {}", initrd.display()))?;
        // no_timer_check: the kernel's IO-APIC timer check counts jiffies over a TSC
        // delay; under TCG (and more so TCG-in-TCG on a loaded host) the timer's ticks
        // can lag that delay, and the kernel then panics ("IO-APIC + timer doesn't
        // work!", seen in the rig's nested boots). QEMU's timer is wired as its ACPI
        // tables say, so the check only ever finds a false failure here.
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "panic=-1".to_string(),
            "no_timer_check".to_string(),
        ];
        cmdline.extend(self.cmdline.iter().cloned());
        let mut command = Command::new("/bin/sh");
        command
            .arg(&self.kit.qemu11)
            .env("UDRV_QEMU_SYSROOT", &self.kit.sysroot)
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-machine", &self.machine])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kit.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &cmdline.join(" ")])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .context("starting QEMU 11 (integration/qemu11)")?;
        let mut stdout = child.stdout.take().context("QEMU's stdout")?;
        let mut stderr = child.stderr.take().context("QEMU's stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        });
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let (status, timed_out) = loop {
            if let Some(status) = child.try_wait().context("waiting for QEMU")? {
                break (status, false);
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                break (child.wait().context("reaping QEMU")?, true);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = started.elapsed();
        let console =
            String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).replace('\r', "");
        let qemu_stderr = err_reader.join().unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        Ok((
            GuestReport::parse(console, qemu_stderr, status, elapsed),
            timed_out,
        ))
    }
}

fn tempdir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("udrv-qemu-guest-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A BAR as the guest kernel assigned it (sysfs `resource`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestBar {
    /// BAR number (0-5).
    pub index: u8,
    /// Guest physical (or port) address the guest kernel assigned.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// IORESOURCE_* flags; [`GuestBar::is_io`] tells port-IO from memory.
    pub flags: u64,
}

impl GuestBar {
    /// A port-IO BAR (IORESOURCE_IO).
    pub fn is_io(&self) -> bool {
        self.flags & 0x100 != 0
    }
}

/// A PCI function the guest kernel enumerated.
#[derive(Clone, Debug)]
pub struct GuestPciFunction {
    /// Bus address, as `0000:00:04.0`.
    pub bdf: String,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// Class code (base, sub, prog-if).
    pub class: u32,
    /// The implemented BARs (size > 0).
    pub bars: Vec<GuestBar>,
}

impl GuestPciFunction {
    /// BAR `index`, when implemented.
    pub fn bar(&self, index: u8) -> Option<&GuestBar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

/// A BAR write the guest made and what it read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PokeResult {
    /// Bus address of the function poked.
    pub bdf: String,
    /// The BAR written.
    pub bar: u8,
    /// Byte offset in the BAR.
    pub offset: u64,
    /// The value written.
    pub wrote: u32,
    /// The value read back.
    pub read: u32,
}

/// What a guest boot showed.
pub struct GuestReport {
    /// Everything on the serial console (kernel log and the init's lines).
    pub console: String,
    /// QEMU's own messages.
    pub qemu_stderr: String,
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// QEMU start to exit.
    pub elapsed: Duration,
    /// Guest uptime (s) when its init started.
    pub up_at: Option<f64>,
    /// Guest uptime (s) when its init was done.
    pub done_at: Option<f64>,
    /// Whether the init reported it was done.
    pub done: bool,
    /// The PCI functions the guest kernel enumerated.
    pub functions: Vec<GuestPciFunction>,
    /// The BAR writes the guest made.
    pub pokes: Vec<PokeResult>,
    /// Every `@@guest` line, without the prefix, in order.
    pub lines: Vec<String>,
}

fn hex(word: &str) -> Option<u64> {
    u64::from_str_radix(word.trim_start_matches("0x"), 16).ok()
}

impl GuestReport {
    fn parse(console: String, qemu_stderr: String, status: ExitStatus, elapsed: Duration) -> Self {
        let mut report = GuestReport {
            console: String::new(),
            qemu_stderr,
            status,
            elapsed,
            up_at: None,
            done_at: None,
            done: false,
            functions: Vec::new(),
            pokes: Vec::new(),
            lines: Vec::new(),
        };
        for line in console.lines() {
            // The kernel's messages may share a line with the init's output.
            let Some(at) = line.find("@@guest ") else {
                continue;
            };
            let rest = &line[at + "@@guest ".len()..];
            report.lines.push(rest.to_string());
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["up", t] => report.up_at = t.parse().ok(),
                ["done", t] => {
                    report.done = true;
                    report.done_at = t.parse().ok();
                }
                ["pci", bdf, vendor, device, class] => {
                    if let (Some(v), Some(d), Some(c)) = (hex(vendor), hex(device), hex(class)) {
                        report.functions.push(GuestPciFunction {
                            bdf: bdf.to_string(),
                            vendor: v as u16,
                            device: d as u16,
                            class: c as u32,
                            bars: Vec::new(),
                        });
                    }
                }
                ["bar", bdf, index, start, end, flags] => {
                    let (Ok(index), Some(start), Some(end), Some(flags)) =
                        (index.parse::<u8>(), hex(start), hex(end), hex(flags))
                    else {
                        continue;
                    };
                    if start == 0 && end == 0 {
                        continue;
                    }
                    if let Some(f) = report.functions.iter_mut().find(|f| f.bdf == *bdf) {
                        f.bars.push(GuestBar {
                            index,
                            start,
                            size: end - start + 1,
                            flags,
                        });
                    }
                }
                ["poke", bdf, bar, offset, wrote, read] => {
                    if let (Ok(bar), Some(offset), Some(wrote), Some(read)) =
                        (bar.parse(), hex(offset), hex(wrote), hex(read))
                    {
                        report.pokes.push(PokeResult {
                            bdf: bdf.to_string(),
                            bar,
                            offset,
                            wrote: wrote as u32,
                            read: read as u32,
                        });
                    }
                }
                _ => {}
            }
        }
        report.console = console;
        report
    }

    /// The function with these ids, if the guest enumerated one.
    pub fn function(&self, vendor: u16, device: u16) -> Option<&GuestPciFunction> {
        self.functions
            .iter()
            .find(|f| f.vendor == vendor && f.device == device)
    }

    /// The `@@guest KEY ...` lines a task printed for `key`, without the key.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .collect()
    }

    /// The last lines of the console, for error messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_vfio_user_devices_share_one_guest_ram_backend() {
        let kit = QemuKit {
            qemu11: "qemu11".into(),
            sysroot: "sysroot".into(),
            kernel: "bzImage".into(),
            busybox: "busybox".into(),
        };
        let boot = GuestBoot::new(&kit)
            .memory_mib(128)
            .vfio_user_device_at(Path::new("/run/a.sock"), "04.0")
            .vfio_user_device_at(Path::new("/run/b.sock"), "06.0");
        assert_eq!(boot.machine, "q35,memory-backend=guest-ram");
        let objects: Vec<&String> = boot
            .args
            .iter()
            .filter(|a| a.starts_with("memory-backend-memfd"))
            .collect();
        assert_eq!(
            objects,
            ["memory-backend-memfd,id=guest-ram,size=128M,share=on"]
        );
        let devices: Vec<&String> = boot
            .args
            .iter()
            .filter(|a| a.contains("vfio-user-pci"))
            .collect();
        assert_eq!(devices.len(), 2);
        assert!(devices[0].contains("/run/a.sock") && devices[1].contains("/run/b.sock"));
    }
}
