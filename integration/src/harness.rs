//! The in-guest test runner.
//!
//! Each rig test runs in a child process of its own (`rig-tests exec NAME`): a test that
//! panics, aborts or hangs takes only itself down, and its output is captured whole. The
//! runner reports on a line protocol that `integration/rig` reads on the host:
//!
//! ```text
//! @@rig start NAME
//! ...everything the test printed...
//! @@rig end NAME ok|FAILED|TIMEOUT SECONDS
//! @@rig summary N passed, N failed
//! ```
//!
//! A test can also send a file back to the host ([`send_file`]): its lines
//! `@@rig file NAME BASE64` are taken out of the output and the host writes
//! `target/rig/files/NAME`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// One rig test or benchmark: a name starting with its area (`smoke_`, `vfio_`, ...),
/// how long it may take under TCG, and its body.
pub struct RigTest {
    /// `AREA_WHAT`: what `integration/rig test FILTER` matches against.
    pub name: &'static str,
    /// How long it may run before it is killed and reported as TIMEOUT.
    pub timeout: Duration,
    /// The body; an error fails the test.
    pub run: fn() -> Result<()>,
}

impl RigTest {
    /// A test with the default time limit (two minutes under TCG).
    pub const fn new(name: &'static str, run: fn() -> Result<()>) -> Self {
        Self {
            name,
            timeout: Duration::from_secs(120),
            run,
        }
    }

    /// The same test with a different time limit.
    pub const fn with_timeout(mut self, seconds: u64) -> Self {
        self.timeout = Duration::from_secs(seconds);
        self
    }
}

/// Rig tests named after the functions they run, so a name cannot drift from its code:
/// `rig_tests![area: first, second (240 s)]` is two [`RigTest`]s, `area_first` running
/// `first` and `area_second` running `second` with a 240-second limit, in that order.
macro_rules! rig_tests {
    ($area:ident : $($test:ident $(($seconds:literal s))?),* $(,)?) => {
        vec![$(
            $crate::harness::RigTest::new(concat!(stringify!($area), "_", stringify!($test)), $test)
                $(.with_timeout($seconds))?
        ),*]
    };
}
pub(crate) use rig_tests;

/// The tests whose names contain any filter; all of them when there is no filter.
pub fn select<'a>(all: &'a [RigTest], filters: &[String]) -> Vec<&'a RigTest> {
    all.iter()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.name.contains(f.as_str())))
        .collect()
}

/// Outcome of one child run.
enum Status {
    Ok,
    Failed,
    Timeout,
}

impl Status {
    fn word(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Timeout => "TIMEOUT",
        }
    }
}

/// Runs `tests` one after another, each in a child process, reporting to `out`.
/// Returns the number that failed.
pub fn run_all(tests: &[&RigTest], out: &mut dyn Write) -> Result<usize> {
    let exe = std::env::current_exe().context("finding the rig-tests executable")?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for test in tests {
        writeln!(out, "@@rig start {}", test.name)?;
        out.flush()?;
        let started = Instant::now();
        let status = run_child(&exe, test, out)?;
        let secs = started.elapsed().as_secs_f64();
        writeln!(out, "\n@@rig end {} {} {secs:.2}", test.name, status.word())?;
        out.flush()?;
        match status {
            Status::Ok => passed += 1,
            _ => failed += 1,
        }
    }
    writeln!(out, "@@rig summary {passed} passed, {failed} failed")?;
    out.flush()?;
    Ok(failed)
}

