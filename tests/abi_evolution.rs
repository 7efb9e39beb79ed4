//! ABI evolution, proven (issue 18, part 3). The root module is an
//! abi_stable prefix type: fields appended after `last_prefix_field` are
//! optional, so a plugin built against the previous layout (the frozen
//! plugin-api in tests/fixtures/old-plugin-api, ABI 2 before `metadata`
//! was appended) loads and runs in this host with the new field reported
//! absent, and a plugin of a newer layout (this plugin-api plus an appended
//! required field and the next ABI version) is refused with a clear message.
//!
//! Both fixtures are built with cargo into `target/fixtures/{old,next}`
//! (incremental on reruns); the newer one is generated from the current
//! `plugin-api/` into `target/fixtures/next-layout-src`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use billiard_host::{ErrorKind, Plugin, Pool, PoolError};
use billiard_plugin_api::ABI_VERSION;
use common::{host, stdout, workspace_root};

fn fixture_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/old-plugin-api")
}

/// `target/fixtures`: beside this run's profile directory.
fn fixtures_target() -> PathBuf {
    common::artifact_dir()
        .parent()
        .expect("the profile directory has a parent")
        .join("fixtures")
}

/// Builds `package` of the fixture workspace `manifest` into
/// `target/fixtures/<target>`. Each fixture workspace has a target
/// directory of its own: cargo hashes path dependencies by their path
/// relative to the workspace root, so two workspaces with a `plugin-api/`
/// sharing one target directory would take each other's artifacts.
fn cargo_build(manifest: &Path, package: &str, target: &str, locked: bool) -> PathBuf {
    let target = fixtures_target().join(target);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args(["-p", package, "--target-dir"])
        .arg(&target)
        // Not the workspace's: the fixtures are workspaces of their own.
        .env_remove("CARGO_TARGET_DIR");
    if locked {
        cmd.arg("--locked");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "building the fixture {package} failed ({cmd:?}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = format!("lib{}.so", package.replace('-', "_"));
    let path = target.join("debug").join(lib);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// The plugin built against the frozen, previous plugin-api.
fn old_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo_build(
            &fixture_dir().join("Cargo.toml"),
            "billiard-plugin-old-abi",
            "old",
            true,
        )
    })
}

/// Writes `content` to `path` unless it is there already (an unchanged
/// file keeps its mtime, so cargo's rebuild is incremental).
fn put(path: &Path, content: &str) {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create a fixture directory");
    }
    std::fs::write(path, content).expect("write a fixture file");
}

/// Copies the `.rs` and `Cargo.toml` files of `from` into `to`, with `edit`
/// applied to each file's text (by its path relative to `from`).
fn copy_tree(from: &Path, to: &Path, edit: &dyn Fn(&Path, String) -> String) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read a source directory") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs")
                || p.file_name().is_some_and(|n| n == "Cargo.toml")
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(from, &mut files);
    for f in files {
        let rel = f.strip_prefix(from).expect("under the source");
        let text = std::fs::read_to_string(&f).expect("read a source file");
        put(&to.join(rel), &edit(rel, text));
    }
}

fn replace_once(text: &str, old: &str, new: &str, what: &Path) -> String {
    assert_eq!(
        text.matches(old).count(),
        1,
        "{}: the anchor {old:?} is not there exactly once (plugin-api changed: update this fixture generator)",
        what.display()
    );
    text.replacen(old, new, 1)
}

