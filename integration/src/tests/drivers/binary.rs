//! Running the example binaries as a user would: to completion, or interrupted with
//! Ctrl-C (SIGINT) part way through.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What a finished binary left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    fn show(&self) {
        print!("{}", self.stdout);
        eprint!("{}", self.stderr);
    }
}

/// Runs `name args` to completion and echoes what it printed.
pub fn run(name: &str, args: &[&str]) -> Result<Finished> {
    println!("$ {name} {}", args.join(" "));
    let out = Command::new(crate::rig::installed_binary(name)?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {name}"))?;
    let done = Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    done.show();
    Ok(done)
}

/// Starts `name args`, waits for a line of its stdout containing `ready`, lets it run
/// for `after`, sends SIGINT (Ctrl-C) and waits for it to exit.
pub fn interrupt(name: &str, args: &[&str], ready: &str, after: Duration) -> Result<Finished> {
    println!(
        "$ {name} {}   (Ctrl-C after \"{ready}\" + {after:?})",
        args.join(" ")
    );
    let mut child = Command::new(crate::rig::installed_binary(name)?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            let status = child.wait()?;
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .context("stderr")?
                .read_to_string(&mut stderr)?;
            bail!("{name} exited ({status}) before printing \"{ready}\"\nstdout:\n{seen}stderr:\n{stderr}");
        }
        seen.push_str(&line);
        if line.contains(ready) {
            break;
        }
    }
    std::thread::sleep(after);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).context("sending SIGINT")?;
    let status = child.wait()?;
    stdout.read_to_string(&mut seen)?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)?;
    let done = Finished {
        status,
        stdout: seen,
        stderr,
    };
    done.show();
    Ok(done)
}
