//! The diff of what a case expected and what it got: both pretty-printed
//! as JSON, compared line by line (Myers' algorithm, from `similar`).

use std::time::{Duration, Instant};

use serde_json::Value;
use similar::{Algorithm, ChangeTag};

/// Most lines of one diff; the rest is summed up in a last line.
pub const MAX_DIFF_LINES: usize = 200;

/// How long aligning two huge values may take before `similar` settles
/// for a coarser (still correct) diff. Measured (release): 50,000 lines
/// with one changed diff in 0.5 ms; with 5,000 changed, the deadline is
/// hit and most lines show as changed.
const DIFF_DEADLINE: Duration = Duration::from_millis(100);

/// Which side a line of a diff comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// In both.
    Same,
    /// Only in what was expected.
    Expected,
    /// Only in what the task gave.
    Got,
}

impl Change {
    /// The line's marker: `' '`, `'-'` (expected) or `'+'` (got).
    pub fn marker(self) -> char {
        match self {
            Change::Same => ' ',
            Change::Expected => '-',
            Change::Got => '+',
        }
    }
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    /// Where the line comes from.
    pub change: Change,
    /// The line, without its marker or a newline.
    pub text: String,
}

impl std::fmt::Display for DiffLine {
    /// The marker, a space and the text: `- "ok": 4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.change.marker(), self.text)
    }
}

/// The diff of `expected` and `got`, pretty-printed JSON, one entry per
/// line (at most [`MAX_DIFF_LINES`], then one `... (N more lines)` line).
pub fn diff(expected: &Value, got: &Value) -> Vec<DiffLine> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let (e, g) = (pretty(expected), pretty(got));
    let mut out = diff_lines(&e, &g);
    if out.len() > MAX_DIFF_LINES {
        let more = out.len() - MAX_DIFF_LINES;
        out.truncate(MAX_DIFF_LINES);
        out.push(DiffLine {
            change: Change::Same,
            text: format!("... ({more} more lines)"),
        });
    }
    out
}

/// A line diff of two texts.
fn diff_lines(a: &str, b: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let ops = similar::capture_diff_slices_deadline(
        Algorithm::Myers,
        &a,
        &b,
        crate::bounds::deadline(Instant::now(), DIFF_DEADLINE),
    );
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    for op in &ops {
        for change in op.iter_changes(&a, &b) {
            let change_of = match change.tag() {
                ChangeTag::Equal => Change::Same,
                ChangeTag::Delete => Change::Expected,
                ChangeTag::Insert => Change::Got,
            };
            out.push(DiffLine {
                change: change_of,
                text: change.value().to_string(),
            });
        }
    }
    out
}
