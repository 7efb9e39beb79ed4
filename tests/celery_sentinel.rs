//! Redis Sentinel (issue 25 step 6): a master, a replica and three local
//! sentinels (all private children on free ports, stopped by pid); the
//! worker's broker and result backend are `sentinel://` URLs; the master
//! is killed mid-batch and the batch completes on the promoted replica.

use crate::common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::celery::{self, RedisServer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One `redis-server --sentinel` child.
struct Sentinel {
    port: u16,
    child: Option<Child>,
}

impl Sentinel {
    fn start(dir: &std::path::Path, master_port: u16) -> Sentinel {
        let port = celery::free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nprotected-mode no\n\
                 dir {dir}\nlogfile {dir}/sentinel-{port}.log\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir = dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let exe = celery::redis_server_exe().expect("redis-server");
        let child = Command::new(exe)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a sentinel");
        Sentinel {
            port,
            child: Some(child),
        }
    }

    fn ask(&self, args: &[&str]) -> Option<celery::Reply> {
        let mut c = celery::RedisConn::connect(self.port).ok()?;
        c.try_cmd(args).ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

fn count(r: &Option<celery::Reply>) -> usize {
    r.as_ref().map_or(0, |r| r.array().len())
}

#[test]
fn sentinel_failover_mid_batch_loses_nothing() {
    let test = "sentinel_failover_mid_batch_loses_nothing";
    let Some(mut master) = celery::redis_or_skip(test) else {
        return;
    };
    let mp = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mp]);
    let dir: PathBuf = celery::unique_temp_dir("sentinel");
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&dir, master.port()))
        .collect();
    // Every sentinel knows the replica and the two other sentinels (their
    // hello messages): a failover can be agreed on.
    celery::wait_until("the sentinels to know each other", celery::DEADLINE, || {
        sentinels.iter().all(|s| {
            count(&s.ask(&["SENTINEL", "replicas", "mymaster"])) == 1
                && count(&s.ask(&["SENTINEL", "sentinels", "mymaster"])) == 2
        })
    });
    let url = sentinels
        .iter()
        .map(|s| format!("sentinel://127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(";");
    let faults = common::plugin_str("faults");
    let w = celery::spawn_worker([
        "worker",
        &faults,
        "--broker",
        &url,
        "--master-name",
        "mymaster",
        "-c",
        "2",
        "--visibility-timeout",
        "2s",
    ]);
    // The batch, sent through the sentinels too (the master's name in the
    // URL, kombu's transport option).
    let n = 60;
    let jobs: Vec<String> = (0..n).map(|_| "[150]".to_string()).collect();
    let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let sdir = common::scratch(test);
    let input = common::lines_file(&sdir, "jobs.jsonl", &jobs);
    let with_name = format!("{url}?master_name=mymaster");
    let mut cmd = common::host_command();
    cmd.args([
        "submit",
        "--broker",
        &with_name,
        "--task",
        "faults.sleep_ms",
        "--input",
        &input,
        "-q",
    ]);
    let out = celery::run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(common::exit_code(&out), 0, "{}", common::stderr(&out));
    let ids: Vec<String> = common::json_lines(&common::stdout(&out))
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), n);
    // Everything sent is on the replica before the master dies.
    let _ = master.cmd(&["WAIT", "1", "5000"]);
    celery::wait_until("a few results", celery::DEADLINE, || {
        master.keys("celery-task-meta-*").len() >= 6
    });
    master.kill();
    // The sentinels promote the replica; the worker follows and every
    // task of the batch ends SUCCESS there.
    celery::wait_until(
        "every result on the promoted replica",
        Duration::from_secs(120),
        || {
            // On promotion the sentinels close the replica's client
            // connections (CLIENT KILL TYPE normal), ours included: a
            // connection reset is "not yet", asked again on the next poll.
            let Ok(mut c) = celery::RedisConn::connect(replica.port()) else {
                return false;
            };
            ids.iter().all(
                |id| match c.try_cmd(&["GET", &format!("celery-task-meta-{id}")]) {
                    Ok(celery::Reply::Nil) | Err(_) => false,
                    Ok(r) => serde_json::from_slice::<serde_json::Value>(r.bytes())
                        .is_ok_and(|m| m["status"] == "SUCCESS"),
                },
            )
        },
    );
    let promoted = sentinels[0].ask(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
    let addr: Vec<String> = promoted
        .as_ref()
        .map(|r| r.array().iter().map(|x| x.text()).collect())
        .unwrap_or_default();
    assert_eq!(
        addr,
        ["127.0.0.1".to_string(), replica.port().to_string()],
        "{}",
        w.stderr()
    );
    drop(w);
    drop(sentinels);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&sdir);
}
