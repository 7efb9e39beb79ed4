//! The README's shell commands work in the order a reader meets them
//! (issue 28, item 2).
//!
//! Every ```` ```sh ```` block of README.md is run, in order, from the
//! workspace root with the workspace's own `target/` (the README's paths
//! say `target/release/...`; its release build is incremental, so an up to
//! date tree costs seconds), unless [`SKIP`] names it with the reason it
//! cannot run in a test: a new block runs by default. `billiard-host` in a
//! block is the binary the README's release build made (`target/release` is
//! first on `PATH`, as after `cargo install --path host`). A comment line
//! `# {...}` in a block is output the README promises: stdout must hold it.
//!
//! The README's Rust blocks are not compiled here: they are fragments
//! (statements with `?` outside a function, `...` elisions), and compiling
//! each would link `billiard-host` once per block, minutes on this machine.
//! The API they show is compiled and run by `examples/embed.rs` (run below,
//! through the README's own `cargo run --example embed`) and tested in
//! tests/pool.rs, tests/process.rs and tests/async_api.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Blocks that are not run, by a text their first command line starts with,
/// and why.
const SKIP: &[(&str, &str)] = &[
    (
        "./scripts/test",
        "it runs the whole test suite, this test included (it would recurse)",
    ),
    (
        "redis-server --port 6379",
        "starts a Redis daemon on the fixed port 6379 and a worker that runs \
         until stopped; the Celery tests run both on free ports (tests/celery*.rs)",
    ),
    (
        "./target/release/billiard-host worker",
        "a worker that runs until stopped, Flower and `celery` against a \
         live fleet on port 6379 (tests/celery*.rs, tests/flower.rs)",
    ),
    (
        "billiard-host submit --broker",
        "needs the Redis and the worker of the blocks above running \
         (tests/celery*.rs submit to a worker of their own)",
    ),
    (
        "/path/to/billiard-host/target/release/billiard-host new",
        "the five-minute plugin walk-through (this block and the next ones) \
         runs in a directory of the reader's and edits files by hand between \
         commands; tests/new.rs follows it outside the repository",
    ),
    (
        "cargo test",
        "the walk-through's crate (see `new`): tests/new.rs",
    ),
    (
        "cargo build --release        # target/release/libmy_plugin.so",
        "the walk-through's crate (see `new`): tests/new.rs",
    ),
    (
        "billiard-host inspect target/release/libmy_plugin.so",
        "the walk-through's crate (see `new`): tests/new.rs",
    ),
    (
        "billiard-host check target/release/libmy_plugin.so",
        "the walk-through's crate, with the cases.jsonl the reader writes: \
         tests/new.rs and tests/check.rs",
    ),
    (
        "billiard-host run target/release/libmy_plugin.so --task summarize",
        "the walk-through's crate after the reader added `summarize` by hand",
    ),
];

/// A ```` ```sh ```` block: the README line its code starts on, its text.
struct Block {
    line: usize,
    code: String,
}

fn sh_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match open.as_mut() {
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(open.take()),
            Some(b) => {
                b.code.push_str(line);
                b.code.push('\n');
            }
            None if line.trim() == "```sh" => {
                open = Some(Block {
                    line: i + 2,
                    code: String::new(),
                })
            }
            None => {}
        }
    }
    assert!(open.is_none(), "README.md ends inside a ```sh block");
    blocks
}

/// The block's first command line.
fn first_line(block: &Block) -> &str {
    block
        .code
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// `line` is `start` or starts with `start` and a space: whole words.
fn starts_with_words(line: &str, start: &str) -> bool {
    line.trim_end() == start || line.starts_with(&format!("{start} "))
}

fn skip_reason(block: &Block) -> Option<&'static str> {
    let first = first_line(block);
    SKIP.iter()
        .find(|(start, _)| starts_with_words(first, start))
        .map(|(_, why)| *why)
}