fn run_child(exe: &std::path::Path, test: &RigTest, out: &mut dyn Write) -> Result<Status> {
    let (reader, writer) = nix::unistd::pipe().context("creating the output pipe")?;
    let writer2 = writer.try_clone().context("duplicating the output pipe")?;
    let mut child = Command::new(exe)
        .arg("exec")
        .arg(test.name)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .spawn()
        .with_context(|| format!("starting {}", test.name))?;
    let deadline = Instant::now() + test.timeout;
    let mut pipe = std::fs::File::from(reader);
    let status = loop {
        let readable = wait_readable(&pipe, Duration::from_millis(100))?;
        if readable {
            copy_available(&mut pipe, out)?;
        }
        if let Some(code) = child.try_wait()? {
            // The test is done; what it (or a daemon it left behind) still has queued
            // in the pipe is drained without waiting for the writers to close.
            while wait_readable(&pipe, Duration::from_millis(20))? {
                if copy_available(&mut pipe, out)? == 0 {
                    break;
                }
            }
            break if code.success() {
                Status::Ok
            } else {
                Status::Failed
            };
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            writeln!(out, "\nrig: {} killed after {:?}", test.name, test.timeout)?;
            break Status::Timeout;
        }
    };
    Ok(status)
}

fn wait_readable(pipe: &std::fs::File, timeout: Duration) -> Result<bool> {
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e).context("polling the test's output"),
    }
}

/// Copies what one read returns; 0 means every writer has closed.
fn copy_available(pipe: &mut std::fs::File, out: &mut dyn Write) -> Result<usize> {
    let mut buf = [0u8; 8192];
    let n = pipe.read(&mut buf).context("reading the test's output")?;
    out.write_all(&buf[..n])?;
    Ok(n)
}

fn kill(child: &mut Child) {
    // The test may have started helpers of its own; they share its process group only
    // if it made one, so kill the child and reap it; stragglers die with the guest.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `bytes` back to the host as `target/rig/files/NAME` (for artifacts a person
/// or a host-side tool reads after the run: tables, logs, traces).
pub fn send_file(name: &str, bytes: &[u8]) -> Result<()> {
    use base64::Engine;
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "file name {name:?} must be non-empty and use only letters, digits, `.`, `_`, `-`"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut stdout = std::io::stdout().lock();
    // An empty file still needs one line for the host to create it.
    for chunk in encoded
        .as_bytes()
        .chunks(76)
        .chain(encoded.is_empty().then_some(&b""[..]))
    {
        writeln!(
            stdout,
            "@@rig file {name} {}",
            String::from_utf8_lossy(chunk)
        )?;
    }
    stdout.flush()?;
    Ok(())
}

/// Runs one test in this process (the child side of [`run_all`]).
pub fn exec(test: &RigTest) -> ! {
    match (test.run)() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:?}");
            std::process::exit(1)
        }
    }
}

/// Opens the report channel: a serial port set to raw mode (so the host sees bytes as
/// written), or stdout when `path` is `-`.
pub fn open_report(path: &str) -> Result<Box<dyn Write>> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening report channel {path}"))?;
    if let Ok(mut tio) = nix::sys::termios::tcgetattr(&file) {
        nix::sys::termios::cfmakeraw(&mut tio);
        nix::sys::termios::tcsetattr(&file, nix::sys::termios::SetArg::TCSANOW, &tio)
            .with_context(|| format!("setting {path} to raw mode"))?;
    }
    Ok(Box::new(DrainOnFlush(file)))
}

/// A serial port whose flush waits until the UART has sent everything, so nothing is
/// lost when the guest powers off right after the last line.
struct DrainOnFlush(std::fs::File);

impl Write for DrainOnFlush {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        match nix::sys::termios::tcdrain(&self.0) {
            Ok(()) | Err(nix::errno::Errno::ENOTTY) => Ok(()),
            Err(e) => Err(std::io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Result<()> {
        Ok(())
    }

    #[test]
    fn filters_select_by_substring_and_none_selects_all() {
        let all = [
            RigTest::new("smoke_a", pass),
            RigTest::new("vfio_b", pass),
            RigTest::new("dma_c", pass),
        ];
        let names = |f: &[&str]| -> Vec<&str> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            select(&all, &f).iter().map(|t| t.name).collect()
        };
        assert_eq!(names(&[]), ["smoke_a", "vfio_b", "dma_c"]);
        assert_eq!(names(&["vfio_", "dma"]), ["vfio_b", "dma_c"]);
        assert!(names(&["uml_"]).is_empty());
    }
}
