//! `billiard-host new NAME`: creates a plugin crate that builds and passes
//! its own tests anywhere, with nothing edited by hand.
//!
//! The files are those of `examples/plugin-template` (embedded in the
//! binary with `include_str!`, so the template in the repository, which
//! the workspace builds and tests, is the one `new` writes: no twin). They
//! are renamed (`plugin-template` / `plugin_template` become the new names),
//! the two `path` dependencies are pointed at a billiard-host checkout (the
//! crates are not on a registry yet) and the manifest gets a `[workspace]`
//! table of its own, so the crate builds outside any other workspace.
//!
//! `--lang c` writes a C plugin instead (issue 27): the files of
//! `examples/c-plugin-template` and the header
//! `plugin-api-c/include/billiard_plugin.h`, renamed; it needs no checkout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::exit;

const AFTER_HELP: &str = "\
Examples:
  billiard-host new my-plugin                       # creates ./my-plugin
  billiard-host new my-plugin --path ~/src/my-plugin
  billiard-host new my-plugin --api-path ~/src/billiard-host
  cd my-plugin && cargo test && cargo build --release
  billiard-host run target/release/libmy_plugin.so --task count_primes --args '[100]'
  billiard-host new my-c-plugin --lang c            # a C plugin: a .c file and a Makefile
  cd my-c-plugin && make && make check

The crate's billiard-plugin-api and billiard-testing dependencies are `path`
dependencies on a billiard-host checkout: by default the one this executable
was built in (found from its location), else --api-path DIR.";

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The crate's name (letters, digits, `-`, `_`); also the plugin's name.
    name: String,
    /// The directory to create (default: ./NAME). It must not exist, or be
    /// empty.
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// The billiard-host checkout the crate's dependencies point at (the
    /// directory holding plugin-api/ and testing/; its plugin-api/ directory
    /// also works). Default: the checkout this executable was built in.
    #[arg(long, value_name = "DIR")]
    api_path: Option<PathBuf>,
    /// The plugin's language: `rust` (a cargo crate) or `c` (one .c file,
    /// the billiard_plugin.h header and a Makefile; no checkout needed).
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
}

/// What `new` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    /// A cargo crate depending on billiard-plugin-api.
    Rust,
    /// A C plugin (billiard_plugin.h).
    C,
}

/// A template's files, `(path in the new plugin, contents)`: each path
/// under `$dir` (from the checkout's root), or `path = "from"` where the
/// file is named otherwise in the checkout.
macro_rules! template_files {
    ($dir:literal: $($to:literal $(= $from:literal)?),* $(,)?) => {
        &[$((
            $to,
            include_str!(concat!("../../../", $dir, "/", template_files!(@from $to $($from)?))),
        )),*]
    };
    (@from $to:literal) => { $to };
    (@from $to:literal $from:literal) => { $from };
}

/// The C template's name (`examples/c-plugin-template`).
const C_TEMPLATE: &str = "c_plugin_template";

/// The C template's files: path in the new plugin, contents.
const C_FILES: &[(&str, &str)] = template_files!("examples/c-plugin-template":
    "plugin.c", "Makefile", "cases.jsonl", "README.md", ".gitignore" = "gitignore",
    "include/billiard_plugin.h" = "../../plugin-api-c/include/billiard_plugin.h");

/// The template's name as a package and as a crate (`examples/plugin-template`).
const TEMPLATE_PACKAGE: &str = "plugin-template";
const TEMPLATE_CRATE: &str = "plugin_template";

/// The template files: path in the new crate, contents.
const FILES: &[(&str, &str)] = template_files!("examples/plugin-template":
    "Cargo.toml", "README.md", ".gitignore", "cases.jsonl", "src/lib.rs", "tests/tasks.rs",
    "tests/agreement.rs", "tests/cases.rs");

