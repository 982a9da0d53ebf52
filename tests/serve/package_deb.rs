//! The Debian package: `cargo deb` builds it from the binary under test (the package metadata
//! in `Cargo.toml`), it holds the binary, the unit, the sysctl drop-in, the default config (a
//! conffile) and the nginx snippet, and the extracted binary validates the shipped config.
//! As root under CI (or with `PIXELD_TEST_DPKG_INSTALL=1`) on a machine without pixeld
//! installed, it goes through the whole package life: `dpkg -i`, the installed binary serves
//! with the installed config, an upgrade keeps the operator's edited config, `dpkg -r` removes
//! the binary but keeps the config, `dpkg -P` removes the config too.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Builds the package from the already built test binary; `None` (with the reason printed)
/// when cargo-deb is not installed outside CI. `scripts/test` installs it.
pub(crate) fn build_deb(out_dir: &Path, revision: &str) -> Option<std::path::PathBuf> {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            !in_ci(),
            "cargo-deb is not installed; scripts/test installs it"
        );
        eprintln!("SKIPPED: cargo-deb not installed (cargo install cargo-deb --locked)");
        return None;
    }
    // `--profile dev --no-build` packages the binary this test suite built (stripped), so the
    // suite needs no release build; `cargo deb` alone packages a release build. cargo-deb
    // strips into one temp dir under target/ whatever `-o` says, so two runs at once (these
    // tests run in parallel) can pack each other's half-written binary: one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = run(Command::new("cargo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["deb", "--no-build", "--profile", "dev", "--strip", "--fast"])
        .args(["--deb-revision", revision, "-o"])
        .arg(out_dir));
    let path = text(&out).lines().last().unwrap_or("").trim().to_string();
    let deb = std::path::PathBuf::from(path);
    assert!(deb.is_file(), "no package at {}", deb.display());
    Some(deb)
}

/// Revisions 1 and 2 of the package (an install and its upgrade), or None as [`build_deb`].
pub(crate) fn two_debs(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    Some((
        build_deb(&dir.join("r1"), "1")?,
        build_deb(&dir.join("r2"), "2")?,
    ))
}

#[test]
fn the_package_holds_the_service_and_its_files() {
    let tmp = common::tempdir();
    let Some(deb) = build_deb(tmp.path(), "1") else {
        return;
    };
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/pixeld",
        "./usr/lib/systemd/system/pixeld.service",
        "./usr/lib/systemd/system/pixeld.socket",
        "./usr/lib/sysctl.d/60-pixeld.conf",
        "./etc/pixeld/pixeld.toml",
        "./usr/share/pixeld/nginx/pixel.conf",
        "./usr/share/pixeld/nginx/pixel-http.conf",
        "./usr/share/pixeld/nginx/tracker.conf",
        "./usr/share/doc/pixeld/README.md",
        "./usr/share/doc/pixeld/operations.md",
        "./usr/share/doc/pixeld/scale-out.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    let conffiles = text(&run(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&deb)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/pixeld/pixeld.toml");
    let postinst = text(&run(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&deb)
        .arg("postinst")));
    assert!(
        postinst.contains("60-pixeld.conf") && postinst.contains("deb-systemd-helper enable"),
        "{postinst}"
    );
    // The extracted binary accepts the extracted config, as the unit's ExecStartPre does.
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let v = run(Command::new(root.join("usr/bin/pixeld"))
        .args(["validate", "--config"])
        .arg(root.join("etc/pixeld/pixeld.toml")));
    assert!(text(&v).contains("data_dir"), "{}", text(&v));
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/pixeld.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/pixeld serve --config /etc/pixeld/pixeld.toml"));
}

#[test]
fn install_serve_upgrade_remove_purge() {
    let wanted = in_ci() || std::env::var("PIXELD_TEST_DPKG_INSTALL").is_ok_and(|v| v == "1");
    if !wanted || !common::is_root() {
        eprintln!(
            "SKIPPED: installs a package system-wide; runs as root under CI=true or with PIXELD_TEST_DPKG_INSTALL=1"
        );
        return;
    }
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "pixeld"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"));
    if installed {
        assert!(
            !in_ci(),
            "a pixeld package is already installed on the CI machine"
        );
        eprintln!("SKIPPED: a pixeld package is installed on this machine; not touching it");
        return;
    }
    let tmp = common::tempdir();
    let Some((deb1, deb2)) = two_debs(tmp.path()) else {
        return;
    };
    run(Command::new("dpkg").arg("-i").arg(&deb1));
    let result = std::panic::catch_unwind(|| {
        assert!(Path::new("/usr/bin/pixeld").is_file());
        assert!(Path::new("/etc/systemd/system/multi-user.target.wants/pixeld.service").exists());
        // The installed binary serves with the installed config (data dir and ports of the
        // test: the unit's own are /var/lib/pixeld and the defaults).
        let data = tmp.path().join("data");
        let mut s = common::Server::start_bin(
            "/usr/bin/pixeld",
            &data,
            &[
                "--config".to_string(),
                "/etc/pixeld/pixeld.toml".to_string(),
                "--shards".to_string(),
                "1".to_string(),
                "--udp".to_string(),
                format!("127.0.0.1:{}", common::free_udp_port()),
                "--tcp".to_string(),
                format!("127.0.0.1:{}", common::free_tcp_port()),
                "--http".to_string(),
                format!("127.0.0.1:{}", common::free_tcp_port()),
            ],
        );
        assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
        s.signal("TERM");
        let (code, log) = s.wait();
        assert_eq!(code, Some(0), "{log}");
        // An operator's edit of the conffile survives an upgrade.
        let conf = "/etc/pixeld/pixeld.toml";
        let edited = format!(
            "{}\n# edited by the operator\n",
            std::fs::read_to_string(conf).unwrap()
        );
        std::fs::write(conf, &edited).unwrap();
        run(Command::new("dpkg")
            .args(["-i", "--force-confold"])
            .arg(&deb2));
        let version = text(&run(Command::new("dpkg-query").args([
            "-W",
            "-f=${Version}",
            "pixeld",
        ])));
        assert_eq!(version, "0.1.0-2");
        assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);
        // Remove keeps the config; purge removes it.
        run(Command::new("dpkg").args(["-r", "pixeld"]));
        assert!(!Path::new("/usr/bin/pixeld").exists());
        assert!(Path::new(conf).exists());
        run(Command::new("dpkg").args(["-P", "pixeld"]));
        assert!(!Path::new(conf).exists());
        assert!(!Path::new("/usr/lib/systemd/system/pixeld.service").exists());
    });
    // Leave the machine as it was, whatever happened.
    let _ = Command::new("dpkg").args(["-P", "pixeld"]).output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
