//! `billiard-host inspect PLUGIN.so [--json]`

use std::io::Write;
use std::path::PathBuf;

use billiard_host::Plugin;

use super::exit;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate).
    plugin: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> i32 {
    let plugin = match Plugin::load(&args.plugin) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let info = plugin.info();
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
    writeln!(
        out,
        "abi:     {} (billiard-plugin-api {})",
        info.abi_version, info.api_version
    )?;
    writeln!(out, "tasks:   {}", info.tasks.len())?;
    for t in &info.tasks {
        writeln!(out)?;
        let ctx = if t.takes_context {
            "  [uses TaskContext]"
        } else {
            ""
        };
        writeln!(out, "  {}{ctx}", t.signature())?;
        for line in t.doc.lines() {
            writeln!(out, "      {line}")?;
        }
    }
    Ok(())
}