/// The template manifest's in-repository dependency paths, replaced by
/// absolute ones.
const API_DEP: &str = r#"path = "../../plugin-api""#;
const TESTING_DEP: &str = r#"path = "../../testing""#;

/// `billiard-host new`
pub fn run(args: Args) -> i32 {
    match create(&args) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::USAGE
        }
    }
}

fn create(args: &Args) -> Result<()> {
    if args.lang == Lang::C {
        return create_c(args);
    }
    check_name(&args.name)?;
    let (checkout, how) = match &args.api_path {
        Some(dir) => (
            checkout_at(dir).with_context(|| format!("--api-path {}", dir.display()))?,
            "chosen with --api-path",
        ),
        None => (
            find_checkout()?,
            "the checkout this billiard-host was built in",
        ),
    };
    let dir = write_tree(args, files(&args.name, &checkout)?)?;
    // The checkout's lock file: the new crate starts with the versions the
    // checkout is built and tested with (cargo drops the entries it does
    // not need on the first build).
    let lock = checkout.join("Cargo.lock");
    if lock.is_file() {
        let _ = std::fs::copy(&lock, dir.join("Cargo.lock"));
    }

    let exe = this_exe();
    let lib = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name(&args.name),
        std::env::consts::DLL_SUFFIX
    );
    eprintln!("Created plugin crate `{}` in {}", args.name, dir.display());
    eprintln!(
        "Its dependencies billiard-plugin-api and billiard-testing are paths into the \
         billiard-host checkout {} ({how}; --api-path DIR chooses another).",
        checkout.display()
    );
    eprintln!("Next:");
    eprintln!("  cd {}", shell_word(&dir.display().to_string()));
    eprintln!("  cargo test");
    eprintln!("  cargo build --release");
    eprintln!(
        "  {} run target/release/{lib} --task count_primes --args '[100]'",
        shell_word(&exe)
    );
    Ok(())
}

/// `new --lang c`: the C template, renamed; the plugin's name is NAME with
/// `-` as `_` (a C plugin's name, and its library's).
fn create_c(args: &Args) -> Result<()> {
    check_c_name(&args.name)?;
    let name = crate_name(&args.name);
    let files = C_FILES
        .iter()
        .map(|(rel, text)| (*rel, text.replace(C_TEMPLATE, &name)));
    let dir = write_tree(args, files)?;
    let exe = this_exe();
    eprintln!("Created C plugin `{name}` in {}", dir.display());
    eprintln!("Next:");
    eprintln!("  cd {}", shell_word(&dir.display().to_string()));
    eprintln!("  make");
    eprintln!(
        "  {} check ./lib{name}.so --cases cases.jsonl",
        shell_word(&exe)
    );
    eprintln!(
        "  {} run ./lib{name}.so --task square --args '[7]'",
        shell_word(&exe)
    );
    Ok(())
}

/// A C plugin's name: ASCII letters, digits, `-` and `_`, from a letter.
fn check_c_name(name: &str) -> Result<()> {
    check_chars(name, "plugin", |c| c.is_ascii_alphabetic(), "my-c-plugin")
}

