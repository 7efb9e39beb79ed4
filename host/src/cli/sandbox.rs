//! `inspect --sandbox-report`: what `--sandbox` would enforce on this
//! kernel. The sandbox flags themselves are in `pool_flags.rs`.

/// `inspect --sandbox-report [--json]`: what this kernel offers and what
/// each profile would enforce here.
pub(crate) fn report(json: bool) -> i32 {
    use std::io::Write;
    let r = billiard_host::sandbox::kernel_report();
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &r)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        write_report(&mut out, &r)
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => super::exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => super::exit::OK,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            super::exit::USAGE
        }
    }
}

fn write_report(
    out: &mut impl std::io::Write,
    r: &billiard_host::sandbox::KernelReport,
) -> std::io::Result<()> {
    let yes = |x: &Result<(), String>| match x {
        Ok(()) => "yes".to_string(),
        Err(e) => format!("no ({e})"),
    };
    writeln!(out, "kernel:             {}", r.kernel)?;
    writeln!(
        out,
        "running as root:    {}",
        if r.root { "yes" } else { "no" }
    )?;
    writeln!(out, "network namespace:  {}", yes(&r.network_namespace))?;
    writeln!(out, "mount namespace:    {}", yes(&r.mount_namespace))?;
    writeln!(out, "pid namespace:      {}", yes(&r.pid_namespace))?;
    writeln!(out, "ipc namespace:      {}", yes(&r.ipc_namespace))?;
    writeln!(out, "read-only remount:  {}", yes(&r.read_only_remount))?;
    writeln!(
        out,
        "seccomp filter:     {}",
        if r.seccomp { "yes" } else { "no" }
    )?;
    writeln!(
        out,
        "per-ns pid_max:     {}",
        if r.per_namespace_pid_max {
            "yes (Linux 6.14+)"
        } else {
            "no"
        }
    )?;
    writeln!(out, "landlock:           {}", r.landlock)?;
    writeln!(
        out,
        "LSMs:               {}",
        if r.lsm.is_empty() {
            "(none listed)"
        } else {
            &r.lsm
        }
    )?;
    for (name, p) in &r.profiles {
        writeln!(out)?;
        match p {
            Ok(e) if e.layers.is_empty() => writeln!(out, "--sandbox {name}: nothing enforced")?,
            Ok(e) => {
                writeln!(out, "--sandbox {name}: enforces")?;
                for l in &e.layers {
                    writeln!(out, "  {:<12} {}", l.name, l.mechanism)?;
                }
            }
            Err(e) => writeln!(out, "--sandbox {name}: cannot be used here: {e}")?,
        }
    }
    Ok(())
}
