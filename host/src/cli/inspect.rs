//! `billiard-host inspect PLUGIN.so [--json]`: the plugin is loaded in a
//! child process ([`super::loader`]), never in this one.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::exit;
use super::loader::load_isolated;
use super::values::parse_duration;

const AFTER_HELP: &str = "\
Examples:
  billiard-host inspect target/release/libbilliard_math.so
  billiard-host inspect --json target/release/libbilliard_math.so | jq '.tasks[].name'
  billiard-host inspect --load-timeout 5s ./libslow_init.so
  billiard-host inspect --sandbox-report --json

Exit status: 0 the plugin loads (its tasks are printed), 2 it does not (the
reason is on stderr).";

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate).
    #[arg(required_unless_present = "sandbox_report")]
    plugin: Option<PathBuf>,
    /// Print what `--sandbox` would enforce on this kernel (each profile,
    /// and which kernel features are there) instead of a plugin.
    #[arg(long)]
    sandbox_report: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Give up loading the plugin after this long (its initialization code
    /// may block).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    load_timeout: Duration,
}

pub fn run(args: Args) -> i32 {
    if args.sandbox_report {
        return super::sandbox::report(args.json);
    }
    let Some(plugin) = &args.plugin else {
        eprintln!("error: no plugin given");
        return exit::USAGE;
    };
    let info = match load_isolated(plugin, args.load_timeout, true) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let info = &info;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, info)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        write_text(&mut out, info)
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            exit::USAGE
        }
    }
}

fn write_text(out: &mut impl Write, info: &billiard_host::PluginInfo) -> std::io::Result<()> {
    writeln!(out, "plugin:  {} {}", info.name, info.version)?;
    writeln!(out, "file:    {}", info.path.display())?;
    let c = info.kind == billiard_host::PluginKind::C;
    if c {
        writeln!(
            out,
            "abi:     {} (C plugin, {})",
            info.abi_version, info.api_version
        )?;
    } else {
        writeln!(
            out,
            "abi:     {} (billiard-plugin-api {})",
            info.abi_version, info.api_version
        )?;
    }
    writeln!(out, "tasks:   {}", info.tasks.len())?;
    for t in &info.tasks {
        writeln!(out)?;
        // Every C task gets the context: no news.
        let ctx = if t.takes_context && !c {
            "  [uses TaskContext]"
        } else {
            ""
        };
        let stream = match &t.item {
            Some(item) if t.streaming => format!("  [streams {item}]"),
            _ => String::new(),
        };
        // Registration options (`#[task(rate_limit = ...)]`), when set.
        let options = match t.options.summary() {
            o if o.is_empty() => o,
            o => format!("  [{o}]"),
        };
        writeln!(out, "  {}{ctx}{stream}{options}", t.signature())?;
        for line in t.doc.lines() {
            writeln!(out, "      {line}")?;
        }
        // The fields of the structs it takes and returns, from its JSON
        // Schemas (`inspect --json` has the schemas themselves).
        for line in t.schema.iter().flat_map(|s| s.describe()) {
            writeln!(out, "      {line}")?;
        }
    }
    if c {
        writeln!(out)?;
        writeln!(out, "schemas: none (a C plugin declares none)")?;
    } else if !info.tasks.is_empty() && info.tasks.iter().all(|t| t.schema.is_none()) {
        writeln!(out)?;
        writeln!(
            out,
            "schemas: unknown (built against an older billiard-plugin-api)"
        )?;
    }
    // After the tasks: the lines above are a stable layout tools read.
    writeln!(out)?;
    match &info.metadata {
        Some(m) => {
            if let Some(d) = &m.description {
                writeln!(out, "about:   {d}")?;
            }
            if !m.authors.is_empty() {
                writeln!(out, "authors: {}", m.authors.join(", "))?;
            }
            for (label, v) in [
                ("license", &m.license),
                ("home", &m.homepage),
                ("repo", &m.repository),
            ] {
                if let Some(v) = v {
                    writeln!(out, "{label}:{:pad$}{v}", "", pad = 9 - label.len() - 1)?;
                }
            }
        }
        None if c => {}
        None => writeln!(
            out,
            "about:   (no metadata: built against an older billiard-plugin-api)"
        )?,
    }
    // Last: the lines above keep their places for tools that read them.
    match info.kind {
        billiard_host::PluginKind::Rust => writeln!(out, "kind:    rust (billiard-plugin-api)")?,
        billiard_host::PluginKind::C => writeln!(
            out,
            "kind:    c (billiard_plugin.h: any language with a C ABI; speaks JSON only)"
        )?,
    }
    Ok(())
}
