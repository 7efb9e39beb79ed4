//! The smallest embedding of billiard-host: a [`Pool`] and a [`Process`],
//! built against the library without its default features (no CLI, no
//! Celery, no metrics server). `.ci/run` builds it and checks that clap,
//! redis and tiny_http are not in its dependency tree.
//!
//! ```sh
//! cargo build --release -p billiard-plugin-math
//! cargo run -p embed-minimal -- target/release/libbilliard_math.so
//! ```

use billiard_host::{Pool, Process};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // When the pool starts this program as its zygote, this never returns.
    billiard_host::run_if_helper();
    let Some(plugin) = std::env::args_os().nth(1) else {
        eprintln!("usage: embed-minimal PATH/TO/libbilliard_math.so");
        std::process::exit(2);
    };
    let pool = Pool::builder().workers(2).plugin(&plugin).build()?;
    let nine: u64 = pool.apply("math", "square", (3u64,))?;
    println!("pool: square(3) = {nine}");
    pool.join()?;

    let mut p = Process::new(&plugin, "square", (7u64,));
    p.start()?;
    let y: u64 = p.join_value()?;
    println!("process: square(7) = {y}");
    Ok(())
}
