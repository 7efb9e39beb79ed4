//! The sandbox flags `run`, `check` and `worker` share (issue 15); they
//! map onto one [`billiard_host::sandbox::Sandbox`].

use std::path::PathBuf;

use billiard_host::sandbox::{Profile, Sandbox};

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Sandbox (docs/security.md)")]
pub(crate) struct SandboxFlags {
    /// Sandbox the workers: `none` (default); `standard`: own PID
    /// namespace, seccomp filter, no capabilities, no_new_privs, scrubbed
    /// environment, process and file limits; `strict`: standard plus no
    /// network and a read-only filesystem. A protection this kernel cannot
    /// give is an error (exit 2), never skipped.
    #[arg(long, value_name = "PROFILE", default_value_t = Profile::None)]
    pub sandbox: Profile,
    /// No network for the workers (a fresh network namespace).
    #[arg(long)]
    pub no_network: bool,
    /// Make the filesystem read-only but DIR (an absolute path;
    /// repeatable). `strict` with none: nothing is writable.
    #[arg(long, value_name = "DIR")]
    pub allow_write: Vec<PathBuf>,
    /// Run the workers as USER (name or uid); the host must be root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Pass VAR through the scrubbed environment (repeatable).
    #[arg(long, value_name = "VAR")]
    pub keep_env: Vec<String>,
    /// Processes per worker, itself and its tasks' children (standard and
    /// strict: 300, the smallest the kernel enforces).
    #[arg(long, value_name = "N")]
    pub max_procs: Option<u64>,
    /// RLIMIT_NOFILE of the workers (standard and strict: 1024).
    #[arg(long, value_name = "N")]
    pub max_open_files: Option<u64>,
    /// RLIMIT_FSIZE of the workers, e.g. 100MiB (standard and strict: 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = super::run::parse_size)]
    pub max_file_size: Option<u64>,
}

impl SandboxFlags {
    /// The policy these flags ask for.
    pub(crate) fn policy(&self) -> Sandbox {
        let mut s = Sandbox::profile(self.sandbox);
        if self.no_network {
            s = s.no_network();
        }
        for d in &self.allow_write {
            s = s.allow_write(d.clone());
        }
        if let Some(u) = &self.user {
            s = s.user(u.clone());
        }
        for v in &self.keep_env {
            s = s.keep_env(v.clone());
        }
        if let Some(n) = self.max_procs {
            s.limits.max_procs = Some(n);
        }
        if let Some(n) = self.max_open_files {
            s.limits.max_open_files = Some(n);
        }
        if let Some(n) = self.max_file_size {
            s.limits.max_file_size = Some(n);
        }
        s
    }

    /// Adds the policy to a pool builder.
    pub(crate) fn apply(&self, b: billiard_host::PoolBuilder) -> billiard_host::PoolBuilder {
        b.sandbox(self.policy())
    }
}

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
