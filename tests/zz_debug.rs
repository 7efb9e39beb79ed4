mod common;
use billiard_host::Pool;
#[test]
fn dbg_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(std::io::stderr)
        .try_init();
    let pool = Pool::builder()
        .workers(2)
        .worker_exe(common::bin())
        .plugin(common::plugin("math"))
        .plugin(common::plugin("faults"))
        .build()
        .unwrap();
    let hs: Vec<_> = (0..6u64)
        .map(|i| {
            pool.apply_async::<_, u64>("faults", "sleep_ms", (100 + i,))
                .unwrap()
        })
        .collect();
    pool.restart().unwrap();
    for (i, h) in hs.iter().enumerate() {
        let r = h.get_timeout(std::time::Duration::from_secs(5));
        eprintln!("job {i}: {r:?}");
    }
    eprintln!("stats {:?}", pool.stats());
    pool.terminate().unwrap();
}