/// A `what` name (plugin, crate) of at most MAX_NAME characters, of ASCII
/// letters, digits, `-` and `_`, whose first character passes `first`.
fn check_chars(name: &str, what: &str, first: fn(char) -> bool, example: &str) -> Result<()> {
    if name.chars().count() > MAX_NAME {
        bail!(
            "`{}...` is {} characters long: a {what} name has at most {MAX_NAME}",
            name.chars().take(20).collect::<String>(),
            name.chars().count()
        );
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let starts_well = name.chars().next().is_some_and(first);
    if !ok_chars || !starts_well {
        bail!(
            "`{name}` is not a usable {what} name: use ASCII letters, digits, `-` and `_`, \
             starting with a letter (e.g. {example})"
        );
    }
    Ok(())
}

/// Rust's keywords in every edition (2015 to 2024): the strict ones of
/// every edition, then those strict since 2018 (`async`, `await`, `dyn`),
/// then the reserved ones (`try` since 2018, `gen` since 2024). A crate
/// named so cannot be named in Rust code (`use async::...` does not
/// compile), so the new crate's own tests could not build.
const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// The longest name `new` accepts: crates.io's limit, and far below what
/// a file name may take.
const MAX_NAME: usize = 64;

/// A cargo package name that also works as the plugin's name.
fn check_name(name: &str) -> Result<()> {
    check_chars(
        name,
        "crate",
        |c| c.is_ascii_alphabetic() || c == '_',
        "my-plugin",
    )?;
    const TAKEN: &[&str] = &[
        "billiard-plugin-api",
        "billiard-testing",
        "billiard-host",
        "serde",
        "serde_json",
        "proptest",
        "test",
        "std",
        "core",
        "alloc",
        "proc_macro",
        "self",
        "crate",
        "super",
    ];
    let krate = crate_name(name);
    if KEYWORDS.contains(&krate.as_str()) {
        bail!(
            "`{name}` is a Rust keyword: the crate could not be named in Rust code \
             (`use {krate}::...` does not compile); choose another name (e.g. {krate}-plugin)"
        );
    }
    if TAKEN.contains(&name) || TAKEN.contains(&krate.as_str()) {
        bail!("`{name}` is taken (by a dependency of the crate or by Rust): choose another name");
    }
    if krate.chars().all(|c| c == '_') && krate.len() == 1 {
        bail!("`{name}` is not a usable crate name: `_` alone is not a name");
    }
    Ok(())
}

fn crate_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Writes `files` (path in the new plugin, contents) into the new plugin's
/// directory (`--path`, or ./NAME), which must not exist or be empty;
/// returns that directory, absolute.
fn write_tree(
    args: &Args,
    files: impl IntoIterator<Item = (&'static str, String)>,
) -> Result<PathBuf> {
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    prepare_dir(&dir)?;
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// This executable's path, for the next steps printed (`billiard-host` if
/// it cannot be known).
fn this_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "billiard-host".into())
}

/// The directory `dir` exists and is empty afterwards (created if needed).
fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty: choose another --path",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{} exists and is not a directory", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create the crate in {}", dir.display())),
    }
}

/// The files of the new crate, renamed and pointed at `checkout`.
fn files(name: &str, checkout: &Path) -> Result<Vec<(&'static str, String)>> {
    let krate = crate_name(name);
    let mut out = Vec::with_capacity(FILES.len());
    for (rel, text) in FILES {
        let mut text = text
            .replace(TEMPLATE_PACKAGE, name)
            .replace(TEMPLATE_CRATE, &krate);
        if *rel == "Cargo.toml" {
            text = manifest(&text, checkout)?;
        }
        out.push((*rel, text));
    }
    Ok(out)
}

/// The template's manifest, standalone: absolute dependency paths, a
/// workspace of its own, and a header that says so.
fn manifest(template: &str, checkout: &Path) -> Result<String> {
    let dep = |sub: &str| format!("path = {}", toml_string(&checkout.join(sub)));
    // The header comment speaks of the template; the new crate gets its own.
    let body = template
        .find("[package]")
        .map_or(template, |at| &template[at..]);
    if !body.contains(API_DEP) || !body.contains(TESTING_DEP) {
        bail!("internal error: the plugin template's Cargo.toml lost its dependency paths");
    }
    Ok(format!(
        "# Created by `billiard-host new`. billiard-plugin-api and billiard-testing\n\
         # are not on crates.io yet: they are paths into the billiard-host checkout\n\
         # {}.\n\
         {}\n\
         # A workspace of its own: the crate builds wherever it is.\n\
         [workspace]\n",
        checkout.display(),
        body.replace(API_DEP, &dep("plugin-api"))
            .replace(TESTING_DEP, &dep("testing"))
    ))
}

