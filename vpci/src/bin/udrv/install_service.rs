//! `udrv install-service`: installs the systemd unit shipped in the repository
//! (dist/udrv.service, built into the binary), the man pages and the shell completions
//! in the places systemd, man and the shells look under a prefix.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use clap_complete::Shell;

/// The unit as shipped: ExecStart= names the binary `cargo install --root /usr/local`
/// puts in place.
pub const UNIT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/udrv.service"));

/// The binary the shipped unit starts.
const SHIPPED_BINARY: &str = "/usr/local/bin/udrv";

/// Directories the unit's ProtectHome=yes hides from the service: a binary there
/// cannot be started by it.
const HIDDEN_FROM_THE_SERVICE: [&str; 3] = ["/home", "/root", "/run/user"];

/// Install udrv as a systemd service: the unit udrv.service, the man pages and the
/// shell completions.
///
/// Writes, under --prefix (default /usr/local):
///   lib/systemd/system/udrv.service            ExecStart= this udrv binary (or --bin)
///   share/man/man1/udrv.1, udrv-COMMAND.1      generated from the commands' --help
///   share/bash-completion/completions/udrv
///   share/zsh/site-functions/_udrv
///   share/fish/vendor_completions.d/udrv.fish
/// and prints the commands that start the service. The unit keeps the service away
/// from /home and /root (ProtectHome=yes), so the binary must live elsewhere:
///   cargo install --locked --path vpci --root /usr/local    (puts udrv in /usr/local/bin)
///   udrv install-service
///   systemctl daemon-reload && systemctl enable --now udrv
/// Needs write access to the prefix (root). --remove deletes the same files.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct InstallServiceArgs {
    /// Where the files go (systemd reads units from /usr/local/lib/systemd/system).
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// The udrv binary the unit starts [default: this one].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Write everything under DIR as if it were / (for packaging): DIR/PREFIX/...
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Remove the files instead of installing them.
    #[arg(long)]
    pub remove: bool,
}

/// One file to install: where it goes (outside any destdir) and what it holds.
struct InstallFile {
    path: PathBuf,
    contents: Vec<u8>,
}

/// The unit with ExecStart= and ExecReload= naming `binary`.
pub fn unit_for(binary: &Path) -> anyhow::Result<String> {
    let text = binary
        .to_str()
        .filter(|t| !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || "%\\\"'$;".contains(c)))
        .with_context(|| {
            format!(
                "{}: a path with spaces, quotes or %, \\, $, ; cannot go in ExecStart= as it is; install udrv elsewhere or pass --bin",
                binary.display()
            )
        })?;
    if !binary.is_absolute() {
        bail!("{text}: ExecStart= needs an absolute path");
    }
    if let Some(hidden) = HIDDEN_FROM_THE_SERVICE
        .iter()
        .find(|dir| binary.starts_with(dir))
    {
        bail!(
            "{text} is under {hidden}, which the service cannot see (ProtectHome=yes); install udrv in /usr/local/bin (cargo install --locked --path vpci --root /usr/local) or pass --bin"
        );
    }
    let mut unit = UNIT.to_string();
    for key in ["ExecStart", "ExecReload"] {
        let shipped = format!("\n{key}={SHIPPED_BINARY} ");
        if unit.matches(&shipped).count() != 1 {
            bail!("the built-in unit does not name {SHIPPED_BINARY} in {key}= exactly once; it cannot be pointed at {text}");
        }
        unit = unit.replace(&shipped, &format!("\n{key}={text} "));
    }
    Ok(unit)
}

fn files(prefix: &Path, binary: &Path) -> anyhow::Result<Vec<InstallFile>> {
    let share = prefix.join("share");
    let mut files = vec![InstallFile {
        path: prefix.join("lib/systemd/system/udrv.service"),
        contents: unit_for(binary)?.into_bytes(),
    }];
    for page in crate::man_pages::pages().context("rendering the man pages")? {
        files.push(InstallFile {
            path: share.join("man/man1").join(page.file_name),
            contents: page.roff,
        });
    }
    // The directories bash-completion, zsh's site fpath and fish read for anything
    // installed under /usr/local (and /usr).
    for (shell, place) in [
        (Shell::Bash, "bash-completion/completions/udrv"),
        (Shell::Zsh, "zsh/site-functions/_udrv"),
        (Shell::Fish, "fish/vendor_completions.d/udrv.fish"),
    ] {
        files.push(InstallFile {
            path: share.join(place),
            contents: crate::completions::script(shell),
        });
    }
    Ok(files)
}

/// `path` as it is under `destdir`.
fn staged(destdir: Option<&Path>, path: &Path) -> PathBuf {
    match destdir {
        None => path.to_path_buf(),
        Some(root) => root.join(
            path.components()
                .filter(|c| !matches!(c, Component::RootDir))
                .collect::<PathBuf>(),
        ),
    }
}

/// Writes `contents` to `path` mode 0644 whatever the umask, replacing what was there
/// in one step.
fn place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(format!(".{}.new", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temp)
        .and_then(|mut file| file.write_all(contents))
        .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)))
        .and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Runs `udrv install-service`.
pub fn run(args: InstallServiceArgs) -> anyhow::Result<()> {
    if !args.prefix.is_absolute() {
        bail!("--prefix {}: needs an absolute path", args.prefix.display());
    }
    let binary = match args.bin {
        Some(bin) => bin,
        None => std::env::current_exe().context("finding this udrv binary")?,
    };
    let destdir = args.destdir.as_deref();
    let files = files(&args.prefix, &binary)?;
    let mut out = io::stdout().lock();
    for file in &files {
        let path = staged(destdir, &file.path);
        if args.remove {
            match fs::remove_file(&path) {
                Ok(()) => writeln!(out, "removed {}", path.display())?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        } else {
            place(&path, &file.contents).with_context(|| {
                format!(
                    "writing {} (run as root, or choose --prefix/--destdir)",
                    path.display()
                )
            })?;
            writeln!(out, "installed {}", path.display())?;
        }
    }
    if destdir.is_none() {
        if args.remove {
            writeln!(
                out,
                "stop the service first if it runs: systemctl disable --now udrv; then systemctl daemon-reload"
            )?;
        } else {
            writeln!(
                out,
                "start it (and at every boot): systemctl daemon-reload && systemctl enable --now udrv"
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_pointed_at_the_binary_and_odd_paths_are_refused() {
        let unit = unit_for(Path::new("/opt/udrv/bin/udrv")).unwrap();
        assert!(
            unit.contains("\nExecStart=/opt/udrv/bin/udrv serve\n")
                && unit.contains("\nExecReload=/opt/udrv/bin/udrv upgrade\n"),
            "{unit}"
        );
        assert!(!unit.contains(SHIPPED_BINARY));
        assert_eq!(unit_for(Path::new(SHIPPED_BINARY)).unwrap(), UNIT);
        for refused in [
            "/root/.cargo/bin/udrv",
            "/home/alice/bin/udrv",
            "bin/udrv",
            "/opt/my udrv/udrv",
            "/opt/100%/udrv",
        ] {
            assert!(unit_for(Path::new(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_destdir_holds_the_whole_prefix() {
        let path = Path::new("/usr/local/share/man/man1/udrv.1");
        assert_eq!(
            staged(Some(Path::new("/tmp/stage")), path),
            Path::new("/tmp/stage/usr/local/share/man/man1/udrv.1")
        );
        assert_eq!(staged(None, path), path);
    }
}
