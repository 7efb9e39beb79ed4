//! The producer side of the Celery mode (`billiard_host::celery::client`,
//! `billiard-host submit`, `billiard-host run --broker`) against a real
//! redis-server, and the test infrastructure of tests/common/celery.rs.
mod common;

use common::celery::{self, Reply};

/// The helpers' own contract: a private redis-server answers, dies on
/// `kill()` and comes back empty on the same port after `restart()`.
#[test]
fn redis_server_kill_and_restart_on_same_port() {
    let Some(mut redis) = celery::redis_or_skip("redis_server_kill_and_restart_on_same_port")
    else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));
    assert_eq!(redis.cmd(&["GET", "k"]).text(), "v");
    let pid = redis.pid().expect("running");
    redis.kill();
    assert!(!common::running(pid), "redis-server {pid} survived kill()");
    assert!(redis.conn_err().is_some(), "still answering after kill()");
    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(
        redis.cmd(&["GET", "k"]).is_nil(),
        "no persistence: the key is gone"
    );
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    let pid = redis.pid().expect("running");
    drop(redis);
    assert!(!common::running(pid), "redis-server {pid} survived drop");
}

/// The venv's Celery reaches our redis-server: a Python `send_task` lands
/// in the `celery` list as a kombu envelope.
#[test]
fn python_celery_publishes_to_private_redis() {
    let Some((redis, _py)) = celery::celery_or_skip("python_celery_publishes_to_private_redis")
    else {
        return;
    };
    let script = format!(
        "{}\nr = app.send_task('math.square', args=[3])\nprint(json.dumps({{'id': r.id}}))",
        celery::py_app(&redis.url())
    );
    let v = celery::python_json(&script, &[]);
    let id = v["id"].as_str().expect("an id");
    let queue = redis.list_json("celery");
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["headers"]["id"], id);
    assert_eq!(queue[0]["headers"]["task"], "math.square");
    assert_eq!(
        redis
            .cmd(&["SMEMBERS", "_kombu.binding.celery"])
            .array()
            .len(),
        1
    );
}
