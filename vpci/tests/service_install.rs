//! Installing udrv as a service: `udrv install-service` into a staging root, the unit
//! it installs accepted by `systemd-analyze verify`, and the man pages and shell
//! completions generated from the commands udrv really has.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const UDRV: &str = env!("CARGO_BIN_EXE_udrv");

/// The commands `udrv --help` lists; the generated documents must know them all.
const COMMANDS: [&str; 7] = [
    "acpi",
    "list",
    "attach",
    "detach",
    "serve",
    "status",
    "install-service",
];

/// The files install-service writes under the prefix /usr/local.
const INSTALLED: [&str; 5] = [
    "usr/local/lib/systemd/system/udrv.service",
    "usr/local/share/man/man1/udrv.1",
    "usr/local/share/bash-completion/completions/udrv",
    "usr/local/share/zsh/site-functions/_udrv",
    "usr/local/share/fish/vendor_completions.d/udrv.fish",
];

fn udrv(args: &[&str]) -> Output {
    Command::new(UDRV).args(args).output().unwrap()
}

fn udrv_ok(args: &[&str]) -> String {
    let out = udrv(args);
    assert!(
        out.status.success(),
        "udrv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn install(destdir: &Path, bin: &Path) -> String {
    udrv_ok(&[
        "install-service",
        "--destdir",
        destdir.to_str().unwrap(),
        "--bin",
        bin.to_str().unwrap(),
    ])
}

#[test]
fn completions_know_every_command_and_option() {
    for shell in ["bash", "zsh", "fish"] {
        let script = udrv_ok(&["completions", shell]);
        for command in COMMANDS {
            assert!(script.contains(command), "{shell}: no {command}");
        }
        for option in ["keep-claims", "log-format", "serve", "control"] {
            assert!(script.contains(option), "{shell}: no --{option}");
        }
    }
    let refused = udrv(&["completions", "tcsh"]);
    assert!(!refused.status.success());
}

#[test]
fn man_pages_describe_udrv_and_each_command() {
    let page = udrv_ok(&["man"]);
    assert!(page.contains(".TH udrv 1"), "{page}");
    for command in COMMANDS {
        // roff writes a hyphen as \-.
        let reference = format!("udrv\\-{}(1)", command.replace('-', "\\-"));
        assert!(page.contains(&reference), "udrv(1) has no {reference}");
    }
    let serve = udrv_ok(&["man", "serve"]);
    assert!(serve.contains(".TH udrv-serve 1"), "{serve}");
    assert!(serve.contains("keep\\-claims"), "{serve}");
    let unknown = udrv(&["man", "frobnicate"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("serve") && err.contains("attach"), "{err}");
}

#[test]
fn install_service_places_unit_man_pages_and_completions_and_removes_them() {
    let stage = tempfile::tempdir().unwrap();
    let out = install(stage.path(), Path::new("/usr/local/bin/udrv"));
    for file in INSTALLED {
        let path = stage.path().join(file);
        assert!(out.contains(&path.display().to_string()), "{out}");
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.len() > 0, "{file} is empty");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{file}");
    }
    // Every command has its own page beside udrv(1).
    for command in COMMANDS {
        let page = stage
            .path()
            .join(format!("usr/local/share/man/man1/udrv-{command}.1"));
        assert!(page.exists(), "{}", page.display());
    }
    // For /usr/local/bin, the installed unit is the one in the repository.
    let installed = fs::read_to_string(stage.path().join(INSTALLED[0])).unwrap();
    let shipped =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/udrv.service"))
            .unwrap();
    assert_eq!(installed, shipped);

    let out = udrv_ok(&[
        "install-service",
        "--destdir",
        stage.path().to_str().unwrap(),
        "--remove",
    ]);
    for file in INSTALLED {
        assert!(!stage.path().join(file).exists(), "{file} left behind");
        assert!(out.contains(file), "{out}");
    }
}

#[test]
fn install_service_refuses_a_binary_the_service_cannot_see() {
    let stage = tempfile::tempdir().unwrap();
    let out = udrv(&[
        "install-service",
        "--destdir",
        stage.path().to_str().unwrap(),
        "--bin",
        "/root/.cargo/bin/udrv",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ProtectHome"), "{err}");
    assert!(err.contains("--root /usr/local"), "{err}");
    assert!(
        fs::read_dir(stage.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

/// The unit as installed for this build's binary passes `systemd-analyze verify`
/// (systemd's own parser: unknown or misspelt settings, bad values, missing binaries).
/// systemd-analyze comes with Debian's `systemd` package; `integration/rig setup`
/// installs it.
#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze not found: apt-get install systemd (integration/rig setup installs it)");
    let stage = tempfile::tempdir().unwrap();
    // A path of its own outside /home and /root (ProtectHome=yes), wherever the
    // repository is checked out.
    let bin = stage.path().join("bin/udrv");
    fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(UDRV, &bin).unwrap();
    install(stage.path(), &bin);
    let unit = stage.path().join(INSTALLED[0]);
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Warnings (an unknown setting, a deprecated one) leave the exit status 0 and
    // name the file.
    assert!(!err.contains("udrv.service"), "{err}");
}
