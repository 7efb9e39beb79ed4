//! Embedding the pool in a Rust program.
//!
//! ```sh
//! cargo build --workspace && cargo run --example embed -- target/debug/libbilliard_math.so
//! ```
//!
//! The first line of `main` is the whole setup: it makes this program its
//! own zygote executable (no `billiard-host`, no `BILLIARD_HOST_EXE`).

use billiard_host::{JobOptions, Pool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // When the pool starts this program as its zygote, this never returns.
    billiard_host::run_if_helper();
    let plugin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/debug/libbilliard_math.so".into());
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
