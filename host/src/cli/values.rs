//! The command line's values: parsers of durations, sizes and counts
//! (every number from outside is range-checked here, where it enters) and
//! the file identities that keep an output from overwriting an input. A
//! leaf: it imports nothing from the other `cli` modules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use billiard_host::bounds;

/// The most workers a pool accepts.
pub(crate) const MAX_WORKERS: usize = 512;

pub(crate) fn parse_workers(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    match n {
        0 => Err("a pool needs at least 1 worker".into()),
        n if n > MAX_WORKERS => Err(format!("at most {MAX_WORKERS} workers")),
        n => Ok(n),
    }
}

pub(crate) fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>().map_err(|e| e.to_string())? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (e.g. 200MiB, 1GB, 4096)"))?;
    match size.as_u64() {
        0 => Err("must be more than 0 bytes".into()),
        n => Ok(n),
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 2s, 1m)"))?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    if d > bounds::MAX_DURATION {
        return Err(format!(
            "{} is longer than the longest accepted duration ({})",
            humantime::format_duration(d),
            bounds::MAX_DURATION_TEXT
        ));
    }
    Ok(d)
}

/// What a path names, for telling whether two paths are one file: the
/// inode of an existing file (symlinks followed, hard links included), else
/// the absolute path (its directory resolved) it would be created at.
#[derive(PartialEq, Eq)]
enum FileId {
    Inode(u64, u64),
    Path(PathBuf),
}

/// True when the two paths name one file (or would create one file).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    matches!((file_id(a), file_id(b)), (Some(x), Some(y)) if x == y)
}

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(path) {
        return Some(FileId::Inode(m.dev(), m.ino()));
    }
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(FileId::Path(std::fs::canonicalize(dir).ok()?.join(name)))
}

/// The identity of an open standard stream, when it is a regular file
/// (`< jobs.jsonl`, `>> jobs.jsonl`).
fn stream_id(fd: std::os::fd::BorrowedFd<'_>) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let m = f.metadata().ok()?;
    m.is_file().then(|| FileId::Inode(m.dev(), m.ino()))
}

/// The files a batch reads and writes, for [`check_distinct_files`].
pub(crate) struct BatchFiles<'a> {
    /// The input (`-`: standard input); `None` with `--args` (no file).
    pub input: Option<&'a Path>,
    /// `--output` (`None` or `-`: standard output).
    pub output: Option<&'a Path>,
    /// `--stats-json`.
    pub stats: Option<&'a Path>,
    /// The plugin files.
    pub plugins: &'a [PathBuf],
}

/// Refuses `--output` or `--stats-json` naming the input file (directly,
/// through a symlink or a hard link) or a plugin file, and one file named
/// by both. `run` and `submit` (and `run --broker`) check this before
/// anything is opened for writing.
pub(crate) fn check_distinct_files(f: &BatchFiles<'_>) -> Result<(), String> {
    use std::os::fd::AsFd;
    let named = |p: Option<&Path>| p.filter(|p| p.as_os_str() != "-").map(Path::to_path_buf);
    let input = match f.input {
        Some(p) if p.as_os_str() == "-" => {
            stream_id(std::io::stdin().as_fd()).map(|id| (id, "the standard input".to_string()))
        }
        Some(p) => file_id(p).map(|id| (id, format!("--input {}", p.display()))),
        None => None,
    };
    let output = match named(f.output) {
        Some(p) => file_id(&p).map(|id| (id, format!("--output {}", p.display()))),
        None => {
            stream_id(std::io::stdout().as_fd()).map(|id| (id, "the standard output".to_string()))
        }
    };
    let stats = named(f.stats)
        .and_then(|p| file_id(&p).map(|id| (id, format!("--stats-json {}", p.display()))));
    for (written, what) in [&output, &stats].into_iter().flatten() {
        if let Some((id, input)) = &input {
            if id == written {
                return Err(format!(
                    "{what} is the input file ({input}): writing it would destroy the jobs \
                     before they are read; write the results to another file"
                ));
            }
        }
    }
    for plugin in f.plugins {
        let Some(id) = file_id(plugin) else { continue };
        for (written, what) in [&output, &stats].into_iter().flatten() {
            if &id == written {
                return Err(format!(
                    "{what} is the plugin file {}: writing it would destroy the plugin",
                    plugin.display()
                ));
            }
        }
    }
    if let (Some((a, what_a)), Some((b, what_b))) = (&output, &stats) {
        if a == b {
            return Err(format!(
                "{what_a} and {what_b} are the same file: the statistics would \
                 overwrite the results; give them different files"
            ));
        }
    }
    Ok(())
}