/// A TOML basic string.
fn toml_string(p: &Path) -> String {
    let mut s = String::from("\"");
    for c in p.display().to_string().chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// `word`, quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether `dir` is a billiard-host checkout: its `plugin-api/` and
/// `testing/` are the two crates a plugin depends on.
fn is_checkout(dir: &Path) -> bool {
    let is_package = |sub: &str, name: &str| {
        std::fs::read_to_string(dir.join(sub).join("Cargo.toml"))
            .is_ok_and(|t| t.contains(&format!("name = \"{name}\"")))
    };
    is_package("plugin-api", "billiard-plugin-api") && is_package("testing", "billiard-testing")
}

/// The checkout named by `--api-path`: the checkout itself or its
/// `plugin-api/` directory.
fn checkout_at(dir: &Path) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    if is_checkout(&dir) {
        return Ok(dir);
    }
    if let Some(parent) = dir.parent() {
        if dir.file_name().is_some_and(|n| n == "plugin-api") && is_checkout(parent) {
            return Ok(parent.to_path_buf());
        }
    }
    bail!(
        "not a billiard-host checkout: {} has no plugin-api/ (package billiard-plugin-api) \
         and testing/ (package billiard-testing)",
        dir.display()
    )
}

/// The checkout this executable comes from: a directory above the
/// executable (`<checkout>/target/release/billiard-host`), else the one it
/// was compiled in, if that is still there.
fn find_checkout() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let exe = exe.as_ref().and_then(|e| e.canonicalize().ok()).or(exe);
    if let Some(found) = exe
        .as_deref()
        .and_then(|e| e.ancestors().skip(1).find(|d| is_checkout(d)))
    {
        return Ok(found.to_path_buf());
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    if let Some(dir) = built_in.filter(|d| is_checkout(d)) {
        return Ok(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
    }
    bail!(
        "cannot find a billiard-host checkout for the new crate's dependencies: this \
         executable ({}) is not inside one, and the one it was built in ({}) is gone. \
         Pass --api-path DIR (a clone of the billiard-host repository: the directory \
         holding plugin-api/ and testing/)",
        exe.as_deref()
            .map_or("unknown".into(), |e| e.display().to_string()),
        built_in.map_or("unknown".into(), |d| d.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_renamed_and_standalone() {
        let files = files("my-plugin", Path::new("/opt/bh \"x\"")).unwrap();
        let manifest = &files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
        assert!(manifest.contains("name = \"my-plugin\""), "{manifest}");
        assert!(
            manifest.contains(r#"path = "/opt/bh \"x\"/plugin-api""#),
            "{manifest}"
        );
        assert!(
            manifest.contains(r#"path = "/opt/bh \"x\"/testing""#),
            "{manifest}"
        );
        assert!(manifest.trim_end().ends_with("[workspace]"), "{manifest}");
        assert!(manifest.contains(r#"crate-type = ["cdylib", "rlib"]"#));
        for (path, text) in &files {
            assert!(!text.contains("../../"), "{path} keeps a relative path");
            assert!(!text.contains("plugin-template"), "{path} keeps the name");
            assert!(!text.contains("plugin_template"), "{path} keeps the name");
        }
        let lib = &files.iter().find(|(p, _)| *p == "src/lib.rs").unwrap().1;
        assert!(lib.contains(r#"export_plugin!(name: "my-plugin""#), "{lib}");
        let tests = &files
            .iter()
            .find(|(p, _)| *p == "tests/tasks.rs")
            .unwrap()
            .1;
        assert!(tests.contains("use my_plugin::{Sample, Summary};"));
    }

    #[test]
    fn names() {
        for good in ["my-plugin", "a", "x_1", "_y"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "1abc",
            "my plugin",
            "a/b",
            "été",
            "serde",
            "billiard-testing",
            "std",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/a/b-c.so"), "/a/b-c.so");
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
    }
}