/// The plugin built against the *next* layout: today's plugin-api with one
/// more appended field that a host must understand (a required one) and,
/// as the rules say for such a field, the next ABI version.
fn next_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let src = fixtures_target().join("next-layout-src");
        let next = ABI_VERSION + 1;
        copy_tree(&root.join("plugin-api"), &src.join("plugin-api"), &|rel, t| {
            if rel == Path::new("src/abi.rs") {
                let t = replace_once(
                    &t,
                    &format!("pub const ABI_VERSION: u32 = {ABI_VERSION};"),
                    &format!("pub const ABI_VERSION: u32 = {next};"),
                    rel,
                );
                replace_once(
                    &t,
                    "    pub metadata: PluginMetadata,\n",
                    "    pub metadata: PluginMetadata,\n    /// The next layout's required field.\n    pub requires_host: u32,\n",
                    rel,
                )
            } else if rel == Path::new("src/glue.rs") {
                replace_once(
                    &t,
                    "metadata: $crate::abi::PluginMetadata {",
                    "requires_host: 1,\n                    metadata: $crate::abi::PluginMetadata {",
                    rel,
                )
            } else {
                t
            }
        });
        copy_tree(
            &root.join("plugin-api-macros"),
            &src.join("plugin-api-macros"),
            &|_, t| t,
        );
        copy_tree(&fixture_dir().join("plugin"), &src.join("plugin"), &|rel, t| {
            if rel == Path::new("Cargo.toml") {
                t.replace("billiard-plugin-old-abi", "billiard-plugin-next-abi")
            } else {
                t.replace("name: \"old-abi\"", "name: \"next-abi\"")
            }
        });
        // The workspace's own package and dependency tables, and its lock
        // file as the starting point (same versions as the host).
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
        let from = manifest
            .find("[workspace.package]")
            .expect("a [workspace.package] table");
        let to = manifest[from..]
            .find("\n[profile")
            .map_or(manifest.len(), |i| from + i);
        put(
            &src.join("Cargo.toml"),
            &format!(
                "# Generated by tests/abi_evolution.rs: plugin-api with one more layout.\n[workspace]\nresolver = \"2\"\nmembers = [\"plugin-api\", \"plugin-api-macros\", \"plugin\"]\n\n{}",
                &manifest[from..to]
            ),
        );
        if !src.join("Cargo.lock").exists() {
            std::fs::copy(root.join("Cargo.lock"), src.join("Cargo.lock")).expect("Cargo.lock");
        }
        cargo_build(
            &src.join("Cargo.toml"),
            "billiard-plugin-next-abi",
            "next",
            false,
        )
    })
}

#[test]
fn the_fixture_is_the_previous_layout() {
    // If someone edits the frozen copy, the test below proves nothing.
    let abi = std::fs::read_to_string(fixture_dir().join("plugin-api/src/abi.rs"))
        .expect("the frozen abi.rs");
    assert!(
        !abi.contains("metadata"),
        "the frozen plugin-api was edited"
    );
    assert!(abi.contains(&format!("pub const ABI_VERSION: u32 = {ABI_VERSION};")));
    let ours = std::fs::read_to_string(workspace_root().join("plugin-api/src/abi.rs"))
        .expect("plugin-api/src/abi.rs");
    assert!(ours.contains("pub metadata: PluginMetadata"));
}

#[test]
fn a_plugin_of_the_previous_layout_loads_and_runs_in_this_host() {
    let p = Plugin::load(old_plugin()).expect("the old plugin loads");
    let info = p.info();
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        ("old-abi", "0.2.0")
    );
    assert_eq!(info.abi_version, ABI_VERSION);
    assert_eq!(info.metadata, None, "the appended field is absent");
    let names: Vec<&str> = info.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["square", "job", "fail"]);

    let pool = Pool::builder()
        .workers(1)
        .plugin(old_plugin())
        .build()
        .expect("a pool of the old plugin");
    let y: u64 = pool.apply("old-abi", "square", (7u64,)).expect("square");
    assert_eq!(y, 49);
    let h = pool
        .apply_async::<_, u64>("old-abi", "job", ())
        .expect("submit");
    assert_eq!(h.get(), Ok(h.id().0), "the old TaskContext layout");
    let e = pool
        .apply::<_, u64>("old-abi", "fail", ("no".to_string(),))
        .expect_err("fails");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::TaskError, "no"));
    let squares: Vec<u64> = pool
        .map("old-abi", "square", 0..100u64, 10)
        .expect("call_batch of the old layout");
    assert_eq!(squares[99], 99 * 99);
    pool.join().expect("join");
}

#[test]
fn inspect_reports_the_new_field_absent_for_an_old_plugin() {
    let old = old_plugin().to_string_lossy().into_owned();
    let out = host(["inspect", "--json", &old]);
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(info["metadata"].is_null(), "{info}");
    let text = stdout(&host(["inspect", &old]));
    assert!(
        text.contains("about:   (no metadata: built against an older billiard-plugin-api)"),
        "{text}"
    );
    // A plugin of this layout reports its Cargo.toml's.
    let math = common::plugin_str("math");
    let info: serde_json::Value =
        serde_json::from_slice(&host(["inspect", "--json", &math]).stdout).expect("JSON");
    assert_eq!(
        info["metadata"]["description"],
        "billiard-host example plugin: math"
    );
    assert_eq!(info["metadata"]["license"], "MIT OR Apache-2.0");
    let text = stdout(&host(["inspect", &math]));
    assert!(
        text.contains("\nabout:   billiard-host example plugin: math\n")
            && text.contains("\nlicense: MIT OR Apache-2.0\n"),
        "{text}"
    );
}