/// `PATH` with the README's release binaries and this test's cargo first.
fn path_env(root: &Path) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = vec![root.join("target/release")];
    if let Some(cargo_dir) = Path::new(env!("CARGO")).parent() {
        dirs.push(cargo_dir.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH entries have no ':'")
}

#[test]
fn readme_shell_blocks_run_in_order() {
    let root = common::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = sh_blocks(&readme);
    assert!(!blocks.is_empty(), "no ```sh block in README.md");
    // A SKIP entry that names no block is stale: the README changed under it.
    for (start, _) in SKIP {
        assert!(
            blocks
                .iter()
                .any(|b| starts_with_words(first_line(b), start)),
            "SKIP names `{start}`, which no ```sh block of README.md starts with"
        );
    }
    let mut ran = 0;
    for block in &blocks {
        if let Some(why) = skip_reason(block) {
            eprintln!("README.md:{}: not run: {why}", block.line);
            continue;
        }
        eprintln!("README.md:{}: running", block.line);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block.code])
            .current_dir(&root)
            .env("PATH", path_env(&root))
            // The reader's setting: the default target dir, no overrides.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("BILLIARD_HOST_EXE")
            .env_remove("RUST_LOG")
            .env_remove("BILLIARD_LOG")
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "README.md:{}: the block failed ({}):\n{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            block.line,
            out.status,
            block.code
        );
        for promised in block.code.lines().filter_map(|l| l.strip_prefix("# {")) {
            let promised = format!("{{{promised}");
            assert!(
                stdout.contains(&promised),
                "README.md:{}: the output lacks `{promised}`:\n{stdout}",
                block.line
            );
        }
        ran += 1;
    }
    assert!(ran > 0, "every ```sh block of README.md is skipped");
}

/// The README's `cargo run --example embed` right after its release build:
/// a fresh clone has only `target/release/libbilliard_math.so`, and the
/// example (built in debug) must find it. The workspace's own `target/`
/// also holds the tests' debug plugins, so this runs the example from a
/// scratch tree laid out like a fresh clone's.
#[test]
fn readme_embed_example_finds_the_release_plugin_on_a_fresh_clone() {
    let clone = common::scratch("fresh-clone");
    let examples = clone.join("target/debug/examples");
    let release = clone.join("target/release");
    std::fs::create_dir_all(&examples).unwrap();
    std::fs::create_dir_all(&release).unwrap();
    let exe = examples.join("embed");
    std::fs::copy(common::example("embed"), &exe).unwrap();
    std::os::unix::fs::symlink(common::plugin("math"), release.join("libbilliard_math.so"))
        .unwrap();
    let out = Command::new(&exe)
        .current_dir(&clone)
        .env_remove("BILLIARD_HOST_EXE")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("square(3) = 9"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // With no plugin anywhere it says how to build one.
    std::fs::remove_file(release.join("libbilliard_math.so")).unwrap();
    let out = Command::new(&exe).current_dir(&clone).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cargo build --release --workspace"),
        "{stderr}"
    );
}

#[test]
fn readme_blocks_are_found_and_unknown_ones_run() {
    let text = "a\n```sh\necho one\n```\n```rust\nlet x = 1;\n```\n```sh\n./scripts/test\n```\n";
    let blocks = sh_blocks(text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].line, 3);
    assert_eq!(blocks[0].code, "echo one\n");
    assert!(skip_reason(&blocks[0]).is_none(), "a new block runs");
    assert!(skip_reason(&blocks[1]).is_some());
    // Whole words: `cargo test` skips `cargo test --workspace` (it would
    // recurse too), not `cargo tests-of-mine`.
    let more = sh_blocks("```sh\ncargo tests-of-mine\n```\n```sh\ncargo test --workspace\n```\n");
    assert!(skip_reason(&more[0]).is_none(), "a new command runs");
    assert!(skip_reason(&more[1]).is_some());
}
