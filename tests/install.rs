//! What docs/operations.md tells an operator to run (issue 28, item 13):
//! `cargo install --locked --path host` installs a working binary, and
//! `billiard-host manpages DIR` writes a page per subcommand from the
//! clap definitions.
//!
//! The install goes into a temporary `--root`, built in this workspace's
//! target directory with the test profile's optimisation (`--debug`), so
//! it reuses what `cargo test` already compiled instead of a second
//! release build.

mod common;

use std::process::Command;

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One test, not two: the install may relink `target/debug/billiard-host`
/// (the binary every other test here runs), so nothing runs it meanwhile.
#[test]
fn u28_man_pages_then_cargo_install_from_the_docs() {
    man_pages_cover_every_subcommand_and_flag();
    cargo_install_from_the_docs_gives_a_working_binary();
}

fn cargo_install_from_the_docs_gives_a_working_binary() {
    let docs = std::fs::read_to_string(common::workspace_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    assert!(
        docs.contains("cargo install --locked --path host"),
        "the documented install command changed: update this test with it"
    );
    let root = common::celery::unique_temp_dir("install");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(common::workspace_root())
        .args(["install", "--locked", "--path", "host", "--debug", "--root"])
        .arg(&root)
        .arg("--target-dir")
        .arg(common::workspace_root().join("target"))
        .output()
        .expect("run cargo install");
    ok(&out, "cargo install --locked --path host");
    let bin = root.join("bin/billiard-host");
    assert!(bin.is_file(), "no {}", bin.display());
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("run it");
    ok(&out, "billiard-host --version");
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with("billiard-host ") && v.contains(env!("CARGO_PKG_VERSION")),
        "{v}"
    );
    // The installed binary does the main job on the bundled example.
    let out = Command::new(&bin)
        .args(["run"])
        .arg(common::plugin("math"))
        .args(["--task", "square", "--args", "[7]"])
        .output()
        .expect("run it");
    ok(&out, "billiard-host run");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""ok":49"#),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn man_pages_cover_every_subcommand_and_flag() {
    let dir = common::celery::unique_temp_dir("man");
    let out = common::host(["manpages", dir.to_str().expect("utf-8 temp dir")]);
    ok(&out, "billiard-host manpages");
    let page = |name: &str| -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let main = page("billiard-host.1");
    assert!(
        main.starts_with(".ie") || main.contains(".TH billiard-host"),
        "{main}"
    );
    for sub in [
        "run",
        "inspect",
        "check",
        "worker",
        "submit",
        "new",
        "completions",
    ] {
        let p = page(&format!("billiard-host-{sub}.1"));
        assert!(
            p.contains(&format!(".TH billiard-host-{sub}")),
            "{sub}: {p}"
        );
        // Every long flag of the subcommand's --help is in its page.
        let help = common::host([sub, "--help"]);
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| {
                w.trim_end_matches([',', '.', ')', '`', ':'])
                    .split('=')
                    .next()
                    .unwrap_or(w)
            })
            .filter(|w| {
                w.chars()
                    .skip(2)
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        {
            // roff escapes '-' as '\-'.
            let escaped = flag.replace('-', "\\-");
            assert!(
                p.contains(&escaped) || p.contains(flag),
                "billiard-host-{sub}.1 lacks {flag}"
            );
        }
    }
    // A directory it cannot write is a clear error, exit 2.
    let out = common::host(["manpages", "/proc/no-such-dir/man1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot write man pages"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