#[test]
fn u28_an_old_plugin_shows_no_schema() {
    // Built before `task_schema` was appended: its schemas are unknown
    // (`null`, "unknown"), never an empty schema that accepts anything.
    let p = Plugin::load_with_schemas(old_plugin()).expect("the old plugin loads");
    assert!(p.info().tasks.iter().all(|t| t.schema.is_none()));
    let old = old_plugin().to_string_lossy().into_owned();
    let out = host(["inspect", "--json", &old]);
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for t in info["tasks"].as_array().expect("tasks") {
        assert!(t["schema"].is_null(), "{t}");
    }
    let text = stdout(&host(["inspect", &old]));
    assert!(
        text.contains("\nschemas: unknown (built against an older billiard-plugin-api)\n"),
        "{text}"
    );
    // A plugin of this layout has them.
    let math = common::plugin_str("math");
    let info: serde_json::Value =
        serde_json::from_slice(&host(["inspect", "--json", &math]).stdout).expect("JSON");
    assert_eq!(info["tasks"][0]["schema"]["args"]["type"], "array");
    assert!(!stdout(&host(["inspect", &math])).contains("schemas: unknown"));
}

#[test]
fn a_plugin_of_a_newer_layout_is_refused_with_a_clear_message() {
    let next = next_plugin();
    let e = Plugin::load(next).expect_err("a plugin from the future");
    let want = format!(
        "built for billiard plugin ABI version {}, this host speaks version {ABI_VERSION}; the plugin is newer than this host",
        ABI_VERSION + 1
    );
    assert!(e.reason.contains(&want), "{e}");
    assert!(e.to_string().contains(&next.display().to_string()), "{e}");
    // The same through a pool (its zygote loads it).
    match Pool::builder().workers(1).plugin(next).build() {
        Err(PoolError::PluginLoad(e)) => {
            assert_eq!(e.kind, ErrorKind::PluginLoad);
            assert!(e.message.contains(&want), "{e}");
        }
        Err(e) => panic!("not a plugin load error: {e:?}"),
        Ok(_) => panic!("a plugin of a newer layout was loaded"),
    }
}

// The C plugin interface (plugin-api-c/EVOLUTION.md, issue 27): the
// descriptor carries its ABI version and its size, each task entry's size
// is in `task_size`; fields are only ever appended. The variants are
// tests/fixtures/c-abi/hostile.c built with -D flags (common::c_plugin).

#[test]
fn c_a_descriptor_of_the_abi_1_prefix_only_loads_with_the_appended_field_absent() {
    let path = common::c_plugin("c-prefix-only");
    let p = Plugin::load(&path).expect("the ABI 1 prefix loads");
    assert_eq!(p.info().abi_version, billiard_host::C_ABI_VERSION);
    // `description` is past its `size`: absent, though the bytes are there.
    assert_eq!(p.info().metadata, None);
    assert_eq!(p.call_json("echo", "[1]"), Ok(serde_json::json!([1])));
    // Built whole, the same source shows it.
    let whole = Plugin::load(common::c_plugin("c-hostile")).expect("loads");
    let about = whole
        .info()
        .metadata
        .as_ref()
        .and_then(|m| m.description.clone());
    assert_eq!(
        about.as_deref(),
        Some("a descriptor of the PREFIX_ONLY variant never shows this")
    );
}

#[test]
fn c_a_descriptor_and_task_entries_with_appended_fields_load_and_run() {
    // A newer header's plugin: a longer descriptor and longer task entries,
    // their sizes saying so. This host reads what it knows.
    let p = Plugin::load(common::c_plugin("c-appended")).expect("a newer layout loads");
    let names: Vec<&str> = p.info().tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "echo",
            "stash",
            "use_stash",
            "not_json",
            "bad_status",
            "emit_not_json",
            "null_write"
        ]
    );
    assert!(p.info().tasks[5].streaming);
    assert_eq!(p.call_json("echo", "[2, 3]"), Ok(serde_json::json!([2, 3])));
}

#[test]
fn c_a_descriptor_of_another_abi_version_is_refused_naming_both() {
    let path = common::c_plugin("c-future-version");
    let next = billiard_host::C_ABI_VERSION + 1;
    let want = format!(
        "built for billiard C plugin ABI version {next}, this host speaks C plugin ABI version {}; the plugin is newer than this host",
        billiard_host::C_ABI_VERSION
    );
    let e = Plugin::load(&path).expect_err("refused");
    assert!(e.reason.contains(&want), "{e}");
    let out = host(["inspect", path.to_str().expect("utf-8")]);
    assert_eq!(common::exit_code(&out), 2);
    assert!(
        common::stderr(&out).contains(&want),
        "{}",
        common::stderr(&out)
    );
    // A size shorter than the ABI 1 prefix is refused, saying so.
    let e = Plugin::load(common::c_plugin("c-short-size")).expect_err("refused");
    assert!(
        e.reason
            .contains("descriptor says it is 12 bytes, shorter than the"),
        "{e}"
    );
}
