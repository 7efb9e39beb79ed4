//! Embedding the pool in a Rust program.
//!
//! ```sh
//! cargo build --release --workspace && cargo run --example embed
//! ```
//!
//! With no argument it uses the `math` plugin of this checkout, whichever
//! profile built it (see [`math_plugin`]); pass a path to use another one.
//!
//! The first line of `main` is the whole setup: it makes this program its
//! own zygote executable (no `billiard-host`, no `BILLIARD_HOST_EXE`).

use std::path::PathBuf;

use billiard_host::{JobOptions, Pool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // When the pool starts this program as its zygote, this never returns.
    billiard_host::run_if_helper();
    let plugin = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => math_plugin()?,
    };
    let pool = Pool::builder().workers(2).plugin(plugin).build()?;

    let nine: u64 = pool.apply("math", "square", (3u64,))?;
    println!("square(3) = {nine}");

    let squares: Vec<u64> = pool.map("math", "square", 1..=10u64, 4)?;
    println!("squares = {squares:?}");

    let sum: i64 = pool.apply("math", "add", (40i64, 2i64))?;
    println!("add(40, 2) = {sum}");

    let handle = pool.apply_async_with(
        "math",
        "fib",
        (90u32,),
        JobOptions::default().on_success(|v: u64| eprintln!("callback: fib(90) = {v}")),
    )?;
    println!("fib(90) = {}", handle.get()?);

    match pool.apply::<_, i64>("math", "add", (i64::MAX, 1i64)) {
        Ok(v) => println!("unexpected: {v}"),
        Err(e) => println!("add overflow -> {}: {}", e.kind, e.message),
    }
    println!("stats: {:?}", pool.stats()?);
    pool.join()?;
    Ok(())
}

/// The `math` plugin of this checkout: the one built with this example's
/// profile, else the release or the debug one. The README's first command
/// builds the workspace in release, and `cargo run --example embed` then
/// builds this example in debug: the plugin the reader built must still be
/// found (the ABI is the same in every profile; the loader checks layouts).
fn math_plugin() -> Result<PathBuf, Box<dyn std::error::Error>> {
    const FILE: &str = "libbilliard_math.so";
    // This example runs from <target>/<profile>/examples/embed.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(|examples| examples.parent());
    let mut candidates: Vec<PathBuf> = profile_dir.map(|d| d.join(FILE)).into_iter().collect();
    if let Some(target) = profile_dir.and_then(|d| d.parent()) {
        candidates.extend(["release", "debug"].map(|p| target.join(p).join(FILE)));
    }
    candidates.extend(["release", "debug"].map(|p| PathBuf::from("target").join(p).join(FILE)));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "the math plugin is not built: run `cargo build --release --workspace` first, \
         or pass the path of a plugin"
            .into()
    })
}
